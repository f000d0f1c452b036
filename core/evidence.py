"""Evidence before approval: within seconds of a rollback request, what an approver needs to tell a bad model
from a temporary market condition.

When a rollback is requested (state ``requested``) a job ``evidence`` is queued; whichever bot process runs jobs
(the work process of `serve`) computes, for the request's model and target:

* the diagnostics of the production model (``core.diagnostics``, through the ``diagnose`` callable it is given):
  its likely cause, the regime test (market volatility and dispersion, recent against prior days) and data
  quality (ticker counts, NULLs, a stale feature view);
* live figures on the same recent days (``LIVE_DAYS``, the window of the backup recommendation) for the current
  production model and for the target backup: mean daily Spearman IC and long-short Sharpe on realised returns
  (``core.monitoring.labelled_rows``, ``core.performance.evaluate_booster``), beside what their metadata.json
  promises;
* a verdict from those, one of::

      data problem     the inputs are bad (stale view, missing tickers, NULLs): a rollback will not fix them
      model-specific   the target does clearly better than the current model on the same days
                       (IC higher by at least IC_MARGIN and above zero), or the production model does not load
      market-wide      the target does no better on the same days and the regime test finds a change: a
                       market move that every model suffers; a rollback may not help
      inconclusive     anything else (too little data, or no clear difference), said as it is

The result is kept in the incident's ``plan["evidence"]`` (plain values), journaled as the step ``evidence`` and
published as an engine event (the Slack layer updates the request card). It is only kept while the request is
still waiting for approval: once approved the swap may already be changing the production files, so evidence
computed then would not be what the approver saw (the step is journaled ``skipped``). A failure is kept as such
(``state: failed`` with the error): the card says the evidence could not be computed, never that all is well.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from core import repository as repo, slack_outbox
from core.engine import enqueue
from core.errors import DatabaseUnavailable, RollbackError
from core.incidents import REQUESTED, Event, Incident, journal
from core.monitoring import labelled_rows
from core.performance import evaluate_booster
from core.registry import BackupInfo

if TYPE_CHECKING:
    from core.engine import Engine
    from core.worker import Worker

__all__ = ["IC_MARGIN", "LIVE_DAYS", "EvidenceJob", "classify", "data_quality_text", "live_figure", "summary_lines"]

log = logging.getLogger("rollback_bot.evidence")

LIVE_DAYS = 20  # the recommendation's window ("best long-short Sharpe over the last 20 trading days")
IC_MARGIN = 0.01  # the target must beat the current model's mean daily IC by this much to count as "better"
JOB = "evidence"

Diagnose = Callable[[str], Any]  # model name -> core.diagnostics.DiagnosticsReport


def live_figure(conn, registry, info: BackupInfo, version: str, days: int = LIVE_DAYS) -> dict[str, Any]:
    """IC and long-short Sharpe of one model's files on the last ``days`` days with realised returns."""
    out: dict[str, Any] = {"version": version, "ic": None, "sharpe": None, "days": 0,
                           "metadata_ic": info.spearman_ic, "metadata_sharpe": info.sharpe_ratio, "error": None}
    if not info.features:
        out["error"] = "; ".join(info.problems) or "metadata.json lists no features"
        return out
    try:
        booster = registry.booster(info.path)
        perf = evaluate_booster(booster, info.features, labelled_rows(conn, info.features, last_days=days))
    except (RollbackError, OSError, ValueError) as exc:
        out["error"] = str(exc)[:300]
        return out
    if perf is None:
        out["error"] = f"fewer than 5 days with realised returns in the last {days}"
        return out
    out.update(ic=_finite(perf.spearman_ic), sharpe=_finite(perf.sharpe_ratio), days=perf.days)
    return out


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def data_quality_text(dq: Any) -> tuple[bool, str]:
    """(inputs look fine, one line) from a diagnostics data-quality section."""
    if getattr(dq, "error", None):
        return False, f"could not be checked ({dq.error})"
    problems = []
    if dq.stale:
        problems.append(f"feature view stale by {dq.stale_days} trading day(s)")
    if dq.flagged_days:
        problems.append(f"{len(dq.flagged_days)} day(s) with far fewer tickers")
    nulls = {c: n for c, n in (dq.null_counts or {}).items() if n}
    if nulls:
        problems.append(f"NULLs in {len(nulls)} feature column(s) ({', '.join(sorted(nulls)[:3])})")
    if dq.missing_weekdays:
        problems.append(f"{len(dq.missing_weekdays)} weekday(s) without bars")
    if problems:
        return False, "; ".join(problems)
    return True, "tickers per day steady, no NULL features, feature view current"


