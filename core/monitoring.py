"""Runbook step 9: watch the restored model for a while after trading resumes.

When a rollback enters ``monitoring`` the monitor records a baseline in the incident's plan (``plan.monitor``):
the newest feature date the model was verified on and where each watched log ends (``core.logfollow``). Then,
every ``every_minutes`` until the window ends, a ``monitor_check`` job (chained, each carrying the log
positions it reached) looks at

* the restored model's predictions against realized returns on data that arrived since: feature rows dated
  on or after the baseline day whose next trading day is now in ``ml_training_features`` (the prediction
  made at the baseline day's close is realized by the first new day). ``core.metrics.evaluate`` gives the
  mean daily Spearman IC; an IC below ``min_ic`` is trouble;
* the production model file: it must still be the restored backup (checksum) and load;
* the lines appended to every configured log (MONITOR_LOG, TRADING_LOG, API_LOG) since the last look that are
  error lines (core.logscan: ERROR, CRITICAL, FATAL, a traceback, an exception's name).

Trouble is handed to ``on_trouble`` at once and the incident needs attention (``core.aftercare``: it stays open
and escalates; checks go on until the window ends). The window's end is the engine's own ``monitor_end`` job
(queued when trading resumed, ``MONITOR_MINUTES`` later): ``Monitor.register`` takes over its handler so that
the summary is computed over the whole window, journaled as the ``monitor`` step (which ticks "Logs
monitored") and handed to ``on_summary``; then the incident is resolved only if the window found no trouble
(never over a live problem). The summary is produced once even if the job runs again. The 24 hours of
enhanced monitoring that follow are ``core.watch``'s; ``look_at_model`` and ``look_at_logs`` serve both.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from core import repository as repo
from core.aftercare import raise_attention
from core.engine import Engine, enqueue
from core.errors import BackupCorrupt
from core.escalation import claim_once
from core.incidents import Incident, journal
from core.logfollow import LogLook, LogState, follow_logs, log_baseline, watched_logs
from core.marketdata import LabelledRows, labelled_rows  # re-exported: the one realized-returns query
from core.metrics import evaluate
from core.modelio import MODEL_FILE, load_booster, predict, read_metadata, sha256_file
from core.platform import latest_feature_date
from core.report import human_span

__all__ = [
    "CHECK_JOB",
    "LabelledRows",
    "LogLook",
    "LogState",
    "ModelLook",
    "Monitor",
    "MonitorCheck",
    "MonitorSummary",
    "follow_logs",
    "labelled_rows",
    "log_baseline",
    "watched_logs",
]

log = logging.getLogger("rollback_bot.monitoring")

CHECK_JOB = "monitor_check"
END_JOB = "monitor_end"  # queued by the engine when trading resumes


# ------------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class MonitorCheck:
    trouble: list[str]
    ic: float | None          # mean daily Spearman IC on the realized rows since the baseline (None: no rows)
    rows: int                 # realized rows since the baseline
    error_lines: list[str]    # new error lines (at most max_lines of them)
    days: int = 0
    sharpe: float | None = None
    error_count: int = 0
    logs: dict = field(default_factory=dict)  # how far each log was read (LogState)
    ic_trouble: str | None = None  # the IC part of ``trouble``, if any
    per_log: dict = field(default_factory=dict)  # log file name -> new error lines


@dataclass(frozen=True)
class ModelLook:
    """The restored model on the data that arrived since the baseline day."""

    trouble: list[str]
    ic: float | None = None
    sharpe: float | None = None
    rows: int = 0
    days: int = 0
    ic_trouble: str | None = None


@dataclass(frozen=True)
class MonitorSummary(MonitorCheck):
    """The check of the whole window, told in ``text``, after ``minutes`` of monitoring."""

    text: str = ""
    minutes: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.trouble


TroubleCallback = Callable[[Incident, MonitorCheck], None]
SummaryCallback = Callable[[Incident, "MonitorSummary"], None]


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


class Monitor:
    """Follows a restored model after the resume; see the module docstring."""

    def __init__(self, engine: Engine, *, log_path: Path | None = None, log_paths: list[Path] | None = None,
                 every_minutes: float = 5.0, total_minutes: float | None = None, min_ic: float = 0.0,
                 max_lines: int = 20) -> None:
        self.engine = engine
        self.db = engine.db
        self.log_paths = watched_logs(*(log_paths or []), log_path)
        self.every = every_minutes
        self.total = engine.settings.monitor_minutes if total_minutes is None else total_minutes
        self.min_ic = min_ic
        self.max_lines = max_lines
        self.on_trouble: TroubleCallback | None = None
        self.on_summary: SummaryCallback | None = None

    # -- baseline and scheduling

    def baseline_day(self, conn: psycopg.Connection, incident: Incident) -> str | None:
        """The newest feature date the restored model was verified on (new data is what comes after it)."""
        day = repo.verified_prediction_day(conn, incident.id)
        if day is None:
            latest = latest_feature_date(conn)
            day = latest.isoformat() if latest else None
        return day

    def _baseline(self, conn: psycopg.Connection, incident: Incident) -> dict:
        return {"baseline_day": self.baseline_day(conn, incident), "logs": log_baseline(self.log_paths)}

    def schedule(self, conn: psycopg.Connection, incident: Incident, *, every_minutes: float | None = None,
                 total_minutes: float | None = None) -> None:
        """Record the baseline (once) and queue the first check, in the caller's transaction."""
        every = every_minutes or self.every
        total = self.total if total_minutes is None else total_minutes
        locked = repo.locked_plan(conn, incident.id)
        if locked is None or "monitor" in locked[0]:
            return
        base = {**self._baseline(conn, incident), "every_minutes": every, "total_minutes": total}
        repo.merge_plan(conn, incident.id, {"monitor": base})
        start = incident.resumed_at or self.engine.clock()
        if every < total:
            enqueue(conn, CHECK_JOB, incident_id=incident.id, run_at=start + timedelta(minutes=every),
                    payload={"n": 1, "logs": base["logs"], "rows_seen": 0},
                    dedupe_key=f"monitor-check:{incident.id}:1")

    def register(self, worker: Any, on_trouble: TroubleCallback, on_summary: SummaryCallback) -> None:
        """Install the check handler and take over the engine's ``monitor_end`` (summary, then resolve). The
        monitoring starts in the resume's transaction (``core.outbox.aftercare_jobs`` calls ``schedule``)."""
        self.on_trouble = on_trouble
        self.on_summary = on_summary
        worker.on(CHECK_JOB, self._check_job)
        worker.on(END_JOB, self._end_job)

    # -- looking

    def _plan(self, incident: Incident) -> dict:
        return dict((incident.plan or {}).get("monitor") or {})

    def _model_state(self, incident: Incident) -> tuple[list[str], Any, list[str] | None]:
        """(trouble, booster, features) of the production model."""
        folder = self.engine.registry.model_dir(incident.model_name)
        try:
            if incident.target_sha256 and sha256_file(folder / MODEL_FILE) != incident.target_sha256:
                return [f"the production model of {incident.model_name} is no longer {incident.target_backup} "
                        "(its checksum changed since the rollback)"], None, None
            meta = read_metadata(folder)
            booster = load_booster(folder / MODEL_FILE, max_bytes=self.engine.registry.max_model_bytes)
            return [], booster, list(meta.features)
        except (BackupCorrupt, OSError) as exc:
            return [f"the production model of {incident.model_name} does not load: {exc}"], None, None

    def _evaluate(self, booster: Any, features: list[str],
                  day: str | None) -> tuple[list[str], float | None, float | None, int, int]:
        since = date.fromisoformat(day) if day else None
        if since is None:
            return [], None, None, 0, 0
        with self.db.transaction() as conn:
            data = labelled_rows(conn, features, since=since)
        if len(data) == 0:
            return [], None, None, 0, 0
        preds = np.asarray(predict(booster, features, data.X), dtype=float)
        if not np.all(np.isfinite(preds)):
            return [f"the restored model predicts non-finite values on {len(data)} new row(s)"], None, None, \
                len(data), 0
        perf = evaluate(data.dates, preds, data.realized)
        ic, sharpe = _finite(perf.spearman_ic), _finite(perf.sharpe_ratio)
        trouble = []
        if ic is not None and ic < self.min_ic:
            trouble.append(f"the restored model's IC is {ic:+.3f} on {len(data)} row(s) over {perf.days} day(s) of "
                           f"new data, below {self.min_ic:+.2f}")
        return trouble, ic, sharpe, len(data), perf.days

    def look_at_model(self, incident: Incident, *, baseline_day: str | None) -> ModelLook:
        """The production model: still the restored backup and loading, and its IC on the realized returns of
        feature days from ``baseline_day`` on."""
        trouble, booster, features = self._model_state(incident)
        if booster is None:
            return ModelLook(trouble)
        more, ic, sharpe, rows, days = self._evaluate(booster, features, baseline_day)
        ic_trouble = next((t for t in more if t.startswith("the restored model's IC")), None)
        return ModelLook(trouble + more, ic, sharpe, rows, days, ic_trouble)

    def look_at_logs(self, state: LogState) -> LogLook:
        return follow_logs(self.log_paths, state, max_lines=self.max_lines)

    def describe_errors(self, look: LogLook) -> str | None:
        if not look.count:
            return None
        if len(self.log_paths) == 1:
            return (f"{look.count} error line(s) in {self.log_paths[0].name} since the last look, first: "
                    f"{look.lines[0]}")
        return look.describe()

    def check(self, incident: Incident, now: datetime, *, logs: LogState | None = None) -> MonitorCheck:
        """One look: the model against new realized returns, the model file, and new error lines in the logs
        (after ``logs``; default: where they ended when monitoring began)."""
        plan = self._plan(incident)
        model = self.look_at_model(incident, baseline_day=plan.get("baseline_day"))
        looked = self.look_at_logs(dict(plan.get("logs") or {}) if logs is None else logs)
        trouble = list(model.trouble)
        errors = self.describe_errors(looked)
        if errors:
            trouble.append(errors)
        return MonitorCheck(trouble=trouble, ic=model.ic, rows=model.rows, error_lines=looked.lines, days=model.days,
                            sharpe=model.sharpe, error_count=looked.count, logs=looked.state,
                            ic_trouble=model.ic_trouble, per_log=looked.per_log)

    def summarize(self, incident: Incident, now: datetime) -> MonitorSummary:
        """The whole window: the model on all new data, and every error line since monitoring began."""
        plan = self._plan(incident)
        start = incident.resumed_at or now
        minutes = (now - start).total_seconds() / 60
        whole = self.check(incident, now)
        names = ", ".join(p.name for p in self.log_paths)
        if not self.log_paths:
            log_note = "No log file configured."
        elif plan.get("late"):
            log_note = f"{names} {'was' if len(self.log_paths) == 1 else 'were'} not watched during the window " \
                       "(monitoring began at its end)."
        else:
            log_note = ", ".join(f"{n} error line(s) in {name}" if i == 0 else f"{n} in {name}"
                                 for i, (name, n) in enumerate(whole.per_log.items())) + "."
        parts = [f"Monitored {incident.model_name} on {incident.target_backup} for {human_span(now - start)} after "
                 "the resume."]
        if whole.rows:
            sharpe = f", Sharpe {whole.sharpe:+.2f}" if whole.sharpe is not None else ""
            ic = f"{whole.ic:+.3f}" if whole.ic is not None else "undefined"
            parts.append(f"New data: {whole.rows} realized row(s) over {whole.days} day(s), IC {ic}{sharpe}.")
        else:
            parts.append("No new market data arrived, so predictions could not be checked against realized returns.")
        parts.append(log_note)
        parts.append("Trouble: " + "; ".join(whole.trouble) + "." if whole.trouble else "No trouble found.")
        return MonitorSummary(**vars(whole), text=" ".join(parts), minutes=minutes)

    # -- job handlers

    def _check_job(self, job: dict) -> None:
        inc = self.engine.get(job["incident_id"])
        if inc.state not in ("monitoring", "needs_attention"):
            return
        p = job["payload"]
        now = self.engine.clock()
        logs = p.get("logs")
        if logs is None:  # a job queued by an older version: one log, its offset and inode
            path = self.log_paths[0] if self.log_paths else None
            logs = {str(path): [int(p.get("offset") or 0), p.get("inode")]} if path else {}
        result = self.check(inc, now, logs=logs)
        seen = int(p.get("rows_seen") or 0)
        # Model trouble is news only when new rows arrived; file and log trouble always is.
        trouble = [t for t in result.trouble if t != result.ic_trouble or result.rows > seen]
        if trouble:
            if self.on_trouble is not None:
                self.on_trouble(inc, MonitorCheck(**{**result.__dict__, "trouble": trouble}))
            raise_attention(self.engine, inc.id, trouble, source="monitoring after the resume")
        plan = self._plan(inc)
        every = float(plan.get("every_minutes") or self.every)
        total = float(plan.get("total_minutes") or self.total)
        n = int(p.get("n") or 1) + 1
        start = inc.resumed_at or now
        run_at = start + timedelta(minutes=every * n)
        if run_at < start + timedelta(minutes=total):
            with self.db.transaction() as conn:
                enqueue(conn, CHECK_JOB, incident_id=inc.id, run_at=run_at, dedupe_key=f"monitor-check:{inc.id}:{n}",
                        payload={"n": n, "logs": result.logs, "rows_seen": max(seen, result.rows)})

    def _end_job(self, job: dict) -> None:
        """The window's end: the summary, then resolve, unless monitoring found trouble (then the incident
        needs attention: it never resolves over a live problem)."""
        inc = self.engine.get(job["incident_id"])
        if inc.state not in ("monitoring", "needs_attention"):
            return
        now = self.engine.clock()
        summary = None
        if not self._plan(inc):  # the resume's event was missed: record a baseline now
            with self.db.transaction() as conn:
                self.schedule(conn, inc, every_minutes=self.total, total_minutes=0)
                repo.set_in_plan(conn, inc.id, ["monitor", "late"], True)
            inc = self.engine.get(inc.id)
        computed = self.summarize(inc, now)
        with self.db.transaction() as conn:
            if claim_once(conn, f"monitor-summary:{inc.id}", incident_id=inc.id, at=now):
                summary = computed
                journal(conn, incident_id=inc.id, step="monitor", actor="rollback-bot", at=now,
                        outcome="ok" if summary.ok else "warning",
                        detail={"summary": summary.text, "ic": summary.ic, "rows": summary.rows,
                                "days": summary.days, "error_lines": summary.error_count,
                                "minutes": round(summary.minutes, 1)})
        if summary is not None and self.on_summary is not None:
            try:
                self.on_summary(inc, summary)
            except Exception:  # noqa: BLE001 - posting the summary must not keep the incident open
                log.exception("%s: posting the monitoring summary failed", inc.ref)
        if computed.trouble:
            raise_attention(self.engine, inc.id, computed.trouble, source="monitoring after the resume")
        elif self.engine.get(inc.id).state == "monitoring":
            self.engine.resolve(incident_id=inc.id, note="monitoring window ended")
