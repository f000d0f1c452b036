"""Transactional outbox: the follow-up jobs a state change implies are queued in the same transaction.

Every state change goes through ``core.repository.move`` (and every new incident through
``repository.insert_incident``), which call the engine's ``follow_ups`` writers (``Engine.write_follow_ups``)
with the open transaction and the incident as it now is: the runbook's steps (``Engine.move``), approve, deny
and expiry (``core.approval``, rollbacks and quick fixes), supersede and *needs attention* (``core.aftercare``),
``/rollback resume`` and its override (``core.resume``), the halt watch's ways out. The writers only insert
rows in ``rollback_bot.jobs`` (with dedupe keys): the state and its follow-ups commit together or not at all.
A process that dies right after the commit therefore loses nothing, and every process (``serve``, ``work``, the
break-glass CLI, tests) queues the same jobs, whatever listeners it has: no listener queues them. Whichever
process's worker claims a job delivers it, once (``core.worker``).

Follow-ups written here (``install`` adds the writers to the engine of every ``Services``):

    report          report:{id}:{state}:{updated_at}   the incident report at its report states
    notify_email    notify-email:{id}:{milestone}      the stakeholder e-mail of a milestone (SMTP configured)
    escalation      escalate-age / target / escalate-now timers (``core.escalation.schedule_for``)
    aftercare       monitor-check:{id}:1, watch:{id}:N     when trading resumes on a restored model (a rollback
                                                        enters ``monitoring``): the 30-minute monitoring and the
                                                        24-hour watch (``aftercare_jobs``, added by bot/compose.py)
    page close      pagerduty:{id}:resolve                an incident that closes (resolved, denied, cancelled)
                                                        closes its page (``Paging.close_with_state``)
    evidence        evidence:{id}                         a new rollback request (not break-glass): the evidence the
                                                        card shows before approval (``EvidenceJob.queue``)
    diagnose        diagnose:{id}                         a rollback that has halted trading: its root-cause
                                                        diagnostics (``diagnose_job``)
    loss_poll       loss-poll:{id}:{slot}                 an open rollback or halt, with PNL_QUERY set: a poll now
                                                        (``PnlPoller.follow_up``, added by bot/compose.py)
    slack           (none; ordered per incident)          step reply, state reply and card, milestone message
                                                        (``core.slack_outbox``, when INCIDENT_CHANNEL is set)

Outside state changes, what the report shows queues its rewrite the same way, in the transaction that records
it (``repository.queue_report_refresh``): a page and an emergency page (``core.escalation``, ``core.paging``),
an acknowledgement (``core.paging``), a loss figure (``core.loss``).

The Slack updates of a state change (the reply of the runbook step the move carries, the state's thread reply
and card update, the stakeholders' Slack message of a milestone) are queued the same way, as ``slack`` jobs
delivered in order per incident by the Slack lane of a process with a Slack client (``core.slack_outbox``,
handlers/slack_delivery.py; installed by bot/compose.py). What changes no state (diagnostics, the report upload,
pages, loss figures) and live displays (the halt watch's trade counts, a retrain's output) stay on in-process
listeners.

``deliver`` runs the queued follow-ups of one incident in the calling process (the CLI does before it exits);
``pending`` lists what is still queued for ``serve``/``work``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from core import repository as repo
from core.db import Database
from core.engine import enqueue
from core.escalation import schedule_for
from core.incidents import Event, Incident
from core.notify import EmailNotifier, Mailer, fresh_report, milestone_of
from core.report import Reports
from core.settings import Settings

FollowUps = Callable[[psycopg.Connection, Incident], None]

REPORT_STATES = {"rollback": ("monitoring", "verified", "failed", "resolved", "denied", "cancelled",
                              "revert_failed", "needs_attention", "superseded"),
                 "halt": ("halted", "resolved")}
UPLOAD_STATES = ("monitoring", "verified", "failed", "resolved", "revert_failed", "needs_attention")


def report_job(conn: psycopg.Connection, inc: Incident) -> None:
    """Queue the report's update at a report state (a state may come back: the key carries its time)."""
    if inc.state in REPORT_STATES.get(inc.kind, ()):
        enqueue(conn, "report", incident_id=inc.id, payload={"upload": inc.state in UPLOAD_STATES},
                dedupe_key=f"report:{inc.id}:{inc.state}:{inc.updated_at.timestamp()}")


