"""Processes and ports: is a postmaster alive and ours, its pid file, a free port, the log's last lines."""

from __future__ import annotations

import contextlib
import glob
import os
import random
import socket
from pathlib import Path
from typing import Iterable

from bot.devtools.localpg.common import _PORT_RANGE, HOST, _children
from core.process import pid_exists


def _pid_alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _children[pid]
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    return pid_exists(pid)  # no /proc: exists at all, zombies included (what the postmaster checks)


def _is_our_postmaster(pid: int, data_dir: Path) -> bool:
    """True if ``pid`` is alive and (as far as we can tell) the postmaster of ``data_dir``."""
    if not _pid_alive(pid):
        return False
    with contextlib.suppress(OSError):
        return os.path.samefile(f"/proc/{pid}/cwd", data_dir)  # the postmaster chdir()s there
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
        return b"postgres" in cmdline or b"postmaster" in cmdline
    except OSError:
        return True  # no /proc: trust the lock file


def _processes_in(data_dir: Path) -> list[int]:
    """Live processes whose working directory is ``data_dir`` (postmaster and backends)."""
    found = []
    for entry in glob.glob("/proc/[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            if os.path.samefile(f"{entry}/cwd", data_dir) and _pid_alive(int(entry[6:])):
                found.append(int(entry[6:]))
    return found


def _read_pidfile(data_dir: Path) -> tuple[int, int | None] | None:
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    port = None
    with contextlib.suppress(ValueError, IndexError):
        port = int(lines[3])
    return pid, port


def _port_free(port: int) -> bool:
    # SO_REUSEADDR like the postmaster: TIME_WAIT leftovers do not count as "in use".
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _pick_port(exclude: Iterable[int] = ()) -> int:
    excluded = set(exclude)
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(*_PORT_RANGE)
        if port not in excluded and _port_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, offset: int = 0, lines: int = 25) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return "(no log)"
    text = data.decode("utf-8", "replace").rstrip()
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"
