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


# ---------------------------------------------------------------------------------------------- claiming (core.worker)

def next_due_job(conn: psycopg.Connection, *, now: datetime, kinds: list[str], ordered: list[str] | tuple = (),
                 incident_id: int | None = None, first_attempt_only: bool = False) -> dict | None:
    """The next due, unleased job of ``kinds`` (of one incident, if given), locked ``FOR UPDATE SKIP LOCKED`` in
    the caller's transaction. A job of an ``ordered`` kind is due only when no earlier undone job of that kind
    exists for its incident (even one another process holds), so one incident's jobs of that kind run in order.
    ``first_attempt_only``: jobs never tried yet (what a process delivers itself before it exits)."""
    return conn.execute(
        "SELECT * FROM rollback_bot.jobs j WHERE done_at IS NULL AND run_at <= %s"
        " AND (locked_until IS NULL OR locked_until < %s) AND kind = ANY(%s)"
        " AND (%s::bigint IS NULL OR incident_id = %s) AND (NOT %s OR attempts = 0)"
        " AND (kind <> ALL(%s) OR NOT EXISTS (SELECT 1 FROM rollback_bot.jobs e WHERE e.incident_id ="
        " j.incident_id AND e.kind = j.kind AND e.done_at IS NULL AND e.id < j.id))"
        " ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
        (now, now, list(kinds), incident_id, incident_id, first_attempt_only, list(ordered)),
    ).fetchone()


def lease_job(conn: psycopg.Connection, job_id: int, *, token: str, until: datetime) -> None:
    """Lease a job selected ``FOR UPDATE`` to the claim ``token`` (one more attempt)."""
    conn.execute("UPDATE rollback_bot.jobs SET locked_by = %s, locked_until = %s, attempts = attempts + 1"
                 " WHERE id = %s", (token, until, job_id))


def extend_lease(conn: psycopg.Connection, job_id: int, *, token: str, until: datetime) -> bool:
    """Extend a job's lease while the claim ``token`` still holds it; False when it does not."""
    return conn.execute(
        "UPDATE rollback_bot.jobs SET locked_until = %s WHERE id = %s AND locked_by = %s AND done_at IS NULL"
        " RETURNING id", (until, job_id, token)).fetchone() is not None


def finish_job(conn: psycopg.Connection, job_id: int, *, token: str, at: datetime, error: str | None) -> bool:
    """Mark a job done (``error``: it gave up), only while the claim ``token`` holds it; False when it does not."""
    return conn.execute(
        "UPDATE rollback_bot.jobs SET done_at = %s, locked_until = NULL, last_error = %s"
        " WHERE id = %s AND locked_by = %s AND done_at IS NULL RETURNING id",
        (at, error, job_id, token)).fetchone() is not None


def release_job(conn: psycopg.Connection, job_id: int, *, token: str, error: str, run_at: datetime) -> bool:
    """Give a failed job back to run again at ``run_at``, only while the claim ``token`` holds it."""
    return conn.execute(
        "UPDATE rollback_bot.jobs SET locked_until = NULL, last_error = %s, run_at = %s"
        " WHERE id = %s AND locked_by = %s AND done_at IS NULL RETURNING id",
        (error[:2000], run_at, job_id, token)).fetchone() is not None


# ---------------------------------------------------------------------------------------------- reading

def undone_jobs(conn: psycopg.Connection, incident_id: int) -> list[dict]:
    """An incident's jobs not done yet (kind, run_at, dedupe_key), in the order they are due."""
    return conn.execute(
        "SELECT kind, run_at, dedupe_key FROM rollback_bot.jobs WHERE incident_id = %s AND done_at IS NULL"
        " ORDER BY run_at, id", (incident_id,)).fetchall()


def count_undone(conn: psycopg.Connection, kind: str, incident_id: int | None = None) -> int:
    """How many jobs of ``kind`` (of one incident, or of all) are not done yet."""
    return conn.execute(
        "SELECT count(*) AS n FROM rollback_bot.jobs WHERE kind = %s AND done_at IS NULL"
        " AND (%s::bigint IS NULL OR incident_id = %s)", (kind, incident_id, incident_id)).fetchone()["n"]


def job_error(conn: psycopg.Connection, job_id: int) -> str | None:
    """Why a job failed last, if it did."""
    row = conn.execute("SELECT last_error FROM rollback_bot.jobs WHERE id = %s", (job_id,)).fetchone()
    return row["last_error"] if row else None
