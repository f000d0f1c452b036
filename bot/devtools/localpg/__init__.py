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

The parts: ``common`` (constants, the error, the logger), ``osuser`` (who runs the server), ``binaries`` (finding or
installing them), ``layout`` (.local/pg, its fallback and the lock), ``processes`` (pids, ports, the log),
``localcluster`` (``LocalCluster``, role and databases), ``server`` (initdb, start, stop) and ``cli``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from bot.devtools.localpg.binaries import _server_major, find_bindir
from bot.devtools.localpg.localcluster import LocalCluster, _provision
from bot.devtools.localpg.common import DEFAULT_DATABASES, HOST, ROLE, START_TIMEOUT, SUPERUSER, LocalPGError, log
from bot.devtools.localpg.layout import _existing_base, _link_path, _locked, _prepare_base, _project_root
from bot.devtools.localpg.osuser import _server_user
from bot.devtools.localpg.processes import _is_our_postmaster, _read_pidfile
from bot.devtools.localpg.server import _cluster_major, _initdb, _read_port, _start

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


def main(argv: list[str] | None = None) -> int:
    """The command line (bot/devtools/localpg/cli.py)."""
    from bot.devtools.localpg.cli import main as cli_main

    return cli_main(argv)
