"""Which bytes are where: pinned checksums of an approved target, and production files against their row.

* **Pins.** At request time both files of the target backup (``model.json`` and ``metadata.json``) are hashed
  and kept in the incident's plan (``plan["pinned"]``). The restore, and verification, check the files against
  these pins: what was approved is what runs, even if the backup folder changes after approval.
* **Production files against the production row** (``production_mismatches``), for ``/rollback resume``. What
  a production row's files should be, in this order:

  1. a row the bot wrote (a rollback): the checksums pinned when that rollback was requested;
  2. a row whose ``version`` names a ``backup_*`` folder of the model: that folder's files;
  3. a row that was production when the bot took an emergency backup: that backup's checksums;
  4. otherwise nothing is known about its bytes, and only ``model.json``'s presence is checked.

  A missing ``model.json`` never matches (also when the original had none), and an incident whose revert
  failed (its files are known to be mixed) is a mismatch until its files are the original ones again.
* ``describe`` names, for each file in place, the version it is a copy of.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from core import repository as repo
from core.errors import VerificationFailed
from core.incidents import CLOSED, FILES_MIXED, Incident
from core.modelio import METADATA_FILE, MODEL_FILE, MODEL_FILES, sha256_file
from core.platform import production_rows

__all__ = [
    "FileMismatch",
    "Sums",
    "check_pins",
    "describe",
    "file_sums",
    "fingerprint",
    "originals_of",
    "pins_of",
    "production_mismatches",
    "short",
]

Sums = dict[str, str | None]  # file name -> sha256; None: the file is absent


def file_sums(folder: Path) -> Sums:
    return {name: _sum(folder / name) for name in MODEL_FILES}


def _sum(path: Path) -> str | None:
    """The file's checksum; None when absent; a link or other non-regular file never matches any checksum."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return "not-a-regular-file"
    return sha256_file(path) if path.is_file() else None


def short(sha: str | None) -> str:
    return f"{sha[:12]}…" if sha else "absent"


def pins_of(inc: Incident) -> Sums:
    """The target's checksums approved at request time (only model.json for requests made before both were)."""
    pinned = (inc.plan or {}).get("pinned")
    if isinstance(pinned, dict) and pinned.get(MODEL_FILE):
        return {name: pinned.get(name) for name in MODEL_FILES}
    return {MODEL_FILE: inc.target_sha256} if inc.target_sha256 else {}


def originals_of(inc: Incident, emergency: Path | None) -> Sums | None:
    """The production files' checksums before the rollback (from the emergency backup step), None if unknown.
    Recorded in the plan by the emergency backup; failing that, read from the emergency folder itself."""
    plan = inc.plan or {}
    if "original_sha256" in plan:
        return {MODEL_FILE: plan.get("original_sha256"), METADATA_FILE: plan.get("original_metadata_sha256")}
    if emergency is not None and emergency.is_dir():
        return file_sums(emergency)
    return None


def original_label(inc: Incident, folder: Path, originals: Sums | None) -> str:
    """How failure messages name the files that were in production before ``inc``: "original (v1)" only when they
    are the bytes of the production row's version folder ``v1``; otherwise (e.g. files an override resumed on, or a
    version kept in no folder) "original (as before INC-n; production row v1)", which claims no version."""
    version = inc.from_version
    if version and originals and "/" not in version and not version.startswith("."):
        source = folder / version
        if source.is_dir() and not source.is_symlink() and file_sums(source) == {
                name: originals.get(name) for name in MODEL_FILES}:
            return f"original ({version})"
    return f"original (as before {inc.ref}" + (f"; production row {version})" if version else ")")


def check_pins(folder: Path, pins: Sums, *, what: str) -> None:
    """Raise VerificationFailed naming each file of ``folder`` whose checksum is not the pinned one."""
    wrong = []
    for name, pinned in pins.items():
        actual = sha256_file(folder / name) if (folder / name).is_file() else None
        if actual != pinned:
            wrong.append(f"{name} is {short(actual)}, approved {short(pinned)}")
    if wrong:
        raise VerificationFailed(f"{what}: {'; '.join(wrong)}")


def describe(folder: Path, sums: Sums, known: list[tuple[str, Sums]]) -> dict[str, str]:
    """For each file in place (``sums``), the first of ``known`` (label, checksums) it is a copy of."""
    out = {}
    for name in MODEL_FILES:
        actual = sums.get(name)
        if actual is None:
            out[name] = "missing"
            continue
        label = next((lab for lab, s in known if s.get(name) == actual), None)
        out[name] = f"the {label}" if label else f"none of the known versions (sha256 {short(actual)})"
    return out


