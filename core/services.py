"""The service layer's public face: plain values in, plain values (dataclasses) out, domain errors raised.

Slack handlers, the CLI and the demo all call these; none of this module knows about Slack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from core import access, aftercare, fixes, slack_outbox
from core import repository as repo
from core.charts import model_chart
from core.db import Database
from core.diagnostics import DiagnosticsReport, run_diagnostics
from core.diagnostics.incident import diagnose_incident
from core.doctor import ChatChecks, DoctorRun, run_doctor, store_run
from core.engine import Engine, enqueue
from core.errors import NotAuthorized, PreflightFailed, clean_text
from core.escalation import Breach, Escalator
from core.followups import FollowUps
from core.incidents import Event, Incident, journal
from core.loss import LossBook
from core.monitoring import Monitor, MonitorCheck, MonitorSummary, watched_logs
from core.notify import Mailer, record_notification
from core.paging import Page, Paging
from core.registry import BackupInfo, ModelRegistry, validate_name
from core.report import Reports, add_root_cause, summary_line
from core.retrain import OUTPUT_EVENT as RETRAIN_OUTPUT, default_start_date
from core.settings import Settings
from core.status import (  # noqa: F401 - the query dataclasses stay importable from here
    CLOSED_STATES, BackupsReport, ModelStatus, OpenIncident, StatusReport, backups_report, status_report)
from core.watch import EnhancedWatch
from core.watchdog import Proposal, Watchdog
from core.worker import Worker


@dataclass(frozen=True)
class StartForm:
    """What the rollback request modal offers for the chosen model: its backups (models are searched as the
    person types, see core.picker)."""

    model: str | None
    backups: list[BackupInfo]
    recommended: str | None


class Services:
    """The service layer's facade over parts built once at the entry point (``bot.compose``)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        registry: ModelRegistry,
        *,
        engine: Engine,
        worker: Worker,
        loss: LossBook,
        paging: Paging,
        reports: Reports,
        followups: FollowUps,
        monitor: Monitor,
        watch: EnhancedWatch,
        mailer: Mailer | None = None,
    ) -> None:
        """The parts come built and wired by the one composition root, ``bot.compose.build_services``."""
        self.settings = settings
        self.db = db
        self.registry = registry
        self.engine = engine
        self.worker = worker
        self.loss = loss
        self.paging = paging
        self.reports = reports
        self.mailer = mailer
        self.followups = followups
        self.monitor = monitor  # runbook step 6: both are queued with the resume (core.outbox.aftercare_jobs)
        self.watch = watch
        self._background = False

    def start_background(self) -> None:
        """Recover interrupted rollbacks, then run queued jobs and timers until ``stop_background``."""
        if not self._background:
            self.worker.start()
            self._background = True

    def stop_background(self) -> None:
        if self._background:
            self.worker.stop()
            self._background = False

    # ------------------------------------------------------------------ queries

    def status(self) -> StatusReport:
        return status_report(self.db, self.registry)

    def backups(self, *, model: str) -> BackupsReport:
        return backups_report(self.db, self.registry, model)

    def doctor(self, *, source: str, chat: ChatChecks | None = None) -> DoctorRun:
        """`rollback-bot doctor`: every check a rollback relies on; the run is kept for `/rollback status`."""
        run = run_doctor(self.settings, self.db.connect, source=source, at=self.engine.clock(), chat=chat,
                         models_dir=self.registry.models_dir)
        with self.db.transaction() as conn:
            return store_run(conn, run)

    def start_form(self, *, model: str | None = None) -> StartForm:
        if model is None:
            return StartForm(None, [], None)
        report = self.backups(model=model)
        usable = [b for b in report.backups if b.usable]
        rec = report.recommendation.backup
        return StartForm(model, usable, rec.name if rec else None)

    def open_rollback(self, *, model: str):
        validate_name(model, "model")
        self.registry.model_dir(model)
        return self.engine.open_incident_for(model)

    def claim_delivery(self, key: str) -> bool:
        """True the first time ``key`` is seen (across every bot process), False for a retry/duplicate."""
        with self.db.transaction() as conn:
            return repo.claim_delivery_key(conn, key[:500])

    def set_root_cause(self, *, incident_id: int, text: str, user: str, is_approver: bool) -> None:
        """A person's account of the root cause (the incident's people and approvers); kept on the incident and
        used by its report."""
        self._incident_person(incident_id, user, is_approver, action="root_cause", what="add its root cause")
        with self.db.transaction() as conn:
            add_root_cause(conn, incident_id=incident_id, text=clean_text(text, 5000), by=user, at=self.engine.clock())
            enqueue(conn, "report", incident_id=incident_id, payload={"upload": False},
                    dedupe_key=f"report:{incident_id}:root_cause:{self.engine.clock().timestamp()}")

    def home_opened(self, *, user_id: str) -> None:
        with self.db.transaction() as conn:
            repo.record_home_viewer(conn, user_id)

    def recent_home_viewers(self, *, hours: float = 24, limit: int = 50) -> list[str]:
        with self.db.transaction() as conn:
            return repo.home_viewers_within(conn, hours=hours, limit=limit)

    # ------------------------------------------------------------------------------ diagnostics & fixes

    def diagnose(self, *, model: str) -> DiagnosticsReport:
        validate_name(model, "model")
        self.registry.model_dir(model)
        with self.db.transaction() as conn:
            return run_diagnostics(conn, self.registry, model=model, days=self.settings.diagnostics_days,
                                   training_log=self.settings.training_log, api_log=self.settings.api_log,
                                   today=self.engine.clock().date())

    def run_incident_diagnostics(self, job: dict) -> None:
        """The `diagnose` job (queued when a rollback has halted: core.outbox.diagnose_job): the incident's
        diagnostics kept on its plan and journaled."""
        inc = self.engine.get(job["incident_id"])
        # The version that failed (the job may run after the swap), and the restored model's figures apart.
        s = self.settings
        report, detail = diagnose_incident(self.db, self.registry, inc, lambda: self.engine.get(inc.id),
                                           days=s.diagnostics_days, training_log=s.training_log, api_log=s.api_log,
                                           today=self.engine.clock().date())
        with self.db.transaction() as conn:
            repo.merge_plan(conn, inc.id, {"diagnostics": detail})
            journal(conn, incident_id=inc.id, step="diagnostics", actor="rollback-bot", at=self.engine.clock(),
                    detail={"likely_cause": report.likely_cause, "version": detail["version"]})
            queued = slack_outbox.queue_event(self.engine, conn, self.engine.get(inc.id, conn), "diagnostics", detail)
        self.engine.publish(Event("step", self.engine.get(inc.id), "diagnostics", detail, queued=queued))

    def request_fix(self, *, fix: str, requested_by: str, model: str | None = None, channel: str | None = None,
                    start_date: date | None = None, reason: str = ""):
        if fix == fixes.RETRAIN:
            if not self.settings.retrain_command:
                raise PreflightFailed("RETRAIN_COMMAND is not set: there is no retrain command to offer.")
            validate_name(model or "", "model")
            self.registry.model_dir(model or "")
        return fixes.request_fix(self.db, fix=fix, requested_by=requested_by, model=model, channel=channel,
                                 clock=self.engine.clock, start_date=start_date, reason=reason,
                                 follow_ups=self.engine.write_follow_ups,
                                 expires_in=timedelta(minutes=self.settings.approval_timeout_minutes))

    def approve_fix(self, *, incident_id: int, approver: str, allowed: bool):
        inc = fixes.approve_fix(self.db, incident_id=incident_id, approver=approver, allowed=allowed,
                                clock=self.engine.clock, follow_ups=self.engine.write_follow_ups)
        self.engine.publish(Event("state", inc))
        return inc

    def deny_fix(self, *, incident_id: int, user: str, note: str, allowed: bool):
        inc = fixes.deny_fix(self.db, incident_id=incident_id, user=user, note=note, allowed=allowed,
                             clock=self.engine.clock, follow_ups=self.engine.write_follow_ups)
        self.engine.publish(Event("state", inc))
        return inc

    def request_model_restore(self, *, model: str, requested_by: str, channel: str | None = None):
        """Quick fix for a production model.json that does not load: a rollback request to the best backup."""
        validate_name(model, "model")
        with self.db.transaction() as conn:
            proposal = fixes.propose_model_restore(self.registry, conn, model=model, engine=self.engine)
        if proposal is None:
            raise PreflightFailed(f"The production model.json of {model} loads: there is nothing to restore.")
        inc, _ = fixes.request_restore(self.engine, proposal, requested_by, channel=channel)
        return inc

    def retrain_start(self, report: DiagnosticsReport) -> date | None:
        """The *Retrain* fix's proposed start date (None: RETRAIN_COMMAND is not set, no such fix)."""
        if not self.settings.retrain_command:
            return None
        return default_start_date(report.regime, report.as_of or self.engine.clock().date())

    def register_fix_runner(self) -> None:
        s = self.settings

        def output(inc: Incident, lines: list[str], running: bool) -> None:  # followed in the thread
            self.engine.publish(Event("step", inc, RETRAIN_OUTPUT, {"lines": lines, "running": running}))

        runner = fixes.RetrainRunner(self.registry, s.retrain_command, s.retrain_timeout_minutes * 60, output)
        fixes.register(self.worker, on_done=lambda outcome: self.engine.publish(Event("state", outcome.incident)),
                       retrainer=runner)

    def register_watchdog(self, on_proposal: Callable[[Proposal], None]) -> Watchdog | None:
        s = self.settings
        if s.watchdog_every_minutes <= 0:
            return None
        dog = Watchdog(self.engine, self.registry, ic_threshold=s.watchdog_ic_threshold,
                       sharpe_threshold=s.watchdog_sharpe_threshold, days=s.watchdog_days,
                       min_days=s.watchdog_min_days, cooldown=timedelta(minutes=s.watchdog_cooldown_minutes))
        dog.register(self.worker, every_minutes=s.watchdog_every_minutes, on_proposal=on_proposal)
        return dog

    # ------------------------------------------------------------------------------ after the rollback

    def write_report_job(self, job: dict) -> None:
        """The `report` job (bot.compose)."""
        self._update_report(job["incident_id"], upload=bool(job["payload"].get("upload")))

    def report(self, *, incident_id: int, actor: str, is_approver: bool) -> Path:
        """``/rollback report INCIDENT`` (the incident's people and approvers): bring the report up to date and
        return its file."""
        self._incident_person(incident_id, actor, is_approver, action="report", what="post its report again")
        return self._update_report(incident_id, actor=actor, upload=True, again=True)

    def _incident_person(self, incident_id: int, user: str, is_approver: bool, *, action: str, what: str) -> Incident:
        inc = self.engine.get(incident_id)  # UnknownIncident for a wrong id
        if not access.may_annotate(inc, user, is_approver=is_approver,
                                   owns_followup=self.followups.owns(incident_id=incident_id, user=user)):
            self.engine.audit(None, actor=user, action=action, outcome="refused", incident_id=incident_id,
                              reason="not the incident's requester or approver, nor an approver")
            raise NotAuthorized(f"Only {inc.ref}'s requester and approver, the owners of its follow-ups, and "
                                f"approvers, may {what}.")
        return inc

    def heavy_command(self, *, user: str, command: str, allowed: bool) -> None:
        """`/rollback diagnose`, `backups`, `status MODEL`: operators, approvers and stakeholders, rate-limited
        per person across every bot process (``HEAVY_COMMANDS_PER_MINUTE``)."""
        if not allowed:
            self.engine.audit(None, actor=user, action=command, outcome="refused", reason="not allowed")
            raise NotAuthorized(f"`/rollback {command}` is for operators, approvers and stakeholders.")
        access.take_heavy_slot(self.engine, user=user, command=command,
                               per_minute=self.settings.heavy_commands_per_minute)

    def _update_report(self, incident_id: int, *, upload: bool, actor: str = "rollback-bot",
                       again: bool = False) -> Path:
        """Rewrite the report file, then tell the listeners (the Slack layer uploads it when ``upload``)."""
        path = self.reports.update(incident_id, actor=actor)
        inc = self.engine.get(incident_id)
        detail = {"path": str(path), "upload": upload, "summary": summary_line(inc, self.engine.steps(inc.id))}
        if again:
            detail["again"] = True
        self.engine.publish(Event("step", inc, "report", detail))
        return path

    def register_aftercare(
        self,
        *,
        on_page: Callable[[Incident, str], None],
        on_breach: Callable[[Incident, Breach], None],
        on_trouble: Callable[[Incident, MonitorCheck], None],
        on_summary: Callable[[Incident, MonitorSummary], None],
        on_email_failed: Callable[[Incident, str, Exception], None],
        on_emergency: Callable[[Incident, Page], None] | None = None,
        on_pagerduty_failed: Callable[[Incident, str, str], None] | None = None,
    ) -> None:
        """Escalation timers and paging, post-resume monitoring and e-mail, telling people through the callbacks."""
        s = self.settings
        # a page closes with its incident (Paging.close_with_state, an outbox follow-up added in bot/compose.py)
        self.paging.register(self.worker, on_emergency=on_emergency, on_pagerduty_failed=on_pagerduty_failed)
        Escalator(self.engine, escalate_after_minutes=s.escalate_after_minutes,
                  loss_threshold=s.loss_escalation_threshold, paging=self.paging).register(
            self.worker, on_page, on_breach)  # the timers are queued with each state (core.outbox)
        # started in the resume's transaction (core.outbox.aftercare_jobs), not by a listener
        self.monitor.register(self.worker, on_trouble, on_summary)
        if self.mailer is not None:  # installed with the services (core.outbox); the Slack layer reports failures
            self.mailer.on_failed = on_email_failed

    def watched_logs(self) -> list[Path]:
        """Every configured log followed for error lines after the resume."""
        s = self.settings
        return watched_logs(s.monitor_log, s.trading_log, s.api_log)

    def register_watch(self, *, on_update: Callable[[Incident, dict], None],
                       on_end: Callable[[Incident, str], None]) -> EnhancedWatch:
        """The runbook's 24 hours of enhanced monitoring after the resume (core.watch)."""
        # started in the resume's transaction (core.outbox.aftercare_jobs), not by a listener
        self.watch.register(self.worker, on_update, on_end)
        return self.watch

    def accept(self, *, incident_id: int, user: str, reason: str, allowed: bool) -> Incident:
        """An approver closes an incident that needs attention, with a written reason (core.aftercare)."""
        return aftercare.accept(self.engine, incident_id=incident_id, user=user, reason=reason, allowed=allowed)

    def record_notification(self, *, incident_id: int, channel: str, milestone: str, ok: bool | None,
                            recipients: int | None = None, error: str | None = None) -> None:
        with self.db.transaction() as conn:
            record_notification(conn, incident_id=incident_id, channel=channel, milestone=milestone,
                                at=self.engine.clock(), ok=ok, recipients=recipients, error=error)

    def model_chart(self, *, model: str) -> bytes:
        """PNG of the production model's daily IC and rolling Sharpe, beside the recommended backup."""
        validate_name(model, "model")
        self.registry.model_dir(model)
        rec = self.backups(model=model).recommendation.backup
        with self.db.transaction() as conn:
            return model_chart(conn, self.registry, model, compare_with=rec.name if rec else None)

    def notified(self, *, incident_id: int, channel: str, milestone: str) -> bool:
        """Whether this milestone's notification on ``channel`` was already journaled (sent, failed or skipped)."""
        with self.db.transaction() as conn:
            return repo.notify_journaled(conn, incident_id, channel=channel, milestone=milestone)