def _regime(rg: Any) -> tuple[bool, str]:
    verdict = getattr(rg, "verdict", "error")
    if verdict == "error":
        return False, f"could not be checked ({getattr(rg, 'error', '')})"

    def ratio(x: float) -> str:
        return f"{x:.2f}x" if math.isfinite(x) else "n/a"

    text = (f"{verdict}: market volatility {ratio(rg.vol_ratio)}, dispersion {ratio(rg.dispersion_ratio)} of the"
            f" prior {rg.prior_days} days")
    return verdict == "regime change", text


def classify(*, loads: bool, data_ok: bool, data_text: str, regime_change: bool, current: dict,
             target: dict) -> tuple[str, str]:
    """The verdict (see the module docstring) and one sentence saying why."""
    cur, tgt = current.get("ic"), target.get("ic")
    if not loads:
        return "model-specific", "The production model file does not load: restoring a backup fixes that."
    if not data_ok:
        return "data problem", (f"The inputs look wrong ({data_text}): both models read them, so a rollback alone"
                                " will not fix this; fix the data (see the diagnostics) first.")
    if cur is None or tgt is None:
        which = "current model" if cur is None else "target"
        if regime_change:
            return "market-wide", (f"The market changed regime; the {which}'s live IC could not be measured, so it"
                                   " is not known whether the target copes better.")
        return "inconclusive", f"The {which}'s live IC could not be measured on recent days."
    if tgt >= cur + IC_MARGIN and tgt > 0:
        extra = " even though the market changed regime" if regime_change else ""
        return "model-specific", (f"On the same recent days the target does better (IC {tgt:+.3f} against"
                                  f" {cur:+.3f}){extra}: the fault is the current model's.")
    if regime_change:
        return "market-wide", (f"The market changed regime and the target does no better on the same days (IC"
                               f" {tgt:+.3f} against {cur:+.3f}): likely a market condition every model suffers;"
                               " a rollback may not help.")
    return "inconclusive", (f"No regime change, but the target does not do clearly better on the same days (IC"
                            f" {tgt:+.3f} against {cur:+.3f}).")


