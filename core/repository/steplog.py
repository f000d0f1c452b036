"""The journal, ``rollback_bot.steps``: one row per run of a step of an incident (start, end, actor, outcome,
detail, error), in the caller's transaction."""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from core.db import first_value
from core.incidents import Step


def steps(conn: psycopg.Connection, incident_id: int) -> list[Step]:
    rows = conn.execute("SELECT * FROM rollback_bot.steps WHERE incident_id = %s ORDER BY id", (incident_id,))
    return [Step(**r) for r in rows.fetchall()]


def start_step(conn: psycopg.Connection, incident_id: int, step: str, actor: str, *, at: datetime) -> int:
    """A journal row for a step that starts now; its id, for ``finish_step``."""
    return conn.execute(
        "INSERT INTO rollback_bot.steps (incident_id, step, actor, started_at) VALUES (%s, %s, %s, %s) RETURNING id",
        (incident_id, step, actor, at),
    ).fetchone()["id"]


def finish_step(conn: psycopg.Connection, step_id: int, outcome: str, detail: dict | None = None,
                error: str | None = None, *, at: datetime) -> None:
    conn.execute(
        "UPDATE rollback_bot.steps SET finished_at = %s, outcome = %s, detail = detail || %s, error = %s WHERE id = %s",
        (at, outcome, Jsonb(detail or {}), error, step_id),
    )


def journal(conn: psycopg.Connection, *, incident_id: int, step: str, actor: str, at: datetime,
            started: datetime | None = None, outcome: str = "ok", detail: dict | None = None,
            error: str | None = None) -> None:
    """Add a finished step to an incident's journal, in the caller's transaction."""
    conn.execute(
        "INSERT INTO rollback_bot.steps (incident_id, step, actor, started_at, finished_at, outcome, detail, error)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (incident_id, step, actor, started or at, at, outcome, Jsonb(detail or {}), error[:2000] if error else None),
    )


def attempt_counts(conn: psycopg.Connection, incident_id: int) -> dict[str, int]:
    """How many times each journal step of the incident was started."""
    return {r["step"]: r["n"] for r in conn.execute(
        "SELECT step, count(*) AS n FROM rollback_bot.steps WHERE incident_id = %s GROUP BY step", (incident_id,),
    )}


def step_succeeded(conn: psycopg.Connection, incident_id: int, step: str) -> bool:
    """The journal holds a run of ``step`` that ended ``ok``."""
    return conn.execute(
        "SELECT 1 FROM rollback_bot.steps WHERE incident_id = %s AND step = %s AND outcome = 'ok'",
        (incident_id, step),
    ).fetchone() is not None


def has_step(conn: psycopg.Connection, incident_id: int, step: str) -> bool:
    """The journal holds a row of ``step`` for the incident, whatever its outcome."""
    return conn.execute(
        "SELECT 1 FROM rollback_bot.steps WHERE incident_id = %s AND step = %s", (incident_id, step),
    ).fetchone() is not None


def verified_prediction_day(conn: psycopg.Connection, incident_id: int) -> str | None:
    """The feature date of the incident's latest successful ``verify`` step (``detail.prediction_day``), if any."""
    return first_value(conn, "SELECT detail->>'prediction_day' AS day FROM rollback_bot.steps WHERE incident_id = %s"
                             " AND step = 'verify' AND outcome = 'ok' ORDER BY id DESC LIMIT 1", (incident_id,),
                       "day") or None


def notify_journaled(conn: psycopg.Connection, incident_id: int, *, channel: str, milestone: str) -> bool:
    """A ``notify`` row for this milestone on this channel is in the journal (sent, failed or skipped)."""
    return conn.execute(
        "SELECT 1 FROM rollback_bot.steps WHERE incident_id = %s AND step = 'notify'"
        " AND detail->>'channel' = %s AND detail->>'milestone' = %s",
        (incident_id, channel, milestone),
    ).fetchone() is not None
