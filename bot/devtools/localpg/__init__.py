"""Self-provisioned private PostgreSQL cluster for ``make test``, ``make demo`` and CI.

The project never relies on a system PostgreSQL service.  Instead it keeps a
private cluster of its own under the project root::

    .local/pg/data          the cluster (initdb output)
    .local/pg/run           unix-socket directory
    .local/pg/postgres.log  server log (stdout/stderr of the postmaster)
    .local/pg/port          the TCP port on 127.0.0.1, chosen once and reused
    .local/localpg.lock     flock() taken while ensuring/starting/stopping

The project root is the parent of the ``bot/`` package unless a ``root`` is
given.  Usage from a Makefile / CI script::

    DATABASE_URL=$(python -m bot.devtools.localpg ensure)      # prints exactly one line
    python -m bot.devtools.localpg ensure --db rollback_bot --db rollback_bot_test
    python -m bot.devtools.localpg status | url [--db NAME] | stop [--mode fast] | restart | destroy

and from Python (tests)::

    cluster = localpg.ensure(databases=("rollback_bot",))
    cluster.url("rollback_bot")     # postgresql://rollback_bot@127.0.0.1:PORT/rollback_bot
    cluster.restart()               # stop(mode="fast") + start(), same port

``ensure()`` is idempotent: it installs PostgreSQL if needed (root only), runs
initdb if there is no cluster yet, starts the server if it is not running,
waits until it accepts connections, and creates the ordinary login role
``rollback_bot`` (NOSUPERUSER CREATEDB NOCREATEROLE) and the requested
databases owned by it.  Running it again while the server runs only re-checks
the role and databases.

Authentication is ``trust`` over the unix socket and 127.0.0.1 only, and the
server listens on 127.0.0.1 only: this is a development/test cluster, any
local user can connect to it.  Durability settings are PostgreSQL's defaults
(fsync, synchronous_commit and full_page_writes on) because the product tests
crash safety against it; only ``initdb --no-sync`` is used (it skips the final
flush of the freshly created files, not the server's own durability).  The
managed settings live in ``data/rollback_bot.conf`` (rewritten at every
start, included from postgresql.conf).

The server is started detached (own session, stdin from /dev/null, output to
the log file), so it keeps running after ``make`` exits and does not get the
terminal's SIGINT; ``stop`` sends the postmaster SIGTERM/SIGINT/SIGQUIT for
smart/fast/immediate shutdown and waits until it has exited.

Root versus ordinary user
-------------------------
initdb, pg_ctl and postgres refuse to run as root.

* As an ordinary user, everything (initdb, postgres) runs as that user and
  ``.local/pg`` is owned by it.
* As root, initdb and the postmaster run as the unprivileged ``postgres``
  system user (override with ``ROLLBACK_BOT_PG_OS_USER``), started directly by
  ``subprocess`` with ``user=``/``group=``/``extra_groups=`` (no runuser/su,
  which would not forward signals).  ``.local/pg`` and its ``run`` directory are
  chowned to that user.  That user must be able to reach the directory: the
  project may live under ``/root`` (mode 700) or in pytest's
  ``/tmp/pytest-of-root`` (mode 700).  So, when ``.local/pg`` is first created,
  the module checks (by running ``test -x`` as that user) whether ``.local``
  is reachable; if not, the cluster lives in the *fallback directory*
  ``/tmp/rollback-bot-pg-<first 16 hex digits of sha256(real project root)>/``
  (owned by the server user, mode 755) and ``.local/pg`` becomes a symlink to
  it.  The same fallback is used, for root or not, when the socket path
  ``.local/pg/run/.s.PGSQL.NNNNN`` would exceed the 107-byte unix-socket limit.
  The symlink is the record: every later call follows it, and PostgreSQL is
  only ever given resolved real paths.  If the fallback directory vanished
  (``/tmp`` cleaned, reboot), ``ensure()`` creates a fresh empty cluster there.
  A pre-existing fallback directory that is a symlink, not owned by the
  expected user, or group/other-writable is refused.

If the PostgreSQL server binaries are missing and we are root, Debian's
``postgresql`` package is installed with apt-get (the system cluster that the
package may create is never used and never started by this module).  Not root
and missing: a clear error and exit status 1.  Binaries are looked for in
``$ROLLBACK_BOT_PG_BINDIR``, the bindir matching an existing cluster's major
version, ``pg_config --bindir``, the highest ``/usr/lib/postgresql/*/bin``,
then ``PATH``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import logging
import os
import pwd
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Iterable, Iterator

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

__all__ = [
    "DEFAULT_DATABASES",
    "HOST",
    "ROLE",
    "SUPERUSER",
    "LocalCluster",
    "LocalPGError",
    "cluster",
    "ensure",
    "find_bindir",
    "main",
]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
ROLE = "rollback_bot"
SUPERUSER = "postgres"
DEFAULT_DATABASES: tuple[str, ...] = ("rollback_bot",)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0
FALLBACK_PARENT = Path("/tmp")
MANAGED_CONF = "rollback_bot.conf"

_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_PORT_RANGE = (20000, 32000)  # below Linux's default ephemeral range (32768-60999)
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_SHUTDOWN_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_REQUIRED_BINARIES = ("initdb", "postgres")

# Postmasters started by this process: kept so they can be reaped (a stopped
# child would otherwise linger as a zombie and look alive).
_children: dict[int, subprocess.Popen] = {}


class LocalPGError(RuntimeError):
    """The private cluster could not be provisioned, started or stopped."""


# --------------------------------------------------------------------------
# OS user that owns and runs the cluster


@dataclasses.dataclass(frozen=True)
class _OsUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    switch: bool  # we are root and must switch to this user for initdb/postgres

    def popen_kwargs(self) -> dict:
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        env["LANG"] = "C"
        if self.switch:
            env.update(HOME=self.home or "/", USER=self.name, LOGNAME=self.name)
        return env

    def chown(self, path: Path) -> None:
        if self.switch:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)


def _server_user() -> _OsUser:
    euid = os.geteuid()
    if euid != 0:
        try:
            pw = pwd.getpwuid(euid)
            name, home = pw.pw_name, pw.pw_dir
        except KeyError:  # e.g. an arbitrary uid in a container
            name, home = str(euid), os.environ.get("HOME", "/")
        return _OsUser(name, euid, os.getegid(), (), home, False)
    name = os.environ.get("ROLLBACK_BOT_PG_OS_USER") or "postgres"
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise LocalPGError(
            f"running as root, but there is no {name!r} system user to run PostgreSQL as "
            "(initdb/postgres refuse to run as root); install the 'postgresql' package "
            "or set ROLLBACK_BOT_PG_OS_USER to an unprivileged user"
        ) from None
    if pw.pw_uid == 0:
        raise LocalPGError(f"OS user {name!r} is root; PostgreSQL must run unprivileged")
    groups = tuple(os.getgrouplist(name, pw.pw_gid))
    return _OsUser(name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir, True)


def _user_can_reach(user: _OsUser, path: Path) -> bool:
    """True if ``user`` can traverse ``path`` (search permission on every component)."""
    if not user.switch:
        return os.access(path, os.X_OK)
    result = subprocess.run(
        ["/bin/sh", "-c", 'test -d "$1" && test -x "$1"', "sh", str(path)],
        cwd="/",
        env=user.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **user.popen_kwargs(),
    )
    return result.returncode == 0


# --------------------------------------------------------------------------
# Binaries


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


# --------------------------------------------------------------------------
# Layout: project root -> base dir (.local/pg or its fallback target)


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


# --------------------------------------------------------------------------
# Locking (process-wide flock on .local/localpg.lock, re-entrant within a process)

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


# --------------------------------------------------------------------------
# Processes and ports


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
    return _pid_exists(pid)


def _pid_exists(pid: int) -> bool:
    """True if the pid exists at all, zombies included (what the postmaster itself checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


# --------------------------------------------------------------------------
# The cluster


@dataclasses.dataclass
class LocalCluster:
    """A private PostgreSQL cluster of one project root (see the module docstring)."""

    root: Path
    base_dir: Path
    port: int | None
    default_db: str = DEFAULT_DATABASES[0]
    host: str = HOST
    role: str = ROLE
    superuser: str = SUPERUSER
    bindir: Path | None = None

    # -- layout ------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "run"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def port_file(self) -> Path:
        return self.base_dir / "port"

    def is_initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    # -- URLs --------------------------------------------------------------
    def _require_port(self) -> int:
        if self.port is None:
            raise LocalPGError(f"no cluster under {self.root} yet: run `python -m bot.devtools.localpg ensure`")
        return self.port

    def url(self, db: str | None = None) -> str:
        """Connection URL for the ordinary ``rollback_bot`` role over TCP 127.0.0.1."""
        return self._url(self.role, db or self.default_db)

    def superuser_url(self, db: str = "postgres") -> str:
        """Connection URL for the ``postgres`` superuser over TCP 127.0.0.1."""
        return self._url(self.superuser, db)

    def _url(self, user: str, db: str) -> str:
        port = self._require_port()
        quote = urllib.parse.quote
        return f"postgresql://{quote(user, safe='')}@{self.host}:{port}/{quote(db, safe='')}"

    def admin_connect(self, db: str = "postgres", *, connect_timeout: int = 5) -> psycopg.Connection:
        """Autocommit superuser connection over the unix socket."""
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self._require_port(),
            user=self.superuser,
            dbname=db,
            connect_timeout=connect_timeout,
            autocommit=True,
        )

    # -- state -------------------------------------------------------------
    def pid(self) -> int | None:
        """PID of the running postmaster, or None."""
        info = _read_pidfile(self.data_dir)
        if info is None or not _is_our_postmaster(info[0], self.data_dir):
            return None
        return info[0]

    def is_running(self) -> bool:
        """True if the postmaster is alive and accepts connections."""
        info = _read_pidfile(self.data_dir)
        if info is None or not _is_our_postmaster(info[0], self.data_dir):
            return False
        if info[1] is not None:
            self.port = info[1]
        return self._accepts_connections()

    def _accepts_connections(self) -> bool:
        if self.port is None:
            return False
        try:
            with self.admin_connect(connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    # -- lifecycle ---------------------------------------------------------
    def start(self, *, timeout: float = START_TIMEOUT) -> LocalCluster:
        """Start the server (if not running) on the same port and wait until it accepts connections."""
        with _locked(self.root):
            if not self.is_initialized():
                raise LocalPGError(f"no cluster in {self.data_dir}: use ensure()")
            _start(self, _server_user(), timeout, allow_port_change=self.port is None)
        return self

    def stop(self, mode: str = "fast", *, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop the server; returns False if it was not running."""
        if mode not in _SHUTDOWN_SIGNALS:
            raise ValueError(f"mode must be one of {sorted(_SHUTDOWN_SIGNALS)}")
        with _locked(self.root):
            return _stop(self, mode, timeout)

    def restart(self, mode: str = "fast", *, timeout: float = START_TIMEOUT) -> LocalCluster:
        """stop(mode) then start(), keeping the same port."""
        with _locked(self.root):
            self.stop(mode)
            self.start(timeout=timeout)
        return self

    def destroy(self) -> None:
        """Stop the server (immediate) and delete the cluster, including a fallback directory."""
        with _locked(self.root):
            if self.data_dir.exists():
                _stop(self, "immediate", STOP_TIMEOUT)
            link = _link_path(self.root)
            shutil.rmtree(self.base_dir, ignore_errors=True)
            if link.is_symlink():
                link.unlink()
            elif link.is_dir():
                shutil.rmtree(link, ignore_errors=True)

    # -- databases ---------------------------------------------------------
    def create_database(
        self, name: str, *, template: str | None = None, exist_ok: bool = True
    ) -> str:
        """Create database ``name`` owned by ``rollback_bot``; returns its URL."""
        with self.admin_connect() as conn:
            _create_database(conn, name, template=template, exist_ok=exist_ok)
        return self.url(name)

    def drop_database(self, name: str, *, missing_ok: bool = True) -> None:
        """Drop database ``name``, terminating its connections (WITH (FORCE))."""
        if_exists = sql.SQL("IF EXISTS ") if missing_ok else sql.SQL("")
        with self.admin_connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE {}{} WITH (FORCE)").format(if_exists, sql.Identifier(name))
            )


def _create_database(
    conn: psycopg.Connection, name: str, *, template: str | None = None, exist_ok: bool = True
) -> bool:
    row = conn.execute(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (name,)
    ).fetchone()
    if row is not None:
        if not exist_ok:
            raise LocalPGError(f"database {name!r} already exists")
        if row[0] != ROLE:
            conn.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(ROLE))
            )
        return False
    query = sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(ROLE))
    if template:
        query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
    try:
        conn.execute(query)
    except pg_errors.DuplicateDatabase:
        if not exist_ok:
            raise LocalPGError(f"database {name!r} already exists") from None
        return False
    log.info("created database %s", name)
    return True


def _provision(cl: LocalCluster, databases: Iterable[str]) -> None:
    with cl.admin_connect() as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = %s",
            (ROLE,),
        ).fetchone()
        attrs = sql.SQL("LOGIN NOSUPERUSER CREATEDB NOCREATEROLE")
        if row is None:
            try:
                conn.execute(sql.SQL("CREATE ROLE {} {}").format(sql.Identifier(ROLE), attrs))
                log.info("created role %s", ROLE)
            except pg_errors.DuplicateObject:
                row = (None,)
        if row is not None and tuple(row) != (False, True, False, True):
            conn.execute(sql.SQL("ALTER ROLE {} {}").format(sql.Identifier(ROLE), attrs))
        for name in databases:
            _create_database(conn, name)


def _read_port(base: Path) -> int | None:
    try:
        port = int((base / "port").read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def _write_port(cl: LocalCluster, user: _OsUser) -> None:
    tmp = cl.port_file.with_name(f"port.tmp{os.getpid()}")
    tmp.write_text(f"{cl.port}\n")
    user.chown(tmp)
    os.replace(tmp, cl.port_file)


def _run_as(user: _OsUser, cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd,
        cwd=str(cwd),
        env=user.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        **user.popen_kwargs(),
    )


def _initdb(cl: LocalCluster, user: _OsUser) -> bool:
    """Create the cluster if there is none; returns True if it did."""
    if cl.is_initialized():
        return False
    if cl.data_dir.exists():
        if any(cl.data_dir.iterdir()):
            raise LocalPGError(f"{cl.data_dir} exists but is not a PostgreSQL cluster; remove it")
        cl.data_dir.rmdir()
    assert cl.bindir is not None
    staging = cl.base_dir / "data.init"  # renamed to data/ once complete, so data/ is never half-made
    shutil.rmtree(staging, ignore_errors=True)
    log.info("initialising PostgreSQL cluster in %s (as OS user %s)", cl.data_dir, user.name)
    cmd = [
        str(cl.bindir / "initdb"),
        "-D", str(staging),
        "-A", "trust",
        "-U", SUPERUSER,
        "-E", "UTF8",
        "--locale=C",
        "--no-sync",
    ]
    result = _run_as(user, cmd, cl.base_dir, timeout=300)
    with open(cl.log_file, "a") as fh:
        fh.write(f"---- initdb ----\n{result.stdout}{result.stderr}")
    user.chown(cl.log_file)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise LocalPGError(f"initdb failed (exit {result.returncode}):\n{tail}")
    hba = staging / "pg_hba.conf"
    hba.write_text(
        "# Managed by bot/devtools/localpg.py: private development/test cluster.\n"
        "# trust over the unix socket and 127.0.0.1 only (the server listens on 127.0.0.1 only).\n"
        "# TYPE  DATABASE     USER  ADDRESS        METHOD\n"
        "local   all          all                  trust\n"
        "host    all          all   127.0.0.1/32   trust\n"
        "local   replication  all                  trust\n"
        "host    replication  all   127.0.0.1/32   trust\n"
    )
    with open(staging / "postgresql.conf", "a") as fh:
        fh.write(f"\n# Managed settings (port, sockets, ...), rewritten at every start.\ninclude '{MANAGED_CONF}'\n")
    os.rename(staging, cl.data_dir)
    return True


def _write_managed_conf(cl: LocalCluster, user: _OsUser) -> None:
    def q(value: object) -> str:
        return "'" + str(value).replace("'", "''") + "'"

    path = cl.data_dir / MANAGED_CONF
    tmp = path.with_name(MANAGED_CONF + ".tmp")
    tmp.write_text(
        "# Managed by bot/devtools/localpg.py and rewritten at every start: do not edit.\n"
        f"listen_addresses = {q(HOST)}\n"
        f"port = {cl.port}\n"
        f"unix_socket_directories = {q(cl.socket_dir)}\n"
        "max_connections = 200\n"
    )
    user.chown(tmp)
    os.replace(tmp, path)


def _remove_stale_socket_locks(cl: LocalCluster) -> None:
    """Remove socket lock files left in our private socket dir by a postmaster that is gone."""
    for lock in cl.socket_dir.glob(".s.PGSQL.*.lock"):
        try:
            pid = int(lock.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            continue
        if not _is_our_postmaster(pid, cl.data_dir):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            with contextlib.suppress(FileNotFoundError):
                lock.with_suffix("").unlink()  # the socket itself


def _rotate_log(cl: LocalCluster) -> None:
    with contextlib.suppress(OSError):
        if cl.log_file.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(cl.log_file, cl.log_file.with_name("postgres.log.1"))


def _spawn(cl: LocalCluster, user: _OsUser) -> subprocess.Popen:
    assert cl.bindir is not None
    with open(cl.log_file, "ab") as logf:
        user.chown(cl.log_file)
        proc = subprocess.Popen(
            [str(cl.bindir / "postgres"), "-D", str(cl.data_dir)],
            cwd=str(cl.base_dir),
            env=user.env(),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives make's exit, no terminal SIGINT
            close_fds=True,
            **user.popen_kwargs(),
        )
    _children[proc.pid] = proc
    return proc


def _pidfile_status(data_dir: Path) -> str | None:
    """Line 8 of postmaster.pid: "starting", "stopping", "ready" or "standby" (None if absent)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    return lines[7].strip() if len(lines) > 7 else None


def _wait_ready(cl: LocalCluster, pid: int, deadline: float) -> str:
    while True:
        if not _pid_alive(pid):
            return "exited"
        # Only try to connect once the postmaster says it is ready: avoids a
        # "the database system is starting up" FATAL in the log for every poll.
        if _pidfile_status(cl.data_dir) in ("ready", "standby") and cl._accepts_connections():
            return "ready"
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(0.03)


def _start(cl: LocalCluster, user: _OsUser, timeout: float, allow_port_change: bool) -> bool:
    """Start the server unless running; returns True if it started it."""
    deadline = time.monotonic() + timeout
    info = _read_pidfile(cl.data_dir)
    if info is not None and _is_our_postmaster(info[0], cl.data_dir):
        if info[1] is not None:
            cl.port = info[1]
        status = _wait_ready(cl, info[0], deadline)  # e.g. still in crash recovery
        if status == "ready":
            return False
        if status == "timeout":
            raise LocalPGError(
                f"PostgreSQL (pid {info[0]}) runs but does not accept connections after "
                f"{timeout:.0f}s; last lines of {cl.log_file}:\n{_log_tail(cl.log_file)}"
            )
        info = None
    if info is not None:
        # postmaster.pid of a postmaster that is gone (killed, crashed, machine restarted).
        # First let orphaned backends of a killed postmaster exit: they still use the
        # data directory and its shared memory.
        while _processes_in(cl.data_dir):
            if time.monotonic() > deadline:
                raise LocalPGError(
                    f"processes {_processes_in(cl.data_dir)} still use {cl.data_dir} although "
                    "its postmaster is gone; stop them first"
                )
            time.sleep(0.05)
        if _pid_exists(info[0]):
            # The pid is a zombie nobody reaps (PID 1 of some containers) or now belongs to
            # an unrelated process: the postmaster would refuse to start ("lock file
            # already exists").  Nothing uses the data directory any more, so drop the file.
            log.info("removing stale postmaster.pid (pid %s is not a live postmaster)", info[0])
            with contextlib.suppress(FileNotFoundError):
                (cl.data_dir / "postmaster.pid").unlink()
    _remove_stale_socket_locks(cl)
    if cl.bindir is None:
        cl.bindir = find_bindir(prefer_major=_cluster_major(cl))
    tried: list[int] = []
    while True:
        if cl.port is None or (not _port_free(cl.port) and allow_port_change):
            old = cl.port
            cl.port = _pick_port(exclude=tried)
            if old is not None:
                log.info("port %s is taken: moving the cluster to port %s", old, cl.port)
        elif not _port_free(cl.port):
            raise LocalPGError(f"port {cl.port} on {HOST} is in use by another process")
        _write_port(cl, user)
        _write_managed_conf(cl, user)
        _rotate_log(cl)
        offset = cl.log_file.stat().st_size if cl.log_file.exists() else 0
        log.info("starting PostgreSQL on %s:%s (data %s)", HOST, cl.port, cl.data_dir)
        proc = _spawn(cl, user)
        status = _wait_ready(cl, proc.pid, deadline)
        if status == "ready":
            return True
        output = _log_tail(cl.log_file, offset)
        if status == "timeout":
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            raise LocalPGError(
                f"PostgreSQL did not accept connections within {timeout:.0f}s; "
                f"last lines of {cl.log_file}:\n{output}"
            )
        if ("could not bind" in output or "Address already in use" in output) and allow_port_change and len(tried) < 5:
            tried.append(cl.port)
            cl.port = None
            continue
        if ("shared memory block is still in use" in output or "lock file" in output) and time.monotonic() < deadline:
            time.sleep(0.5)  # children of a killed postmaster still exiting
            continue
        raise LocalPGError(
            f"PostgreSQL exited during startup (exit {proc.returncode}); "
            f"last lines of {cl.log_file}:\n{output}"
        )


def _stop(cl: LocalCluster, mode: str, timeout: float) -> bool:
    info = _read_pidfile(cl.data_dir)
    if info is None or not _is_our_postmaster(info[0], cl.data_dir):
        return False
    pid = info[0]
    log.info("stopping PostgreSQL (pid %s, %s shutdown)", pid, mode)
    try:
        os.kill(pid, _SHUTDOWN_SIGNALS[mode])
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            raise LocalPGError(
                f"PostgreSQL (pid {pid}) did not stop within {timeout:.0f}s ({mode} shutdown); "
                f"last lines of {cl.log_file}:\n{_log_tail(cl.log_file)}"
            )
        time.sleep(0.02)
    return True


def _cluster_major(cl: LocalCluster) -> str | None:
    try:
        return (cl.data_dir / "PG_VERSION").read_text().strip() or None
    except OSError:
        return None


# --------------------------------------------------------------------------
# Public entry points


def cluster(root: str | os.PathLike | None = None, *, default_db: str = DEFAULT_DATABASES[0]) -> LocalCluster:
    """The project's cluster as it is now, without creating or starting anything.

    ``port`` is None when no cluster was ever set up under ``root``.
    """
    root_path = _project_root(root)
    base = _existing_base(root_path) or Path(os.path.realpath(_link_path(root_path)))
    cl = LocalCluster(root=root_path, base_dir=base, port=_read_port(base), default_db=default_db)
    info = _read_pidfile(cl.data_dir)
    if info is not None and info[1] is not None and _is_our_postmaster(info[0], cl.data_dir):
        cl.port = info[1]
    return cl


def ensure(
    databases: Iterable[str] = DEFAULT_DATABASES,
    *,
    root: str | os.PathLike | None = None,
    timeout: float = START_TIMEOUT,
) -> LocalCluster:
    """Initialise (if needed) and start (if needed) the private cluster; create role and databases.

    Idempotent and safe to call while the server runs.  Returns the LocalCluster,
    whose ``url()`` is for the first of ``databases``.
    """
    if isinstance(databases, str):
        databases = (databases,)
    dbs = tuple(databases) or DEFAULT_DATABASES
    root_path = _project_root(root)
    user = _server_user()
    with _locked(root_path):
        base = _prepare_base(root_path, user)
        cl = LocalCluster(root=root_path, base_dir=base, port=_read_port(base), default_db=dbs[0])
        if not cl.is_initialized():
            cl.bindir = find_bindir(prefer_major=None)
            _initdb(cl, user)
        elif cl.pid() is None:
            major = _cluster_major(cl)
            cl.bindir = find_bindir(prefer_major=major)
            server_major = _server_major(cl.bindir)
            if major and server_major and major != server_major:
                raise LocalPGError(
                    f"the cluster in {cl.data_dir} is PostgreSQL {major} but the server found "
                    f"in {cl.bindir} is {server_major}; remove {cl.base_dir} to recreate it"
                )
        if _start(cl, user, timeout, allow_port_change=True) is False:
            log.info("PostgreSQL already running on %s:%s", HOST, cl.port)
        _provision(cl, dbs)
    return cl


# --------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", help="project root (default: the parent of the bot/ package)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress messages on stderr")
    parser = argparse.ArgumentParser(
        prog="python -m bot.devtools.localpg",
        description="Private PostgreSQL cluster of this project (see bot/devtools/localpg.py).",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_ensure = sub.add_parser(
        "ensure", parents=[common],
        help="init/start if needed, create role and databases; print the URL of the first database",
    )
    p_ensure.add_argument("--db", action="append", dest="dbs", metavar="NAME",
                          help=f"database to create (repeatable; default {DEFAULT_DATABASES[0]})")
    p_ensure.add_argument("--timeout", type=float, default=START_TIMEOUT)
    p_stop = sub.add_parser("stop", parents=[common], help="stop the server")
    p_stop.add_argument("--mode", choices=sorted(_SHUTDOWN_SIGNALS), default="fast")
    p_restart = sub.add_parser("restart", parents=[common], help="stop (fast) and start on the same port")
    p_restart.add_argument("--mode", choices=sorted(_SHUTDOWN_SIGNALS), default="fast")
    sub.add_parser("status", parents=[common],
                   help="print the state; exit 0 running, 3 stopped, 4 not initialised")
    p_url = sub.add_parser("url", parents=[common], help="print a connection URL (does not start anything)")
    p_url.add_argument("--db", help=f"database (default {DEFAULT_DATABASES[0]}; postgres with --superuser)")
    p_url.add_argument("--superuser", action="store_true", help="URL for the postgres superuser")
    sub.add_parser("destroy", parents=[common], help="stop the server and delete the cluster")
    args = parser.parse_args(argv)

    if not args.quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("localpg: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False

    try:
        if args.command == "ensure":
            cl = ensure(args.dbs or DEFAULT_DATABASES, root=args.root, timeout=args.timeout)
            print(cl.url(), flush=True)
            return 0
        cl = cluster(args.root)
        if args.command == "stop":
            if not cl.stop(args.mode):
                log.info("PostgreSQL is not running")
            return 0
        if args.command == "restart":
            if not cl.is_initialized():
                raise LocalPGError(f"no cluster under {cl.root}: run `python -m bot.devtools.localpg ensure`")
            cl.restart(args.mode)
            return 0
        if args.command == "status":
            if not cl.is_initialized():
                print(f"not initialised ({cl.data_dir})")
                return 4
            if cl.is_running():
                print(f"running: pid {cl.pid()}, {cl.url()} (data {cl.data_dir})")
                return 0
            print(f"stopped (data {cl.data_dir}, port {cl.port})")
            return 3
        if args.command == "url":
            print(cl.superuser_url(args.db or "postgres") if args.superuser else cl.url(args.db))
            return 0
        if args.command == "destroy":
            cl.destroy()
            return 0
    except (LocalPGError, psycopg.Error, OSError) as exc:
        print(f"localpg: error: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
