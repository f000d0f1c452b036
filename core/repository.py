"""The SQL on the bot's own incidents, journal (``rollback_bot.steps``), audit log and job queue: the engine's,
the runbook steps', and that of the modules around them (approval, resume, aftercare, access, integrity, the
watchdog, the halt watch, the quick fixes; tests/project/test_architecture.py keeps it so).

Every function works in the caller's transaction (``conn``): a state change, its journal row, its audit row
and the jobs it implies commit together or not at all. Nothing here decides anything; the rules (who may
approve, which move is allowed) are in ``core.approval``, ``core.incidents`` and ``core.runbook``.

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
from core.incidents import CLOSED, NEEDS_ATTENTION, Incident, Step, check_transition

FollowUps = Callable[[psycopg.Connection, Incident], None]

__all__ = [
    "FollowUps",
    "JOBS_CHANNEL",
    "approved_not_started",
    "attempt_counts",
    "audit",
    "enqueue",
    "expired_requests",
    "finish_step",
    "get",
    "incident_ids_in",
    "incidents_in",
    "insert_incident",
    "journal",
    "later_approved_rollback",
    "list_incidents",
    "merge_plan",
    "move",
    "needing_attention",
    "no_follow_ups",
    "open_fix",
    "open_incident_ids",
    "open_incidents_among",
    "open_rollback_for",
    "queue_report_refresh",
    "report_written",
    "rollbacks_that_swapped",
    "set_message",
    "start_step",
    "step_succeeded",
    "steps",
    "take_over",
]

JOBS_CHANNEL = "rollback_bot_jobs"

# ------------------------------------------------------------------------------------------------ incidents


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


def merge_plan(conn: psycopg.Connection, incident_id: int, values: dict) -> None:
    """Merge ``values`` into the incident's plan (no state change)."""
    conn.execute("UPDATE rollback_bot.incidents SET plan = plan || %s WHERE id = %s", (Jsonb(values), incident_id))


# ------------------------------------------------------------------------------------------------ the journal


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


# ------------------------------------------------------------------------------------------------ audit, jobs


def audit(conn: psycopg.Connection, *, actor: str, action: str, outcome: str, at: datetime | None = None,
          incident_id: int | None = None, **detail: Any) -> None:
    """One row of the audit log, in the caller's transaction; ``at`` defaults to the database's clock."""
    conn.execute(
        "INSERT INTO rollback_bot.audit_log (at, actor, action, outcome, incident_id, detail)"
        " VALUES (coalesce(%s, clock_timestamp()), %s, %s, %s, %s, %s)",
        (at, actor, action, outcome, incident_id, Jsonb(detail)),
    )


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
