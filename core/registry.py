"""The model registry: models under MODELS_DIR, their metadata, their backups, and a recommended target.

Layout (the platform's contract)::

    MODELS_DIR/{strategy}_{marketcap}/model.json        the production XGBoost model
                                     /metadata.json     training_date, performance.{spearman_ic,sharpe_ratio}, features
                                     /backup_*/...      the same two files

Every name that comes from a person is validated (as a whole: ``re.fullmatch``) before it touches the file
system: a name with ``/``, ``\\``, ``..``, a NUL, a newline, an absolute path, or one whose folder is a symlink
leaving MODELS_DIR is refused. A backup folder that is a symbolic link, and a backup file that is not a regular
file (a link, FIFO or device) or a ``model.json`` over MAX_MODEL_BYTES, is refused too (``core.fileguard``).

Recommendation rule: the candidates are the backups whose metadata is valid, whose model loads with
xgboost, whose features are all provided by ``ml_training_features`` and whose model differs from the
production one (emergency backups taken by the bot only when nothing else qualifies). Among the first
``MAX_LIVE_CANDIDATES`` of them by metadata Sharpe, the one with the best long-short Sharpe on the last 20
trading days of live data wins (its metrics at training time describe a market that may be gone); when
there is not enough recent data, the best Sharpe in metadata.json (ties: higher IC, then newer).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from core.errors import BackupCorrupt, InvalidName, UnknownBackup, UnknownModel
from core.fileguard import DEFAULT_MAX_MODEL_BYTES, UnsafeFile, check_regular
from core.modelio import METADATA_FILE, MODEL_FILE, Metadata, load_booster, read_metadata, sha256_file

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")  # always fullmatch: "$" lets a final "\n" through
EMERGENCY_PREFIX = "backup_emergency_"


def validate_name(name: str, what: str = "model") -> str:
    """Return ``name`` if it is a plain folder name, else raise InvalidName saying why."""
    if not isinstance(name, str) or not name:
        raise InvalidName(f"A {what} name is required.")
    shown = name.encode("unicode_escape").decode("ascii")[:80]
    if "\x00" in name:
        raise InvalidName(f"Invalid {what} name {shown!r}: it contains a NUL character.")
    if "/" in name or "\\" in name:
        raise InvalidName(f"Invalid {what} name {shown!r}: it contains a path separator.")
    if ".." in name:
        raise InvalidName(f"Invalid {what} name {shown!r}: it contains '..'.")
    if name.startswith(("~", ".")):
        raise InvalidName(f"Invalid {what} name {shown!r}: it must not start with '{name[0]}'.")
    if not _SAFE.fullmatch(name):
        raise InvalidName(
            f"Invalid {what} name {shown!r}: use letters, digits, '_', '-' and '.' only (at most 128)."
        )
    return name


@dataclass(frozen=True)
class BackupInfo:
    """One backup folder (or the production files, with ``name`` == "production")."""

    name: str
    path: Path
    metadata: Metadata | None
    problems: tuple[str, ...] = ()
    loads: bool | None = None  # None: not checked

    @property
    def training_date(self) -> date | None:
        return self.metadata.training_date if self.metadata else None

    @property
    def spearman_ic(self) -> float | None:
        return self.metadata.performance.spearman_ic if self.metadata else None

    @property
    def sharpe_ratio(self) -> float | None:
        return self.metadata.performance.sharpe_ratio if self.metadata else None

    @property
    def features(self) -> list[str] | None:
        return list(self.metadata.features) if self.metadata else None

    @property
    def is_emergency(self) -> bool:
        return self.name.startswith(EMERGENCY_PREFIX)

    @property
    def usable(self) -> bool:
        return self.metadata is not None and not self.problems and self.loads is not False


@dataclass(frozen=True)
class Recommendation:
    backup: BackupInfo | None
    rule: str
    rejected: dict[str, str] = field(default_factory=dict)
    live: dict[str, Any] = field(default_factory=dict)  # backup name -> core.metrics.Performance | None


RECOMMENDATION_RULE = (
    "best Sharpe in metadata among backups that load, whose features the feature view provides and that "
    "differ from production (ties: higher IC, then newer)"
)
LIVE_RULE = (
    "best long-short Sharpe on the last 20 trading days among backups that load, whose features the feature "
    "view provides and that differ from production"
)
MAX_LIVE_CANDIDATES = 10
LiveScore = Callable[["BackupInfo"], Any]


class ModelRegistry:
    def __init__(self, models_dir: Path, *, max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> None:
        self.models_dir = Path(models_dir)
        self.max_model_bytes = max_model_bytes  # MAX_MODEL_BYTES: a larger model.json is refused
        self._load_cache: dict[tuple[str, int, int], str | None] = {}
        self._boosters: OrderedDict[tuple[str, int, int], Any] = OrderedDict()

    def booster(self, folder: Path) -> Any:
        """The loaded model of ``folder`` (a few recent ones are kept, keyed by size and mtime)."""
        path = folder / MODEL_FILE
        st = path.lstat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key in self._boosters:
            self._boosters.move_to_end(key)
            return self._boosters[key]
        booster = load_booster(path, max_bytes=self.max_model_bytes)
        self._boosters[key] = booster
        while len(self._boosters) > 8:
            self._boosters.popitem(last=False)
        return booster

    # ------------------------------------------------------------------ paths

    def _root(self) -> Path:
        return self.models_dir.resolve()

    def _inside(self, path: Path, what: str, name: str) -> Path:
        """``path`` is MODELS_DIR/<validated name>[/<validated name>]: only a symlink can lead elsewhere."""
        if not path.is_symlink() and not path.parent.is_symlink():
            return path
        resolved = path.resolve()
        root = self._root()
        if resolved != root and root not in resolved.parents:
            raise InvalidName(f"Invalid {what} name {name!r}: it leads outside MODELS_DIR.")
        return resolved

    def model_dir(self, model: str) -> Path:
        validate_name(model, "model")
        path = self.models_dir / model
        if path.is_symlink() or path.exists():
            self._inside(path, "model", model)
        if not path.is_dir() or not (path / MODEL_FILE).exists() and not (path / METADATA_FILE).exists():
            known = self.list_models()
            hint = f" Known models: {', '.join(known[:10])}." if known else " No models are installed."
            raise UnknownModel(f"Unknown model {model!r}.{hint}")
        return path

    def backup_dir(self, model: str, backup: str) -> Path:
        folder = self.model_dir(model)
        validate_name(backup, "backup")
        if not backup.startswith("backup_"):
            raise InvalidName(f"Invalid backup name {backup!r}: backup folders are named backup_*.")
        path = folder / backup
        if path.is_symlink() or path.exists():
            self._inside(path, "backup", backup)
        if path.is_symlink():
            raise BackupCorrupt(f"Backup {backup} of {model} is a symbolic link, not a folder: refused.")
        if not path.is_dir():
            raise UnknownBackup(f"Model {model!r} has no backup {backup!r}. Try `/rollback backups {model}`.")
        return path

    # ---------------------------------------------------------------- listing

    def list_models(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        root = self._root()
        out = []
        for entry in self.models_dir.iterdir():
            if entry.name.startswith(".") or not _SAFE.fullmatch(entry.name) or not entry.is_dir():
                continue
            if entry.is_symlink():
                resolved = entry.resolve()
                if resolved != root and root not in resolved.parents:
                    continue
            if (entry / MODEL_FILE).exists() or (entry / METADATA_FILE).exists():
                out.append(entry.name)
        return sorted(out)

    def production(self, model: str) -> BackupInfo:
        folder = self.model_dir(model)
        return self._info("production", folder)

    def backup(self, model: str, backup: str) -> BackupInfo:
        return self._info(backup, self.backup_dir(model, backup))

    def list_backups(self, model: str) -> list[BackupInfo]:
        """Every ``backup_*`` folder of the model, newest training date first; problems reported per backup."""
        folder = self.model_dir(model)
        root = self._root()
        infos = []
        for entry in folder.iterdir():
            if not entry.name.startswith("backup_") or not entry.is_dir() or not _SAFE.fullmatch(entry.name):
                continue
            resolved = entry.resolve() if entry.is_symlink() or folder.is_symlink() else root / folder.name / entry.name
            if root not in resolved.parents:
                infos.append(BackupInfo(entry.name, entry, None, ("its folder leads outside MODELS_DIR",), False))
                continue
            if entry.is_symlink():
                infos.append(BackupInfo(entry.name, entry, None, ("its folder is a symbolic link",), False))
                continue
            infos.append(self._info(entry.name, entry))
        infos.sort(key=lambda b: (b.training_date or date.min, b.name), reverse=True)
        return infos

    def _info(self, name: str, folder: Path) -> BackupInfo:
        problems = []
        metadata = None
        try:
            metadata = read_metadata(folder)
        except BackupCorrupt as exc:
            problems.append(str(exc).split(": ", 1)[-1])
        try:
            check_regular(folder / MODEL_FILE, max_bytes=self.max_model_bytes, setting="MAX_MODEL_BYTES")
        except FileNotFoundError:
            problems.append(f"{MODEL_FILE} is missing")
        except UnsafeFile as exc:
            problems.append(f"{MODEL_FILE} is refused: {exc.strerror}")
        except OSError as exc:
            problems.append(f"{MODEL_FILE} cannot be read ({exc.strerror})")
        return BackupInfo(name, folder, metadata, tuple(problems))

    # ------------------------------------------------------------- checking

    def load_problem(self, folder: Path) -> str | None:
        """None when ``folder/model.json`` loads with xgboost, else the reason (cached by size and mtime)."""
        path = folder / MODEL_FILE
        try:
            st = path.lstat()
        except OSError:
            return f"{MODEL_FILE} is missing"
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in self._load_cache:
            try:
                booster = self.booster(folder)
                problem = None
                meta_features = None
                try:
                    meta_features = read_metadata(folder).features
                except BackupCorrupt:
                    pass
                if meta_features is not None:
                    if booster.num_features() != len(meta_features):
                        problem = (
                            f"the model expects {booster.num_features()} features but metadata lists "
                            f"{len(meta_features)}"
                        )
                    elif booster.feature_names and list(booster.feature_names) != meta_features:
                        problem = "the model's feature names differ from metadata.json"
            except BackupCorrupt as exc:
                problem = str(exc).split(": ", 1)[-1]
            self._load_cache[key] = problem
        return self._load_cache[key]

    def recommend(
        self,
        model: str,
        backups: Iterable[BackupInfo] | None = None,
        *,
        available_features: Callable[[], set[str] | None] | set[str] | None = None,
        live_score: LiveScore | None = None,
    ) -> Recommendation:
        """Pick a target by the module's rule, checking candidates best-first."""
        backups = list(self.list_backups(model) if backups is None else backups)
        features = available_features() if callable(available_features) else available_features
        try:
            prod_sum = sha256_file(self.model_dir(model) / MODEL_FILE)
        except OSError:
            prod_sum = None

        def score(b: BackupInfo) -> tuple:
            sharpe = b.sharpe_ratio if b.sharpe_ratio is not None and math.isfinite(b.sharpe_ratio) else -math.inf
            ic = b.spearman_ic if b.spearman_ic is not None else -math.inf
            return (not b.is_emergency, sharpe, ic, b.training_date or date.min)

        rejected: dict[str, str] = {}
        passing: list[BackupInfo] = []
        for b in sorted(backups, key=score, reverse=True):
            reason = self.unusable_reason(b, features=features, production_sha256=prod_sum)
            if reason:
                rejected[b.name] = reason
                continue
            passing.append(b)
            if live_score is None or len(passing) >= MAX_LIVE_CANDIDATES:
                break
        if not passing:
            return Recommendation(None, RECOMMENDATION_RULE, rejected)
        if live_score is None:
            return Recommendation(passing[0], RECOMMENDATION_RULE, rejected)
        live = {b.name: live_score(b) for b in passing}
        scored = [b for b in passing if live[b.name] is not None and math.isfinite(live[b.name].sharpe_ratio)]
        if not scored:
            return Recommendation(passing[0], RECOMMENDATION_RULE, rejected, live)
        best = max(scored, key=lambda b: (not b.is_emergency, live[b.name].sharpe_ratio, live[b.name].spearman_ic))
        return Recommendation(best, LIVE_RULE, rejected, live)

    def unusable_reason(
        self, b: BackupInfo, *, features: set[str] | None, production_sha256: str | None = None
    ) -> str | None:
        if b.problems:
            return "; ".join(b.problems)
        if b.metadata is None:
            return "metadata.json is unreadable"
        problem = self.load_problem(b.path)
        if problem:
            return problem
        if features is not None:
            missing = [f for f in b.metadata.features if f not in features]
            if missing:
                return f"features not in ml_training_features: {', '.join(missing[:5])}"
        if production_sha256 is not None:
            try:
                if sha256_file(b.path / MODEL_FILE) == production_sha256:
                    return "identical to the production model"
            except OSError as exc:
                return f"{MODEL_FILE} cannot be read ({exc.strerror})"
        return None