def _backup_sums(folder: Path, sums: Sums) -> list[tuple[str, Sums]]:
    """Every backup folder of the model with the checksums of those of its files that may match ``sums``
    (same size first: most are never hashed)."""
    out = []
    for entry in sorted(folder.iterdir()):
        if not entry.name.startswith("backup_") or not entry.is_dir():
            continue
        found: Sums = {}
        for name in MODEL_FILES:
            path, actual = entry / name, sums.get(name)
            if actual is not None and path.is_file() and path.stat().st_size == (folder / name).stat().st_size:
                found[name] = sha256_file(path)
        out.append((f"backup {entry.name}", found))
    return out


@dataclass(frozen=True)
class FileMismatch:
    model: str
    expected_from: str                  # where the expected checksums come from
    differs: dict[str, str]             # file -> what it is now (e.g. "the backup backup_x", "missing")
    actual: Sums = field(default_factory=dict)
    expected: Sums = field(default_factory=dict)

    @property
    def text(self) -> str:
        parts = [f"{name} is {what}" for name, what in self.differs.items()]
        return f"{self.model}: {', '.join(parts)}; expected {self.expected_from}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fingerprint(mismatches: list[FileMismatch]) -> str:
    """A stable digest of what is wrong (an override is valid for exactly these files)."""
    items = sorted((m.model, m.expected_from, sorted(m.actual.items(), key=str), sorted(m.expected.items(), key=str))
                   for m in mismatches)
    return hashlib.sha256(json.dumps(items, default=str).encode()).hexdigest()


def _same_row(prev: dict, version: str, deployed_at: datetime) -> bool:
    try:
        return prev.get("version") == version and datetime.fromisoformat(prev["deployed_at"]) == deployed_at
    except (KeyError, TypeError, ValueError):
        return False


def _expected(rows: list[Incident], folder: Path, version: str, deployed_at: datetime) -> tuple[Sums | None, str]:
    """The production row's files (see the module's docstring); ``rows``: the model's rollbacks, newest first."""
    for row in rows:  # 1. a row the bot wrote: the pins of the rollback that wrote it
        if row.target_backup == version and row.deployed_at == deployed_at:
            pins = pins_of(row)
            if pins:
                return pins, f"{version}, as approved in {row.ref}"
    candidate = folder / version
    if version.startswith("backup_") and "/" not in version and candidate.is_dir() and not candidate.is_symlink():
        return file_sums(candidate), f"{version} (its backup folder)"  # 2.
    for inc in rows:  # 3. what was in place when the bot backed the row's files up
        if any(_same_row(p, version, deployed_at) for p in (inc.previous_rows or [])):
            originals = originals_of(inc, folder / inc.emergency_backup if inc.emergency_backup else None)
            if originals is not None:
                return originals, f"{version}, as backed up by INC-{inc.id} ({inc.emergency_backup})"
    return None, f"{version} (its files are not known to the bot)"


def production_mismatches(conn: psycopg.Connection, registry: Any) -> list[FileMismatch]:
    """Every model whose files in place are not its production row's, and every incident whose revert failed
    and whose files are not yet the original ones."""
    out: list[FileMismatch] = []
    newest: dict[str, Any] = {}
    for row in production_rows(conn):
        newest.setdefault(row.model_name, row)
    rollbacks: dict[str, list[Incident]] = {}
    for inc in repo.rollbacks_that_swapped(conn):
        rollbacks.setdefault(str(inc.model_name), []).append(inc)
    for model in sorted(set(registry.list_models()) & set(newest)):
        row = newest[model]
        folder = registry.model_dir(model)
        actual = file_sums(folder)
        expected, source = _expected(rollbacks.get(model, []), folder, row.version, row.deployed_at)
        wrong = [n for n in MODEL_FILES if expected is not None and actual[n] != expected.get(n)]
        if actual[MODEL_FILE] is None and MODEL_FILE not in wrong:
            wrong.insert(0, MODEL_FILE)
        if wrong:
            known = ([(f"production row {row.version}", expected)] if expected else []) + _backup_sums(folder, actual)
            what = describe(folder, actual, known)
            out.append(FileMismatch(model, source, {n: what[n] for n in wrong}, actual, expected or {}))
    for inc in repo.incidents_in(conn, FILES_MIXED - CLOSED):
        folder = registry.model_dir(inc.model_name)
        originals = originals_of(inc, folder / inc.emergency_backup if inc.emergency_backup else None) or {}
        actual = file_sums(folder)
        wrong = [n for n in MODEL_FILES if n in originals and actual[n] != originals[n]]
        if wrong or not originals:
            known = [(original_label(inc, folder, originals), originals),
                     (f"target {inc.target_backup}", pins_of(inc))]
            what = describe(folder, actual, known)
            out.append(FileMismatch(inc.model_name, f"the original files, as {inc.ref}'s revert failed",
                                    {n: what[n] for n in (wrong or list(MODEL_FILES))}, actual, originals))
    return out
