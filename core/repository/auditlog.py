"""The audit log, ``rollback_bot.audit_log``: who did what, with what outcome, in the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def audit(conn: psycopg.Connection, *, actor: str, action: str, outcome: str, at: datetime | None = None,
          incident_id: int | None = None, **detail: Any) -> None:
    """One row of the audit log, in the caller's transaction; ``at`` defaults to the database's clock."""
    conn.execute(
        "INSERT INTO rollback_bot.audit_log (at, actor, action, outcome, incident_id, detail)"
        " VALUES (coalesce(%s, clock_timestamp()), %s, %s, %s, %s, %s)",
        (at, actor, action, outcome, incident_id, Jsonb(detail)),
    )
