"""Prometheus multiprocess mode for `serve` and its work process.

Rollbacks, steps and most Slack calls happen in the work process (bot/workproc.py), while `/metrics` is served
by `serve`. prometheus_client's multiprocess mode joins them: each process writes its metrics to files in
``PROMETHEUS_MULTIPROC_DIR`` and `/metrics` sums every process's files (``MultiProcessCollector``).

prometheus_client decides on multiprocess mode when it is first imported, from the environment, so ``begin()``
runs at the top of `rollback-bot serve`, before anything imports it: a fresh, empty directory per start, named
in the environment, which the work process inherits. ``end()`` removes it when serve stops; ``begin()`` also
removes what a serve that was killed left behind. When a work process dies, ``mark_dead`` does
prometheus_client's bookkeeping for it (its counters stay: a counter never goes back).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from core.process import pid_exists

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "rollback-bot-metrics-"


def _remove_orphans(parent: Path) -> None:
    """Directories of serve processes that no longer exist (killed before they could clean up)."""
    for path in parent.glob(PREFIX + "*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def begin() -> Path:
    """A fresh directory for this serve's metrics, set in the environment (for this process and its children)."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the multiprocess directory was set")
    parent = Path(tempfile.gettempdir())
    _remove_orphans(parent)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent))
    os.environ[ENV] = str(path)
    return path


def end(path: Path) -> None:
    if os.environ.get(ENV) == str(path):
        del os.environ[ENV]
    shutil.rmtree(path, ignore_errors=True)


def mark_dead(pid: int) -> None:
    """A process that wrote metrics here has exited (no-op outside multiprocess mode)."""
    path = os.environ.get(ENV)
    if not path:
        return
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, path)


def active() -> str | None:
    """The directory when this process runs in multiprocess mode."""
    return os.environ.get(ENV) or None
