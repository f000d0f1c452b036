"""``rollback_bot.executor_fences``: each rollback's fencing token (core.fencing). These work on the executor's own
lock connection (autocommit, and its rows may be tuples or dicts)."""

from __future__ import annotations

import psycopg


def _values(row: object) -> tuple:
    return tuple(row.values()) if isinstance(row, dict) else tuple(row)  # type: ignore[arg-type]


def take_fence_token(conn: psycopg.Connection, incident_id: int, owner: str) -> int:
    """A new token for the incident, one higher than the last (1 the first time), now owned by ``owner``."""
    row = conn.execute(
        "INSERT INTO rollback_bot.executor_fences (incident_id, token, owner) VALUES (%s, 1, %s)"
        " ON CONFLICT (incident_id) DO UPDATE SET token = rollback_bot.executor_fences.token + 1,"
        " owner = excluded.owner, taken_at = clock_timestamp() RETURNING token",
        (incident_id, owner),
    ).fetchone()
    return int(_values(row)[0])


def fence_state(conn: psycopg.Connection, *, key: int, incident_id: int) -> tuple[bool, int | None]:
    """Whether this session holds the advisory lock ``key``, and the incident's current token."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        " AND granted AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = %s) AS held,"
        " (SELECT token FROM rollback_bot.executor_fences WHERE incident_id = %s) AS token",
        (key, incident_id),
    ).fetchone()
    held, token = _values(row)
    return held, token
