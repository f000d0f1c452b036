"""The halt's own records: ``rollback_bot.trading_halts`` (one row per halt, open until resumed),
``rollback_bot.halt_holders`` (who holds the current halt: an incident, a person's ``/rollback halt``) and
``rollback_bot.trading_state`` (the flag the platform reads), in the caller's transaction.

The statements that save, halt and restore the platform's ``client_settings`` (they join
``rollback_bot.saved_client_settings`` to it, in one statement each so that nothing changes in between) stay in
core.trading with the rules of the halt; ``saved_settings_count`` and ``mark_saved_settings_restored`` are here.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import psycopg


def active_halt(conn: psycopg.Connection) -> dict[str, Any] | None:
    """The halt in force (id, halted_at, halted_by, reason), if any."""
    return conn.execute(
        "SELECT id, halted_at, halted_by, reason FROM rollback_bot.trading_halts WHERE resumed_at IS NULL"
    ).fetchone()


def insert_trading_halt(conn: psycopg.Connection, *, by: str, reason: str) -> dict[str, Any]:
    """A new halt; its id and halted_at."""
    return conn.execute(
        "INSERT INTO rollback_bot.trading_halts (halted_by, reason) VALUES (%s, %s) RETURNING id, halted_at",
        (by, reason),
    ).fetchone()


def end_trading_halt(conn: psycopg.Connection, halt_id: int, *, by: str) -> None:
    conn.execute(
        "UPDATE rollback_bot.trading_halts SET resumed_at = clock_timestamp(), resumed_by = %s WHERE id = %s",
        (by, halt_id),
    )


def halt_holders(conn: psycopg.Connection, halt_id: int) -> list[str]:
    """Who holds the halt, the first holder first."""
    return [r["holder"] for r in conn.execute(
        "SELECT holder FROM rollback_bot.halt_holders WHERE halt_id = %s ORDER BY since", (halt_id,)
    )]


def add_halt_holder(conn: psycopg.Connection, halt_id: int, holder: str) -> None:
    """``holder`` holds the halt too (nothing if it does already)."""
    conn.execute(
        "INSERT INTO rollback_bot.halt_holders (halt_id, holder) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (halt_id, holder),
    )


def remove_halt_holder(conn: psycopg.Connection, halt_id: int, holder: str) -> None:
    conn.execute("DELETE FROM rollback_bot.halt_holders WHERE halt_id = %s AND holder = %s", (halt_id, holder))


def remove_halt_holders_except(conn: psycopg.Connection, halt_id: int, keep: Collection[str]) -> None:
    """Every holder lets go of the halt but those in ``keep``."""
    conn.execute("DELETE FROM rollback_bot.halt_holders WHERE halt_id = %s AND holder <> ALL(%s)",
                 (halt_id, list(keep)))


def saved_settings_count(conn: psycopg.Connection, halt_id: int) -> int:
    """How many clients' own settings the halt saved."""
    return conn.execute(
        "SELECT count(*) AS n FROM rollback_bot.saved_client_settings WHERE halt_id = %s", (halt_id,)
    ).fetchone()["n"]


def mark_saved_settings_restored(conn: psycopg.Connection, halt_id: int) -> None:
    conn.execute("UPDATE rollback_bot.saved_client_settings SET restored = true WHERE halt_id = %s", (halt_id,))


def trading_state(conn: psycopg.Connection) -> dict[str, Any]:
    """The flag the platform reads: halted, since, reason."""
    return conn.execute("SELECT halted, since, reason FROM rollback_bot.trading_state").fetchone()
