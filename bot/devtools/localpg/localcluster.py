"""The cluster object (``LocalCluster``): its layout, URLs, state and lifecycle; its role and databases."""

from __future__ import annotations

import dataclasses
import shutil
import urllib.parse
from pathlib import Path
from typing import Iterable

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from bot.devtools.localpg.common import (
    _SHUTDOWN_SIGNALS, DEFAULT_DATABASES, HOST, ROLE, START_TIMEOUT, STOP_TIMEOUT, SUPERUSER, LocalPGError, log,
)
from bot.devtools.localpg.layout import _link_path, _locked
from bot.devtools.localpg.osuser import _server_user
from bot.devtools.localpg.processes import _is_our_postmaster, _read_pidfile
from bot.devtools.localpg.server import _start, _stop


def _under(name: str) -> property:
    """A path of the cluster's layout: ``name`` under its ``base_dir``."""
    return property(lambda self: self.base_dir / name, doc=f"``base_dir / {name!r}``")


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
    data_dir = _under("data")
    socket_dir = _under("run")
    log_file = _under("postgres.log")
    port_file = _under("port")

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
