"""Quick fixes from the runbook's "common issues" section, approved like a rollback when they change state.

Two fixes:

* **Refresh feature view** -- ``REFRESH MATERIALIZED VIEW CONCURRENTLY ml_training_features`` (readers keep
  reading while it runs). It is a state change, so it is journaled as an incident of kind ``fix``::

      requested → approved → resolved | failed
                ↘ denied (another person) / cancelled (the requester withdrew)

  ``request_fix`` opens it (one open fix of a kind at a time; like a rollback request it expires when nobody
  approves it within APPROVAL_TIMEOUT_MINUTES), ``approve_fix`` applies the two-person rule
  with a conditional UPDATE (exactly one approval wins) and queues a ``fix`` job, ``run_fix`` runs an
  approved fix exactly once (the incident row stays locked while the refresh runs, so a second runner waits
  and then finds it done). Every step goes to ``rollback_bot.steps``, every decision to ``audit_log``.
  When the view cannot be refreshed concurrently (no unique index without a WHERE clause, or it was never
  populated) the fix fails with a message saying why; the blocking refresh (which locks readers out of the
  view while it runs) is a separate fix, ``refresh_feature_view_blocking``, requested and approved on its own.
* **Restore corrupt model file** -- when the production ``model.json`` does not load,
  ``propose_model_restore`` picks a target and ``request_restore`` opens an ordinary rollback request for
  it (pre-flight, approval by a second person, emergency backup, atomic restore, verification): a restore
  is never done outside the engine's rollback flow.
* **Retrain** (the runbook's "overfitted model") -- an incident of kind ``fix`` like the refresh, with the
  model and the training window's start date in its plan; the approved run is ``core.retrain.retrain``: its
  output becomes a new ``backup_retrain_*`` candidate, deployed only by an ordinary approved rollback.

The refresh itself is ``core.feature_view``, the restore proposal ``core.model_restore``; their public names are
re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import psycopg

from core import approval
from core import repository as repo
from core.db import Database
from core.engine import Engine, enqueue
from core.errors import Conflict, InvalidTransition, NotAuthorized, RollbackError, clean_text
from core.feature_view import REFRESH_VIEW, REFRESH_VIEW_BLOCKING, FixResult, refresh_feature_view
from core.incidents import Incident, audit, journal, utcnow
from core.model_restore import RESTORE_RULE, RestoreProposal, propose_model_restore, request_restore
from core.registry import ModelRegistry

__all__ = [
    "FIXES",
    "FixOutcome",
    "FixResult",
    "RETRAIN",
    "RestoreProposal",
    "RetrainRunner",
    "UnknownFix",
    "approve_fix",
    "deny_fix",
    "get_fix",
    "propose_model_restore",
    "refresh_feature_view",
    "register",
    "request_fix",
    "request_restore",
    "run_fix",
]

log = logging.getLogger("rollback_bot.fixes")

RETRAIN = "retrain"  # core.retrain: RETRAIN_COMMAND's output lands as a new backup_retrain_* candidate
#: fix name -> button label
FIXES: dict[str, str] = {
    REFRESH_VIEW: "Refresh feature view",
    REFRESH_VIEW_BLOCKING: "Refresh feature view (locks readers)",
    RETRAIN: "Retrain model",
}
FIX_JOB = "fix"
BOT = "rollback-bot"


class UnknownFix(RollbackError):
    """No such quick fix, or the incident is not a fix."""


# Who decides a fix request, and the words (core.approval: the same path as a rollback's).
APPROVAL = approval.Rules(
    kind="fix", approve_action="fix_approve", deny_action="fix_deny",
    not_approver="Only approvers may approve a fix that changes the platform.",
    not_denier="Only approvers or the requester may deny a fix.",
    ask_again="request the fix again",
    wrong_kind=lambda inc: UnknownFix(f"{inc.ref} is a {inc.kind} incident, not a quick fix."),
)


@dataclass(frozen=True)
class FixOutcome:
    incident: Incident
    result: FixResult | None   # None when the fix had already run (its stored result is in incident.plan)


# --------------------------------------------------------------------------------------------- fix incidents


def _get(conn: psycopg.Connection, incident_id: int, *, lock: bool = False) -> Incident:
    inc = repo.get(conn, incident_id, lock=lock)
    if inc.kind != "fix":
        raise APPROVAL.wrong_kind(inc)
    return inc


def get_fix(db: Database, incident_id: int) -> Incident:
    with db.transaction() as conn:
        return _get(conn, incident_id)


def request_fix(
    db: Database, *, fix: str, requested_by: str, reason: str = "", model: str | None = None,
    channel: str | None = None, source: str = "slack", clock: Callable[[], datetime] = utcnow,
    expires_in: timedelta = timedelta(minutes=15), start_date: date | None = None,
    follow_ups: Callable[[Any, Incident], None] | None = None,
) -> Incident:
    """Open a fix request awaiting a second person's approval; a second open request of the fix is a Conflict.
    Not approved within ``expires_in`` (APPROVAL_TIMEOUT_MINUTES), it is cancelled like a rollback request."""
    if fix not in FIXES:
        raise UnknownFix(f"There is no quick fix {fix!r}; known: {', '.join(FIXES)}.")
    requested_by = (requested_by or "").strip()
    if not requested_by:
        raise NotAuthorized("A fix request needs the requester's name.")
    reason = clean_text(reason) or FIXES[fix]
    plan: dict[str, Any] = {"fix": fix, "label": FIXES[fix]}
    if fix == RETRAIN:
        if not model or start_date is None:
            raise UnknownFix("A retrain request needs the model and the training start date.")
        if start_date > clock().date():
            raise UnknownFix(f"The training start date {start_date.isoformat()} is in the future.")
        plan.update(label=f"{FIXES[fix]} {model} from {start_date.isoformat()}", start_date=start_date.isoformat())
    with db.transaction() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollback_bot.fix:' || %s))", (fix,))
        other = repo.open_fix(conn, fix)
        if other is not None:
            raise Conflict(f"'{FIXES[fix]}' is already open as {other.ref} ({other.state}, requested by"
                           f" {other.requested_by}); nothing new was posted.")
        now = clock()
        inc = repo.insert_incident(conn, follow_ups=follow_ups or repo.no_follow_ups, kind="fix", model_name=model,
                                   state="requested", reason=reason,
                                   severity="medium", requested_by=requested_by, source=source, channel=channel,
                                   plan=plan, created_at=now, updated_at=now, expires_at=now + expires_in)
        journal(conn, incident_id=inc.id, step="requested", actor=requested_by, at=now,
                detail={"fix": fix, "reason": reason})
        audit(conn, at=now, actor=requested_by, action="fix_request", outcome="ok", incident_id=inc.id, fix=fix)
    return inc


def approve_fix(
    db: Database, *, incident_id: int, approver: str, allowed: bool = True, enqueue_run: bool = True,
    clock: Callable[[], datetime] = utcnow, follow_ups: repo.FollowUps | None = None,
) -> Incident:
    """Two-person rule and exactly-once, as for a rollback (``core.approval``); queues the ``fix`` job (see
    ``register``)."""

    def queue_run(conn: psycopg.Connection, inc: Incident) -> None:
        if enqueue_run:
            enqueue(conn, FIX_JOB, incident_id=inc.id, dedupe_key=f"fix:{inc.id}")

    inc, _ = approval.approve(db, APPROVAL, incident_id=incident_id, approver=approver, allowed=allowed, clock=clock,
                              then=queue_run, follow_ups=follow_ups or repo.no_follow_ups)
    return inc


def deny_fix(
    db: Database, *, incident_id: int, user: str, note: str = "", allowed: bool = True,
    clock: Callable[[], datetime] = utcnow, follow_ups: repo.FollowUps | None = None,
) -> Incident:
    """Deny a fix request (an approver) or withdraw it (the requester: ``cancelled``), as for a rollback."""
    return approval.deny(db, APPROVAL, incident_id=incident_id, user=user, note=note, allowed=allowed, clock=clock,
                         follow_ups=follow_ups or repo.no_follow_ups)


@dataclass(frozen=True)
class RetrainRunner:
    """What a retrain needs beyond the database: the registry, RETRAIN_COMMAND and its timeout, and where its
    output goes while it runs (``on_output(incident, last_lines, running)``)."""

    registry: ModelRegistry
    command: list[str] | None
    timeout_seconds: float
    on_output: Callable[[Incident, list[str], bool], None] | None = None


def run_fix(
    db: Database, *, incident_id: int, actor: str = BOT, clock: Callable[[], datetime] = utcnow,
    retrainer: RetrainRunner | None = None, follow_ups: repo.FollowUps | None = None,
) -> FixOutcome:
    """Run an approved fix once: approved → resolved (it worked) or failed (with the reason).

    The incident row is locked for the whole run, so a concurrent second call waits, then finds the fix
    done and returns it with ``result`` None. A fix that is not approved is an InvalidTransition.
    """
    with db.transaction() as conn:
        inc = _get(conn, incident_id, lock=True)
        if inc.state in ("resolved", "failed"):
            return FixOutcome(inc, None)
        if inc.state != "approved":
            raise InvalidTransition(f"{inc.ref} is {inc.state}: a fix runs only after a second person approved it.")
        fix = (inc.plan or {}).get("fix")
        started = clock()
        if fix in (REFRESH_VIEW, REFRESH_VIEW_BLOCKING):
            result = refresh_feature_view(conn, concurrently=fix == REFRESH_VIEW)
        elif fix == RETRAIN:
            result = _run_retrain(conn, inc, retrainer, started)
        else:
            result = FixResult(str(fix), False, f"Unknown fix {fix!r}.", False)
        now = clock()
        state = "resolved" if result.ok else "failed"
        stored = {"ok": result.ok, "message": result.message, "seconds": round(result.seconds, 3), **result.detail}
        done = repo.move(conn, inc, state, at=now, follow_ups=follow_ups or repo.no_follow_ups,
                         error=None if result.ok else result.message[:2000],
                         plan={**(inc.plan or {}), "result": stored})
        journal(conn, incident_id=incident_id, step=str(fix), actor=actor, at=now, started=started,
                outcome="ok" if result.ok else "failed", detail=stored,
                error=None if result.ok else result.message[:2000])
        audit(conn, at=now, actor=actor, action="fix_run", outcome="ok" if result.ok else "failed",
               incident_id=incident_id, fix=fix, message=result.message)
    return FixOutcome(done, result)


def _run_retrain(conn: psycopg.Connection, inc: Incident, runner: RetrainRunner | None, now: datetime) -> FixResult:
    from core.retrain import retrain

    if runner is None:
        return FixResult(RETRAIN, False, "This process cannot run a retrain (no retrain runner).", False)
    plan = inc.plan or {}
    output = None if runner.on_output is None else (lambda lines, running: runner.on_output(inc, lines, running))
    out = retrain(conn, runner.registry, command=runner.command, timeout_seconds=runner.timeout_seconds,
                  model=str(inc.model_name), start_date=date.fromisoformat(plan["start_date"]), now=now,
                  on_output=output)
    return FixResult(RETRAIN, out.ok, out.message, False, out.seconds, out.detail)


def register(worker: Any, *, on_done: Callable[[FixOutcome], None] | None = None,
             retrainer: RetrainRunner | None = None) -> None:
    """Run approved fixes from the job queue (``approve_fix`` queues them); ``on_done`` hears each outcome."""

    def handle(job: dict) -> None:
        outcome = run_fix(worker.db, incident_id=job["incident_id"], clock=worker.engine.clock, retrainer=retrainer,
                          follow_ups=worker.engine.write_follow_ups)
        if on_done is not None and outcome.result is not None:
            on_done(outcome)

    worker.on(FIX_JOB, handle)