def email_job(conn: psycopg.Connection, inc: Incident) -> None:
    """Queue the stakeholder e-mail of the milestone this state marks, if any."""
    milestone = milestone_of(Event("state", inc))
    if milestone is not None:
        Mailer.queue(conn, incident_id=inc.id, milestone=milestone)


def escalation_jobs(*, escalate_after_minutes: float, loss_threshold: float | None) -> FollowUps:
    def write(conn: psycopg.Connection, inc: Incident) -> None:
        schedule_for(conn, inc, escalate_after_minutes=escalate_after_minutes, loss_threshold=loss_threshold)

    return write


def aftercare_jobs(monitor: Any, watch: Any) -> FollowUps:
    """Runbook step 6: trading resumed on a restored model (the ``monitoring`` state of a rollback) starts the
    30-minute monitoring and the 24-hour watch, their baselines recorded and first checks queued in the resume's
    transaction (``Monitor.schedule``, ``EnhancedWatch.schedule``; both do nothing the second time)."""
    def write(conn: psycopg.Connection, inc: Incident) -> None:
        if inc.kind == "rollback" and inc.state == "monitoring":
            monitor.schedule(conn, inc)
            watch.schedule(conn, inc)

    return write


def diagnose_job(conn: psycopg.Connection, inc: Incident) -> None:
    """Runbook step 8: a rollback that has halted trading queues its root-cause diagnostics (the ``diagnose`` job,
    ``Services.run_incident_diagnostics``), once."""
    if inc.kind == "rollback" and inc.state == "halted":
        enqueue(conn, "diagnose", incident_id=inc.id, dedupe_key=f"diagnose:{inc.id}")


def install(engine, worker, settings: Settings, reports: Reports) -> Mailer | None:
    """Add the follow-up writers to ``engine`` and the e-mail job's handler to ``worker`` (when SMTP_URL and
    STAKEHOLDER_EMAILS are set); return the mailer, whose ``on_failed`` the Slack layer sets."""
    engine.follow_ups.append(report_job)
    engine.follow_ups.append(diagnose_job)
    engine.follow_ups.append(escalation_jobs(escalate_after_minutes=settings.escalate_after_minutes,
                                             loss_threshold=settings.loss_escalation_threshold))
    if settings.smtp_url is None or not settings.stakeholder_emails:
        return None
    notifier = EmailNotifier(settings.smtp_url.get_secret_value(), settings.email_sender, settings.stakeholder_emails)
    mailer = Mailer(engine, notifier, attachments=fresh_report(reports))
    mailer.register(worker)  # queued by email_job with each state, not by a listener
    engine.follow_ups.append(email_job)
    return mailer


@dataclass(frozen=True)
class Queued:
    kind: str
    run_at: datetime
    dedupe_key: str | None


def pending(db: Database, incident_id: int) -> list[Queued]:
    """The incident's follow-up jobs not done yet (excluding the done markers of core.escalation)."""
    with db.transaction() as conn:
        rows = repo.undone_jobs(conn, incident_id)
    return [Queued(r["kind"], r["run_at"], r["dedupe_key"]) for r in rows]


def deliver(worker, incident_id: int, kinds: Iterable[str]) -> int:
    """Run the due jobs of ``kinds`` queued for one incident in this process (claimed like any worker does, so
    a job another process holds or has done is left alone). Returns how many ran."""
    kinds = [k for k in kinds if k in worker.handlers]
    n = 0
    while kinds and (job := worker.claim(incident_id=incident_id, kinds=kinds, first_attempt_only=True)):
        worker.run_job(job)
        n += 1
    return n
