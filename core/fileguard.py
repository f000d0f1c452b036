"""Reading model files that people and other programs can put anything into.

Backup folders are filled by people and scripts the bot does not control, so a ``model.json`` may be a
symbolic link to a secret, a FIFO (reading it blocks until someone writes), a device (``/dev/zero`` never
ends) or simply huge. Before any byte of such a file is read:

* the path is looked at with ``os.lstat`` (never followed): anything but a regular file is refused, and a FIFO
  is never opened;
* it is opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked again on the open descriptor (the same inode,
  still a regular file), so a swap between the look and the open is caught and cannot block;
* a file over its size limit is refused before it is read, and one that grows past it while being read too.

The refusal is an ``UnsafeFile``, an ``OSError`` whose ``strerror`` is a sentence ("it is a FIFO, not a regular
file"), so callers that already report unreadable files report these the same way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

DEFAULT_MAX_MODEL_BYTES = 512 * 1024 * 1024  # MAX_MODEL_BYTES: a model.json larger than this is refused
MAX_METADATA_BYTES = 16 * 1024 * 1024  # a metadata.json is a few kilobytes; far larger is not a metadata file


class UnsafeFile(OSError):
    """A model file that is not a plain regular file of a sane size; ``strerror`` says what it is."""


def describe(mode: int) -> str:
    """What kind of file ``mode`` (an ``st_mode``) is, for a sentence."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def size_text(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def _limit(max_bytes: int, setting: str | None) -> str:
    return f"the limit of {size_text(max_bytes)}" + (f" ({setting})" if setting else "")


def _check(st: os.stat_result, path: Path, max_bytes: int | None, setting: str | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(errno.EINVAL, f"it is {describe(st.st_mode)}, not a regular file", str(path))
    if max_bytes is not None and st.st_size > max_bytes:
        raise UnsafeFile(errno.EFBIG, f"it is {size_text(st.st_size)}, over {_limit(max_bytes, setting)}",
                         str(path))


def check_regular(path: Path, *, follow: bool = False, max_bytes: int | None = None,
                  setting: str | None = None) -> os.stat_result:
    """``path``'s stat if it is a regular file of at most ``max_bytes``; else UnsafeFile (FileNotFoundError when
    it does not exist). ``follow``: a symbolic link to a regular file is accepted (the production files).
    ``setting``: the name of the setting that holds ``max_bytes``, for the message."""
    st = os.stat(path) if follow else os.lstat(path)
    _check(st, Path(path), max_bytes, setting)
    return st


@contextlib.contextmanager
def open_regular(path: Path, *, follow: bool = False, max_bytes: int | None = None,
                 setting: str | None = None) -> Iterator[BinaryIO]:
    """Open ``path`` for reading (unbuffered) after the checks above."""
    st = check_regular(path, follow=follow, max_bytes=max_bytes, setting=setting)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a symbolic link after the look
            raise UnsafeFile(errno.ELOOP, "it is a symbolic link, not a regular file", str(path)) from None
        raise
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise UnsafeFile(errno.EAGAIN, "it was replaced while being opened", str(path))
        _check(now, Path(path), max_bytes, setting)
        fh = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh  # type: ignore[misc]


def read_regular(path: Path, *, follow: bool = False, max_bytes: int | None = None,
                 setting: str | None = None) -> bytearray:
    """The bytes of ``path`` (opened as ``open_regular`` does), at most ``max_bytes`` of them."""
    with open_regular(path, follow=follow, max_bytes=max_bytes, setting=setting) as fh:
        expected = os.fstat(fh.fileno()).st_size
        if max_bytes is not None:
            expected = min(expected, max_bytes)
        buf = bytearray(expected + 1)  # one byte more: a file that grew since the look is noticed
        n = 0
        while True:
            if n == len(buf):
                if max_bytes is not None and n > max_bytes:
                    raise UnsafeFile(errno.EFBIG, f"it grew past {_limit(max_bytes, setting)} while being read",
                                     str(path))
                buf.extend(bytes(len(buf)))
            with memoryview(buf) as view:
                got = fh.readinto(view[n:])
            if not got:
                break
            n += got
        if max_bytes is not None and n > max_bytes:
            raise UnsafeFile(errno.EFBIG, f"it grew past {_limit(max_bytes, setting)} while being read", str(path))
        del buf[n:]
        return buf
