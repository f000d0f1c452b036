"""The rollback engine: the one object the Slack layer, the worker, the break-glass CLI and the demo call.

It is a facade. The work is done by:

* ``core.runbook`` -- one module per runbook step (pre-flight, halt, emergency backup, restore, record, verify,
  resume, and the undo, revert), run in the order of ``core.runbook.steps.RUNBOOK`` by the executor
  (``core.runbook.executor``: the incident's advisory lock and fencing token, step timeouts, attempts, fail or
  revert, recovery after a crash); ``core.runbook.request`` opens a request (and break-glass);
* ``core.approval`` -- the one approval path (rollbacks and quick fixes): transitions checked, two-person rule;
* ``core.repository`` -- the SQL on the bot's own tables (incidents, journal, audit log, jobs);
* ``core.incidents`` -- the states and the moves allowed between them.

Rules kept whichever entry point is used:

* Every transition is checked against ``core.incidents.TRANSITIONS`` with a conditional UPDATE
  (``WHERE state = %s``), so two processes (or two clicks) can never both make the same move (``move``).
* Each step is journaled in ``rollback_bot.steps`` (start, end, actor, outcome, error) and is idempotent:
  after a crash it can simply run again. Database changes of a step commit in the same transaction as the
  state change that records them, with the follow-up jobs that state implies (``follow_ups``, ``core.outbox``).
* Trading never resumes on a model that was not verified (``core.runbook.resume.assert_verified``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from core import aftercare, approval, revert, trading
from core import repository as repo
from core import resume as resume_mod
from core.db import Database
from core.incidents import RESOLVED, Event, Incident, Listener, PreflightReport, Step, utcnow
from core.runbook import halt, preflight, request, resume, verify
from core.registry import ModelRegistry
from core.runbook.executor import MAX_STEP_ATTEMPTS, Executor, lock_key
from core.settings import Settings

__all__ = ["JOBS_CHANNEL", "MAX_STEP_ATTEMPTS", "Engine", "FaultHook", "enqueue", "no_fault"]

log = logging.getLogger("rollback_bot.engine")

FaultHook = Callable[[str], None]
JOBS_CHANNEL = repo.JOBS_CHANNEL
enqueue = repo.enqueue  # queue background work in the caller's transaction


def no_fault(_: str) -> None:
    return None


class Engine:
    """Drives rollbacks; shared by the Slack app, the worker, the break-glass CLI and the demo."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        registry: ModelRegistry,
        *,
        clock: Callable[[], datetime] = utcnow,
        fault_hook: FaultHook = no_fault,
    ) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.clock = clock
        self.sleep: Callable[[float], None] = time.sleep  # the quiet wait after the halt (tests move the clock)
        # Called with a label at each step boundary ("before:halting", "restored:model.json", …; tests kill or
        # disturb the process there: tests/crash_child.py).
        self.fault = fault_hook
        self.listeners: list[Listener] = []
        # Transactional outbox (core.outbox): writers of the follow-up jobs a state change implies, called in the
        # state change's own transaction.
        self.follow_ups: list[Callable[[psycopg.Connection, Incident], None]] = []
        # Writers of what a step announces, queued before the state's follow-ups when a move carries the step
        # (``move(..., step=(name, detail, error))``; core.slack_outbox).
        self.step_follow_ups: list[Callable[[psycopg.Connection, Incident, str, dict, str | None], None]] = []
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.executor = Executor(self)
        self.revert_wait = revert.DEFAULT_WAIT  # back-off between attempts to put the original files back

    # ---------------------------------------------------------------------------------------- events

    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def publish(self, event: Event) -> None:
        """Tell every listener (Slack, metrics) about something that happened. Called after the change committed:
        tests kill the process here (fault label ``publish:<step or state>``), before any listener heard of it."""
        self.fault(f"publish:{event.step or event.incident.state}")
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a listener (Slack, e-mail) must never break a rollback
                log.exception("event listener failed for %s", event.incident.ref)

    # ---------------------------------------------------------------------------------------- reading

    def get(self, incident_id: int, conn: psycopg.Connection | None = None, *, lock: bool = False) -> Incident:
        if conn is None:
            with self.db.transaction() as c:
                return repo.get(c, incident_id, lock=lock)
        return repo.get(conn, incident_id, lock=lock)

    def open_incident_for(self, model: str) -> Incident | None:
        """The model's open rollback that blocks a new request (one that needs attention does not: a follow-up
        rollback is how it gets fixed, see core.aftercare)."""
        with self.db.transaction() as conn:
            return repo.open_rollback_for(conn, model)

    def steps(self, incident_id: int) -> list[Step]:
        with self.db.transaction() as conn:
            return repo.steps(conn, incident_id)

    def list_incidents(self, *, open_only: bool = False, limit: int = 20) -> list[Incident]:
        with self.db.transaction() as conn:
            return repo.list_incidents(conn, open_only=open_only, limit=limit)

    # ---------------------------------------------------------------------------------------- writing

    def audit(self, conn: psycopg.Connection | None, *, actor: str, action: str, outcome: str,
              incident_id: int | None = None, **detail: Any) -> None:
        if conn is None:
            with self.db.transaction() as c:
                repo.audit(c, actor=actor, action=action, outcome=outcome, incident_id=incident_id, **detail)
        else:
            repo.audit(conn, actor=actor, action=action, outcome=outcome, incident_id=incident_id, **detail)

    def move(self, conn: psycopg.Connection, inc: Incident, new: str, *,
             step: tuple[str, dict, str | None] | None = None, **columns: Any) -> Incident:
        """Checked, conditional state change inside the caller's transaction, with its follow-up jobs. ``step``:
        the runbook step (name, detail, error) journaled in the same transaction, announced with the state."""
        def follow_ups(c: psycopg.Connection, moved: Incident) -> None:
            self.write_follow_ups(c, moved, step=step)

        return repo.move(conn, inc, new, at=self.clock(), follow_ups=follow_ups, **columns)

    def write_follow_ups(self, conn: psycopg.Connection, inc: Incident,
                         step: tuple[str, dict, str | None] | None = None) -> None:
        """Queue the follow-up jobs of ``inc``'s new state in the caller's transaction (core.outbox); those of the
        step that led to it first (``step``)."""
        if step is not None:
            for announce in self.step_follow_ups:
                announce(conn, inc, *step)
        for write in self.follow_ups:
            write(conn, inc)

    def set_message(self, incident_id: int, *, channel: str, message_ts: str, thread_ts: str | None = None) -> None:
        with self.db.transaction() as conn:
            repo.set_message(conn, incident_id, channel=channel, message_ts=message_ts, thread_ts=thread_ts)

    # ------------------------------------------------------------------------------- requests, decisions

    def preflight(self, *, model: str, backup: str) -> PreflightReport:
        """Check a target before anything changes (``core.runbook.preflight.check_target``)."""
        return preflight.check_target(self.registry, self.settings, model=model, backup=backup,
                                      transaction=self.db.transaction)

    def request_rollback(
        self, *, model: str, backup: str, reason: str, requested_by: str, severity: str = "high",
        estimated_loss: float | None = None, keep_halted: bool = False, source: str = "slack",
        channel: str | None = None, confirmations: dict | None = None,
    ) -> tuple[Incident, PreflightReport]:
        """Open a rollback request after pre-flight (``core.runbook.request``); a second open request for the
        model is a Conflict."""
        return request.request_rollback(
            self, model=model, backup=backup, reason=reason, requested_by=requested_by, severity=severity,
            estimated_loss=estimated_loss, keep_halted=keep_halted, source=source, channel=channel,
            confirmations=confirmations)

    def approve(self, *, incident_id: int, approver: str, allowed: bool = True) -> Incident:
        """Two-person rule and exactly-once (``core.approval``): the first valid approval wins, every other is
        told who acted. The approval queues the ``execute`` job in its own transaction."""

        def then(conn: psycopg.Connection, inc: Incident) -> list[Incident]:
            superseded = aftercare.supersede(conn, inc, at=inc.approved_at, follow_ups=self.write_follow_ups)
            repo.enqueue(conn, "execute", incident_id=inc.id, dedupe_key=f"execute:{inc.id}")
            return superseded

        incident, superseded = approval.approve(self.db, approval.ROLLBACK, incident_id=incident_id,
                                                approver=approver, allowed=allowed, clock=self.clock, then=then,
                                                follow_ups=self.write_follow_ups)
        self.fault("decided:approved")  # committed with its follow-ups; the events come next
        for old in superseded:
            self.publish(Event("state", old))
        self.publish(Event("state", incident))
        return incident

    def deny(self, *, incident_id: int, user: str, note: str, allowed: bool = True) -> Incident:
        """An approver denies a rollback request, or its requester withdraws it (``core.approval``)."""
        incident = approval.deny(self.db, approval.ROLLBACK, incident_id=incident_id, user=user, note=note,
                                 allowed=allowed, clock=self.clock, follow_ups=self.write_follow_ups)
        self.fault(f"decided:{incident.state}")  # committed with its follow-ups; the events come next
        self.publish(Event("state", incident))
        return incident

    def expire_requests(self) -> list[Incident]:
        """Cancel requests whose approval window has passed, and approved rollbacks that did not start within
        APPROVED_START_TIMEOUT_MINUTES (run by the worker)."""
        now = self.clock()
        out = approval.expire(self.db, now=now, not_started_before=now - preflight.start_timeout(self.settings),
                              not_started_note=preflight.not_started_note(self.settings),
                              follow_ups=self.write_follow_ups)
        if out:
            self.fault("decided:expired")  # committed with their follow-ups; the events come next
        for inc in out:
            self.publish(Event("state", inc))
        return out

    def break_glass(self, *, model: str, backup: str, reason: str, by: str, os_user: str | None = None,
                    confirmations: dict | None = None) -> Incident:
        """``rollback-bot rollback`` when Slack is down (``core.runbook.request.break_glass``): audited by name,
        the operator at the host's shell is the approval."""
        return request.break_glass(self, model=model, backup=backup, reason=reason, by=by, os_user=os_user,
                                   confirmations=confirmations)

    # ------------------------------------------------------------------------------------- execution

    def lock_key(self, incident_id: int) -> int:
        return lock_key(incident_id)

    def execute(self, incident_id: int, *, actor: str = "rollback-bot") -> Incident:
        """Run the incident from its current state as far as it goes without a person. Safe to call again."""
        return self.executor.execute(incident_id, actor=actor)

    def recover(self, *, actor: str = "rollback-bot (recovery)") -> list[Incident]:
        """Finish or undo every rollback left mid-way by a crash (those whose executor's lock is gone)."""
        return self.executor.recover(actor=actor)

    def verify_in_place(self, inc: Incident, *, parsed: Any = None) -> dict:
        """The model in place is the approved backup and works (``core.runbook.verify.verify_in_place``)."""
        return verify.verify_in_place(self, inc, parsed=parsed)

    def resume_verified(self, *, incident_id: int, actor: str) -> Incident:
        """For a rollback that was asked to keep trading halted: an approver resumes it."""
        return resume.resume_verified(self, incident_id=incident_id, actor=actor)

    def resolve(self, *, incident_id: int, actor: str = "rollback-bot", note: str | None = None) -> Incident:
        """monitoring → resolved (monitoring found nothing wrong)."""
        with self.db.transaction() as conn:
            inc = self.get(incident_id, conn, lock=True)
            if inc.state == RESOLVED:
                return inc
            new = self.move(conn, inc, RESOLVED)
            repo.journal(conn, incident_id=incident_id, step="resolved", actor=actor, at=self.clock(),
                         detail={"note": note} if note else None)
        self.publish(Event("state", new))
        return new

    # ------------------------------------------------------------------------------- trading only

    def halt_trading(self, *, user: str, reason: str) -> Incident:
        """A manual halt (``/rollback halt``), journaled as an incident of kind 'halt'."""
        return halt.halt_trading(self, user=user, reason=reason)

    def resume_trading(self, *, user: str) -> trading.ResumeResult:
        """``/rollback resume`` by an approver (core.resume): refused while any rollback is under way or while any
        model's files do not match its production row; in one transaction under the trading lock, rollbacks
        kept halted after verification resume and every holder of a closed incident lets go (manual halts, and
        failed rollbacks, whose trading stays halted until a person has looked and resumes it here)."""
        return resume_mod.resume_trading(self, user=user)

    def request_resume_override(self, *, user: str, allowed: bool = True) -> tuple[Incident, bool]:
        """An approver asks to resume on production files that do not match (a second approver confirms)."""
        return resume_mod.request_override(self, user=user, allowed=allowed)

    def approve_resume_override(self, *, incident_id: int, approver: str,
                                allowed: bool = True) -> tuple[Incident, trading.ResumeResult]:
        return resume_mod.approve_override(self, incident_id=incident_id, approver=approver, allowed=allowed)
