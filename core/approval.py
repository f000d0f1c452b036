"""One approval path for every request a second person decides: rollbacks (``core.engine``), quick fixes
(``core.fixes``, whose ``Rules`` are ``core.fixes.APPROVAL``) and resume overrides (``core.resume.OVERRIDE``).

``approve`` applies, in this order and in one transaction holding the incident's row lock:

1. the incident is of the expected kind and still ``requested`` (else who decided it first: ``already_decided``);
2. the kind's own rule, if any (a rollback the watchdog proposed must first be taken over by a person);
3. the two-person rule: never the requester's own request;
4. the approver rule: only people allowed to approve (APPROVERS);
5. the approval window: a request past it is cancelled (journaled ``expired``), and the approval refused.

Then ``requested → approved`` goes through ``core.repository.move``, so the transition is checked against the
kind's table in ``core.incidents`` and made with a conditional UPDATE: exactly one approval wins; the
follow-up jobs of the new state (``follow_ups``: report, e-mail, escalation timers, core.outbox) commit with it.
A refusal is audited apart from the transaction that locked the row (it is kept even though the approval is not).

``deny`` is the other decision: an approver denies (``denied``), or the requester withdraws (``cancelled``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

import psycopg

from core import repository as repo
from core.db import Database
from core.errors import InvalidTransition, NotAuthorized, RollbackError, clean_text
from core.incidents import APPROVED, CANCELLED, DENIED, REQUESTED, Incident, already_decided

__all__ = ["ROLLBACK", "Rules", "approve", "deny", "expire"]

BOT = "rollback-bot"


@dataclass(frozen=True)
class Rules:
    """What differs between the kinds of request: the words, and a kind's own extra rule."""

    kind: str                      # the incidents' kind
    approve_action: str            # the audit log's action for an approval
    deny_action: str               # … and for a denial
    not_approver: str              # the refusal of someone not allowed to approve
    not_denier: str                # the refusal of someone who may not deny
    ask_again: str                 # how to ask again after the window passed ("request it again")
    wrong_kind: Callable[[Incident], RollbackError]
    extra: Callable[[Incident], RollbackError | None] = lambda inc: None
    own_request: str = "You cannot approve your own request: a second person must approve it."
    expired: str = "expired before it was approved"  # "INC-n {expired}; {ask_again}."


def _unclaimed_proposal(inc: Incident) -> RollbackError | None:
    from core.access import is_unclaimed_proposal

    if is_unclaimed_proposal(inc):
        return NotAuthorized("The watchdog proposed this rollback: a person takes it over as requester"
                             " (*Take over*), then a different approver approves it.")
    return None


ROLLBACK = Rules(
    kind="rollback", approve_action="approve", deny_action="deny",
    not_approver="Only approvers may approve a rollback.",
    not_denier="Only approvers or the requester may deny a rollback.",
    ask_again="request it again",
    wrong_kind=lambda inc: InvalidTransition(f"{inc.ref} is a {inc.kind} incident, not a rollback request."),
    extra=_unclaimed_proposal,
)


