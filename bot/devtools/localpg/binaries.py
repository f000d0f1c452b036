"""Finding PostgreSQL's server binaries (installing Debian's package when root and missing)."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

from bot.devtools.localpg.common import _REQUIRED_BINARIES, LocalPGError, log


def _major_of_dir(path: str) -> tuple[int, ...]:
    name = Path(path).parent.name  # /usr/lib/postgresql/<ver>/bin
    return tuple(int(p) for p in re.findall(r"\d+", name)) or (0,)


def _has_binaries(bindir: str | os.PathLike) -> bool:
    return all(os.access(os.path.join(bindir, b), os.X_OK) for b in _REQUIRED_BINARIES)


def _locate_bindir(prefer_major: str | None = None) -> Path | None:
    override = os.environ.get("ROLLBACK_BOT_PG_BINDIR")
    if override:
        if not _has_binaries(override):
            raise LocalPGError(f"ROLLBACK_BOT_PG_BINDIR={override} has no initdb/postgres")
        return Path(override)
    candidates: list[str] = []
    if prefer_major:
        candidates.append(f"/usr/lib/postgresql/{prefer_major}/bin")
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=20, check=True
            ).stdout.strip()
            if out:
                candidates.append(out)
    candidates.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major_of_dir, reverse=True))
    for name in _REQUIRED_BINARIES:
        found = shutil.which(name)
        if found:
            candidates.append(os.path.dirname(found))
            candidates.append(os.path.dirname(os.path.realpath(found)))
    for candidate in candidates:
        if _has_binaries(candidate):
            return Path(candidate)
    return None


def _apt_install_postgresql() -> None:
    if not shutil.which("apt-get"):
        raise LocalPGError("PostgreSQL server binaries not found and apt-get is not available")
    log.info("PostgreSQL server binaries not found: installing Debian's postgresql package")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
    ):
        result = subprocess.run(
            cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise LocalPGError(f"{' '.join(cmd)} failed (exit {result.returncode}):\n{tail}")


def find_bindir(*, install: bool = True, prefer_major: str | None = None) -> Path:
    """Directory holding initdb/postgres; installs Debian's package if missing and root."""
    bindir = _locate_bindir(prefer_major)
    if bindir is not None:
        return bindir
    if not install or os.geteuid() != 0:
        raise LocalPGError(
            "PostgreSQL server binaries (initdb, postgres) not found: looked at pg_config "
            "--bindir, /usr/lib/postgresql/*/bin and PATH. Install them (Debian/Ubuntu: "
            "`sudo apt-get install postgresql`) or set ROLLBACK_BOT_PG_BINDIR; "
            "`python -m bot.devtools.localpg ensure` installs them itself when run as root."
        )
    _apt_install_postgresql()
    bindir = _locate_bindir(prefer_major)
    if bindir is None:
        raise LocalPGError("installed the postgresql package but still found no initdb/postgres")
    return bindir


def _server_major(bindir: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\)\s+(\d+)", out)
    return match.group(1) if match else None
