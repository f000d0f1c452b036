"""Who may act on what, beyond the role lists of ``core.auth``: heavy commands rate-limited per person, the
incident's own people, and watchdog proposals taken over by a person.

* ``take_heavy_slot``: `/rollback diagnose`, `backups` and `status MODEL` cost seconds of machine time. Each
  person may run ``HEAVY_COMMANDS_PER_MINUTE`` of them a minute; the count lives in PostgreSQL
  (``rollback_bot.command_uses``, serialised per person with an advisory lock), so two bot processes limit a
  person as one.
* ``may_annotate``: *Add root cause* and `/rollback report` belong to the incident's people (requester,
  approver, whoever decided it) and to approvers.
* ``take_over``: the watchdog only proposes. A person (an operator) takes the proposal over as its requester;
  then, as for any request, a different approver approves it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING


from core import repository as repo
from core.decision import settle
from core.errors import Conflict, InvalidTransition, NotAuthorized, RateLimited, RollbackError
from core.incidents import REQUESTED, Incident, already_decided, journal
from core.slack_outbox import queue_card

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["HEAVY_WINDOW", "is_unclaimed_proposal", "may_annotate", "take_heavy_slot", "take_over"]

HEAVY_WINDOW = timedelta(minutes=1)


def take_heavy_slot(engine: Engine, *, user: str, command: str, per_minute: int) -> None:
    """Count one heavy command for ``user``, or raise RateLimited (audited) when the minute's share is used."""
    now = engine.clock()
    with engine.db.transaction() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollback_bot.rate:' || %s))", (user,))
        uses = repo.command_uses_since(conn, user, after=now - HEAVY_WINDOW)
        if len(uses) < per_minute:
            repo.record_command_use(conn, user, command, at=now)
            return
        wait = max(1, int((uses[0] + HEAVY_WINDOW - now).total_seconds() + 0.999))
    engine.audit(None, actor=user, action=command, outcome="refused", reason="rate limited")
    raise RateLimited(f"You ran {per_minute} heavy commands (`diagnose`, `backups`, `status MODEL`) in the last"
                      f" minute; try again in {wait} s.")


def may_annotate(inc: Incident, user: str, *, is_approver: bool, owns_followup: bool = False) -> bool:
    """*Add root cause* and `/rollback report`: the incident's people (the owners of its follow-ups among them,
    core.followups) and approvers."""
    return is_approver or owns_followup or (bool(user) and user in {inc.requested_by, inc.approved_by, inc.decided_by})


def is_unclaimed_proposal(inc: Incident) -> bool:
    """A watchdog proposal no person has taken over yet: it cannot be approved."""
    return inc.source == "watchdog" and not (inc.plan or {}).get("taken_over")


def take_over(engine: Engine, *, incident_id: int, user: str, allowed: bool) -> Incident:
    """A person becomes the requester of a watchdog proposal (audited); a different approver approves it."""
    refusal: RollbackError | None = None
    new: Incident | None = None
    with engine.db.transaction() as conn:
        inc = engine.get(incident_id, conn, lock=True)
        if inc.kind != "rollback" or inc.source != "watchdog":
            refusal = InvalidTransition(f"{inc.ref} is not a watchdog proposal.")
        elif inc.state != REQUESTED:
            refusal = already_decided(inc)
        elif not is_unclaimed_proposal(inc):
            refusal = Conflict(f"{inc.ref} was already taken over by {inc.requested_by}.")
        elif not allowed:
            refusal = NotAuthorized("Only operators may take over a watchdog proposal (OPERATORS).")
        else:
            now = engine.clock()
            claim = {"by": user, "from": inc.requested_by, "at": now.isoformat()}
            new = repo.take_over(conn, inc, user=user, claim=claim, at=now,
                                 expires_at=now + timedelta(minutes=engine.settings.approval_timeout_minutes))
            journal(conn, incident_id=inc.id, step="taken_over", actor=user, at=now, detail=claim)
            engine.audit(conn, actor=user, action="take_over", outcome="ok", incident_id=inc.id)
            queue_card(engine, conn, new)  # the card names the new requester
    return settle(engine, refusal, new, actor=user, action="take_over", incident_id=incident_id)
