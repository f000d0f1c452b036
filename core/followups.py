"""Follow-ups: the runbook's next steps after a rollback, each with an owner, a due date and reminders.

When a rollback finishes (trading resumed and monitoring under way, kept halted after verification, or failed),
its follow-up items are created once (``UNIQUE (incident_id, kind)``), due counted from the incident's opening,
as the runbook counts its targets (each delay is a setting, ``FOLLOWUP_{KIND}_HOURS``; the defaults)::

    kind         what                                                        due
    root_cause   Investigate the root cause                                  T+2 h ("root cause identified")
    monitoring   Enhanced monitoring of the restored model for 24 hours      T+24 h (not after a failed rollback)
    retrain      Retrain the model on recent data before it is redeployed    T+3 days
    checklist    Update the deployment checklist                             T+7 days
    prevention   Identify prevention measures (the report's Prevention)      T+7 days

Jobs in ``rollback_bot.jobs`` (deduplicated, so any number of bot processes schedule each one once)::

    followups      followups:{incident}       create the items, then show them (the Slack layer posts one message);
                                              queued in the transaction of the state change (the engine's outbox,
                                              core.outbox), in every process, so a crash right after it loses nothing
    followup_due   followup-due:{id}:{n}      the n-th reminder of an item still open after its due date; the next
                                              one is queued REMIND_EVERY later

A reminder is claimed in the item's own row (``reminded_at``) before anybody is told, so two processes (or a job
run again after its worker died) remind once; a reminder that could not be delivered is released and retried.

Journal steps (read by the report's checklist, items 9 and 10): ``followups`` (created), ``followup`` (detail
``kind`` and ``action``: assigned, done, reminded), ``prevention`` (a measure written into the report).

Who may act on an incident's follow-ups: operators and approvers (the caller says so, from ``core.auth``), the
incident's people (who requested, approved or decided it) and the owners of its follow-ups. Anyone may be made
an owner.

The items as data, their kinds and their SQL are ``core.followup_items`` (re-exported here); this module is the
``FollowUps`` service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg

from core import repository as repo
from core.access import may_annotate
from core.engine import Engine, enqueue
from core.errors import Conflict, InvalidTransition, NotAuthorized, RollbackError, clean_text
from core.followup_items import (
    CREATE_JOB,
    DUE_JOB,
    KINDS,
    NOT_ALLOWED,
    REMIND_EVERY,
    TRIGGER_STATES,
    FollowUp,
    PreventionMeasure,
    UnknownFollowUp,
    due_after,
    for_incident,
    locked as _get,
    owns as _owns,
    plan_for,
    prevention_measures,
    queue_creation,
    schedule_reminder as _schedule_reminder,
)
from core.incidents import Incident, journal

__all__ = [
    "CREATE_JOB",
    "DUE_JOB",
    "KINDS",
    "NOT_ALLOWED",
    "REMIND_EVERY",
    "FollowUp",
    "FollowUps",
    "PreventionMeasure",
    "UnknownFollowUp",
    "due_after",
    "plan_for",
]

log = logging.getLogger("rollback_bot.followups")

_BOARD_CLAIM = timedelta(minutes=5)


# ------------------------------------------------------------------------------------------- the service


def _unfinished(conn: psycopg.Connection, inc: Incident, item: FollowUp) -> RollbackError | None:
    """Why ``item`` cannot be marked done yet: the root-cause one needs a recorded root cause, the prevention one
    a measure."""
    if item.kind == "root_cause" and not (inc.root_cause or "").strip():
        return InvalidTransition("Record the root cause first (*Add root cause* on the incident's card),"
                                 " then mark the investigation done.")
    if item.kind == "prevention" and not prevention_measures(conn, inc.id):
        return InvalidTransition("Write at least one prevention measure first (*Add prevention measure*),"
                                 " then mark this done.")
    return None


BoardCallback = Callable[[Incident], None]
ReminderCallback = Callable[[Incident, FollowUp], None]


class FollowUps:
    """Creates, assigns, completes and reminds; tells people through the callbacks given to ``register``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.db = engine.db
        self.on_board: BoardCallback | None = None
        self.on_reminder: ReminderCallback | None = None
        engine.follow_ups.append(queue_creation)  # the outbox: in the state change's transaction

    def register(self, worker: Any, *, on_board: BoardCallback, on_reminder: ReminderCallback) -> None:
        """Install the job handlers on ``worker`` (a process that can tell people: the Slack app's)."""
        self.on_board = on_board
        self.on_reminder = on_reminder
        worker.on(CREATE_JOB, self._create_job)
        worker.on(DUE_JOB, self._due_job)

    # -- creation

    def create(self, incident_id: int) -> list[FollowUp]:
        """The incident's follow-ups, created if they are not yet (idempotent), with their first reminders."""
        now = self.engine.clock()
        with self.db.transaction() as conn:
            inc = repo.get(conn, incident_id)
            created = []
            for kind, title, due in plan_for(inc, due_after(self.engine.settings)):
                row = repo.insert_followup(conn, incident_id=inc.id, kind=kind, title=title[:500], due_at=due, at=now)
                if row is not None:
                    item = FollowUp(**row)
                    created.append(item)
                    _schedule_reminder(conn, item, 1, item.due_at)
            if created:
                journal(conn, incident_id=inc.id, step="followups", actor="rollback-bot", at=now,
                        detail={"kinds": [i.kind for i in created]})
            from core import watch_followup  # it builds on this module

            watch_followup.settle(conn, inc.id, now=now)  # a 24-hour watch that completed before: done by the bot
            return for_incident(conn, inc.id)

    def _create_job(self, job: dict) -> None:
        items = self.create(job["incident_id"])
        if items and self.on_board is not None:
            self.on_board(self.engine.get(job["incident_id"]))

    # -- reading

    def items(self, incident_id: int) -> list[FollowUp]:
        with self.db.transaction() as conn:
            return for_incident(conn, incident_id)

    def prevention(self, incident_id: int) -> list[PreventionMeasure]:
        with self.db.transaction() as conn:
            return prevention_measures(conn, incident_id)

    def listing(self, *, incident_id: int | None = None, limit: int = 200) -> list[FollowUp]:
        """``/rollback followups [INCIDENT]``: every follow-up of one incident, or the open ones of all, the
        soonest due first."""
        with self.db.transaction() as conn:
            if incident_id is not None:
                repo.get(conn, incident_id)  # UnknownIncident for a wrong id
                return for_incident(conn, incident_id)
            rows = repo.open_followup_rows(conn, limit=limit)
        return [FollowUp(**r) for r in rows]

    def open_for(self, user: str, *, limit: int = 15) -> tuple[list[FollowUp], list[FollowUp]]:
        """App Home: the open follow-ups ``user`` owns and the open ones nobody owns, each the soonest due first
        (so the overdue ones first), at most ``limit`` of each."""
        with self.db.transaction() as conn:
            mine = repo.open_followup_rows_owned_by(conn, user, limit=limit)
            nobody = repo.open_followup_rows_owned_by(conn, None, limit=limit)
        return [FollowUp(**r) for r in mine], [FollowUp(**r) for r in nobody]

    def get(self, followup_id: int) -> FollowUp:
        with self.db.transaction() as conn:
            return _get(conn, followup_id)

    # -- who may act

    def _may_act(self, conn: psycopg.Connection, inc: Incident, user: str, operator: bool) -> bool:
        return may_annotate(inc, user, is_approver=operator, owns_followup=_owns(conn, inc.id, user))

    def owns(self, *, incident_id: int, user: str) -> bool:
        """Whether ``user`` owns one of the incident's follow-ups (one of its people, for core.access)."""
        with self.db.transaction() as conn:
            return _owns(conn, incident_id, user)

    def may_act(self, *, incident_id: int, user: str, operator: bool) -> bool:
        with self.db.transaction() as conn:
            return self._may_act(conn, repo.get(conn, incident_id), user, operator)

    def _refuse(self, conn: psycopg.Connection, inc: Incident, user: str, action: str,
                refusal: RollbackError | None, **detail: Any) -> None:
        """Nothing happens when there is a ``refusal``: the transaction is rolled back, the refusal audited and
        raised."""
        if refusal is None:
            return
        conn.rollback()
        self.engine.audit(None, actor=user, action=action, outcome="refused", incident_id=inc.id,
                          reason=str(refusal), **detail)
        raise refusal

    def _item_refusal(self, conn: psycopg.Connection, inc: Incident, item: FollowUp, by: str,
                      operator: bool) -> RollbackError | None:
        """Why ``by`` may not act on ``item`` at all (not one of the incident's people, or it is done)."""
        if not self._may_act(conn, inc, by, operator):
            return NotAuthorized(NOT_ALLOWED)
        if item.done:
            return Conflict(f"“{item.title}” is already done (by {item.completed_by}).")
        return None

    # -- acting

    def assign(self, *, followup_id: int, owner: str, by: str, operator: bool) -> FollowUp:
        """Make ``owner`` responsible for an open follow-up (``owner == by``: "Take it")."""
        owner = clean_text(owner, 200)
        if not owner:
            raise InvalidTransition("Choose who owns this follow-up.")
        now = self.engine.clock()
        with self.db.transaction() as conn:
            item = _get(conn, followup_id)
            inc = repo.get(conn, item.incident_id)
            refusal = self._item_refusal(conn, inc, item, by, operator) or (
                Conflict(f"“{item.title}” is already owned by {owner}.") if item.owner == owner else None)
            self._refuse(conn, inc, by, "followup_assign", refusal, followup=item.id, owner=owner)
            row = repo.assign_followup(conn, item.id, owner=owner, by=by, at=now)
            journal(conn, incident_id=inc.id, step="followup", actor=by, at=now,
                    detail={"kind": item.kind, "action": "assigned", "owner": owner, "followup": item.id})
            self.engine.audit(conn, actor=by, action="followup_assign", outcome="ok", incident_id=inc.id,
                              followup=item.id, kind=item.kind, owner=owner, previous_owner=item.owner)
            self._refresh_report(conn, inc.id, now)
        return FollowUp(**row)

    def complete(self, *, followup_id: int, by: str, operator: bool) -> FollowUp:
        """Mark a follow-up done. The root-cause one needs a recorded root cause, the prevention one a measure."""
        now = self.engine.clock()
        with self.db.transaction() as conn:
            item = _get(conn, followup_id)
            inc = repo.get(conn, item.incident_id)
            refusal = self._item_refusal(conn, inc, item, by, operator) or _unfinished(conn, inc, item)
            self._refuse(conn, inc, by, "followup_done", refusal, followup=item.id)
            row = repo.complete_followup(conn, item.id, by=by, at=now)
            journal(conn, incident_id=inc.id, step="followup", actor=by, at=now,
                    detail={"kind": item.kind, "action": "done", "followup": item.id})
            self.engine.audit(conn, actor=by, action="followup_done", outcome="ok", incident_id=inc.id,
                              followup=item.id, kind=item.kind)
            self._refresh_report(conn, inc.id, now)
        return FollowUp(**row)

    def add_prevention(self, *, incident_id: int, text: str, by: str, operator: bool) -> PreventionMeasure:
        """A person's prevention measure, kept for the report's Prevention section."""
        text = clean_text(text, 2900)
        now = self.engine.clock()
        with self.db.transaction() as conn:
            inc = repo.get(conn, incident_id)
            refusal: RollbackError | None = None
            if not text:
                refusal = InvalidTransition("Describe the prevention measure.")
            elif not self._may_act(conn, inc, by, operator):
                refusal = NotAuthorized(NOT_ALLOWED.replace("act on its follow-ups", "add prevention measures"))
            self._refuse(conn, inc, by, "prevention", refusal)
            row = repo.insert_prevention(conn, incident_id=inc.id, text=text, by=by, at=now)
            journal(conn, incident_id=inc.id, step="prevention", actor=by, at=now, detail={"chars": len(text)})
            self.engine.audit(conn, actor=by, action="prevention", outcome="ok", incident_id=inc.id, chars=len(text))
            self._refresh_report(conn, inc.id, now)
        return PreventionMeasure(**row)

    def _refresh_report(self, conn: psycopg.Connection, incident_id: int, now: datetime) -> None:
        """The report shows follow-ups and prevention: rewrite it (no dedupe key: every change is shown)."""
        enqueue(conn, "report", incident_id=incident_id, payload={"upload": False}, run_at=now)

    # -- reminders

    def _due_job(self, job: dict) -> None:
        followup_id = int(job["payload"]["followup"])
        now = self.engine.clock()
        with self.db.transaction() as conn:
            before = repo.locked_reminded_at(conn, followup_id)
            row = repo.mark_reminded(conn, followup_id, at=now, every=REMIND_EVERY)
        if row is None:
            return  # done, not due, or reminded already (by another process)
        item = FollowUp(**row)
        inc = self.engine.get(item.incident_id)
        try:
            if self.on_reminder is not None:
                self.on_reminder(inc, item)
        except Exception:
            with self.db.transaction() as conn:  # not delivered: the job's retry reminds again
                repo.unmark_reminded(conn, item.id, reminded_at=before)
            raise
        with self.db.transaction() as conn:
            journal(conn, incident_id=inc.id, step="followup", actor="rollback-bot", at=now,
                    detail={"kind": item.kind, "action": "reminded", "owner": item.owner, "followup": item.id})
            _schedule_reminder(conn, item, item.reminders + 1, now + REMIND_EVERY)
        log.info("%s: reminded of follow-up %s (%s)", inc.ref, item.id, item.kind)

    # -- where the follow-ups message is

    def board(self, incident_id: int) -> tuple[str, str] | None:
        """(channel, ts) of the incident's follow-ups message, once posted."""
        with self.db.transaction() as conn:
            row = repo.followup_board(conn, incident_id)
        return (row["channel"], row["message_ts"]) if row and row["message_ts"] else None

    def claim_board(self, incident_id: int) -> bool:
        """True for the one process that is to post the message (a claim left by a dead process expires)."""
        now = self.engine.clock()
        with self.db.transaction() as conn:
            return repo.claim_followup_board(conn, incident_id, at=now, expired_before=now - _BOARD_CLAIM)

    def set_board(self, incident_id: int, *, channel: str, message_ts: str) -> None:
        with self.db.transaction() as conn:
            repo.set_followup_board(conn, incident_id, channel=channel, message_ts=message_ts)

    def release_board(self, incident_id: int) -> None:
        with self.db.transaction() as conn:
            repo.release_followup_board(conn, incident_id)
