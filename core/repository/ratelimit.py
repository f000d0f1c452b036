"""``rollback_bot.command_uses``: when each person ran a heavy command (core.access limits them per minute)."""

from __future__ import annotations

from datetime import datetime

import psycopg


def command_uses_since(conn: psycopg.Connection, user: str, *, after: datetime) -> list[datetime]:
    """Forget ``user``'s uses at or before ``after``; the times of those left, oldest first."""
    conn.execute("DELETE FROM rollback_bot.command_uses WHERE user_id = %s AND at <= %s", (user, after))
    return [r["at"] for r in conn.execute(
        "SELECT at FROM rollback_bot.command_uses WHERE user_id = %s ORDER BY at", (user,)).fetchall()]


def record_command_use(conn: psycopg.Connection, user: str, command: str, *, at: datetime) -> None:
    conn.execute("INSERT INTO rollback_bot.command_uses (user_id, command, at) VALUES (%s, %s, %s)",
                 (user, command, at))
