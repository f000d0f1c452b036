"""Following logs for error lines after the resume: each log read from where the last look stopped.

Each log's complete new lines are read and judged by the one log scanner (core.logscan: a file that shrank or
was replaced is read from its start); ``follow_logs`` does it for every configured log (MONITOR_LOG, TRADING_LOG, API_LOG: ``watched_logs``) with
their positions kept as a ``LogState`` (``{path: [offset, inode]}``, stored in the incident's plan and in the
monitoring jobs, so a restarted bot goes on where it stopped).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.logscan import scan

__all__ = ["LogLook", "LogState", "follow_logs", "log_baseline", "watched_logs"]



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
    """The new error lines of every followed log (core.logscan); a log missing from ``state`` is read from where
    it ends now, a log that does not exist (yet) from its start once it appears."""
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
        offset, inode = int(state[key][0] or 0), state[key][1]
        try:
            got = scan(path, kinds=("error",), offset=offset, inode=inode)
        except (FileNotFoundError, NotADirectoryError):
            new_state[key] = [offset, inode]
            per_log[path.name] = 0
            continue
        new_state[key] = [got.offset, got.inode]
        per_log[path.name] = len(got.hits)
        count += len(got.hits)
        lines += [f"{path.name}: {h.text}" if len(paths) > 1 else h.text for h in got.hits[:max_lines]]
    return LogLook(lines[:max_lines], count, per_log, new_state)


def watched_logs(*paths: Path | None) -> list[Path]:
    """The configured logs to follow, each once, in order (MONITOR_LOG, TRADING_LOG, API_LOG)."""
    out: list[Path] = []
    for p in paths:
        if p is not None and Path(p) not in out:
            out.append(Path(p))
    return out
