"""``rollback_bot.followups`` (an incident's follow-up work: owner, due date, reminders, done),
``rollback_bot.prevention_measures`` and ``rollback_bot.followup_boards`` (where each incident's follow-ups message
is). core.followups and core.followup_items decide; these run their SQL in the caller's transaction and return the
rows (dicts) written or read."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

from core.db import first_value

FOLLOWUP_COLUMNS = ("id, incident_id, kind, title, owner, assigned_by, assigned_at, due_at, state, completed_by,"
                    " completed_at, reminded_at, reminders, created_at")
_PREVENTION_COLUMNS = "id, incident_id, text, added_by, added_at"

# ------------------------------------------------------------------------------------------------ follow-ups


def followup_rows(conn: psycopg.Connection, incident_id: int) -> list[dict]:
    """The incident's follow-ups, the soonest due first."""
    return conn.execute(f"SELECT {FOLLOWUP_COLUMNS} FROM rollback_bot.followups WHERE incident_id = %s"
                        " ORDER BY due_at, id", (incident_id,)).fetchall()


def followup_row(conn: psycopg.Connection, followup_id: int, *, lock: bool = False) -> dict | None:
    """One follow-up (``lock``: FOR UPDATE until the caller's transaction ends), or None."""
    return conn.execute(f"SELECT {FOLLOWUP_COLUMNS} FROM rollback_bot.followups WHERE id = %s"
                        + (" FOR UPDATE" if lock else ""), (followup_id,)).fetchone()


def open_followup_rows(conn: psycopg.Connection, *, limit: int) -> list[dict]:
    """The open follow-ups of every incident, the soonest due first."""
    return conn.execute(f"SELECT {FOLLOWUP_COLUMNS} FROM rollback_bot.followups WHERE state = 'open'"
                        " ORDER BY due_at, id LIMIT %s", (limit,)).fetchall()


def open_followup_rows_owned_by(conn: psycopg.Connection, owner: str | None, *, limit: int) -> list[dict]:
    """The open follow-ups ``owner`` owns (None: those nobody owns), the soonest due first."""
    if owner is None:
        return conn.execute(f"SELECT {FOLLOWUP_COLUMNS} FROM rollback_bot.followups WHERE state = 'open'"
                            " AND owner IS NULL ORDER BY due_at, id LIMIT %s", (limit,)).fetchall()
    return conn.execute(f"SELECT {FOLLOWUP_COLUMNS} FROM rollback_bot.followups WHERE state = 'open'"
                        " AND owner = %s ORDER BY due_at, id LIMIT %s", (owner, limit)).fetchall()


def owns_followup(conn: psycopg.Connection, incident_id: int, user: str) -> bool:
    """``user`` owns one of the incident's follow-ups."""
    return conn.execute("SELECT 1 FROM rollback_bot.followups WHERE incident_id = %s AND owner = %s",
                        (incident_id, user)).fetchone() is not None


def insert_followup(conn: psycopg.Connection, *, incident_id: int, kind: str, title: str, due_at: datetime,
                    at: datetime) -> dict | None:
    """A new follow-up; None when the incident has one of this kind already."""
    return conn.execute(
        f"INSERT INTO rollback_bot.followups (incident_id, kind, title, due_at, created_at)"
        f" VALUES (%s, %s, %s, %s, %s) ON CONFLICT (incident_id, kind) DO NOTHING RETURNING {FOLLOWUP_COLUMNS}",
        (incident_id, kind, title, due_at, at),
    ).fetchone()


def assign_followup(conn: psycopg.Connection, followup_id: int, *, owner: str, by: str, at: datetime) -> dict | None:
    return conn.execute(
        f"UPDATE rollback_bot.followups SET owner = %s, assigned_by = %s, assigned_at = %s WHERE id = %s"
        f" RETURNING {FOLLOWUP_COLUMNS}", (owner, by, at, followup_id),
    ).fetchone()


def complete_followup(conn: psycopg.Connection, followup_id: int, *, by: str, at: datetime) -> dict | None:
    """Done by ``by`` (who owns it if nobody did), if it was open; None otherwise."""
    return conn.execute(
        f"UPDATE rollback_bot.followups SET state = 'done', completed_by = %s, completed_at = %s,"
        f" owner = coalesce(owner, %s) WHERE id = %s AND state = 'open' RETURNING {FOLLOWUP_COLUMNS}",
        (by, at, by, followup_id),
    ).fetchone()


