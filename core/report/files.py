"""The report's files: ``write_report`` saves ``INC-{id}-{model or kind}-{YYYYMMDD}.md`` under INCIDENTS_DIR,
rewriting the same incident's file atomically (core.atomicfile) as it moves on. The first line of every file is a
marker naming the incident and the instant it opened, so a file of another incident with the same number (e.g.
after a database was rebuilt) is never overwritten: the new report gets a ``-2`` suffix instead. A symlink at
the destination is refused.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from core.atomicfile import atomic_write
from core.errors import RollbackError
from core.fileguard import UnsafeFile
from core.incidents import Incident
from core.report.text import as_utc


class ReportError(RollbackError):
    """The report file cannot be written where it belongs (e.g. a symlink sits at the destination)."""


_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def _marker(incident: Incident) -> str:
    return f"<!-- rollback-bot incident {incident.ref} opened {as_utc(incident.created_at).isoformat()} -->"


def _base_name(incident: Incident) -> str:
    slug = _SLUG.sub("_", incident.model_name or incident.kind).strip("._") or incident.kind
    return f"INC-{incident.id}-{slug[:80]}-{as_utc(incident.created_at):%Y%m%d}"


def _first_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        with open(path, "rb") as fh:
            return fh.readline(400).decode("utf-8", "replace").rstrip("\r\n")
    return ""


def find_report(incidents_dir: Path, incident: Incident) -> Path | None:
    """The report file of this incident (never another incident's that shares its number), if written."""
    base = _base_name(incident)
    marker = _marker(incident)
    for n in range(1, 1000):
        path = Path(incidents_dir) / (base + ("" if n == 1 else f"-{n}") + ".md")
        if not path.exists() and not path.is_symlink():
            return None
        if not path.is_symlink() and _first_line(path) == marker:
            return path
    return None


def destination(incidents_dir: Path, incident: Incident) -> Path:
    base = _base_name(incident)
    marker = _marker(incident)
    for n in range(1, 1000):
        path = incidents_dir / (base + ("" if n == 1 else f"-{n}") + ".md")
        if path.is_symlink():
            raise ReportError(f"Refusing to write {path.name}: it is a symbolic link.")
        if not path.exists() or _first_line(path) == marker:
            return path
    raise ReportError(f"Too many report files named {base}*.md in {incidents_dir}.")


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, data, refuse_symlink=True)
    except UnsafeFile:
        raise ReportError(f"Refusing to write {path.name}: it is a symbolic link.") from None


def write_report(*, incidents_dir: Path, incident: Incident, markdown: str) -> Path:
    """Save the report as ``INC-{id}-{model or kind}-{YYYYMMDD}.md``; the same incident's file is rewritten
    atomically, another incident's file is never overwritten, and a symlink at the destination is refused."""
    incidents_dir = Path(incidents_dir)
    incidents_dir.mkdir(parents=True, exist_ok=True)
    path = destination(incidents_dir, incident)
    _write(path, (_marker(incident) + "\n" + markdown).encode("utf-8"))
    return path


def write_chart(*, report_path: Path, png: bytes) -> Path:
    """Save the performance chart next to its report (same name, ``.png``), atomically."""
    path = Path(report_path).with_suffix(".png")
    if path.is_symlink():
        raise ReportError(f"Refusing to write {path.name}: it is a symbolic link.")
    _write(path, png)
    return path
