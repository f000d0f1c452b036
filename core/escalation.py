"""Escalation: timers kept in PostgreSQL, so they survive a restart and fire once with several bot processes.

Timers are jobs in ``rollback_bot.jobs`` (queued with ``core.engine.enqueue`` and a dedupe key, so each
exists once however many processes schedule it)::

    escalate_age    escalate-age:{id}[:{round}]   first report + round × ESCALATE_AFTER_MINUTES: page if still
                                                  open, and queue the next round (it keeps firing until a
                                                  person closes the incident)
    runbook_target  target:{id}:{name}            created_at + 2 / 5 / 7 / 10 / 30 min, 2 h, 24 h: flag a missed
                                                  runbook target
    escalate_now    escalate-now:{id}:{key}       at once: estimated loss over the threshold ("loss"; a later
                                                  figure queues ``escalate-now:{id}:loss:{n}``, core.loss),
                                                  a failed rollback ("failed"), a failed
                                                  revert ("revert_failed": files mixed), a halt that
                                                  is not effective ("halt_not_effective"), a rollback
                                                  that does not resolve the issue ("needs_attention[:n]")

"Still open" is counted from the first report: across a chain of follow-up rollbacks of one model
(``core.aftercare.first_reported_at``).

A job is claimed by one worker at a time, but a job whose worker died after paging would run again when its
lease ran out. So every page and every breach is also claimed once in the database before anyone is told
(a done marker row ``paged:{id}:{key}`` / ``breach:{id}:{name}`` in the jobs table), then journaled (steps
``escalate`` / ``target_missed``) and audited (``audit_log`` action ``escalate``). If telling people fails, the
claim is released and the job retried; if the process dies right after telling them, nobody is told twice.

The decisions are pure functions of the incident, its journal and the time: ``immediate_reasons``,
``check_target``, ``age_escalation``. Who is paged and how (Slack DMs, a thread mention) is the callbacks'
business: ``Escalator.register(worker, on_page, on_breach)``. With ``paging`` (core.paging) a page also starts
the incident's page first: PagerDuty, and the emergency tier if nobody acknowledges.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from core import repository as repo, slack_outbox
from core.aftercare import first_reported_at
from core.engine import Engine, enqueue
from core.incidents import Event, Incident, Step, journal
from core.report.text import human_span
from core.timeline import TARGET_CHECK_DELAY, TARGETS, target_label, target_status

__all__ = [
    "AGE_JOB",
    "NOW_JOB",
    "TARGET_JOB",
    "Breach",
    "Escalator",
    "age_escalation",
    "check_target",
    "claim_once",
    "immediate_reasons",
    "release_once",
    "schedule_for",
]

log = logging.getLogger("rollback_bot.escalation")

AGE_JOB = "escalate_age"
NOW_JOB = "escalate_now"
TARGET_JOB = "runbook_target"
_MARKER_KIND = "once"  # never has a handler, and is created done: no worker ever claims it

PageCallback = Callable[[Incident, str], None]


@dataclass(frozen=True)
class Breach:
    """A runbook target whose step was not done by its deadline."""

    incident_id: int
    target: str        # "halted" | "rolled_back" | "verified" | "resumed"
    label: str
    minutes: int
    deadline: datetime
    reached_at: datetime | None
    state: str
    message: str


BreachCallback = Callable[[Incident, Breach], None]


# ------------------------------------------------------------------------------------------- decisions


def _immediate(incident: Incident, loss_threshold: float | None) -> list[tuple[str, str]]:
    out = []
    loss = incident.estimated_loss
    if loss_threshold is not None and loss is not None and math.isfinite(loss) and loss > loss_threshold:
        out.append(("loss", f"{incident.ref}: the estimated loss of {loss:,.0f} exceeds the escalation threshold "
                            f"of {loss_threshold:,.0f}"))
    if incident.kind == "rollback" and incident.state == "failed":
        why = " ".join((incident.error or "no error recorded").split())
        out.append(("failed", f"{incident.ref}: the rollback of {incident.model_name} failed ({why}); the original "
                              "model is back and trading stays halted"))
    if incident.kind == "rollback" and incident.state == "revert_failed":
        why = " ".join((incident.error or "no error recorded").split())
        out.append(("revert_failed", f"{incident.ref}: the rollback of {incident.model_name} failed AND putting the"
                                     f" original files back failed ({why}); the production files are mixed and"
                                     " trading stays halted"))
    if incident.kind == "rollback" and incident.state == "halt_not_effective":
        out.append(("halt_not_effective", f"{incident.ref}: the halt is not effective, trades are still executing "
                                          f"after it; the rollback of {incident.model_name} is paused with trading "
                                          "halted (an approver other than the requester may Proceed anyway)"))
    attention = (incident.plan or {}).get("attention") or {}
    if incident.kind == "rollback" and incident.state == "needs_attention":
        n = int(attention.get("count") or 1)
        why = "; ".join(attention.get("reasons") or []) or "see the thread"
        out.append(("needs_attention" if n == 1 else f"needs_attention:{n}",
                    f"{incident.ref}: the rollback of {incident.model_name} to {incident.target_backup} does not "
                    f"resolve the issue ({why}); roll back to another backup, halt trading, or accept it with a "
                    "reason"))
    return out


def immediate_reasons(incident: Incident, *, loss_threshold: float | None) -> list[str]:
    """Reasons to escalate at once: an estimated loss over the threshold, a failed rollback or revert, a halt
    that is not effective, a rollback that does not resolve the issue."""
    return [text for _, text in _immediate(incident, loss_threshold)]


def check_target(incident: Incident, steps: list[Step], target_name: str, now: datetime) -> Breach | None:
    """The runbook target ``target_name`` breached at ``now``: its step not done by the deadline (or done late)."""
    for t in target_status(incident, steps, now):
        if t.name != target_name:
            continue
        if now < t.deadline or t.status not in ("missed", "overdue"):
            return None
        if t.reached_at is not None:
            message = (f"{incident.ref}: runbook target {target_label(t.minutes)} ({t.label.lower()}) missed: "
                       f"reached at T+{human_span(t.reached_at - incident.created_at)}")
        else:
            message = (f"{incident.ref}: runbook target {target_label(t.minutes)} ({t.label.lower()}) missed: not "
                       f"done after {human_span(now - incident.created_at)} (state {incident.state})")
        return Breach(incident.id, t.name, t.label, t.minutes, t.deadline, t.reached_at, incident.state, message)
    raise ValueError(f"unknown runbook target {target_name!r}")


def age_escalation(incident: Incident, now: datetime, minutes: float) -> str | None:
    """Why to page because the issue is still open ``minutes`` after it was first reported (None: not yet, or
    the incident is closed)."""
    if not incident.is_open:
        return None
    first = first_reported_at(incident)
    age = now - first
    if age < timedelta(minutes=minutes):
        return None
    since = "" if first == incident.created_at else \
        f" since it was first reported (INC-{((incident.plan or {}).get('follows') or {}).get('id', '?')})"
    return f"{incident.ref} is still open after {human_span(age)}{since} (state {incident.state})"


def age_round(incident: Incident, now: datetime, minutes: float) -> int:
    """The age escalation's round due at ``now``: round k fires at first report + k × ``minutes`` (at least 1)."""
    return max(1, int((now - first_reported_at(incident)) // timedelta(minutes=minutes)))


def _queue_age(conn: psycopg.Connection, incident: Incident, minutes: float, round_: int) -> None:
    key = f"escalate-age:{incident.id}" + ("" if round_ == 1 else f":{round_}")
    enqueue(conn, AGE_JOB, incident_id=incident.id, payload={"round": round_}, dedupe_key=key,
            run_at=first_reported_at(incident) + round_ * timedelta(minutes=minutes))


# ------------------------------------------------------------------------------------------- scheduling


def schedule_for(conn: psycopg.Connection, incident: Incident, *, escalate_after_minutes: float,
                 loss_threshold: float | None = None) -> None:
    """Queue the incident's timers (idempotent): the age escalation, the runbook target checks of a rollback,
    and an immediate escalation when one is due already. In the caller's transaction."""
    if incident.is_open:
        _queue_age(conn, incident, escalate_after_minutes, 1)
        if (round_ := age_round(incident, incident.updated_at, escalate_after_minutes)) > 1:
            _queue_age(conn, incident, escalate_after_minutes, round_)  # reopened long after the first report
        if incident.kind == "rollback":
            for m in TARGETS:
                enqueue(conn, TARGET_JOB, incident_id=incident.id, payload={"target": m.key},
                        run_at=incident.created_at + timedelta(minutes=m.target or 0) + TARGET_CHECK_DELAY.get(
                            m.key, timedelta()),
                        dedupe_key=f"target:{incident.id}:{m.key}")
    for key, _ in _immediate(incident, loss_threshold):
        enqueue(conn, NOW_JOB, incident_id=incident.id, payload={"key": key}, run_at=incident.updated_at,
                dedupe_key=f"escalate-now:{incident.id}:{key}")


def claim_once(conn: psycopg.Connection, key: str, *, incident_id: int | None, at: datetime,
               detail: dict | None = None) -> bool:
    """True for the first caller ever to claim ``key`` (a done marker row in ``rollback_bot.jobs``)."""
    return repo.claim_marker(conn, key, kind=_MARKER_KIND, incident_id=incident_id, at=at, detail=detail)


def release_once(conn: psycopg.Connection, key: str) -> None:
    repo.release_marker(conn, key, kind=_MARKER_KIND)


# ------------------------------------------------------------------------------------------- the escalator


class Escalator:
    """Schedules and runs the escalation timers; tells people through the callbacks given to ``register``."""

    def __init__(self, engine: Engine, *, escalate_after_minutes: float, loss_threshold: float | None = None,
                 paging: Any = None) -> None:
        self.engine = engine
        self.paging = paging  # core.paging.Paging, or None
        self.db = engine.db
        self.minutes = escalate_after_minutes
        self.loss_threshold = loss_threshold
        self.on_page: PageCallback | None = None
        self.on_breach: BreachCallback | None = None

    # -- scheduling

    def schedule(self, conn: psycopg.Connection, incident: Incident) -> None:
        schedule_for(conn, incident, escalate_after_minutes=self.minutes, loss_threshold=self.loss_threshold)

    def register(self, worker: Any, on_page: PageCallback, on_breach: BreachCallback) -> None:
        """Install the job handlers on ``worker``. The timers of a state change are queued in its own
        transaction (``core.outbox.escalation_jobs``), so neither a listener nor a sweep queues them."""
        self.on_page = on_page
        self.on_breach = on_breach
        worker.on(AGE_JOB, self._age_job)
        worker.on(NOW_JOB, self._now_job)
        worker.on(TARGET_JOB, self._target_job)

    # -- job handlers

    def _age_job(self, job: dict) -> None:
        inc = self.engine.get(job["incident_id"])
        round_ = int((job.get("payload") or {}).get("round") or 1)
        reason = age_escalation(inc, self.engine.clock(), self.minutes)
        if reason is not None:
            self._page(inc, "age" if round_ == 1 else f"age:{round_}", reason)
        if inc.is_open:  # it keeps firing until a person closes the incident
            with self.db.transaction() as conn:
                _queue_age(conn, inc, self.minutes, max(round_, age_round(inc, self.engine.clock(), self.minutes)) + 1)

    def _now_job(self, job: dict) -> None:
        inc = self.engine.get(job["incident_id"])
        key = job["payload"].get("key")
        for k, reason in _immediate(inc, self.loss_threshold):
            if k == key:
                self._page(inc, k, reason)

    def _target_job(self, job: dict) -> None:
        inc = self.engine.get(job["incident_id"])
        name = job["payload"]["target"]
        breach = check_target(inc, self.engine.steps(inc.id), name, self.engine.clock())
        if breach is None:
            return
        self._tell(inc, f"breach:{inc.id}:{name}", "target_missed", breach.message,
                   lambda: self.on_breach(inc, breach) if self.on_breach else None, {"target": name})

    def _page(self, inc: Incident, key: str, reason: str) -> None:
        if self.paging is not None:
            self.paging.start(inc, reason)  # idempotent; PagerDuty and the emergency tier never wait for Slack
        self._tell(inc, f"paged:{inc.id}:{key}", "escalate", reason,
                   lambda: self.on_page(inc, reason) if self.on_page else None, {"key": key})

    def _tell(self, inc: Incident, marker: str, step: str, reason: str, tell: Callable[[], Any],
              extra: dict) -> None:
        now = self.engine.clock()
        with self.db.transaction() as conn:
            if not claim_once(conn, marker, incident_id=inc.id, at=now, detail={"reason": reason}):
                return  # somebody was told already
        try:
            tell()
        except Exception as exc:
            with self.db.transaction() as conn:
                release_once(conn, marker)
                self.engine.audit(conn, actor="rollback-bot", action="escalate", outcome="failed",
                                  incident_id=inc.id, reason=reason, error=str(exc)[:500], **extra)
            raise
        with self.db.transaction() as conn:
            journal(conn, incident_id=inc.id, step=step, actor="rollback-bot", at=self.engine.clock(),
                    detail={"reason": reason, **extra})
            repo.queue_report_refresh(conn, inc.id, why=marker)  # the report shows the page or the breach
            self.engine.audit(conn, actor="rollback-bot", action="escalate", outcome="ok", incident_id=inc.id,
                              reason=reason, **extra)
            queued = slack_outbox.queue_event(self.engine, conn, self.engine.get(inc.id, conn), step,
                                              {"reason": reason, **extra})
        log.info("%s: %s", inc.ref, reason)
        self.engine.publish(Event("step", self.engine.get(inc.id), step, {"reason": reason, **extra}, queued=queued))
