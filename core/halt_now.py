"""*Halt now*: an operator halts automated trading on a rollback request before it is approved.

The runbook halts first. Waiting for the second person must not keep a bad model trading, so an operator may halt
trading from the request itself:

* Trading halts at once, in one transaction (``core.trading.halt``: each client's own settings saved). The request
  holds the halt (holder ``incident:{id}``, the same holder its rollback's halt step uses), so when the request is
  approved, the rollback's halt step joins this halt instead of starting another, and the rollback resumes
  trading as usual when it is done.
* It is journaled as the step ``halt`` (with ``before_approval``), so the runbook's "trading halted" is met when
  trading really halted; the incident's ``halted_at`` is set and ``plan["early_halt"]`` says who and when.
* Once per request: a second click is answered with who halted it and when. Only while the request waits for
  approval, and only by an operator (the caller says whether the person is one).
* A denial or expiry of the request does NOT resume trading. A careful desk does not let a "no" to the rollback
  silently switch a model that somebody thought bad back on: trading stays halted, the thread says so, and an
  approver resumes with ``/rollback resume`` after a look (resume lets go of the holders of closed incidents).
  While the request is open, ``/rollback resume`` keeps its halt (the request holds it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core import repository as repo
from core import slack_outbox, trading
from core.errors import Conflict, InvalidTransition, NotAuthorized, RollbackError
from core.incidents import REQUESTED, Event, Incident, already_decided, journal

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["STEP_EVENT", "denial_note", "early_halt", "halt_before_approval"]

STEP_EVENT = "halt_now"  # the engine event's step name (the journal's is "halt")


def early_halt(incident: Incident) -> dict | None:
    """Who halted trading on this request before approval, and when (None: nobody did)."""
    return (incident.plan or {}).get("early_halt")


def halt_before_approval(engine: Engine, *, incident_id: int, user: str,
                         allowed: bool) -> tuple[Incident, trading.HaltResult]:
    """Halt automated trading for a rollback request that is waiting for approval (see the module docstring)."""
    now = engine.clock()
    with engine.db.transaction() as conn:
        inc = engine.get(incident_id, conn, lock=True)
        refusal: RollbackError | None = None
        done = early_halt(inc)
        if inc.kind != "rollback":
            refusal = InvalidTransition(f"{inc.ref} is not a rollback request.")
        elif not allowed:
            refusal = NotAuthorized("Only operators may halt trading (OPERATORS).")
        elif done:
            refusal = Conflict(f"Trading was already halted for {inc.ref} by {done.get('by')} at"
                               f" {str(done.get('at', ''))[11:19]} UTC; nothing more to do.")
        elif inc.state != REQUESTED:
            refusal = already_decided(inc)
        elif inc.expires_at is not None and now > inc.expires_at:
            refusal = InvalidTransition(f"{inc.ref} expired before it was approved; nothing was halted."
                                        " `/rollback halt` halts trading on its own.")
        if refusal is not None:
            conn.rollback()
            engine.audit(conn, actor=user, action="halt_now", outcome="refused", incident_id=incident_id,
                         reason=str(refusal))
            conn.commit()
            raise refusal
        result = trading.halt(conn, holder=f"incident:{inc.id}", actor=user,
                              reason=f"{inc.ref} halt before approval of the rollback of {inc.model_name}:"
                                     f" {inc.reason}"[:500])
        record = {"by": user, "at": result.halted_at.isoformat(), "halt_id": result.halt_id,
                  "joined": result.joined, "clients": result.clients}
        new = repo.record_early_halt(conn, inc, halted_at=result.halted_at, record=record, at=now)
        if new is None:  # it is locked above: cannot happen; never publish a halt that was not recorded
            raise Conflict(f"{inc.ref} changed while trading was halted for it; another process is handling it.")
        detail = {"halt_id": result.halt_id, "clients": result.clients, "joined": result.joined,
                  "before_approval": True}
        journal(conn, incident_id=inc.id, step="halt", actor=user, at=engine.clock(), started=now, detail=detail)
        engine.audit(conn, actor=user, action="halt_now", outcome="ok", incident_id=inc.id, halt_id=result.halt_id,
                     joined=result.joined)
        queued = slack_outbox.queue_event(engine, conn, new, STEP_EVENT, {**detail, "by": user})
    engine.publish(Event("step", new, STEP_EVENT, {**detail, "by": user}, queued=queued))
    return new, result


def denial_note(incident: Incident) -> str | None:
    """For a request closed without a rollback after *Halt now*: trading stays halted, and who may resume."""
    done = early_halt(incident)
    if not done or incident.kind != "rollback" or incident.state not in ("denied", "cancelled"):
        return None
    return (f"Trading stays halted: it was halted before approval (Halt now), and a {incident.state} request does"
            " not resume it. An approver resumes with `/rollback resume` once the desk agrees.")
