"""Rows of ``rollback_bot.incidents``: reads, the state change (``move``) and the columns other than ``plan``
(core.repository.plans has the plan's JSON).

``move`` is THE state change, the only one: ``check_transition`` first, then ``UPDATE … WHERE id = %s AND
state = %s``, so two processes (or two clicks) can never both make the same move; then the follow-up jobs
the new state implies (``follow_ups``: report, e-mail, escalation timers, core.outbox), in the same
transaction. ``insert_incident`` does the same for a new incident's first state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from core.errors import Conflict, UnknownIncident
from core.incidents import CLOSED, NEEDS_ATTENTION, Incident, check_transition

FollowUps = Callable[[psycopg.Connection, Incident], None]


def get(conn: psycopg.Connection, incident_id: int, *, lock: bool = False) -> Incident:
    """The incident (``lock``: FOR UPDATE, held until the caller's transaction ends); UnknownIncident if none."""
    row = conn.execute(
        "SELECT * FROM rollback_bot.incidents WHERE id = %s" + (" FOR UPDATE" if lock else ""), (incident_id,)
    ).fetchone()
    if row is None:
        raise UnknownIncident(f"There is no incident INC-{incident_id}.")
    return Incident(**row)


def open_rollback_for(conn: psycopg.Connection, model: str) -> Incident | None:
    """The model's open rollback that blocks a new request (one that needs attention does not)."""
    row = conn.execute(
        "SELECT * FROM rollback_bot.incidents WHERE kind = 'rollback' AND model_name = %s "
        "AND state <> ALL(%s) ORDER BY id DESC LIMIT 1",
        (model, list(CLOSED | {NEEDS_ATTENTION})),
    ).fetchone()
    return Incident(**row) if row else None


def list_incidents(conn: psycopg.Connection, *, open_only: bool = False, limit: int = 20) -> list[Incident]:
    if open_only:
        rows = conn.execute(
            "SELECT * FROM rollback_bot.incidents WHERE state <> ALL(%s) ORDER BY id DESC LIMIT %s",
            (list(CLOSED), limit),
        ).fetchall()
    else:
        rows = conn.execute("SELECT * FROM rollback_bot.incidents ORDER BY id DESC LIMIT %s", (limit,)).fetchall()
    return [Incident(**r) for r in rows]


def incident_ids_in(conn: psycopg.Connection, states: Iterable[str], *, kind: str = "rollback") -> list[int]:
    """Ids of the incidents of ``kind`` in any of ``states``, oldest first."""
    return [r["id"] for r in conn.execute(
        "SELECT id FROM rollback_bot.incidents WHERE kind = %s AND state = ANY(%s) ORDER BY id",
        (kind, list(states)),
    )]


def needing_attention(conn: psycopg.Connection, model: str, *, lock: bool = False,
                      except_id: int | None = None) -> list[Incident]:
    """The model's rollbacks that need attention, oldest first (``lock``: FOR UPDATE)."""
    return [Incident(**r) for r in conn.execute(
        "SELECT * FROM rollback_bot.incidents WHERE kind = 'rollback' AND model_name = %s"
        " AND state = 'needs_attention' AND id IS DISTINCT FROM %s ORDER BY id" + (" FOR UPDATE" if lock else ""),
        (model, except_id),
    ).fetchall()]


def later_approved_rollback(conn: psycopg.Connection, model: str | None, *, after_id: int) -> int | None:
    """The id of the first rollback of ``model`` opened after ``after_id`` that was approved, if any."""
    row = conn.execute(
        "SELECT id FROM rollback_bot.incidents WHERE kind = 'rollback' AND model_name = %s AND id > %s"
        " AND approved_at IS NOT NULL ORDER BY id LIMIT 1",
        (model, after_id),
    ).fetchone()
    return row["id"] if row else None


def incidents_in(conn: psycopg.Connection, states: Iterable[str], *, kind: str = "rollback",
                 lock: bool = False) -> list[Incident]:
    """The incidents of ``kind`` in any of ``states``, oldest first (``lock``: FOR UPDATE)."""
    return [Incident(**r) for r in conn.execute(
        "SELECT * FROM rollback_bot.incidents WHERE kind = %s AND state = ANY(%s) ORDER BY id"
        + (" FOR UPDATE" if lock else ""), (kind, list(states)),
    ).fetchall()]


def open_incident_ids(conn: psycopg.Connection, *, kind: str = "rollback", model: str | None = None) -> list[int]:
    """Ids of the incidents of ``kind`` (of ``model``, if given) that are not closed, oldest first."""
    return [r["id"] for r in conn.execute(
        "SELECT id FROM rollback_bot.incidents WHERE kind = %s AND state <> ALL(%s)"
        " AND (%s::text IS NULL OR model_name = %s) ORDER BY id",
        (kind, list(CLOSED), model, model),
    )]


def open_incidents_among(conn: psycopg.Connection, ids: Iterable[int], *, lock: bool = False) -> list[Incident]:
    """Those of the incidents ``ids`` that are not closed, oldest first (``lock``: FOR UPDATE)."""
    return [Incident(**r) for r in conn.execute(
        "SELECT * FROM rollback_bot.incidents WHERE id = ANY(%s) AND state <> ALL(%s) ORDER BY id"
        + (" FOR UPDATE" if lock else ""), (list(ids), list(CLOSED)),
    ).fetchall()]


def open_fix(conn: psycopg.Connection, fix: str) -> Incident | None:
    """The newest open quick fix of this kind (``plan.fix``), if any."""
    row = conn.execute(
        "SELECT * FROM rollback_bot.incidents WHERE kind = 'fix' AND plan->>'fix' = %s AND state <> ALL(%s)"
        " ORDER BY id DESC LIMIT 1", (fix, list(CLOSED)),
    ).fetchone()
    return Incident(**row) if row else None


def rollbacks_that_swapped(conn: psycopg.Connection) -> list[Incident]:
    """Rollbacks that recorded a deployment or backed up the deployment rows (core.integrity), newest first."""
    return [Incident(**r) for r in conn.execute(
        "SELECT * FROM rollback_bot.incidents WHERE kind = 'rollback'"
        " AND (deployed_at IS NOT NULL OR previous_rows IS NOT NULL) ORDER BY id DESC"
    ).fetchall()]


def take_over(conn: psycopg.Connection, inc: Incident, *, user: str, claim: dict, at: datetime,
              expires_at: datetime) -> Incident:
    """A watchdog proposal's requester becomes ``user`` (no state change; it must still be requested)."""
    row = conn.execute(
        "UPDATE rollback_bot.incidents SET requested_by = %s, plan = plan || %s, updated_at = %s, expires_at = %s"
        " WHERE id = %s AND state = 'requested' RETURNING *",
        (user, Jsonb({"taken_over": claim}), at, expires_at, inc.id),
    ).fetchone()
    if row is None:
        raise Conflict(f"{inc.ref} changed state while it was taken over; another process is handling it.")
    return Incident(**row)


def insert_incident(conn: psycopg.Connection, *, follow_ups: FollowUps, **values: Any) -> Incident:
    """A new incident row with these columns (dicts and lists stored as JSON), and the follow-up jobs its first
    state implies (``follow_ups``, core.outbox), in the caller's transaction. Raises psycopg's UniqueViolation
    when the model already has an open rollback (the partial unique index)."""
    names = list(values)
    params = [Jsonb(v) if isinstance(v, (dict, list)) else v for v in values.values()]
    row = conn.execute(
        f"INSERT INTO rollback_bot.incidents ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})"
        " RETURNING *",
        params,
    ).fetchone()
    inc = Incident(**row)
    follow_ups(conn, inc)
    return inc


def move(conn: psycopg.Connection, inc: Incident, new: str, *, at: datetime, follow_ups: FollowUps,
         **columns: Any) -> Incident:
    """THE state change (see the module's docstring): checked, conditional, and with the follow-up jobs the new
    state implies (``follow_ups(conn, moved)``, core.outbox) written in the same transaction. Conflict when
    another process moved it first."""
    check_transition(inc.state, new, inc.kind)
    sets = ["state = %s", "updated_at = %s"]
    params: list[Any] = [new, at]
    for key, value in columns.items():
        sets.append(f"{key} = %s")
        params.append(Jsonb(value) if isinstance(value, (dict, list)) else value)
    if new in CLOSED and "resolved_at" not in columns:
        sets.append("resolved_at = coalesce(resolved_at, %s)")
        params.append(at)
    params += [inc.id, inc.state]
    row = conn.execute(
        f"UPDATE rollback_bot.incidents SET {', '.join(sets)} WHERE id = %s AND state = %s RETURNING *", params
    ).fetchone()
    if row is None:
        raise Conflict(f"{inc.ref} changed state while this step ran; another process is handling it.")
    moved = Incident(**row)
    follow_ups(conn, moved)
    return moved


def no_follow_ups(conn: psycopg.Connection, inc: Incident) -> None:
    """For a caller that has no outbox writers (a bare engine in a test): nothing is queued."""
    return None


def expired_requests(conn: psycopg.Connection, *, at: datetime) -> list[Incident]:
    """Requests of any kind whose approval window passed before ``at``, locked (rows another process holds are
    skipped: it is deciding them)."""
    return [Incident(**r) for r in conn.execute(
        "SELECT * FROM rollback_bot.incidents WHERE state = 'requested' AND expires_at < %s ORDER BY id"
        " FOR UPDATE SKIP LOCKED", (at,),
    ).fetchall()]


def approved_not_started(conn: psycopg.Connection, *, approved_before: datetime) -> list[Incident]:
    """Approved rollbacks approved before ``approved_before`` that never started, locked (as above)."""
    return [Incident(**r) for r in conn.execute(
        "SELECT * FROM rollback_bot.incidents WHERE kind = 'rollback' AND state = 'approved' AND approved_at < %s"
        " ORDER BY id FOR UPDATE SKIP LOCKED", (approved_before,),
    ).fetchall()]


def set_message(conn: psycopg.Connection, incident_id: int, *, channel: str, message_ts: str,
                thread_ts: str | None = None) -> None:
    conn.execute(
        "UPDATE rollback_bot.incidents SET channel = %s, message_ts = %s, thread_ts = coalesce(%s, %s) WHERE id = %s",
        (channel, message_ts, thread_ts, message_ts, incident_id),
    )


def find(conn: psycopg.Connection, incident_id: int, *, lock: bool = False) -> Incident | None:
    """The incident, or None if there is none (``lock``: FOR UPDATE, held until the caller's transaction ends)."""
    row = conn.execute(
        "SELECT * FROM rollback_bot.incidents WHERE id = %s" + (" FOR UPDATE" if lock else ""), (incident_id,)
    ).fetchone()
    return Incident(**row) if row else None


def open_incident_rows(conn: psycopg.Connection) -> list[dict]:
    """Id, kind, model, state, requester and creation time of every incident that is not closed, oldest first
    (``/rollback status``)."""
    return conn.execute(
        "SELECT id, kind, model_name, state, requested_by, created_at FROM rollback_bot.incidents "
        "WHERE state <> ALL(%s) ORDER BY id",
        (sorted(CLOSED),),
    ).fetchall()


def set_estimated_loss(conn: psycopg.Connection, incident_id: int, amount: float) -> None:
    """The incident's latest estimated loss (core.loss keeps every figure in ``rollback_bot.loss_estimates``)."""
    conn.execute("UPDATE rollback_bot.incidents SET estimated_loss = %s WHERE id = %s", (amount, incident_id))


def append_root_cause(conn: psycopg.Connection, incident_id: int, text: str, *, at: datetime) -> bool:
    """Append a person's text to the incident's root cause (a blank line between accounts); False if there is no
    such incident."""
    return conn.execute(
        "UPDATE rollback_bot.incidents SET root_cause = CASE WHEN coalesce(root_cause, '') = '' THEN %s"
        " ELSE root_cause || E'\\n\\n' || %s END, updated_at = %s WHERE id = %s RETURNING id",
        (text, text, at, incident_id),
    ).fetchone() is not None


def record_early_halt(conn: psycopg.Connection, inc: Incident, *, halted_at: datetime, record: dict,
                      at: datetime) -> Incident | None:
    """*Halt now* halted trading before the request was approved: ``halted_at`` and ``plan.early_halt``, no state
    change, only while the incident is still in the state it had (``inc.state``); None if it moved."""
    row = conn.execute(
        "UPDATE rollback_bot.incidents SET halted_at = %s, plan = plan || %s, updated_at = %s"
        " WHERE id = %s AND state = %s RETURNING *",
        (halted_at, Jsonb({"early_halt": record}), at, inc.id, inc.state),
    ).fetchone()
    return Incident(**row) if row else None
