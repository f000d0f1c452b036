"""Where the cluster lives: project root -> base dir (.local/pg or its fallback target), and the process-wide
flock on .local/localpg.lock (re-entrant within a process)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import threading
from pathlib import Path
from typing import Iterator

from bot.devtools.localpg.common import _SOCKET_PATH_MAX, FALLBACK_PARENT, LocalPGError, log
from bot.devtools.localpg.osuser import _OsUser, _user_can_reach


def _project_root(root: str | os.PathLike | None) -> Path:
    if root is None:
        return Path(__file__).resolve().parents[3]
    return Path(root).resolve()


def _fallback_dir(root: Path) -> Path:
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return FALLBACK_PARENT / f"rollback-bot-pg-{digest}"


def _link_path(root: Path) -> Path:
    return root / ".local" / "pg"


def _socket_too_long(base: Path) -> bool:
    return len(str(base / "run" / ".s.PGSQL.65535").encode()) > _SOCKET_PATH_MAX


def _make_private_dir(path: Path, user: _OsUser) -> None:
    """Create (or validate) a directory that must belong to the server user."""
    try:
        os.mkdir(path, 0o755)
        user.chown(path)
        return
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise LocalPGError(f"{path} exists and is not a directory; refusing to use it")
    if st.st_uid != user.uid:
        raise LocalPGError(f"{path} exists but is not owned by {user.name}; refusing to use it")
    if st.st_mode & 0o022:
        raise LocalPGError(f"{path} is group/other-writable; refusing to use it")


def _existing_base(root: Path) -> Path | None:
    """The cluster's base directory if .local/pg exists (following the symlink), else None."""
    link = _link_path(root)
    if link.is_symlink():
        target = Path(os.readlink(link))
        if not target.is_absolute():
            target = link.parent / target
        return Path(os.path.realpath(target))
    if link.is_dir():
        return Path(os.path.realpath(link))
    if link.exists():
        raise LocalPGError(f"{link} exists and is not a directory")
    return None


def _prepare_base(root: Path, user: _OsUser) -> Path:
    """Create .local/pg (directory or symlink to the fallback directory); return its real path."""
    if not root.is_dir():
        raise LocalPGError(f"project root {root} is not a directory")
    link = _link_path(root)
    base = _existing_base(root)
    if base is None:
        link.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        local_real = Path(os.path.realpath(link.parent))
        reason = None
        if _socket_too_long(local_real / "pg"):
            reason = "the unix-socket path would be too long"
        elif user.switch and not _user_can_reach(user, local_real):
            reason = f"user {user.name} cannot reach {local_real}"
        if reason is None:
            _make_private_dir(link, user)
            base = Path(os.path.realpath(link))
        else:
            base = _fallback_dir(root)
            log.info("%s: keeping the cluster in %s (symlinked from %s)", reason, base, link)
            _make_private_dir(base, user)
            tmp_link = link.with_name(f"pg.tmp{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_link)
            os.symlink(base, tmp_link)
            os.replace(tmp_link, link)
    elif not base.exists():
        # Dangling symlink: the fallback directory was cleaned up (reboot, tmp cleaner).
        log.info("%s is gone (tmp cleaned?): creating a new, empty cluster there", base)
        base.parent.mkdir(parents=True, exist_ok=True)
        _make_private_dir(base, user)
    elif user.switch:
        os.chown(base, user.uid, user.gid)
        if not _user_can_reach(user, base):
            raise LocalPGError(
                f"user {user.name} cannot reach the cluster in {base}; make its parent "
                f"directories traversable (chmod o+x) or remove {link} to let it be recreated"
            )
    if _socket_too_long(base):
        raise LocalPGError(f"socket directory {base / 'run'} is too long for a unix socket")
    run = base / "run"
    run.mkdir(mode=0o755, exist_ok=True)
    user.chown(run)
    return base


_lock_guard = threading.RLock()
_lock_fds: dict[str, list[int]] = {}


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    key = str(root)
    with _lock_guard:
        entry = _lock_fds.get(key)
        if entry is None:
            lock_dir = root / ".local"
            lock_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(lock_dir / "localpg.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            entry = _lock_fds[key] = [fd, 0]
        entry[1] += 1
        try:
            yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del _lock_fds[key]
                os.close(entry[0])
