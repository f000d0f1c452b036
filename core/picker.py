"""Typeahead choices for the request form's pickers: models and a model's backups, filtered by what a person
typed, best matches first, at most ``LIMIT`` (Slack shows at most 100 options in a select menu).

Slack asks for options on every keystroke and gives up after 3 seconds, so this answers from the file system
without loading any model: the list of model folders (about 0.4 s to read for 5,000 models, 30 ms to search)
is cached: read again at once when MODELS_DIR's mtime says a folder came or went, and in the background after
``max_age`` seconds (the old list answers meanwhile). ``warm()`` reads it before the first keystroke. A model's
backups are read from their metadata.json files (dozens, not thousands). No Slack here: ``handlers/pickers.py``
turns these into options.
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
        self._refreshing = False

    def model_names(self) -> list[str]:
        """Every model folder, from the cache (see the module's docstring)."""
        try:
            mtime = self.registry.models_dir.stat().st_mtime_ns
        except OSError:
            return []
        with self._lock:
            stamp = self._stamp
            if stamp is not None and stamp[0] == mtime:
                if time.monotonic() - stamp[1] > self.max_age and not self._refreshing:
                    self._refreshing = True
                    threading.Thread(target=self._refresh, name="picker-refresh", daemon=True).start()
                return self._models
        return self._refresh()

    def _refresh(self) -> list[str]:
        try:
            mtime = self.registry.models_dir.stat().st_mtime_ns
            models = self.registry.list_models()  # its own mtime read first: a change meanwhile lists again
        except OSError:
            mtime, models = 0, []
        with self._lock:
            self._models, self._stamp, self._refreshing = models, (mtime, time.monotonic()), False
        return models

    def warm(self) -> None:
        """Read the model list now, on a thread, so the first keystroke finds it."""
        threading.Thread(target=self.model_names, name="picker-warm", daemon=True).start()

    def models(self, query: str, limit: int = LIMIT) -> list[str]:
        return rank(self.model_names(), query, limit)

    def backups(self, model: str, query: str, *, recommended: str | None = None,
                limit: int = LIMIT) -> list[BackupInfo]:
        """The usable backups of ``model`` (valid metadata, a model file) matching ``query``. An unknown or
        invalid model name raises the registry's error (``UnknownModel``, ``InvalidName``)."""
        validate_name(model, "model")
        usable = [b for b in self.registry.list_backups(model) if b.usable]
        return rank_backups(usable, query, recommended=recommended, limit=limit)
