"""When the rollback does not fix it: ``needs_attention``, the follow-up rollback, acceptance with a reason.

Monitoring never resolves over a live problem. When the 30-minute monitoring after the resume or the 24-hour
watch (``core.watch``) finds trouble, ``raise_attention`` moves the incident to ``needs_attention`` (from
``monitoring``, or reopens it from ``resolved``); the escalator pages at once ("the rollback does not resolve
the issue") and its age escalation keeps firing while the incident is open. A person then chooses:

* **another backup**: a new rollback request for the same model is allowed while the old incident needs
  attention (the unique index of migration 008 leaves ``needs_attention`` out). The request records what it
  follows (``plan.follows``: the old incident and when the issue was first reported). When it is approved,
  ``supersede`` closes the old incident as ``superseded`` in the same transaction, so a denied or expired
  follow-up leaves the old incident open and escalating;
* **halt** trading (``/rollback halt``'s path, from the card);
* **accept** with a written reason (an approver; journaled step ``accepted``, audited): ``accept``.

"Issue persists > 2 hours" is counted from the first report, across follow-ups: ``first_reported_at``.

This module does not import the engine (the engine calls ``follow_up_of`` and ``supersede`` inside its own
transactions); functions that change an incident on their own take the engine as an argument.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from core import repository as repo
from core.decision import settle
from core.errors import InvalidTransition, NotAuthorized, RollbackError, clean_text
from core.incidents import (
    MONITORING,
    NEEDS_ATTENTION,
    RESOLVED,
    SUPERSEDED,
    Event,
    Incident,
    audit,
    journal,
)

if TYPE_CHECKING:  # pragma: no cover
    from core.engine import Engine

__all__ = [
    "accept",
    "first_reported_at",
    "follow_up_of",
    "handed_over_to",
    "raise_attention",
    "supersede",
]

ACTOR = "rollback-bot"


def _lock_model(conn: psycopg.Connection, model: str | None) -> None:
    """Serialise, per model, reopening an incident and approving a follow-up rollback."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollback_bot.aftercare:' || %s))", (model or "",))


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def first_reported_at(incident: Incident) -> datetime:
    """When the issue was first reported: the opening of the first incident of a chain of follow-up rollbacks."""
    first = _as_datetime(((incident.plan or {}).get("follows") or {}).get("first_reported_at"))
    return min(first, incident.created_at) if first is not None else incident.created_at


def handed_over_to(conn: psycopg.Connection, incident: Incident) -> int | None:
    """The id of a later rollback of the same model that was approved (the model is in its hands now)."""
    return repo.later_approved_rollback(conn, incident.model_name, after_id=incident.id)


# ------------------------------------------------------------------------------------------ needs attention


def raise_attention(engine: Engine, incident_id: int, reasons: list[str], *, source: str) -> Incident | None:
    """Monitoring found trouble: the incident needs attention (None: it already does, or it is no longer the
    model's incident: failed, superseded, or a later rollback of the model was approved)."""
    now = engine.clock()
    with engine.db.transaction() as conn:
        inc = engine.get(incident_id, conn, lock=True)
        if inc.kind != "rollback" or inc.state not in (MONITORING, RESOLVED):
            return None
        if inc.state == RESOLVED and (inc.plan or {}).get("accepted"):
            return None  # a person accepted it with a reason: the watch goes on reporting, it does not reopen
        _lock_model(conn, inc.model_name)
        if handed_over_to(conn, inc) is not None:
            return None
        previous = dict((inc.plan or {}).get("attention") or {})
        attention = {"count": int(previous.get("count") or 0) + 1, "since": now.isoformat(), "source": source,
                     "reasons": [str(r)[:500] for r in reasons[:10]]}
        # Engine.move: the checked, conditional state change every state change goes through.
        new = engine.move(conn, inc, NEEDS_ATTENTION, resolved_at=None, plan={**(inc.plan or {}),
                                                                            "attention": attention})
        journal(conn, incident_id=inc.id, step="needs_attention", actor=ACTOR, at=now, outcome="warning",
                detail={"reasons": attention["reasons"], "source": source, "reopened": inc.state == RESOLVED})
        audit(conn, at=now, actor=ACTOR, action="needs_attention", outcome="ok", incident_id=inc.id,
              source=source, reasons=attention["reasons"])
    engine.publish(Event("state", new))
    return new


def accept(engine: Engine, *, incident_id: int, user: str, reason: str, allowed: bool) -> Incident:
    """An approver closes an incident that needs attention, with a written reason (journaled and audited)."""
    reason = clean_text(reason)
    now = engine.clock()
    with engine.db.transaction() as conn:
        inc = engine.get(incident_id, conn, lock=True)
        refusal: RollbackError | None = None
        new: Incident | None = None
        if inc.state != NEEDS_ATTENTION:
            refusal = InvalidTransition(f"{inc.ref} is {inc.state.replace('_', ' ')}: there is nothing to accept.")
        elif not allowed:
            refusal = NotAuthorized("Only approvers may accept an incident that needs attention (APPROVERS).")
        elif not reason:
            refusal = RollbackError("A written reason is required to accept an incident that needs attention.")
        if refusal is None:
            accepted = {"by": user, "reason": reason, "at": now.isoformat()}
            new = engine.move(conn, inc, RESOLVED, plan={**(inc.plan or {}), "accepted": accepted})
            journal(conn, incident_id=inc.id, step="accepted", actor=user, at=now, detail={"reason": reason})
            audit(conn, at=now, actor=user, action="accept", outcome="ok", incident_id=inc.id, reason=reason)
    return settle(engine, refusal, new, actor=user, action="accept", incident_id=incident_id)


# ------------------------------------------------------------------------------------------ follow-ups


def follow_up_of(conn: psycopg.Connection, model: str) -> dict | None:
    """At request time: the incident of ``model`` that needs attention, which a new request follows up
    (``{"id", "ref", "first_reported_at"}`` for the new incident's plan), or None."""
    waiting = repo.needing_attention(conn, model)
    if not waiting:
        return None
    old = waiting[-1]
    return {"id": old.id, "ref": old.ref, "first_reported_at": first_reported_at(old).isoformat()}


def supersede(conn: psycopg.Connection, new: Incident, *, at: datetime,
              follow_ups: repo.FollowUps) -> list[Incident]:
    """At approval, in the approval's transaction: the model's incidents that need attention are closed as
    ``superseded`` by ``new`` (journaled and audited; through ``repository.move``, with their follow-ups).
    Returns them, for their state events."""
    if new.kind != "rollback" or not new.model_name:
        return []
    _lock_model(conn, new.model_name)
    out = []
    for old in repo.needing_attention(conn, new.model_name, lock=True, except_id=new.id):
        done = repo.move(conn, old, SUPERSEDED, at=at, follow_ups=follow_ups, plan={
            **(old.plan or {}), "superseded_by": {"id": new.id, "ref": new.ref, "backup": new.target_backup}})
        journal(conn, incident_id=old.id, step="superseded", actor=new.approved_by or ACTOR, at=at,
                detail={"by": new.ref, "backup": new.target_backup})
        audit(conn, at=at, actor=new.approved_by or ACTOR, action="supersede", outcome="ok", incident_id=old.id,
              by=new.ref, backup=new.target_backup)
        out.append(done)
    return out
