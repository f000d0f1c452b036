"""``/rollback resume``: one transaction under the trading lock, and never on production files that do not match.

* The check that no rollback is under way and the release of the halt happen in ONE transaction holding the
  trading lock (the lock every halt takes), so a rollback approved meanwhile either is seen as under way
  (resume refused) or halts after the resume. Holders of rollbacks that are not closed are never dropped: a
  rollback kept halted after verification resumes through its own resume step (which re-checks the model);
  one whose revert failed keeps trading halted until the files pass the check below or are overridden.
* Before that, every model's files are compared with its production row (``core.integrity``). On any
  mismatch resume is refused, naming the files and the versions they are. Two different approvers may
  override: the first asks (``request_override``: an incident of kind ``resume`` holding exactly which files
  differ), a second approver confirms (``approve_override``); the override applies to those files as they
  were (a fingerprint), expires like a rollback request, is used once, and all of it is journaled and audited.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from core import approval
from core import repository as repo
from core import trading
from core.db import step_limits
from core.errors import Conflict, FilesMismatch, InvalidTransition, NotAuthorized, RollbackError, clean_text
from core.incidents import (
    APPROVED,
    CANCELLED,
    FAILED,
    HALTED,
    REQUESTED,
    FILES_MIXED,
    RESOLVED,
    RESUMING,
    RUNNABLE,
    HALT_NOT_EFFECTIVE,
    VERIFIED,
    Event,
    Incident,
    journal,
)
from core.integrity import FileMismatch, fingerprint, production_mismatches

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["OVERRIDE_KIND", "approve_override", "check_files", "request_override", "resume_trading"]

OVERRIDE_KIND = "resume"
TRADING_LOCK = "SELECT pg_advisory_xact_lock(hashtext('rollback_bot.trading'))"


def check_files(engine: Engine) -> list[FileMismatch]:
    with engine.db.transaction() as conn:
        return production_mismatches(conn, engine.registry)


def mismatch_text(mismatches: list[FileMismatch], limit: int = 8) -> str:
    text = "; ".join(m.text for m in mismatches[:limit])
    return text + (f"; and {len(mismatches) - limit} more" if len(mismatches) > limit else "")


def resume_trading(engine: Engine, *, user: str, override: Incident | None = None) -> trading.ResumeResult:
    """Resume automated trading (see the module's docstring). ``override``: an approved override incident."""
    with engine.db.transaction() as conn:  # said first (files mid-swap differ anyway); checked again below
        _refuse_if_busy(engine, conn, user)
    mismatches = check_files(engine)
    if mismatches and (override is None or (override.plan or {}).get("fingerprint") != fingerprint(mismatches)):
        engine.audit(None, actor=user, action="resume", outcome="refused", reason="production files do not match",
                     mismatches=[m.text for m in mismatches])
        raise FilesMismatch(
            "Trading was not resumed: the production files do not match their production rows: "
            f"{mismatch_text(mismatches)}. Put the right files back, or two different approvers override.",
            mismatches)
    s = engine.settings
    moved: list[Incident] = []
    to_run: list[int] = []
    with step_limits(s.step_lock_timeout_seconds, s.step_statement_timeout_seconds), engine.db.transaction() as conn:
        conn.execute(TRADING_LOCK)  # every halt takes it: nothing halts or joins the halt until we commit
        _refuse_if_busy(engine, conn, user)
        now = engine.clock()
        for inc in repo.incidents_in(conn, [VERIFIED, RESUMING, *FILES_MIXED], lock=True):
            if inc.state == VERIFIED:
                moved.append(engine.move(conn, inc, RESUMING))
                to_run.append(inc.id)
            elif inc.state == RESUMING:
                to_run.append(inc.id)  # its own resume step (interrupted) lets go of its holder
            else:  # files were mixed by a failed revert: they pass the check now, or two approvers overrode
                how = (f"override {override.ref} by {override.requested_by} and {override.approved_by}"
                       if override is not None and mismatches else "the files match the production row again")
                moved.append(engine.move(conn, inc, FAILED, decision_note=f"closed at resume: {how}"))
                journal(conn, incident_id=inc.id, step="files_checked", actor=user, at=now,
                        detail={"note": how})
        for halt in repo.incidents_in(conn, [HALTED], kind="halt", lock=True):
            moved.append(engine.move(conn, halt, RESOLVED, resumed_at=now))
        keep = [f"incident:{i}" for i in repo.open_incident_ids(conn)]
        result = trading.release(conn, holder="", actor=user, force=True, keep=keep)
        if override is not None:
            current = engine.get(override.id, conn, lock=True)
            if current.kind != OVERRIDE_KIND or current.state != APPROVED:
                raise Conflict(f"{override.ref} was already used or cancelled; nothing was resumed.")
            moved.append(engine.move(conn, current, RESOLVED, resumed_at=now))
            journal(conn, incident_id=override.id, step="resolved", actor=user, at=now,
                    detail={"note": "trading resumed under this override"})
        engine.audit(conn, actor=user, action="resume", outcome="ok", resumed=result.resumed,
                     override=override.ref if override else None,
                     approvers=[override.requested_by, override.approved_by] if override else None,
                     mismatches=[m.text for m in mismatches], kept_by=result.remaining_holders)
    for inc in moved:
        engine.publish(Event("state", inc))
    for incident_id in to_run:
        engine.execute(incident_id, actor=user)
    return _outcome(engine, result, to_run)


def _refuse_if_busy(engine: Engine, conn, user: str) -> None:  # noqa: ANN001
    """InvalidTransition (audited apart from ``conn``'s transaction, which is rolled back) while any rollback is
    under way."""
    busy = repo.incidents_in(conn, (RUNNABLE - {RESUMING}) | {HALT_NOT_EFFECTIVE})
    if busy:
        refs = ", ".join(f"{i.ref} ({i.state})" for i in busy)
        conn.rollback()
        engine.audit(conn, actor=user, action="resume", outcome="refused", reason=f"rollbacks under way: {refs}")
        conn.commit()
        raise InvalidTransition(f"Trading cannot resume while a rollback is under way: {refs}.")


def _outcome(engine: Engine, released: trading.ResumeResult, resumed_by_steps: list[int]) -> trading.ResumeResult:
    """What the resume did: the release above, or the resume step of a rollback that let go last."""
    if released.resumed or not resumed_by_steps:
        return released
    for step in reversed([s for i in resumed_by_steps for s in engine.steps(i) if s.step == "resume"]):
        d = step.detail or {}
        if d.get("resumed"):
            return trading.ResumeResult(True, released.halt_id, restored=int(d.get("restored_clients") or 0),
                                        left_alone=list(d.get("left_alone") or []))
    with engine.db.transaction() as conn:
        current = trading.active_halt(conn)
        still = trading.holders(conn, current["id"]) if current else []
    return trading.ResumeResult(current is None, released.halt_id, remaining_holders=still)


# ------------------------------------------------------------------------------------------- overrides


def request_override(engine: Engine, *, user: str, allowed: bool = True) -> tuple[Incident, bool]:
    """An approver asks to resume on files that do not match: an override request a second approver confirms.
    Returns the request and whether it is new (an identical open one is returned as it is)."""
    if not allowed:
        engine.audit(None, actor=user, action="resume_override_request", outcome="refused", reason="not an approver")
        raise NotAuthorized("Only approvers may ask to override the resume check (APPROVERS).")
    mismatches = check_files(engine)
    if not mismatches:
        raise InvalidTransition("The production files match their production rows: `/rollback resume` needs no"
                                " override.")
    fp = fingerprint(mismatches)
    now = engine.clock()
    events: list[Incident] = []
    with engine.db.transaction() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollback_bot.resume_override'))")
        for other in repo.incidents_in(conn, [REQUESTED], kind=OVERRIDE_KIND, lock=True):
            if (other.plan or {}).get("fingerprint") == fp and (other.expires_at is None or other.expires_at > now):
                return other, False
            events.append(_cancel(engine, conn, other, "the production files changed; a new request replaces it"))
        text = mismatch_text(mismatches)
        inc = repo.insert_incident(  # with its follow-ups (core.outbox): its timers commit with the request
            conn, follow_ups=engine.write_follow_ups, kind=OVERRIDE_KIND, state=REQUESTED,
            reason=clean_text(f"Resume trading although the production files do not match: {text}"),
            severity="critical", requested_by=user,
            plan={"fingerprint": fp, "mismatches": [m.as_dict() for m in mismatches]}, created_at=now,
            updated_at=now, expires_at=now + timedelta(minutes=engine.settings.approval_timeout_minutes))
        journal(conn, incident_id=inc.id, step="requested", actor=user, at=now,
                detail={"reason": text, "fingerprint": fp})
        engine.audit(conn, actor=user, action="resume_override_request", outcome="ok", incident_id=inc.id,
                     mismatches=[m.text for m in mismatches])
    for other in [*events, inc]:
        engine.publish(Event("state", other))
    return inc, True


# The override is approved on the one approval path (core.approval): kind, still requested, never by the approver
# who asked, approvers only, within the approval window; the transition checked, exactly one approval wins.
OVERRIDE = approval.Rules(
    kind=OVERRIDE_KIND, approve_action="resume_override", deny_action="resume_override_deny",
    not_approver="Only approvers may override the resume check (APPROVERS).",
    not_denier="Only approvers may cancel a resume override.",
    ask_again="run `/rollback resume` again",
    wrong_kind=lambda inc: InvalidTransition(f"{inc.ref} is not a request to override the resume check."),
    own_request="You asked for this override: a second, different approver must confirm it.",
    expired="expired before a second approver confirmed it",
)


def approve_override(engine: Engine, *, incident_id: int, approver: str,
                     allowed: bool = True) -> tuple[Incident, trading.ResumeResult]:
    """A second, different approver confirms an override request (``core.approval``): trading resumes on exactly
    those files."""
    approved, _ = approval.approve(engine.db, OVERRIDE, incident_id=incident_id, approver=approver, allowed=allowed,
                                   clock=engine.clock, follow_ups=engine.write_follow_ups)
    engine.publish(Event("state", approved))
    try:
        result = resume_trading(engine, user=approver, override=approved)
    except RollbackError as exc:
        with engine.db.transaction() as conn:
            current = engine.get(incident_id, conn, lock=True)
            cancelled = _cancel(engine, conn, current, f"not used: {exc}"[:2000]) \
                if current.state in (REQUESTED, APPROVED) else None
        if cancelled is not None:
            engine.publish(Event("state", cancelled))
        if isinstance(exc, FilesMismatch):
            raise FilesMismatch(f"The production files changed after {approved.ref} was asked for, so it does not"
                                f" apply (it is cancelled). {exc}", exc.mismatches) from None
        raise
    return engine.get(incident_id), result


def _cancel(engine: Engine, conn, inc: Incident, note: str) -> Incident:  # noqa: ANN001
    """A request or approved override not used: cancelled (``Engine.move``, with its follow-ups), journaled."""
    if inc.state not in (REQUESTED, APPROVED):
        return inc
    new = engine.move(conn, inc, CANCELLED, decision_note=note)
    journal(conn, incident_id=inc.id, step="cancelled", actor="rollback-bot", at=engine.clock(),
            detail={"note": note})
    return new
