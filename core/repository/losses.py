"""``rollback_bot.loss_estimates``: every figure of an incident's estimated loss, one row each, oldest first
(core.loss decides what is recorded; the incident's latest figure is ``incidents.set_estimated_loss``)."""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb


def loss_rows(conn: psycopg.Connection, incident_id: int) -> list[dict]:
    """Every recorded figure of the incident, oldest first."""
    return conn.execute(
        "SELECT * FROM rollback_bot.loss_estimates WHERE incident_id = %s ORDER BY id", (incident_id,)
    ).fetchall()


def has_loss_rows(conn: psycopg.Connection, incident_id: int) -> bool:
    return conn.execute(
        "SELECT 1 FROM rollback_bot.loss_estimates WHERE incident_id = %s LIMIT 1", (incident_id,)
    ).fetchone() is not None


def insert_loss(conn: psycopg.Connection, *, incident_id: int, amount: float, source: str, by: str, at: datetime,
                detail: dict) -> dict:
    """A new figure; the row written."""
    return conn.execute(
        "INSERT INTO rollback_bot.loss_estimates (incident_id, amount, source, recorded_by, recorded_at, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
        (incident_id, amount, source, by, at, Jsonb(detail)),
    ).fetchone()
