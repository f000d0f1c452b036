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
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from core import approval
from core import repository as repo
from core.db import Database
from core.engine import Engine, enqueue
from core.errors import (
    BackupCorrupt,
    Conflict,
    InvalidTransition,
    NotAuthorized,
    PreflightFailed,
    RollbackError,
    clean_text,
)
from core.incidents import Incident, PreflightReport, audit, journal, utcnow
from core.platform import FEATURE_VIEW, production_rows
from core.registry import BackupInfo, ModelRegistry
from core.runbook.preflight import check_target

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

REFRESH_VIEW = "refresh_feature_view"
REFRESH_VIEW_BLOCKING = "refresh_feature_view_blocking"
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
class FixResult:
    fix: str
    ok: bool
    message: str
    concurrently: bool
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FixOutcome:
    incident: Incident
    result: FixResult | None   # None when the fix had already run (its stored result is in incident.plan)


# --------------------------------------------------------------------------------------------- the view


def _view_state(conn: psycopg.Connection) -> tuple[bool, bool, bool] | None:
    """(populated, has a usable unique index, owned by the current user) of the feature view; None if absent."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            "SELECT c.relispopulated,"
            " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid"
            "         AND i.indpred IS NULL AND i.indexprs IS NULL),"
            " pg_has_role(current_user, c.relowner, 'USAGE')"
            " FROM pg_class c WHERE c.oid = to_regclass(%s) AND c.relkind = 'm'",
            (FEATURE_VIEW,),
        ).fetchone()
    return None if row is None else (bool(row[0]), bool(row[1]), bool(row[2]))


def _latest(conn: psycopg.Connection) -> tuple[date | None, date | None]:
    with conn.cursor(row_factory=tuple_row) as cur:
        view = cur.execute(sql.SQL("SELECT max(date) FROM {}").format(sql.Identifier(FEATURE_VIEW))).fetchone()[0]
        bars = cur.execute("SELECT max(date) FROM daily_bars").fetchone()[0]
    return view, bars


def refresh_feature_view(conn: psycopg.Connection, *, concurrently: bool = True) -> FixResult:
    """Refresh ``ml_training_features`` (found through the search_path) and say what changed.

    Runs in its own transaction, or a savepoint of the caller's. Never raises for a refresh that cannot run:
    the result's ``ok`` is False and its ``message`` says why and what to do instead.
    """
    fix = REFRESH_VIEW if concurrently else REFRESH_VIEW_BLOCKING
    state = _view_state(conn)
    if state is None:
        return FixResult(fix, False, f"{FEATURE_VIEW} is not a materialized view in this database's search_path.",
                         concurrently)
    populated, unique_index, owner = state
    if not owner:
        return FixResult(fix, False, f"The bot's database role does not own {FEATURE_VIEW}, and only its owner may "
                                     "refresh it; ask the platform team to refresh it or grant ownership.",
                         concurrently)
    if concurrently and not unique_index:
        return FixResult(fix, False, f"{FEATURE_VIEW} cannot be refreshed concurrently: it has no unique index"
                                     " without a WHERE clause on plain columns (e.g. on (date, ticker)). Create one,"
                                     " or use the blocking refresh, which locks readers out of the view while it"
                                     " runs.", concurrently)
    if concurrently and not populated:
        return FixResult(fix, False, f"{FEATURE_VIEW} cannot be refreshed concurrently: it has never been populated"
                                     " (created WITH NO DATA). Use the blocking refresh once, which locks readers"
                                     " out of the view while it runs.", concurrently)
    before_view, bars = (None, None) if not populated else _latest(conn)
    stmt = sql.SQL("REFRESH MATERIALIZED VIEW {}{}").format(
        sql.SQL("CONCURRENTLY ") if concurrently else sql.SQL(""), sql.Identifier(FEATURE_VIEW)
    )
    started = time.perf_counter()
    try:
        with conn.transaction():
            with conn.cursor(row_factory=tuple_row) as cur:
                cur.execute(stmt)
    except psycopg.errors.InsufficientPrivilege as exc:
        return FixResult(fix, False, f"Not allowed to refresh {FEATURE_VIEW}: {exc.diag.message_primary}.",
                         concurrently)
    except (psycopg.errors.ObjectNotInPrerequisiteState, psycopg.errors.FeatureNotSupported) as exc:
        hint = f" {exc.diag.message_hint}" if exc.diag.message_hint else ""
        return FixResult(fix, False, f"{FEATURE_VIEW} cannot be refreshed concurrently: {exc.diag.message_primary}."
                                     f"{hint} The blocking refresh would work but locks readers out of the view.",
                         concurrently)
    except psycopg.errors.LockNotAvailable as exc:
        return FixResult(fix, False, f"{FEATURE_VIEW} is busy: {exc.diag.message_primary}. Try again shortly.",
                         concurrently)
    seconds = time.perf_counter() - started
    after_view, bars = _latest(conn)
    detail = {"view_latest_before": _iso(before_view), "view_latest_after": _iso(after_view),
              "bars_latest": _iso(bars)}
    how = "concurrently" if concurrently else "(blocking readers)"
    message = f"Refreshed {FEATURE_VIEW} {how} in {seconds:.1f} s; its latest date is now {_iso(after_view)}"
    if before_view != after_view:
        message += f" (was {_iso(before_view)})"
    if bars is not None and (after_view is None or after_view < bars):
        message += f"; still behind daily_bars ({bars.isoformat()}): the view's query leaves those days out"
    return FixResult(fix, True, message + ".", concurrently, seconds, detail)


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


# --------------------------------------------------------------------------------------------- fix incidents


def _get(conn: psycopg.Connection, incident_id: int, *, lock: bool = False) -> Incident:
    inc = repo.get(conn, incident_id, lock=lock)
    if inc.kind != "fix":
        raise UnknownFix(f"{inc.ref} is a {inc.kind} incident, not a quick fix.")
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


# --------------------------------------------------------------------------------------------- model restore


@dataclass(frozen=True)
class RestoreProposal:
    model: str
    problem: str                   # why the production model.json does not load
    backup: str | None             # the proposed target; None when no backup passes pre-flight
    production_version: str | None  # model_deployment_log's production version
    same_version: bool             # the target is the backup of the version in production
    checks: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    preflight: PreflightReport | None = None
    rule: str = ""

    @property
    def possible(self) -> bool:
        return self.backup is not None


RESTORE_RULE = (
    "the backup of the version model_deployment_log lists as production (the same model, uncorrupted) when it "
    "passes pre-flight, else the newest passing backup by training date; emergency backups last"
)


def _restore_order(backups: list[BackupInfo], production_version: str | None) -> list[BackupInfo]:
    def key(b: BackupInfo) -> tuple:
        return (b.name != production_version, b.is_emergency, -(b.training_date or date.min).toordinal(), b.name)

    return sorted(backups, key=key)


def propose_model_restore(
    registry: ModelRegistry, conn: psycopg.Connection, *, model: str, engine: Engine | None = None,
    settings: Any = None,
) -> RestoreProposal | None:
    """None when the production model.json loads; else the restore target by RESTORE_RULE.

    Each candidate goes through the one pre-flight (``core.runbook.preflight.check_target``, exactly the checks a
    rollback runs): with ``engine`` as ``Engine.preflight`` does it, without it on ``conn`` (the trades source too
    when ``settings`` are given).
    """
    folder = registry.model_dir(model)
    problem = registry.load_problem(folder)
    if problem is None:
        return None
    rows = production_rows(conn, model)
    production_version = rows[0].version if rows else None
    rejected: dict[str, str] = {}
    for b in _restore_order(registry.list_backups(model), production_version):
        try:
            if engine is not None:
                report = engine.preflight(model=model, backup=b.name)
            else:
                report = check_target(registry, settings, model=model, backup=b.name,
                                      transaction=lambda: nullcontext(conn))
        except (PreflightFailed, BackupCorrupt) as exc:
            rejected[b.name] = str(exc).split(" fails pre-flight: ", 1)[-1]
            continue
        checks = list(report.checks)
        return RestoreProposal(model, problem, b.name, production_version, b.name == production_version, checks,
                               rejected, report, RESTORE_RULE)
    return RestoreProposal(model, problem, None, production_version, False, [], rejected, None, RESTORE_RULE)


def request_restore(
    engine: Engine, proposal: RestoreProposal, requested_by: str, *, channel: str | None = None,
    source: str = "slack",
) -> tuple[Incident, PreflightReport]:
    """Open the rollback request that restores the proposal's backup (approved and executed like any rollback)."""
    if proposal.backup is None:
        raise PreflightFailed(
            f"No backup of {proposal.model} passes pre-flight, so the corrupt model.json cannot be restored: "
            + "; ".join(f"{k}: {v}" for k, v in list(proposal.rejected.items())[:5])
        )
    what = "the same version" if proposal.same_version else "the newest backup that passes pre-flight"
    reason = (f"Quick fix: the production model.json of {proposal.model} does not load ({proposal.problem});"
              f" restore {proposal.backup} ({what}).")
    return engine.request_rollback(model=proposal.model, backup=proposal.backup, reason=reason,
                                   requested_by=requested_by, severity="high", channel=channel, source=source)

