"""Putting the original model files back after a failed rollback, and telling the truth when that fails.

``put_back`` makes each production file the original one again (the checksums recorded by the emergency
backup step): copied back from the emergency backup, or removed when the original had no such file. A file
operation that fails (``OSError``: a full disk, an I/O error, a copy whose checksum comes out wrong) is retried
with exponential back-off (tenacity). If the files are still not the original ones after the last attempt,
the outcome says so, naming for each file which version it now is (the original, the rollback's target, or
neither), so the incident can say exactly what is in place instead of "the original model is back".

Retrying cannot help when the emergency backup's copy itself is missing or changed: that stops at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential
from tenacity.wait import wait_base

from core.integrity import Sums, describe, file_sums, short
from core.atomicfile import fsync_dir
from core.modelio import METADATA_FILE, MODEL_FILE, atomic_copy, sha256_file

__all__ = ["DEFAULT_WAIT", "REVERT_ATTEMPTS", "RevertOutcome", "put_back"]

REVERT_ATTEMPTS = 4
DEFAULT_WAIT: wait_base = wait_exponential(multiplier=0.5, max=8)  # 0.5 s, 1 s, 2 s between the attempts


class SourceGone(Exception):
    """The emergency backup's copy of a file is missing or changed: no retry can put the original back."""


@dataclass(frozen=True)
class RevertOutcome:
    ok: bool
    attempts: int
    restored: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # each production file now: "the original (v1)", …
    error: str | None = None
    message: str = ""


def put_back(folder: Path, originals: Sums | None, emergency: Path | None, *, original_label: str,
             target: tuple[str, Sums], fence: Callable[[str], None], fault: Callable[[str], None],
             wait: wait_base = DEFAULT_WAIT, attempts: int = REVERT_ATTEMPTS) -> RevertOutcome:
    """Make the files in ``folder`` the ``originals`` again (see the module's docstring)."""
    if originals is None:  # no emergency backup was recorded: the restore never began, nothing was changed
        return RevertOutcome(True, 0, message="the production files were never changed")
    restored: list[str] = []
    removed: list[str] = []
    last_errors: list[Exception] = []

    def one(name: str) -> None:
        want = originals.get(name)
        path = folder / name
        # A link in place is never the original: it is replaced by a plain file (or removed).
        have = sha256_file(path) if path.is_file() and not path.is_symlink() else None
        if have == want:
            return
        if want is None:
            fence(f"removing {name} (there was none before the rollback)")
            fault(f"revert:{name}")
            os.unlink(path)
            fsync_dir(folder)
            removed.append(name)
            return
        source = emergency / name if emergency is not None else None
        if source is None or not source.is_file() or sha256_file(source) != want:
            raise SourceGone(f"the emergency backup's {name} is missing or no longer the original ({short(want)})")
        fence(f"restoring the original {name}")
        fault(f"revert:{name}")
        atomic_copy(source, path)
        if sha256_file(path) != want:
            raise OSError(f"{name} was copied back but its checksum differs from the original's")
        restored.append(name)

    def once() -> None:
        """Every file, each as far as it goes (one that cannot be put back does not keep the other from it)."""
        errors: list[Exception] = []
        for name in (METADATA_FILE, MODEL_FILE):
            try:
                one(name)
            except (OSError, SourceGone) as exc:
                errors.append(exc)
        last_errors[:] = errors
        if errors:  # an OSError may pass with another try; a missing source never does
            raise next((e for e in errors if isinstance(e, OSError)), errors[0])

    retrying = Retrying(stop=stop_after_attempt(attempts), wait=wait, retry=retry_if_exception_type(OSError),
                        reraise=True)
    error = None
    try:
        retrying(once)
    except (OSError, SourceGone) as exc:
        error = "; ".join(str(e) or type(e).__name__ for e in last_errors) or str(exc) or type(exc).__name__
    tries = int(retrying.statistics.get("attempt_number", 1))
    now = file_sums(folder)
    files = describe(folder, now, [(original_label, originals), target])
    ok = all(now.get(name) == originals.get(name) for name in (METADATA_FILE, MODEL_FILE))
    if ok:
        parts = [f"{n} copied back" for n in restored] + [f"{n} removed (there was none before)" for n in removed]
        return RevertOutcome(True, tries, sorted(set(restored)), sorted(set(removed)), files,
                             message="original files back: " + ("; ".join(parts) or "nothing needed copying"))
    where = ", ".join(f"{name} is {what}" for name, what in files.items())
    message = (f"the revert failed after {tries} attempt(s) ({error or 'the files are not the original ones'}):"
               f" {where}")
    return RevertOutcome(False, tries, sorted(set(restored)), sorted(set(removed)), files, error, message)