def complete_open_followup_of_kind(conn: psycopg.Connection, incident_id: int, kind: str, *, by: str,
                                   at: datetime) -> int | None:
    """The incident's open follow-up of ``kind`` done by ``by``; its id, or None if there is no open one."""
    return first_value(conn, "UPDATE rollback_bot.followups SET state = 'done', completed_by = %s, completed_at = %s"
                             " WHERE incident_id = %s AND kind = %s AND state = 'open' RETURNING id",
                       (by, at, incident_id, kind), "id")


def locked_reminded_at(conn: psycopg.Connection, followup_id: int) -> datetime | None:
    """When the follow-up was last reminded of (None: never, or no such follow-up), locked FOR UPDATE."""
    row = conn.execute("SELECT reminded_at FROM rollback_bot.followups WHERE id = %s FOR UPDATE",
                       (followup_id,)).fetchone()
    return row["reminded_at"] if row else None


def mark_reminded(conn: psycopg.Connection, followup_id: int, *, at: datetime, every: timedelta) -> dict | None:
    """Count a reminder of an open follow-up that is due and was not reminded of within ``every``; the follow-up,
    or None when it is done, not due, or was reminded of already."""
    return conn.execute(
        f"UPDATE rollback_bot.followups SET reminded_at = %s, reminders = reminders + 1 WHERE id = %s"
        f" AND state = 'open' AND due_at <= %s AND (reminded_at IS NULL OR reminded_at <= %s)"
        f" RETURNING {FOLLOWUP_COLUMNS}",
        (at, followup_id, at, at - every),
    ).fetchone()


def unmark_reminded(conn: psycopg.Connection, followup_id: int, *, reminded_at: datetime | None) -> None:
    """Undo ``mark_reminded`` (the reminder was not delivered)."""
    conn.execute("UPDATE rollback_bot.followups SET reminded_at = %s, reminders = reminders - 1 WHERE id = %s",
                 (reminded_at, followup_id))


# ------------------------------------------------------------------------------------------------ prevention


def prevention_rows(conn: psycopg.Connection, incident_id: int) -> list[dict]:
    return conn.execute(f"SELECT {_PREVENTION_COLUMNS} FROM rollback_bot.prevention_measures"
                        " WHERE incident_id = %s ORDER BY id", (incident_id,)).fetchall()


def insert_prevention(conn: psycopg.Connection, *, incident_id: int, text: str, by: str, at: datetime) -> dict:
    return conn.execute(
        "INSERT INTO rollback_bot.prevention_measures (incident_id, text, added_by, added_at)"
        f" VALUES (%s, %s, %s, %s) RETURNING {_PREVENTION_COLUMNS}",
        (incident_id, text, by, at),
    ).fetchone()


# ------------------------------------------------------------------------------------------------ the message


def followup_board(conn: psycopg.Connection, incident_id: int) -> dict | None:
    """The row of the incident's follow-ups message (channel, message_ts: None until it is posted), if any."""
    return conn.execute("SELECT channel, message_ts FROM rollback_bot.followup_boards WHERE incident_id = %s",
                        (incident_id,)).fetchone()


def claim_followup_board(conn: psycopg.Connection, incident_id: int, *, at: datetime, expired_before: datetime) -> bool:
    """True for the one caller that is to post the message (a claim older than ``expired_before`` expires)."""
    return conn.execute(
        "INSERT INTO rollback_bot.followup_boards AS b (incident_id, claimed_at) VALUES (%s, %s)"
        " ON CONFLICT (incident_id) DO UPDATE SET claimed_at = excluded.claimed_at"
        " WHERE b.message_ts IS NULL AND b.claimed_at < %s RETURNING incident_id",
        (incident_id, at, expired_before),
    ).fetchone() is not None


def set_followup_board(conn: psycopg.Connection, incident_id: int, *, channel: str, message_ts: str) -> None:
    conn.execute("UPDATE rollback_bot.followup_boards SET channel = %s, message_ts = %s WHERE incident_id = %s",
                 (channel, message_ts, incident_id))


def release_followup_board(conn: psycopg.Connection, incident_id: int) -> None:
    """Give up a claim whose message was not posted."""
    conn.execute("DELETE FROM rollback_bot.followup_boards WHERE incident_id = %s AND message_ts IS NULL",
                 (incident_id,))
