"""The incident's ``plan``, its JSON record of what the bot did and found besides the columns (the evidence,
the diagnostics, an early halt, the monitoring and the 24-hour watch, a take-over), in the caller's transaction.
No state change here (core.repository.incidents.move)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from core.incidents import Incident


def merge_plan(conn: psycopg.Connection, incident_id: int, values: dict) -> None:
    """Merge ``values`` into the incident's plan (no state change)."""
    conn.execute("UPDATE rollback_bot.incidents SET plan = plan || %s WHERE id = %s", (Jsonb(values), incident_id))


def merge_plan_touched(conn: psycopg.Connection, incident_id: int, values: dict, *, at: datetime) -> Incident | None:
    """Merge ``values`` into the plan and set ``updated_at``; the incident as it is now (None if there is none)."""
    row = conn.execute(
        "UPDATE rollback_bot.incidents SET plan = plan || %s, updated_at = %s WHERE id = %s RETURNING *",
        (Jsonb(values), at, incident_id),
    ).fetchone()
    return Incident(**row) if row else None


def set_in_plan(conn: psycopg.Connection, incident_id: int, path: Sequence[str], value: Any) -> None:
    """Set one value inside a section of the plan (``path``: ``["watch", "message_ts"]``), if the plan has that
    section (``path[0]``); nothing otherwise."""
    conn.execute(
        "UPDATE rollback_bot.incidents SET plan = jsonb_set(plan, %s::text[], %s) WHERE id = %s AND plan ? %s",
        (list(path), Jsonb(value), incident_id, path[0]),
    )


def locked_plan(conn: psycopg.Connection, incident_id: int) -> tuple[dict, str] | None:
    """The incident's plan and state, locked FOR UPDATE until the caller's transaction ends (a read-modify-write
    of a plan section); None if there is no such incident."""
    row = conn.execute("SELECT plan, state FROM rollback_bot.incidents WHERE id = %s FOR UPDATE",
                       (incident_id,)).fetchone()
    return (row["plan"] or {}, row["state"]) if row else None
