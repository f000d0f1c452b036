"""The one way the bot writes a file or lands a folder: readers see the old one or the complete new one, never a
half-written one, and never one they may no longer read.

``atomic_write``: a temporary file in the destination's own folder (``mkstemp``: same file system, mode 0600,
so nobody reads it half-written), filled, given the owner, group and mode of the file it replaces
(``core.fileattrs``: of a sibling or the folder when there is none), fsync'd, then ``os.replace``d over the
destination (a name is replaced, a link is never followed) and the folder fsync'd. ``seal_folder`` does the same
for a folder filled under a temporary name: every entry and the folder get their rights and are fsync'd, then
one rename gives the folder its final name. Model files (core.modelio), new backups, retrained models
(core.retrain) and incident reports (core.report) are all written this way.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from core.fileattrs import Attrs, apply, file_attrs
from core.fileguard import UnsafeFile

__all__ = ["atomic_write", "fsync_dir", "seal_folder"]


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new name in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(dst: Path, fill: Callable[[BinaryIO], object] | bytes, *, attrs: Attrs | None = None,
                 refuse_symlink: bool = False) -> None:
    """Write ``dst`` atomically (see the module docstring). ``fill`` writes the content into the open temporary
    file (or is the bytes themselves); ``attrs`` defaults to ``file_attrs(dst)``. With ``refuse_symlink`` a
    symbolic link at ``dst`` is an ``UnsafeFile`` and nothing is replaced."""
    dst = Path(dst)
    want = attrs if attrs is not None else file_attrs(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(fill, bytes):
                out.write(fill)
            else:
                fill(out)
            out.flush()
            apply(out.fileno(), want, name=str(dst))  # before the final name shows it
            os.fsync(out.fileno())
        if refuse_symlink and dst.is_symlink():
            raise UnsafeFile(f"{dst.name} is a symbolic link")
        os.replace(tmp, dst)  # replaces a name, never follows a link
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(dst.parent)


def seal_folder(tmp: Path, final: Path, *, attrs_of: Callable[[str], Attrs], folder: Attrs) -> None:
    """Give every entry of the filled temporary folder ``tmp`` its rights (``attrs_of(name)``) and ``tmp`` itself
    ``folder``'s, fsync them all, then rename ``tmp`` to ``final`` (in the same parent) and fsync the parent.
    Entries are opened without following links. The caller removes ``tmp`` if this raises."""
    for entry in sorted(os.listdir(tmp)):
        fd = os.open(Path(tmp) / entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            apply(fd, attrs_of(entry), name=str(Path(final) / entry))
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        apply(fd, folder, name=str(final))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, final)
    fsync_dir(Path(final).parent)
