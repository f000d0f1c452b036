"""PostgreSQL access: a connection pool, a unit of work, and the bot's versioned migrations.

The bot's own tables live in the schema ``rollback_bot``; the platform's tables (``model_deployment_log``,
``clients``, ``client_settings``, ``daily_bars``, ``ml_training_features``, ``trades``) are found through the
connection's normal ``search_path`` and never altered in shape. The bot may connect as an ordinary role.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from core.errors import ConfigError, DatabaseUnavailable

log = logging.getLogger(__name__)

SCHEMA = "rollback_bot"

# (lock_timeout, statement_timeout) in milliseconds for every transaction opened in this context (a rollback's
# steps: ``step_limits``); None: the server's defaults.
_LIMITS: ContextVar[tuple[int, int] | None] = ContextVar("rollback_bot_db_limits", default=None)


@contextlib.contextmanager
def step_limits(lock_timeout_seconds: float, statement_timeout_seconds: float) -> Iterator[None]:
    """Every ``Database.transaction()`` opened inside (in this thread) starts with ``SET LOCAL lock_timeout`` and
    ``SET LOCAL statement_timeout``: a step waiting on a lock someone else holds, or on a statement that does not
    finish, stops with a clear error instead of hanging while trading is halted."""
    token = _LIMITS.set((max(1, round(lock_timeout_seconds * 1000)), max(1, round(statement_timeout_seconds * 1000))))
    try:
        yield
    finally:
        _LIMITS.reset(token)


def first_value(conn: psycopg.Connection, query: str, params: tuple | dict, column: str) -> Any:
    """``column`` of the first row ``query`` returns, or None when it returns none (dict or tuple rows)."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        return None
    return row[column] if isinstance(row, dict) else row[0]


def apply_limits(conn: psycopg.Connection) -> None:
    """SET LOCAL the limits of the current context, if any, on ``conn``'s transaction (one round trip)."""
    limits = _LIMITS.get()
    if limits is not None:
        conn.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                     (f"{limits[0]}ms", f"{limits[1]}ms"))


class Database:
    """A psycopg_pool pool with a unit-of-work helper. Rows come back as dicts.

    When PostgreSQL stops answering, a transaction fails within seconds, not after the pool's whole ``timeout``:
    after ``quick_wait`` seconds without a connection the server is probed directly (one connection attempt); if
    it does not answer, ``DatabaseUnavailable`` is raised at once, and while it stays down every transaction
    probes first. ``down_since`` keeps when this process first saw it fail (cleared when it answers again)."""

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 10.0,
                 quick_wait: float = 2.0) -> None:
        self._dsn = dsn
        self.timeout = timeout
        self.quick_wait = quick_wait
        self.down_since: datetime | None = None
        self.target = _target(dsn)
        self.pool = ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            kwargs={"row_factory": dict_row, "autocommit": False},
            check=ConnectionPool.check_connection,
            open=False,
            name="rollback-bot",
        )

    def open(self, wait: bool = True, timeout: float = 10.0) -> Database:
        try:
            self.pool.open(wait=wait, timeout=timeout)
        except PoolTimeout as exc:
            raise self._failed(exc) from None
        return self

    def close(self) -> None:
        self.pool.close()

    def _failed(self, exc: BaseException) -> DatabaseUnavailable:
        """Note the failure (the first one since the database last answered sets ``down_since``)."""
        if self.down_since is None:
            self.down_since = datetime.now(timezone.utc)
        reason = _reason(exc)
        return DatabaseUnavailable(f"PostgreSQL does not answer: {reason}", since=self.down_since,
                                   target=self.target, reason=reason)

    def _probe(self) -> None:
        """One direct connection attempt; OperationalError when the server does not answer."""
        psycopg.connect(self._dsn, connect_timeout=max(2, int(self.quick_wait) + 1)).close()

    def _getconn(self) -> psycopg.Connection:
        if self.down_since is not None:
            self._probe()  # still down: fail at once instead of waiting for the pool
        quick = min(self.quick_wait, self.timeout)
        try:
            return self.pool.getconn(timeout=quick)
        except PoolTimeout:
            if quick >= self.timeout:
                raise
        self._probe()  # no connection yet: is the server there at all, or is the pool only busy?
        return self.pool.getconn(timeout=self.timeout - quick)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """Unit of work: one connection, one transaction; committed on success, rolled back on error."""
        try:
            conn = self._getconn()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise self._failed(exc) from None
        self.down_since = None  # it answers (the pool checked the connection)
        try:
            with conn:  # commit or roll back; a pool's connection stays open
                apply_limits(conn)
                yield conn
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
            raise DatabaseUnavailable(
                f"PostgreSQL: {_reason(exc)} (the step's lock_timeout or statement_timeout); nothing of the step"
                " was committed, and it runs again later") from None
        except psycopg.OperationalError as exc:
            raise self._failed(exc) from None
        finally:
            self.pool.putconn(conn)

    def connect(self, **kwargs) -> psycopg.Connection:
        """A dedicated connection outside the pool (advisory locks held for a whole rollback, LISTEN)."""
        try:
            conn = _connect(self._dsn, **kwargs)
        except DatabaseUnavailable as exc:
            raise self._failed(exc) from None
        self.down_since = None
        return conn

    def ping(self) -> bool:
        try:
            with self.pool.connection(timeout=2.0) as conn:
                conn.execute("SELECT 1")
        except Exception as exc:  # noqa: BLE001 - health check: any failure means "not healthy"
            self._failed(exc)
            return False
        self.down_since = None
        return True


