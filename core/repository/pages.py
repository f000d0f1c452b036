"""``rollback_bot.pages`` (one row per paged incident: why, when, the emergency tier's due time, who acknowledged,
what PagerDuty was told) and ``rollback_bot.page_log`` (who was paged and how, delivered or not). core.paging
decides; these run its SQL in the caller's transaction and return the rows (dicts) written or read."""

from __future__ import annotations

from datetime import datetime

import psycopg


def page_row(conn: psycopg.Connection, incident_id: int) -> dict | None:
    return conn.execute("SELECT * FROM rollback_bot.pages WHERE incident_id = %s", (incident_id,)).fetchone()


def page_log_rows(conn: psycopg.Connection, incident_id: int) -> list[dict]:
    return conn.execute("SELECT * FROM rollback_bot.page_log WHERE incident_id = %s ORDER BY id",
                        (incident_id,)).fetchall()


def insert_page(conn: psycopg.Connection, *, incident_id: int, dedup_key: str, reason: str, paged_at: datetime,
                emergency_due_at: datetime, closed_at: datetime | None) -> dict | None:
    """The incident's page; None when it has one already (it is paged once)."""
    return conn.execute(
        "INSERT INTO rollback_bot.pages (incident_id, dedup_key, reason, paged_at, emergency_due_at, closed_at)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (incident_id) DO NOTHING RETURNING *",
        (incident_id, dedup_key, reason, paged_at, emergency_due_at, closed_at),
    ).fetchone()


def acknowledge_page(conn: psycopg.Connection, incident_id: int, *, by: str, at: datetime) -> dict | None:
    """The page acknowledged, if it is open and was not yet; None otherwise."""
    return conn.execute(
        "UPDATE rollback_bot.pages SET acknowledged_at = %s, acknowledged_by = %s"
        " WHERE incident_id = %s AND acknowledged_at IS NULL AND closed_at IS NULL RETURNING *",
        (at, by, incident_id),
    ).fetchone()


def close_page(conn: psycopg.Connection, incident_id: int, *, at: datetime) -> dict | None:
    """The page closed, if it was open; None otherwise."""
    return conn.execute(
        "UPDATE rollback_bot.pages SET closed_at = %s WHERE incident_id = %s AND closed_at IS NULL RETURNING *",
        (at, incident_id),
    ).fetchone()


def claim_emergency_page(conn: psycopg.Connection, incident_id: int, *, at: datetime) -> dict | None:
    """Mark the emergency tier paged at ``at`` if it is due and nobody acknowledged, closed or paged it yet; the
    page, or None."""
    return conn.execute(
        "UPDATE rollback_bot.pages SET emergency_paged_at = %s WHERE incident_id = %s"
        " AND acknowledged_at IS NULL AND closed_at IS NULL AND emergency_paged_at IS NULL"
        " AND emergency_due_at <= %s RETURNING *",
        (at, incident_id, at),
    ).fetchone()


def unclaim_emergency_page(conn: psycopg.Connection, incident_id: int, *, claimed_at: datetime) -> None:
    """Undo ``claim_emergency_page`` (the emergency page could not be sent): it is tried again."""
    conn.execute("UPDATE rollback_bot.pages SET emergency_paged_at = NULL WHERE incident_id = %s"
                 " AND emergency_paged_at = %s", (incident_id, claimed_at))


def set_pagerduty_error(conn: psycopg.Connection, incident_id: int, error: str) -> None:
    conn.execute("UPDATE rollback_bot.pages SET pagerduty_error = %s WHERE incident_id = %s", (error, incident_id))


def set_pagerduty_sent(conn: psycopg.Connection, incident_id: int, *, action: str, previous: str) -> None:
    """PagerDuty was told ``action``; only if what was last sent is still ``previous`` (another process may have
    sent a later one meanwhile)."""
    conn.execute("UPDATE rollback_bot.pages SET pagerduty_sent = %s, pagerduty_error = NULL"
                 " WHERE incident_id = %s AND pagerduty_sent = %s", (action, incident_id, previous))


def log_page(conn: psycopg.Connection, *, incident_id: int, tier: str, channel: str, recipient: str, at: datetime,
             ok: bool, error: str | None) -> None:
    """One row of ``page_log``: a Slack DM or a PagerDuty event, delivered or not."""
    conn.execute(
        "INSERT INTO rollback_bot.page_log (incident_id, tier, channel, recipient, at, ok, error)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (incident_id, tier, channel, recipient, at, ok, error),
    )
