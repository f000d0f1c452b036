"""The one log scanner: which lines of a log say error, warning or NaN, read either from where the last look
stopped (monitoring follows the platform's logs after a resume, core.logfollow) or from a file's tail (the
diagnostics read the training log and the API log, core.diagnostics).

A line is an **error** line when it has the word error, critical, fatal, exception or traceback in any case
(``ERROR``, ``level=error``, ``Traceback (most recent call last)``), or an exception's name (``ValueError``,
``XGBoostError``, ``RuntimeException``); ``errors=0`` or ``error_rate`` do not count. A **warning** line has
the word warn, warning or warnings, or a warning's name (``UserWarning``). A **nan** line has the word nan
(``nanosecond`` does not count).

``scan`` with ``offset``: only the complete lines after byte ``offset`` (a file that shrank or whose inode
changed was rotated and is read from its start), at most ``max_bytes``. Without it: the last ``tail_bytes`` of
the file (its first, partial line skipped), the last line even without its newline.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KINDS", "LogHit", "LogScan", "kinds_of", "scan"]

KINDS = ("error", "warning", "nan")
PATTERNS = {
    "error": re.compile(r"(?i:\b(?:error|critical|fatal|exception|traceback)\b)|[A-Za-z0-9](?:Error|Exception)\b"),
    "warning": re.compile(r"(?i:\bwarn(?:ing|ings)?\b)|[A-Za-z0-9]Warning\b"),
    "nan": re.compile(r"(?i:\bnan\b)"),
}
MAX_LINE = 300  # characters of a line kept
MAX_READ = 16 << 20  # bytes read at most per look when following


def kinds_of(line: str, kinds: tuple[str, ...] = KINDS) -> tuple[str, ...]:
    """Which of ``kinds`` the line is (see the module docstring)."""
    return tuple(k for k in kinds if PATTERNS[k].search(line))


@dataclass(frozen=True)
class LogHit:
    number: int              # 1-based line number in the part read
    kinds: tuple[str, ...]
    text: str                # stripped, at most MAX_LINE characters


@dataclass(frozen=True)
class LogScan:
    hits: list[LogHit]
    counts: dict[str, int]
    lines: int               # lines read
    offset: int              # where the read stopped (following: after the last complete line)
    inode: int | None
    truncated: bool = False  # only the tail of the file was read


def _read(path: Path, offset: int | None, inode: int | None, tail_bytes: int | None,
          max_bytes: int) -> tuple[bytes, int, int, bool]:
    """``(data, start offset, inode, truncated)``."""
    st = os.stat(path)
    with open(path, "rb") as fh:
        if offset is not None:
            if st.st_size < offset or (inode is not None and st.st_ino != inode):
                offset = 0  # rotated
            fh.seek(offset)
            data = fh.read(max_bytes)
            end = data.rfind(b"\n")
            return (data[: end + 1] if end >= 0 else b""), offset, st.st_ino, False
        truncated = tail_bytes is not None and st.st_size > tail_bytes
        start = 0
        if truncated:
            fh.seek(st.st_size - tail_bytes)
            fh.readline()  # skip the partial first line
            start = fh.tell()
        return fh.read(), start, st.st_ino, truncated


def scan(path: Path, *, kinds: tuple[str, ...] = KINDS, offset: int | None = None, inode: int | None = None,
         tail_bytes: int | None = None, max_bytes: int = MAX_READ) -> LogScan:
    """The lines of ``path`` that are any of ``kinds``, read as the module docstring says. OSError (a missing or
    unreadable file) is the caller's to report."""
    data, start, ino, truncated = _read(Path(path), offset, inode, tail_bytes, max_bytes)
    hits: list[LogHit] = []
    counts = {k: 0 for k in KINDS}
    n = 0
    for n, raw in enumerate(data.splitlines(), start=1):
        line = raw.decode("utf-8", "replace")
        hit = kinds_of(line, kinds)
        if hit:
            for k in hit:
                counts[k] += 1
            hits.append(LogHit(n, hit, line.strip()[:MAX_LINE]))
    return LogScan(hits, counts, n, start + len(data), ino, truncated)