def _target(dsn: str) -> str | None:
    """host:port/dbname of a DSN, never its password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return None
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    return f"{host}:{port}/{info.get('dbname') or info.get('user') or ''}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@retry(
    retry=retry_if_exception_type(psycopg.OperationalError),
    stop=stop_after_attempt(4),
    wait=wait_exponential(multiplier=0.2, max=2),
    reraise=True,
)
def _connect_with_retry(dsn: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(dsn, row_factory=dict_row, connect_timeout=5, **kwargs)


def _connect(dsn: str, **kwargs) -> psycopg.Connection:
    try:
        return _connect_with_retry(dsn, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"PostgreSQL does not answer: {_reason(exc)}") from None


# --------------------------------------------------------------------------------------------- migrations


def _migration_files() -> list[tuple[int, str, str]]:
    out = []
    for entry in resources.files("core.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            out.append((int(name[:3]), name, entry.read_text(encoding="utf-8")))
    return sorted(out)


def migrate(dsn: str) -> list[str]:
    """Apply pending migrations of the bot's schema; idempotent and safe to run concurrently."""
    applied: list[str] = []
    with _connect(dsn, autocommit=False) as conn:
        # One migrator at a time, across processes.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollback_bot.migrate'))")
        # Nothing is created that exists already: PostgreSQL checks the privilege to create before it looks
        # whether an object exists, so even CREATE ... IF NOT EXISTS needs CREATE on the database (schema) or
        # on the schema (table). A DBA may create the schema for the bot's role and grant nothing on the database.
        state = conn.execute(
            "SELECT to_regnamespace(%s) IS NOT NULL AS has_schema, to_regclass(%s) IS NOT NULL AS has_table",
            (SCHEMA, f"{SCHEMA}.schema_migrations"),
        ).fetchone()
        if not state["has_schema"]:
            _create(conn, f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
                    f"the schema {SCHEMA} does not exist and this database role may not create it (no CREATE on the "
                    f"database): have it created for the bot, CREATE SCHEMA {SCHEMA} AUTHORIZATION <the bot's role> "
                    "(README, Platform requirements)")
        if not state["has_table"]:
            _create(conn, f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations (version int PRIMARY KEY,"
                          " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
                    _no_create_in_schema())
        done = {r["version"] for r in conn.execute(f"SELECT version FROM {SCHEMA}.schema_migrations")}
        pending = [m for m in _migration_files() if m[0] not in done]
        if pending and not conn.execute("SELECT has_schema_privilege(%s, 'CREATE') AS ok", (SCHEMA,)).fetchone()["ok"]:
            raise ConfigError(_no_create_in_schema())
        for version, name, sql in pending:
            log.info("applying migration %s", name)
            conn.execute(sql)
            conn.execute(
                f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES (%s, %s)", (version, name)
            )
            applied.append(name)
        conn.commit()
    return applied


def _no_create_in_schema() -> str:
    return (f"migrations are pending but this database role may not create objects in the schema {SCHEMA}: it "
            f"should own it (ALTER SCHEMA {SCHEMA} OWNER TO <the bot's role>; README, Platform requirements)")


def _create(conn: psycopg.Connection, statement: str, refusal: str) -> None:
    try:
        with conn.transaction():
            conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        raise ConfigError(refusal) from None