class EvidenceJob:
    """Queues and runs the ``evidence`` job of every new rollback request."""

    def __init__(self, engine: Engine, diagnose: Diagnose, *, live_days: int = LIVE_DAYS) -> None:
        self.engine = engine
        self.diagnose = diagnose
        self.live_days = live_days

    def register(self, worker: Worker) -> None:
        """The job is queued with the request itself, in its transaction (``queue``, an outbox follow-up)."""
        self.engine.follow_ups.append(self.queue)
        worker.on(JOB, self.run)

    def queue(self, conn: psycopg.Connection, inc: Incident) -> None:
        """Outbox follow-up (core.outbox): a new rollback request queues its evidence job in its own transaction.
        Not for the break-glass CLI: its request is approved at once, nobody waits for evidence."""
        if inc.kind == "rollback" and inc.state == REQUESTED and inc.source != "cli":
            enqueue(conn, JOB, incident_id=inc.id, dedupe_key=f"{JOB}:{inc.id}")

    def compute(self, model: str, backup: str, from_version: str | None) -> dict[str, Any]:
        started = time.perf_counter()
        registry = self.engine.registry
        report = self.diagnose(model)
        with self.engine.db.transaction() as conn:
            current = live_figure(conn, registry, registry.production(model), from_version or "production",
                                  self.live_days)
            target = live_figure(conn, registry, registry.backup(model, backup), backup, self.live_days)
        data_ok, data_text = data_quality_text(report.data_quality)
        regime_change, regime_text = _regime(report.regime)
        loads = getattr(report.performance, "verdict", "") != "does not load"
        verdict, why = classify(loads=loads, data_ok=data_ok, data_text=data_text, regime_change=regime_change,
                                current=current, target=target)
        return {"state": "ready", "verdict": verdict, "why": why, "likely_cause": report.likely_cause,
                "regime": regime_text, "regime_change": regime_change, "data_ok": data_ok, "data_quality": data_text,
                "live_days": self.live_days, "current": current, "target": target,
                "computed_at": self.engine.clock().isoformat(), "seconds": round(time.perf_counter() - started, 3)}

    def run(self, job: dict) -> None:
        inc = self.engine.get(job["incident_id"])
        if inc.kind != "rollback" or inc.state != REQUESTED:
            self._skip(inc.id, f"not computed: the request was already {inc.state}")
            return
        try:
            evidence = self.compute(inc.model_name, inc.target_backup, inc.from_version)
        except (DatabaseUnavailable, psycopg.OperationalError):
            raise  # transient: the worker runs the job again shortly
        except Exception as exc:  # noqa: BLE001 - said on the card as it is; the approver decides without it
            log.exception("%s: the evidence could not be computed", inc.ref)
            evidence = {"state": "failed", "error": (str(exc) or type(exc).__name__)[:500],
                        "computed_at": self.engine.clock().isoformat()}
        with self.engine.db.transaction() as conn:
            cur = self.engine.get(inc.id, conn, lock=True)
            if cur.state != REQUESTED:
                conn.rollback()
                self._skip(inc.id, f"computed after the request was {cur.state}: not what the approver saw")
                return
            new = repo.merge_plan_touched(conn, inc.id, {"evidence": evidence}, at=self.engine.clock())
            detail = {"verdict": evidence.get("verdict"), "state": evidence["state"]}
            journal(conn, incident_id=inc.id, step=JOB, actor="rollback-bot", at=self.engine.clock(),
                    outcome="ok" if evidence["state"] == "ready" else "failed", detail=detail,
                    error=evidence.get("error"))
            queued = slack_outbox.queue_event(self.engine, conn, new, JOB, detail)
        self.engine.publish(Event("step", new, JOB, detail, queued=queued))

    def _skip(self, incident_id: int, note: str) -> None:
        with self.engine.db.transaction() as conn:
            journal(conn, incident_id=incident_id, step=JOB, actor="rollback-bot", at=self.engine.clock(),
                    outcome="skipped", detail={"note": note})


def _figure_line(label: str, f: dict, days: int) -> str:
    if f.get("ic") is None:
        return f"{label} `{f.get('version')}`: live IC not measured ({f.get('error') or 'no data'})"
    meta = f" (metadata.json: IC {f['metadata_ic']:.3f})" if f.get("metadata_ic") is not None else ""
    sharpe = f", Sharpe {f['sharpe']:.1f}" if f.get("sharpe") is not None else ""
    return f"{label} `{f.get('version')}`: IC {f['ic']:+.3f}{sharpe} over {f.get('days')} of the last {days} days{meta}"


def summary_lines(evidence: dict | None) -> list[str]:
    """The evidence as plain lines (Markdown-safe), for the report and the Slack card."""
    if not evidence:
        return ["Not computed yet."]
    if evidence.get("state") != "ready":
        return [f"Could not be computed: {evidence.get('error') or 'unknown error'}. Decide on the diagnostics"
                " (`/rollback diagnose`) instead."]
    days = evidence.get("live_days", LIVE_DAYS)
    return [
        f"Verdict: {evidence['verdict']}. {evidence.get('why', '')}",
        _figure_line("Live IC, current", evidence.get("current") or {}, days),
        _figure_line("Live IC, target", evidence.get("target") or {}, days),
        f"Regime: {evidence.get('regime', '')}",
        f"Data quality: {'ok' if evidence.get('data_ok') else 'PROBLEM'}: {evidence.get('data_quality', '')}",
        f"Diagnostics of the current model alone, likely cause: {evidence.get('likely_cause', '')}",
    ]
