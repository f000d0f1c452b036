"""Queueing background work: rows of ``rollback_bot.jobs`` written in the caller's transaction (core.worker
claims and runs them; core.outbox writes a state's follow-ups)."""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from core.repository.steplog import step_succeeded

JOBS_CHANNEL = "rollback_bot_jobs"


def enqueue(conn: psycopg.Connection, kind: str, *, incident_id: int | None = None, payload: dict | None = None,
            run_at: datetime | None = None, dedupe_key: str | None = None) -> None:
    """Queue background work for whichever bot process claims it first (in the caller's transaction)."""
    conn.execute(
        "INSERT INTO rollback_bot.jobs (kind, incident_id, payload, run_at, dedupe_key)"
        " VALUES (%s, %s, %s, coalesce(%s, clock_timestamp()), %s) ON CONFLICT (dedupe_key) DO NOTHING",
        (kind, incident_id, Jsonb(payload or {}), run_at, dedupe_key),
    )
    conn.execute(f"NOTIFY {JOBS_CHANNEL}")


def report_written(conn: psycopg.Connection, incident_id: int) -> bool:
    """The incident's report has been written at least once (its journal holds a ``report`` step that ended ok)."""
    return step_succeeded(conn, incident_id, "report")


def queue_report_refresh(conn: psycopg.Connection, incident_id: int, *, why: str) -> bool:
    """Something the report shows happened (a page, an acknowledgement, a loss figure): queue the report's
    rewrite (not uploaded again) in the caller's transaction, once per ``why``, if the report exists already
    (the report is first written when the rollback finishes, core.outbox). True when queued."""
    if not report_written(conn, incident_id):
        return False
    enqueue(conn, "report", incident_id=incident_id, payload={"upload": False},
            dedupe_key=f"report:{incident_id}:{why}")
    return True


def claim_marker(conn: psycopg.Connection, key: str, *, kind: str, incident_id: int | None, at: datetime,
                 detail: dict | None = None) -> bool:
    """A done job row of ``kind`` with dedupe key ``key`` (never claimed by a worker): True for the first caller
    ever to write it."""
    return conn.execute(
        "INSERT INTO rollback_bot.jobs (kind, incident_id, payload, run_at, dedupe_key, done_at)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
        (kind, incident_id, Jsonb(detail or {}), at, key, at),
    ).fetchone() is not None


def release_marker(conn: psycopg.Connection, key: str, *, kind: str) -> None:
    """Delete the marker ``key`` of ``kind`` (it may be claimed again)."""
    conn.execute("DELETE FROM rollback_bot.jobs WHERE dedupe_key = %s AND kind = %s", (key, kind))
