"""Which version of a model is diagnosed, and where its files are read.

``/rollback diagnose MODEL`` diagnoses the files in production now. An incident's diagnostics diagnose the
version that was in production when the incident opened, whatever the rollback has done since: the job is
queued at the halt but may run after the swap, when the production folder holds the restored backup. The
failed version's files are then in the incident's emergency backup (``backup_emergency_*``, which appears
complete or not at all, and only after it exists may the restore begin). So ``failed_version`` reads the
emergency backup when it exists; otherwise it loads the production files and then looks again: if the
emergency backup exists by then, the swap may have begun while it read, and the emergency backup is read
instead; if it does not, no restore can have begun, and what it loaded is the failed version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import BackupCorrupt, RollbackError
from core.incidents import Incident
from core.modelio import Metadata, read_metadata
from core.registry import ModelRegistry


@dataclass(frozen=True)
class ModelVersion:
    """The files of one version of a model, loaded once (``booster`` None: ``problem`` says why)."""

    model: str
    name: str            # the deployment log's version (a backup folder's name), or "production"
    note: str            # for people: which version this is and where its files were read
    folder: Path
    meta: Metadata | None
    meta_problem: str | None
    booster: Any | None
    problem: str | None  # why model.json does not load (None when it loads)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.note})" if self.note else self.name


def load_version(registry: ModelRegistry, model: str, folder: Path, *, name: str, note: str) -> ModelVersion:
    """Read ``folder``'s metadata.json and load its model.json (problems are kept, never raised)."""
    meta, meta_problem = None, None
    try:
        meta = read_metadata(folder)
    except BackupCorrupt as exc:
        meta_problem = str(exc)
    problem = registry.load_problem(folder)
    booster = None
    if problem is None:
        try:
            booster = registry.booster(folder)
        except (BackupCorrupt, OSError) as exc:
            problem = str(exc).split(": ", 1)[-1]
    return ModelVersion(model, name, note, folder, meta, meta_problem, booster, problem)


def production_version(registry: ModelRegistry, model: str, *, name: str = "production",
                       note: str = "the files in production now") -> ModelVersion:
    """The files in ``MODELS_DIR/model/`` (UnknownModel / InvalidName for a bad name)."""
    return load_version(registry, model, registry.model_dir(model), name=name, note=note)


def backup_version(registry: ModelRegistry, model: str, backup: str, *, note: str) -> ModelVersion:
    return load_version(registry, model, registry.backup_dir(model, backup), name=backup, note=note)


def _emergency(registry: ModelRegistry, inc: Incident) -> Path | None:
    if not inc.emergency_backup:
        return None
    try:
        return registry.backup_dir(inc.model_name, inc.emergency_backup)
    except RollbackError:
        return None  # not taken (yet)


def failed_version(registry: ModelRegistry, inc: Incident, reread: Callable[[], Incident]) -> ModelVersion:
    """The version of ``inc``'s model that was in production when the incident opened (see the module
    docstring); ``reread`` returns the incident as it is now."""
    model = inc.model_name
    name = inc.from_version or "production"
    opened = f"in production when {inc.ref} opened"

    def from_emergency(i: Incident) -> ModelVersion | None:
        folder = _emergency(registry, i)
        if folder is None:
            return None
        return load_version(registry, model, folder, name=name,
                            note=f"{opened}; files from its emergency backup {i.emergency_backup}")

    found = from_emergency(inc)
    if found is not None:
        return found
    before = production_version(registry, model, name=name, note=f"{opened}; files read before the swap")
    return from_emergency(reread()) or before
