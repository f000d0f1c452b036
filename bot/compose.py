"""The one composition root: build the service layer's parts, wire them together, and hand them to the facade.

Every entry point (the CLI, ``serve``/``work``, the demo, the sandbox, the console, the benchmarks, the tests)
calls ``build_services``; ``core.services.Services`` receives the built parts and builds nothing itself.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from core import halt_watch, outbox, slack_outbox
from core.charts import chart_maker
from core.db import Database
from core.engine import Engine, no_fault
from core.evidence import EvidenceJob
from core.followups import FollowUps
from core.incidents import utcnow
from core.loss import LossBook
from core.monitoring import Monitor, watched_logs
from core.pagerduty import PagerDuty
from core.paging import Paging
from core.pnl import PnlPoller
from core.registry import ModelRegistry
from core.report import Reports
from core.services import Services
from core.settings import Settings
from core.watch import EnhancedWatch
from core.worker import Worker


def build_services(
    settings: Settings,
    db: Database,
    registry: ModelRegistry | None = None,
    *,
    clock: Callable[[], datetime] | None = None,
    fault_hook: Callable[[str], None] | None = None,
) -> Services:
    """The engine, the worker and the services around them, with their listeners and job handlers installed."""
    registry = registry or ModelRegistry(settings.models_dir, max_model_bytes=settings.max_model_bytes)
    engine = Engine(settings, db, registry, clock=clock or utcnow, fault_hook=fault_hook or no_fault)
    worker = Worker(engine, lease_seconds=settings.job_lease_seconds)
    # Issue 14: the estimated loss as a live number (and the P&L query), paging that wakes people.
    loss = LossBook(engine, loss_threshold=settings.loss_escalation_threshold)
    paging = Paging(engine, ack_minutes=settings.escalation_ack_minutes, pagerduty=pagerduty_of(settings))
    # Runbook step 7: the report is written as soon as the rollback finishes and kept up to date.
    reports = Reports(engine, settings.incidents_dir, chart=chart_maker(db, registry), losses=loss.history)
    # Transactional outbox (core.outbox): the report, the e-mail and the escalation timers of a state change
    # are queued in its transaction (core.repository.move), in every process (serve, work, the CLI, tests);
    # no listener queues them.
    mailer = outbox.install(engine, worker, settings, reports)
    # Runbook step 6: the 30-minute monitoring and the 24-hour watch after the resume, queued in the resume's
    # transaction (core.outbox.aftercare_jobs); their checks run wherever the Slack layer registers them.
    logs = watched_logs(settings.monitor_log, settings.trading_log, settings.api_log)
    monitor = Monitor(engine, log_paths=logs, every_minutes=settings.monitor_every_minutes,
                      total_minutes=settings.monitor_minutes, min_ic=settings.monitor_min_ic)
    watch = EnhancedWatch(engine, log_paths=logs, hours=settings.enhanced_monitor_hours,
                          every_minutes=settings.enhanced_monitor_every_minutes, min_ic=settings.monitor_min_ic)
    engine.follow_ups.append(outbox.aftercare_jobs(monitor, watch))
    engine.follow_ups.append(paging.close_with_state)  # an incident that closes resolves its page
    # The Slack updates of each state change (its reply, the card, the step journaled with it, the stakeholders'
    # message), queued in its transaction and delivered by the Slack lane of whichever process has a Slack client.
    slack_outbox.install(engine, incident_channel=settings.incident_channel)
    # The runbook's next steps as follow-ups with owners and due dates (their jobs: FollowUps.register).
    followups = FollowUps(engine)
    services = Services(settings, db, registry, engine=engine, worker=worker, loss=loss, paging=paging,
                        reports=reports, followups=followups, monitor=monitor, watch=watch, mailer=mailer)
    # While a halt is held, clients activated or added are saved and halted too (core.halt_watch).
    worker.periodic.append(lambda: halt_watch.sweep(engine))
    # Runbook step 8: every rollback runs diagnostics right after the halt (a job queued with the halt's state,
    # core.outbox.diagnose_job, so any process may run it).
    worker.on("diagnose", services.run_incident_diagnostics)
    # Evidence before approval (core.evidence): a job queued with every rollback request.
    EvidenceJob(engine, lambda model: services.diagnose(model=model)).register(worker)
    loss.register(worker)
    if settings.pnl_query:  # polled from each state change of an open incident on (core.outbox)
        poller = PnlPoller(engine, loss, query=settings.pnl_query, every_minutes=settings.pnl_poll_minutes,
                           timeout_seconds=settings.pnl_query_timeout_seconds)
        poller.register(worker)
        engine.follow_ups.append(poller.follow_up)
    worker.on("report", services.write_report_job)
    return services


def pagerduty_of(settings: Settings) -> PagerDuty | None:
    """PagerDuty's Events API v2 when PAGERDUTY_ROUTING_KEY is set."""
    key = settings.pagerduty_routing_key.get_secret_value() if settings.pagerduty_routing_key else ""
    if not key:
        return None
    return PagerDuty(key, settings.pagerduty_events_url, backoff_seconds=settings.pagerduty_backoff_seconds)
