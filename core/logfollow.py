"""Following logs for error lines after the resume: each log read from where the last look stopped.

``scan_log`` reads one log's complete new lines (a file that shrank or was replaced is read from its start);
``follow_logs`` does it for every configured log (MONITOR_LOG, TRADING_LOG, API_LOG: ``watched_logs``) with
their positions kept as a ``LogState`` (``{path: [offset, inode]}``, stored in the incident's plan and in the
monitoring jobs, so a restarted bot goes on where it stopped).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LogLook", "LogState", "follow_logs", "log_baseline", "scan_log", "watched_logs"]

_ERROR_LINE = re.compile(rb"\b(ERROR|CRITICAL|FATAL)\b|Traceback \(most recent call last\)")
_MAX_READ = 16 << 20  # at most 16 MiB of new log per look


LogState = dict[str, list]  # str(path) -> [offset, inode]: how far each followed log was read


@dataclass(frozen=True)
class LogLook:
    """New error lines in every followed log since the last look."""

    lines: list[str]                 # the first max_lines of them, each prefixed with its log's name
    count: int
    per_log: dict[str, int]          # log file name -> error lines
    state: LogState

    def describe(self) -> str | None:
        if not self.count:
            return None
        where = ", ".join(f"{n} in {name}" for name, n in self.per_log.items() if n)
        return f"{self.count} error line(s) since the last look ({where}), first: {self.lines[0]}"


def log_baseline(paths: list[Path]) -> LogState:
    """Where each log ends now: only lines written after this are looked at."""
    state: LogState = {}
    for path in paths:
        try:
            st = os.stat(path)
            state[str(path)] = [st.st_size, st.st_ino]
        except OSError:
            state[str(path)] = [0, None]  # not there yet: read from its start once it appears
    return state


def follow_logs(paths: list[Path], state: LogState, *, max_lines: int = 20) -> LogLook:
    """``scan_log`` over every followed log; a log missing from ``state`` is read from where it ends now."""
    new_state: LogState = {}
    lines: list[str] = []
    per_log: dict[str, int] = {}
    count = 0
    for path in paths:
        key = str(path)
        if key not in state:
            new_state.update(log_baseline([path]))
            per_log[path.name] = 0
            continue
        offset, inode = state[key][0], state[key][1]
        shown, n, offset, inode = scan_log(path, int(offset or 0), inode=inode, max_lines=max_lines)
        new_state[key] = [offset, inode]
        per_log[path.name] = n
        count += n
        lines += [f"{path.name}: {line}" if len(paths) > 1 else line for line in shown]
    return LogLook(lines[:max_lines], count, per_log, new_state)


def watched_logs(*paths: Path | None) -> list[Path]:
    """The configured logs to follow, each once, in order (MONITOR_LOG, TRADING_LOG, API_LOG)."""
    out: list[Path] = []
    for p in paths:
        if p is not None and Path(p) not in out:
            out.append(Path(p))
    return out


def scan_log(path: Path | None, offset: int, *, inode: int | None = None,
             max_lines: int = 20) -> tuple[list[str], int, int, int | None]:
    """Error lines appended to ``path`` after byte ``offset``: ``(first max_lines lines, how many, new offset,
    inode)``. Only complete lines are read; a file that shrank or was replaced is read from the start."""
    if path is None:
        return [], 0, offset, inode
    try:
        st = os.stat(path)
    except OSError:
        return [], 0, offset, inode
    if st.st_size < offset or (inode is not None and st.st_ino != inode):
        offset = 0  # rotated
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(_MAX_READ)
    end = data.rfind(b"\n")
    if end < 0:
        return [], 0, offset, st.st_ino
    lines = data[: end + 1].splitlines()
    hits = [ln for ln in lines if _ERROR_LINE.search(ln)]
    shown = [ln.decode("utf-8", "replace").strip()[:300] for ln in hits[:max_lines]]
    return shown, len(hits), offset + end + 1, st.st_ino
