"""``rollback_bot.doctor_results``: the latest runs of the doctor's checks, so `/rollback status` shows them from any
process (core.doctor runs the checks)."""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb


def insert_doctor_run(conn: psycopg.Connection, *, at: datetime, source: str, ok: bool, checks: list[dict],
                      keep: int) -> None:
    """Keep a run and the ``keep`` newest before it; older runs are deleted."""
    conn.execute(
        "INSERT INTO rollback_bot.doctor_results (run_at, source, ok, checks) VALUES (%s, %s, %s, %s)",
        (at, source, ok, Jsonb(checks)),
    )
    conn.execute(
        "DELETE FROM rollback_bot.doctor_results WHERE id <= (SELECT id FROM rollback_bot.doctor_results"
        " ORDER BY id DESC OFFSET %s LIMIT 1)", (keep,),
    )


def latest_doctor_run(conn: psycopg.Connection) -> dict | None:
    """The newest run (run_at, source, checks), if any."""
    return conn.execute(
        "SELECT run_at, source, checks FROM rollback_bot.doctor_results ORDER BY id DESC LIMIT 1"
    ).fetchone()