def approve(db: Database, rules: Rules, *, incident_id: int, approver: str, allowed: bool,
            clock: Callable[[], datetime], follow_ups: repo.FollowUps,
            then: Callable[[psycopg.Connection, Incident], object] | None = None) -> tuple[Incident, object]:
    """``requested → approved`` by a second person (see the module's docstring). ``then(conn, incident)`` runs in
    the approval's transaction (the job that executes it, superseded incidents); its result is returned."""
    with db.transaction() as conn:
        inc = repo.get(conn, incident_id, lock=True)
        now = clock()
        refusal: RollbackError | None
        if inc.kind != rules.kind:
            refusal = rules.wrong_kind(inc)
        elif inc.state != REQUESTED:
            refusal = already_decided(inc)
        else:
            refusal = rules.extra(inc)
        if refusal is None and approver == inc.requested_by:
            refusal = NotAuthorized(rules.own_request)
        elif refusal is None and not allowed:
            refusal = NotAuthorized(rules.not_approver)
        elif refusal is None and inc.expires_at is not None and now > inc.expires_at:
            repo.move(conn, inc, CANCELLED, at=now, follow_ups=follow_ups, decision_note="approval window expired")
            repo.journal(conn, incident_id=incident_id, step="expired", actor=BOT, at=now, outcome="skipped")
            conn.commit()  # the expiry stands
            refusal = InvalidTransition(f"{inc.ref} {rules.expired}; {rules.ask_again}.")
        if refusal is not None:
            _refuse(conn, refusal, actor=approver, action=rules.approve_action, incident_id=incident_id)
        new = repo.move(conn, inc, APPROVED, at=now, follow_ups=follow_ups, approved_by=approver, decided_by=approver,
                        approved_at=now)
        repo.journal(conn, incident_id=incident_id, step="approved", actor=approver, at=now)
        repo.audit(conn, actor=approver, action=rules.approve_action, outcome="ok", incident_id=incident_id)
        extra = then(conn, new) if then is not None else None
    return new, extra


def deny(db: Database, rules: Rules, *, incident_id: int, user: str, note: str, allowed: bool,
         clock: Callable[[], datetime], follow_ups: repo.FollowUps) -> Incident:
    """An approver denies the request (``denied``) or its requester withdraws it (``cancelled``)."""
    note = clean_text(note)
    with db.transaction() as conn:
        inc = repo.get(conn, incident_id, lock=True)
        now = clock()
        refusal: RollbackError | None = None
        if inc.kind != rules.kind:
            refusal = rules.wrong_kind(inc)
        elif not allowed and user != inc.requested_by:
            refusal = NotAuthorized(rules.not_denier)
        elif inc.state != REQUESTED:
            refusal = already_decided(inc)
        if refusal is not None:
            _refuse(conn, refusal, actor=user, action=rules.deny_action, incident_id=incident_id)
        state = CANCELLED if user == inc.requested_by else DENIED
        new = repo.move(conn, inc, state, at=now, follow_ups=follow_ups, decided_by=user, decision_note=note)
        repo.journal(conn, incident_id=incident_id, step=state, actor=user, at=now,
                     detail={"note": note} if note else None)
        repo.audit(conn, actor=user, action=rules.deny_action, outcome="ok", incident_id=incident_id, note=note)
    return new


def _refuse(conn: psycopg.Connection, refusal: RollbackError, *, actor: str, action: str,
            incident_id: int) -> NoReturn:
    """Audit a refused decision apart from the transaction that locked the incident (rolled back), and raise it."""
    conn.rollback()
    repo.audit(conn, actor=actor, action=action, outcome="refused", incident_id=incident_id, reason=str(refusal))
    conn.commit()
    raise refusal


def expire(db: Database, *, now: datetime, not_started_before: datetime, not_started_note: str,
           follow_ups: repo.FollowUps) -> list[Incident]:
    """Cancel requests of any kind whose approval window has passed, and approved rollbacks that did not start
    by ``not_started_before`` (APPROVED_START_TIMEOUT_MINUTES); journaled ``expired``, each through
    ``repository.move`` (so with its follow-ups, in this transaction). The cancelled incidents."""
    out: list[Incident] = []
    with db.transaction() as conn:
        for inc in repo.expired_requests(conn, at=now):
            out.append(repo.move(conn, inc, CANCELLED, at=now, follow_ups=follow_ups,
                                 decision_note="approval window expired"))
            repo.journal(conn, incident_id=inc.id, step="expired", actor=BOT, at=now, outcome="skipped")
        for inc in repo.approved_not_started(conn, approved_before=not_started_before):
            out.append(repo.move(conn, inc, CANCELLED, at=now, follow_ups=follow_ups, decision_note=not_started_note))
            repo.journal(conn, incident_id=inc.id, step="expired", actor=BOT, at=now, outcome="skipped",
                         detail={"note": not_started_note})
    return out
