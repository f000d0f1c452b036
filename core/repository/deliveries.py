"""``rollback_bot.deliveries`` (each Slack request handled once across bot processes) and
``rollback_bot.home_viewers`` (who opened the App Home lately, whose Home is refreshed)."""

from __future__ import annotations

import psycopg


def claim_delivery_key(conn: psycopg.Connection, key: str) -> bool:
    """True the first time ``key`` is claimed."""
    return conn.execute(
        "INSERT INTO rollback_bot.deliveries (key) VALUES (%s) ON CONFLICT DO NOTHING", (key,)
    ).rowcount == 1


def record_home_viewer(conn: psycopg.Connection, user_id: str) -> None:
    conn.execute(
        "INSERT INTO rollback_bot.home_viewers (user_id) VALUES (%s)"
        " ON CONFLICT (user_id) DO UPDATE SET opened_at = clock_timestamp()",
        (user_id,),
    )


def home_viewers_within(conn: psycopg.Connection, *, hours: float, limit: int) -> list[str]:
    """Who opened the App Home within ``hours``, the latest first."""
    rows = conn.execute(
        "SELECT user_id FROM rollback_bot.home_viewers WHERE opened_at > now() - make_interval(secs => %s)"
        " ORDER BY opened_at DESC LIMIT %s",
        (hours * 3600, limit),
    ).fetchall()
    return [r["user_id"] for r in rows]
