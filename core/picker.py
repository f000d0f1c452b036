"""Typeahead choices for the request form's pickers: models and a model's backups, filtered by what a person
typed, best matches first, at most ``LIMIT`` (Slack shows at most 100 options in a select menu).

Slack asks for options on every keystroke and gives up after 3 seconds, so this answers from the file system
without loading any model: the list of model folders is cached and read again when MODELS_DIR changes (its
mtime) or after ``max_age`` seconds; a model's backups are read from their metadata.json files (dozens, not
thousands). No Slack here: ``handlers/pickers.py`` turns these into options.
"""

from __future__ import annotations

import heapq
import re
import threading
import time
from collections.abc import Iterable, Sequence

from core.registry import BackupInfo, ModelRegistry, validate_name

LIMIT = 100
_SEPARATORS = re.compile(r"[_.\-\s]+")


def _tokens(query: str) -> list[str]:
    return [t for t in (query or "").lower().split() if t]


def match_rank(name: str, query: str) -> tuple[int, int] | None:
    """None when ``name`` does not match ``query`` (every typed word must appear in it, case-insensitively);
    else a sort key, smaller is better: the whole name typed, a prefix of the name, the start of one of its
    parts (``momentum`` in ``growth_momentum_large``), anywhere; then the earlier the better."""
    tokens = _tokens(query)
    if not tokens:
        return (0, 0)
    lower = name.lower()
    if any(t not in lower for t in tokens):
        return None
    phrase = " ".join(tokens)
    first = tokens[0]
    if lower == phrase:
        return (0, 0)
    if lower.startswith(first):
        return (1, 0)
    starts = [m.end() for m in _SEPARATORS.finditer(lower)]
    for pos in starts:
        if lower.startswith(first, pos):
            return (2, pos)
    return (3, lower.find(first))


def rank(names: Iterable[str], query: str, limit: int = LIMIT) -> list[str]:
    """The ``limit`` best matches of ``query`` among ``names``: by match quality, then shorter, then by name.
    Nothing typed: the first ``limit`` names in alphabetical order."""
    if not _tokens(query):
        return heapq.nsmallest(limit, names)
    keyed = ((key, len(n), n) for n in names if (key := match_rank(n, query)) is not None)
    return [n for _, _, n in heapq.nsmallest(limit, keyed)]


def rank_backups(backups: Sequence[BackupInfo], query: str, *, recommended: str | None = None,
                 limit: int = LIMIT) -> list[BackupInfo]:
    """Backups matching ``query``: best match first; among equal matches the recommended one, then the order
    given (the registry lists the newest training date first)."""
    keyed = []
    for index, b in enumerate(backups):
        key = match_rank(b.name, query)
        if key is not None:
            keyed.append((key, b.name != recommended, index))
    return [backups[i] for *_, i in heapq.nsmallest(limit, keyed)]


class Picker:
    """What the request form's model and backup menus offer, for a typed filter."""

    def __init__(self, registry: ModelRegistry, *, max_age: float = 30.0) -> None:
        self.registry = registry
        self.max_age = max_age
        self._lock = threading.Lock()
        self._models: list[str] = []
        self._stamp: tuple[int, float] | None = None  # (MODELS_DIR mtime, when it was listed)

    def model_names(self) -> list[str]:
        """Every model folder (cached: listed again when MODELS_DIR's mtime changes or after ``max_age``)."""
        try:
            mtime = self.registry.models_dir.stat().st_mtime_ns
        except OSError:
            return []
        now = time.monotonic()
        with self._lock:
            if self._stamp is None or self._stamp[0] != mtime or now - self._stamp[1] > self.max_age:
                self._models = self.registry.list_models()
                self._stamp = (mtime, now)
            return self._models

    def models(self, query: str, limit: int = LIMIT) -> list[str]:
        return rank(self.model_names(), query, limit)

    def backups(self, model: str, query: str, *, recommended: str | None = None,
                limit: int = LIMIT) -> list[BackupInfo]:
        """The usable backups of ``model`` (valid metadata, a model file) matching ``query``. An unknown or
        invalid model name raises the registry's error (``UnknownModel``, ``InvalidName``)."""
        validate_name(model, "model")
        usable = [b for b in self.registry.list_backups(model) if b.usable]
        return rank_backups(usable, query, recommended=recommended, limit=limit)
