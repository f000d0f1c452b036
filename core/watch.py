"""The runbook's 24 hours of enhanced monitoring after the resume (its crontab "every 30 minutes").

When a rollback resumes trading (state ``monitoring``) the watch records a baseline in ``plan.watch`` and
queues its first check, in the resume's own transaction (``core.outbox.aftercare_jobs``): no listener or sweep
starts it. Checks are due at fixed times counted from the incident's opening, like the runbook's
other targets and like a crontab: slot k at ``created_at + k × ENHANCED_MONITOR_EVERY_MINUTES``, from the first
slot after the resume to ``created_at + ENHANCED_MONITOR_HOURS`` (a resume so late that no slot is left starts
a full window at the resume). So with the default settings the first check is the runbook's T+30 ("monitoring
confirms stability") and the last one its T+24 h.

Each check looks at

* the restored model's IC on the returns realized since the resume (``Monitor.look_at_model``); below
  ``MONITOR_MIN_IC`` is trouble when new rows arrived since the last check;
* error lines written since the last check in every configured log (MONITOR_LOG, TRADING_LOG, API_LOG);
* trades executed while trading is halted (the trades table and TRADING_LOG), since the last check.

Checks are jobs in PostgreSQL (``watch_check``, dedupe key ``watch:{id}:{slot}``), chained: each queues the
next, so the watch survives restarts and runs once with several bot processes. A job that runs after its slot
(the bot was down) checks for the latest slot whose time has come, and every slot in between, whose time
passed by more than one interval, is recorded as missed (journal step ``watch_missed``, in the message and the
report). After each check ``on_update`` shows the record (one thread message, updated in place); trouble
moves the incident to ``needs_attention`` (``core.aftercare``). The first clean check is journaled as
``stable``; after the last one the summary is journaled as ``watch_end`` and handed to ``on_end``, and the
watch's follow-up is settled (``core.watch_followup``: done by the bot when the watch ended well, else left open)
and the follow-ups message shown again. For the
runbook's targets, a check made within ``core.timeline.TARGET_CHECK_DELAY`` of its time counts at that time. The watch
stops early when the incident is superseded or another rollback of the model was approved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from core import repository as repo
from core import trading, watch_followup
from core.aftercare import handed_over_to, raise_attention
from core.engine import Engine, enqueue
from core.followups import CREATE_JOB as FOLLOWUPS_JOB
from core.incidents import Incident, journal
from core.monitoring import Monitor, log_baseline
from core.timeline import TARGET_CHECK_DELAY
from core.watchview import due_at, watch_summary

__all__ = ["WATCH_JOB", "EnhancedWatch"]

log = logging.getLogger("rollback_bot.watch")

WATCH_JOB = "watch_check"
_WATCHED_STATES = ("monitoring", "needs_attention", "resolved")
_SOURCE = "24-hour enhanced monitoring"

UpdateCallback = Callable[[Incident, dict], None]
EndCallback = Callable[[Incident, str], None]


def _iso(at: datetime) -> str:
    return at.isoformat()


class EnhancedWatch:
    """See the module docstring."""

    def __init__(self, engine: Engine, *, log_paths: list[Path], hours: float = 24.0, every_minutes: float = 30.0,
                 min_ic: float = 0.0) -> None:
        self.engine = engine
        self.db = engine.db
        self.hours = hours
        self.every = every_minutes
        self.looker = Monitor(engine, log_paths=log_paths, min_ic=min_ic)  # only its looks; never registered
        self.on_update: UpdateCallback | None = None
        self.on_end: EndCallback | None = None

    # -- scheduling

    def schedule(self, conn: psycopg.Connection, incident: Incident) -> None:
        """Record the baseline (once) and queue the first check, in the caller's transaction."""
        inc = repo.find(conn, incident.id, lock=True)
        if inc is None or "watch" in (inc.plan or {}) or inc.resumed_at is None:
            return
        every = timedelta(minutes=self.every)
        slots = max(1, int(self.hours * 60 // self.every))
        anchor = inc.created_at
        first = int((inc.resumed_at - anchor) // every) + 1
        if first > slots:  # resumed after the window: a full window from the resume
            anchor, first = inc.resumed_at, 1
        watch = {"anchor": _iso(anchor), "every_minutes": self.every, "slots": slots, "first": first,
                 "baseline_day": self.looker.baseline_day(conn, inc), "logs": log_baseline(self.looker.log_paths),
                 "rows_seen": 0, "last_at": _iso(inc.resumed_at), "checks": [], "missed": [], "message_ts": None,
                 "ended": None, "stopped": None}
        repo.merge_plan(conn, inc.id, {"watch": watch})
        enqueue(conn, WATCH_JOB, incident_id=inc.id, run_at=due_at(watch, first), payload={"n": first},
                dedupe_key=f"watch:{inc.id}:{first}")

    def register(self, worker: Any, on_update: UpdateCallback, on_end: EndCallback) -> None:
        self.on_update = on_update
        self.on_end = on_end
        worker.on(WATCH_JOB, self._check_job)

    def set_message(self, incident_id: int, ts: str) -> None:
        """Remember the thread message that shows the watch (updated after each check)."""
        with self.db.transaction() as conn:
            repo.set_in_plan(conn, incident_id, ["watch", "message_ts"], ts)

    # -- one check

    def _stop_reason(self, inc: Incident) -> str | None:
        if inc.state not in _WATCHED_STATES:
            return f"the incident is {inc.state.replace('_', ' ')}"
        with self.db.transaction() as conn:
            other = handed_over_to(conn, inc)
        return f"a later rollback of {inc.model_name}, INC-{other}, was approved" if other is not None else None

    def _trades_while_halted(self, since: datetime) -> int | None:
        """Trades executed after ``since`` while trading is halted (None: trading is not halted)."""
        s = self.engine.settings
        with self.db.transaction() as conn:
            halt = trading.active_halt(conn)
            if halt is None:
                return None
            return trading.trades_after(conn, max(since, halt["halted_at"]), table=s.trades_table,
                                        time_column=s.trades_time_column, log_path=s.trading_log)

    def _check_job(self, job: dict) -> None:
        inc = self.engine.get(job["incident_id"])
        w = dict((inc.plan or {}).get("watch") or {})
        if not w or w.get("ended") or w.get("stopped"):
            return
        stop = self._stop_reason(inc)
        if stop is not None:
            self._stop(inc, stop)
            return
        now = self.engine.clock()
        every = timedelta(minutes=float(w["every_minutes"]))
        slots = int(w["slots"])
        n = int(job["payload"]["n"])
        anchor = due_at(w, 0)
        latest = min(slots, max(n, int((now - anchor) // every)))
        missed = [{"n": k, "due": _iso(due_at(w, k))} for k in range(n, latest)]
        due = due_at(w, latest)
        on_time = now - due <= TARGET_CHECK_DELAY["watched"]  # for the runbook targets: counts as done when due

        model = self.looker.look_at_model(inc, baseline_day=w.get("baseline_day"))
        logs = self.looker.look_at_logs(dict(w.get("logs") or {}))
        since = datetime.fromisoformat(w["last_at"]) if w.get("last_at") else inc.resumed_at or now
        trades = self._trades_while_halted(since)
        seen = int(w.get("rows_seen") or 0)
        trouble = [t for t in model.trouble if t != model.ic_trouble or model.rows > seen]
        errors = self.looker.describe_errors(logs)
        if errors:
            trouble.append(errors)
        if trades:
            trouble.append(f"{trades} trade(s) executed while trading is halted, since {since:%H:%M:%S} UTC")
        check = {"n": latest, "due": _iso(due), "at": _iso(now), "ok": not trouble, "trouble": trouble,
                 "ic": model.ic, "rows": model.rows, "days": model.days, "errors": logs.per_log, "trades": trades}
        final = latest >= slots

        with self.db.transaction() as conn:
            plan, state = repo.locked_plan(conn, inc.id)
            w = dict(plan.get("watch") or {})
            if (w.get("checks") and w["checks"][-1]["n"] >= latest) or w.get("ended") or w.get("stopped"):
                return  # this slot was looked at already (the job ran again after a crash)
            w["checks"] = [*(w.get("checks") or []), check]
            w["missed"] = [*(w.get("missed") or []), *missed]
            w.update(logs=logs.state, rows_seen=max(seen, model.rows), last_at=_iso(now))
            for m in missed:
                journal(conn, incident_id=inc.id, step="watch_missed", actor="rollback-bot", at=now,
                        outcome="warning", detail={"n": m["n"], "due": m["due"], "on_time": False,
                                                   "summary": f"check #{m['n']} due {m['due'][11:16]} UTC was "
                                                              "missed: no bot process ran within one interval"})
            stable = repo.has_step(conn, inc.id, "stable")
            if not trouble and not stable and state != "needs_attention":
                journal(conn, incident_id=inc.id, step="stable", actor="rollback-bot", at=now,
                        detail={"due": _iso(due) if on_time else None, "check": latest,
                                "summary": f"check #{latest} found no trouble"})
            summary = None
            if final:
                w["ended"] = _iso(now)
                summary = watch_summary(w, ref=inc.ref)
                journal(conn, incident_id=inc.id, step="watch_end", actor="rollback-bot", at=now,
                        outcome="warning" if (w["missed"] or any(not c["ok"] for c in w["checks"])) else "ok",
                        detail={"due": _iso(due) if on_time else None, "summary": summary,
                                "checks": len(w["checks"]), "missed": len(w["missed"])})
            else:
                nxt = latest + 1
                enqueue(conn, WATCH_JOB, incident_id=inc.id, run_at=due_at(w, nxt), payload={"n": nxt},
                        dedupe_key=f"watch:{inc.id}:{nxt}")
            repo.merge_plan(conn, inc.id, {"watch": w})
            if final:  # its follow-up: done by the bot when it ended well, else left open; the message shows which
                watch_followup.settle(conn, inc.id, now=now)
                enqueue(conn, FOLLOWUPS_JOB, incident_id=inc.id, dedupe_key=f"followups:{inc.id}:watch_end")
            if final or missed or trouble:
                enqueue(conn, "report", incident_id=inc.id, payload={"upload": final},
                        dedupe_key=f"report:{inc.id}:watch:{latest}")
        self._tell(inc, w)
        if trouble:
            raise_attention(self.engine, inc.id, trouble, source=_SOURCE)
        if summary is not None and self.on_end is not None:
            try:
                self.on_end(self.engine.get(inc.id), summary)
            except Exception:  # noqa: BLE001 - the summary is journaled; posting it must not fail the job
                log.exception("%s: posting the enhanced monitoring summary failed", inc.ref)

    def _stop(self, inc: Incident, reason: str) -> None:
        with self.db.transaction() as conn:
            plan, _state = repo.locked_plan(conn, inc.id)
            w = dict(plan.get("watch") or {})
            if not w or w.get("stopped") or w.get("ended"):
                return
            w["stopped"] = reason
            repo.merge_plan(conn, inc.id, {"watch": w})
            journal(conn, incident_id=inc.id, step="watch_end", actor="rollback-bot", at=self.engine.clock(),
                    outcome="skipped", detail={"summary": f"stopped: {reason}", "stopped": reason})
        self._tell(inc, w)

    def _tell(self, inc: Incident, w: dict) -> None:
        if self.on_update is None:
            return
        try:
            self.on_update(self.engine.get(inc.id), w)
        except Exception:  # noqa: BLE001 - the record is in the database; the next check shows it again
            log.exception("%s: showing the enhanced monitoring failed", inc.ref)
