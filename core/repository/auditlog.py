"""The audit log, ``rollback_bot.audit_log``: who did what, with what outcome, in the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from core.db import first_value


def audit(conn: psycopg.Connection, *, actor: str, action: str, outcome: str, at: datetime | None = None,
          incident_id: int | None = None, **detail: Any) -> None:
    """One row of the audit log, in the caller's transaction; ``at`` defaults to the database's clock."""
    conn.execute(
        "INSERT INTO rollback_bot.audit_log (at, actor, action, outcome, incident_id, detail)"
        " VALUES (coalesce(%s, clock_timestamp()), %s, %s, %s, %s, %s)",
        (at, actor, action, outcome, incident_id, Jsonb(detail)),
    )


def audit_returning_id(conn: psycopg.Connection, *, actor: str, action: str, outcome: str, at: datetime,
                       incident_id: int | None = None, **detail: Any) -> int:
    """``audit``, for a row that is changed later (``mark_audit_failed``): its id."""
    return conn.execute(
        "INSERT INTO rollback_bot.audit_log (at, actor, action, outcome, incident_id, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (at, actor, action, outcome, incident_id, Jsonb(detail)),
    ).fetchone()["id"]


def mark_audit_failed(conn: psycopg.Connection, audit_id: int, *, error: str) -> None:
    """What the audit row recorded could not be done after all: outcome ``failed``, with the error."""
    conn.execute(
        "UPDATE rollback_bot.audit_log SET outcome = 'failed', detail = detail || %s WHERE id = %s",
        (Jsonb({"error": error}), audit_id),
    )


def recent_audit_of_model(conn: psycopg.Connection, *, action: str, outcome: str, model: str,
                          since: datetime) -> int | None:
    """The id of an audit row of ``action`` with ``outcome`` about ``model`` (``detail.model``) after ``since``."""
    return first_value(conn, "SELECT id FROM rollback_bot.audit_log WHERE action = %s AND outcome = %s"
                             " AND detail->>'model' = %s AND at > %s LIMIT 1", (action, outcome, model, since), "id")
