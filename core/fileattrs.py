"""Owner, group and mode of the model files the bot writes.

The platform may read its models under another account, so a file the bot writes keeps the owner, group and
mode of the file it replaces, and a new folder those of its siblings. The bot writes through temporary files
(``mkstemp``: mode 0600, ``mkdtemp``: 0700, owned by the bot's user) and gives each its final owner, group and
mode *before* it appears under its final name: nobody ever sees the final name with the temporary's rights.

What a process may change (Linux):

* root (CAP_CHOWN) gives the file any owner and group;
* any other user keeps the file its own, and may give it a group it is a member of;
* the owner may always set the mode.

So a bot that does not run as root writes files owned by its own user, with the group and mode of the files
they replace. When it cannot give even the group (it is not a member) while the group has rights that others
lack, or cannot give the owner while only the owner could read the file, the platform's account would lose
access: the write is refused (``RightsNotKept``) and the file under the final name is left as it was.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.errors import RightsNotKept


@dataclass(frozen=True)
class Attrs:
    """What a written file or folder must have: permission bits (``S_IMODE``), owner and group ids."""

    mode: int
    uid: int
    gid: int

    @classmethod
    def of(cls, st: os.stat_result) -> Attrs:
        return cls(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)


def _user(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


def _group(gid: int) -> str:
    try:
        import grp

        return grp.getgrgid(gid).gr_name
    except (KeyError, ImportError):
        return str(gid)


def _regular(path: Path) -> os.stat_result | None:
    """The stat of ``path`` (a symbolic link followed: the rights readers meet) if it is a regular file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def file_attrs(dst: Path, *, siblings: Iterable[Path] = ()) -> Attrs:
    """The attributes of a file written at ``dst``: those of the file it replaces; when there is none, those of
    the first sibling file that exists; else the folder's owner and group with the folder's mode less its
    execute and special bits (a 0750 folder gives 0640)."""
    for candidate in (dst, *siblings):
        st = _regular(candidate)
        if st is not None:
            return Attrs.of(st)
    folder = Attrs.of(os.stat(dst.parent))
    return Attrs(folder.mode & 0o666, folder.uid, folder.gid)


def folder_attrs(parent: Path, *, like: Iterable[Path] = ()) -> Attrs:
    """The attributes of a new folder in ``parent``: those of the first real folder (not a symbolic link) in
    ``like``, else those of ``parent`` itself."""
    for candidate in like:
        try:
            st = os.lstat(candidate)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            return Attrs.of(st)
    return Attrs.of(os.stat(parent))


def _member_of(gid: int) -> bool:
    return gid == os.getegid() or gid in os.getgroups()


def apply(fd: int, want: Attrs, *, name: str) -> None:
    """Give the open file or folder ``fd`` (the bot's own temporary) ``want``'s owner and group where this
    process may, then its mode; RightsNotKept when what could not be given would cost readers their access.
    ``name`` is the final name, for the message."""
    have = os.fstat(fd)
    uid = want.uid if want.uid != have.st_uid else -1
    gid = want.gid if want.gid != have.st_gid else -1
    if (uid != -1 or gid != -1) and os.geteuid() == 0:
        try:
            os.fchown(fd, uid, gid)
            uid = gid = -1
        except PermissionError:  # root without CAP_CHOWN (a user namespace): as any other user below
            pass
    if gid != -1 and _member_of(want.gid):
        try:
            os.fchown(fd, -1, want.gid)
        except PermissionError:
            pass
    os.fchmod(fd, want.mode)  # after chown: chown clears the set-id bits
    got = Attrs.of(os.fstat(fd))
    if got == want:
        return
    mode = want.mode
    group_only = (mode >> 3) & 0o7 & ~mode & 0o7  # rights the group has and others lack
    owner_only_read = mode & stat.S_IRUSR and not mode & (stat.S_IRGRP | stat.S_IROTH)
    if got.gid != want.gid and group_only:
        raise RightsNotKept(
            f"{name} must belong to group {_group(want.gid)} (mode {mode:04o}) like the file it replaces, and the"
            f" bot's user {_user(os.geteuid())} may not give it that group (run the bot as root or as a member of"
            f" {_group(want.gid)}), so it was not written."
        )
    if got.uid != want.uid and owner_only_read:
        raise RightsNotKept(
            f"{name} is readable only by its owner {_user(want.uid)} (mode {mode:04o}), and the bot's user"
            f" {_user(os.geteuid())} may not give a file to another user (run the bot as root or as"
            f" {_user(want.uid)}), so it was not written."
        )
