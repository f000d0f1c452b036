"""The watchdog: evaluates production models on a schedule and proposes rollbacks; people decide.

For each production model (a folder under MODELS_DIR) it checks that ``model.json`` loads and evaluates it on
the last ``days`` feature dates (``core.marketdata.labelled_rows``: labels are the next trading day's
``return_1d``): mean daily Spearman IC and the annualised Sharpe of the top/bottom-quintile long-short
portfolio. A model is flagged when it does not load, or (with at least ``min_days`` days of data) when its
IC is below ``ic_threshold`` or its Sharpe below ``sharpe_threshold``.

A ``Proposal`` carries the reasons, the production model's recent metrics and a recommended target, by the
registry's rule (``ModelRegistry.recommend`` with a live score): among the backups that pass its checks
(metadata valid, loads, features in the view, differs from production), the best long-short Sharpe on the
same recent days. This matters after a regime change, when the metadata metrics (measured before it) point
at backups that fail just like production. Every backup's recent metrics are listed in ``candidates``. For a
model that does not load, the target of ``core.fixes.propose_model_restore`` (the same version's backup).

The watchdog never requests, approves or executes anything: ``run_once`` hands each proposal to a callback
(the Slack layer posts a prefilled rollback request) and records it in ``rollback_bot.audit_log``
(action ``watchdog_proposal``). A model is not proposed again while a rollback of it is open or within
``cooldown`` of the last proposal; an advisory lock per model makes two bot processes behave as one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import psycopg

from core import repository as repo
from core import metrics
from core.db import first_value
from core.engine import Engine, enqueue
from core.errors import BackupCorrupt, RollbackError
from core.fixes import propose_model_restore
from core.marketdata import labelled_rows
from core.modelio import MODEL_FILE, predict, read_metadata, sha256_file
from core.platform import feature_columns
from core.registry import ModelRegistry

__all__ = ["Candidate", "Proposal", "Watchdog", "WATCHDOG_JOB"]

log = logging.getLogger("rollback_bot.watchdog")

WATCHDOG_JOB = "watchdog"
ACTOR = "rollback-bot (watchdog)"
ACTION = "watchdog_proposal"


@dataclass(frozen=True)
class Candidate:
    """A backup evaluated on the recent days (``usable`` False: ``problem`` says why it was skipped)."""

    backup: str
    usable: bool
    problem: str | None = None
    spearman_ic: float = math.nan
    sharpe_ratio: float = math.nan
    days: int = 0
    metadata_sharpe: float | None = None


@dataclass(frozen=True)
class Proposal:
    model: str
    reasons: list[str]
    loads: bool
    production_version: str | None
    metrics: metrics.Performance | None          # the production model's recent performance
    window: tuple[date, date] | None
    recommended: str | None                      # backup folder name
    recommendation_rule: str
    recommended_metrics: metrics.Performance | None = None
    recommended_meets_thresholds: bool | None = None
    candidates: list[Candidate] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def reason_text(self) -> str:
        """A reason to prefill the rollback request with."""
        text = f"Watchdog: {self.model} " + "; ".join(self.reasons)
        if self.recommended:
            text += f". Recommended target {self.recommended}"
            m = self.recommended_metrics
            if m is not None and math.isfinite(m.spearman_ic):
                text += f" (recent IC {m.spearman_ic:.3f}, Sharpe {_f(m.sharpe_ratio)})"
        return text + "."


def _f(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else "n/a"


class Watchdog:
    """Schedule-driven evaluation of production models; proposes, never acts."""

    def __init__(
        self,
        engine: Engine,
        registry: ModelRegistry,
        *,
        ic_threshold: float,
        sharpe_threshold: float,
        days: int = 20,
        min_days: int = 10,
        cooldown: timedelta = timedelta(hours=24),
        quantile: float = 0.2,
    ) -> None:
        if days < 2 or min_days < 1 or min_days > days:
            raise ValueError("need 2 <= days and 1 <= min_days <= days")
        self.engine = engine
        self.registry = registry
        self.ic_threshold = ic_threshold
        self.sharpe_threshold = sharpe_threshold
        self.days = days
        self.min_days = min_days
        self.cooldown = cooldown
        self.quantile = quantile

    # ------------------------------------------------------------------------------------ evaluation

    def evaluate_all(self, conn: psycopg.Connection, *, as_of: date | None = None) -> list[Proposal]:
        """One proposal per production model that needs one (nothing is recorded or posted here)."""
        out = []
        for model in self.registry.list_models():
            try:
                proposal = self.evaluate(conn, model, as_of=as_of)
            except RollbackError as exc:  # e.g. a folder that vanished meanwhile
                log.warning("watchdog could not evaluate %s: %s", model, exc)
                continue
            if proposal is not None:
                out.append(proposal)
        return out

    def _thresholds(self) -> dict[str, float]:
        return {"ic": self.ic_threshold, "sharpe": self.sharpe_threshold, "days": self.days,
                "min_days": self.min_days}

    def evaluate(self, conn: psycopg.Connection, model: str, *, as_of: date | None = None) -> Proposal | None:
        """The proposal for one model, or None when it is healthy (or there are too few recent days to judge)."""
        folder = self.registry.model_dir(model)
        version = _production_version(conn, model)
        problem = self.registry.load_problem(folder)
        if problem is not None:
            restore = propose_model_restore(self.registry, conn, model=model)
            return Proposal(
                model=model,
                reasons=[f"the production model.json does not load ({problem})"],
                loads=False,
                production_version=version,
                metrics=None,
                window=None,
                recommended=restore.backup if restore else None,
                recommendation_rule=restore.rule if restore else "",
                candidates=[Candidate(k, False, v) for k, v in (restore.rejected if restore else {}).items()],
                thresholds=self._thresholds(),
            )
        try:
            booster = self.registry.booster(folder)
        except (BackupCorrupt, OSError) as exc:  # changed on disk since load_problem looked
            return Proposal(model, [f"the production model.json does not load ({exc})"], False, version, None, None,
                            None, "", thresholds=self._thresholds())
        try:
            prod_features = list(read_metadata(folder).features)
        except BackupCorrupt:
            prod_features = list(booster.feature_names or [])
        available = feature_columns(conn)
        backups = self.registry.list_backups(model)
        missing = [f for f in prod_features if f not in available]
        if missing:
            rec = self.registry.recommend(model, backups, available_features=available or None)
            reason = f"ml_training_features lacks the production model's features {', '.join(missing[:5])}"
            return Proposal(model, [reason], True, version, None, None, rec.backup.name if rec.backup else None,
                            rec.rule, thresholds=self._thresholds())
        needed = list(dict.fromkeys(prod_features + [f for b in backups if b.metadata for f in b.metadata.features
                                                     if f in available]))
        data = labelled_rows(conn, needed, last_days=self.days, as_of=as_of)
        dates, X, realized = data.dates, data.X, data.realized
        col = {f: j for j, f in enumerate(needed)}

        def perf(b: Any, feats: list[str]) -> metrics.Performance:
            if dates.size == 0:
                return metrics.Performance(math.nan, math.nan, 0)
            preds = predict(b, feats, X[:, [col[f] for f in feats]])
            return metrics.evaluate(dates, np.asarray(preds, dtype=float), realized, quantile=self.quantile)

        current = perf(booster, prod_features)
        if current.days < self.min_days:
            log.info("watchdog: %s has %d evaluable days (< %d); not judged", model, current.days, self.min_days)
            return None
        reasons = []
        if math.isfinite(current.spearman_ic) and current.spearman_ic < self.ic_threshold:
            reasons.append(f"mean daily IC {current.spearman_ic:.3f} over the last {current.days} days is below"
                           f" the threshold {self.ic_threshold:g}")
        if math.isfinite(current.sharpe_ratio) and current.sharpe_ratio < self.sharpe_threshold:
            reasons.append(f"long-short Sharpe {current.sharpe_ratio:.2f} over the last {current.days} days is"
                           f" below the threshold {self.sharpe_threshold:g}")
        if not reasons:
            return None
        candidates = self._candidates(model, backups, available, perf)
        live = {c.backup: metrics.Performance(c.spearman_ic, c.sharpe_ratio, c.days)
                for c in candidates if c.usable and c.days >= min(5, self.min_days)}
        # the same rule as `/rollback backups`: the registry's, scored on these recent days
        rec = self.registry.recommend(model, backups, available_features=available or None,
                                      live_score=lambda b: live.get(b.name))
        recommended = rec.backup.name if rec.backup else None
        rule, rec_metrics = rec.rule, live.get(recommended) if recommended else None
        meets = None
        if rec_metrics is not None:
            meets = rec_metrics.spearman_ic >= self.ic_threshold and rec_metrics.sharpe_ratio >= self.sharpe_threshold
        window = (_as_date(dates.min()), _as_date(dates.max())) if dates.size else None
        return Proposal(model, reasons, True, version, current, window, recommended, rule, rec_metrics, meets,
                        candidates, self._thresholds())

    def _candidates(self, model: str, backups: list, available: set[str],
                    perf: Callable[[Any, list[str]], metrics.Performance]) -> list[Candidate]:
        try:
            prod_sha = sha256_file(self.registry.model_dir(model) / MODEL_FILE)
        except OSError:
            prod_sha = None
        out = []
        for b in backups:
            problem = self.registry.unusable_reason(b, features=available or None, production_sha256=prod_sha)
            if problem:
                out.append(Candidate(b.name, False, problem, metadata_sharpe=b.sharpe_ratio))
                continue
            try:
                p = perf(self.registry.booster(b.path), list(b.metadata.features))
            except (BackupCorrupt, OSError) as exc:
                out.append(Candidate(b.name, False, str(exc), metadata_sharpe=b.sharpe_ratio))
                continue
            out.append(Candidate(b.name, True, None, p.spearman_ic, p.sharpe_ratio, p.days, b.sharpe_ratio))
        return out

    # ------------------------------------------------------------------------------------ proposing

    def run_once(self, on_proposal: Callable[[Proposal], None], *, as_of: date | None = None) -> list[Proposal]:
        """Evaluate, then hand each new proposal to ``on_proposal``; returns the proposals handed over.

        Skipped: a model with an open rollback, or one proposed (successfully) within ``cooldown``. A proposal
        whose callback raises is marked failed in the audit log, so the next run tries again.
        """
        with self.engine.db.transaction() as conn:
            proposals = self.evaluate_all(conn, as_of=as_of)
        sent = []
        for p in proposals:
            audit_id = self._claim(p)
            if audit_id is None:
                continue
            try:
                on_proposal(p)
            except Exception as exc:  # noqa: BLE001 - a failed post is retried on the next run
                log.exception("watchdog proposal for %s could not be delivered", p.model)
                with self.engine.db.transaction() as conn:
                    repo.mark_audit_failed(conn, audit_id, error=str(exc)[:500])
                continue
            sent.append(p)
        return sent

    def _claim(self, p: Proposal) -> int | None:
        """Record the proposal unless the model has an open rollback or a recent proposal; the audit row's id."""
        now = self.engine.clock()
        with self.engine.db.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollback_bot.watchdog:' || %s))", (p.model,))
            if repo.open_incident_ids(conn, model=p.model):
                return None
            if repo.recent_audit_of_model(conn, action=ACTION, outcome="proposed", model=p.model,
                                          since=now - self.cooldown) is not None:
                return None
            m = p.metrics
            return repo.audit_returning_id(
                conn, at=now, actor=ACTOR, action=ACTION, outcome="proposed",
                model=p.model, reasons=p.reasons, recommended=p.recommended,
                production_version=p.production_version,
                spearman_ic=_json_float(m.spearman_ic) if m else None,
                sharpe_ratio=_json_float(m.sharpe_ratio) if m else None,
            )

    # ------------------------------------------------------------------------------------ schedule

    def register(self, worker: Any, *, every_minutes: float, on_proposal: Callable[[Proposal], None]) -> None:
        """Install the self-rescheduling ``watchdog`` job on ``worker`` and queue the current time slot.

        Each run first queues the next slot's job (dedupe key ``watchdog:<slot start>``), so with several bot
        processes each slot runs once, and a process starting later in a slot adds nothing new.
        """
        if every_minutes <= 0:
            raise ValueError("every_minutes must be positive")
        every = timedelta(minutes=every_minutes)

        def slot_start(t: datetime) -> datetime:
            epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
            return epoch + ((t - epoch) // every) * every

        def schedule(at: datetime) -> None:
            with worker.db.transaction() as conn:
                enqueue(conn, WATCHDOG_JOB, run_at=at, dedupe_key=f"{WATCHDOG_JOB}:{at.isoformat()}",
                        payload={"every_minutes": every_minutes})

        def handle(job: dict) -> None:
            schedule(slot_start(self.engine.clock()) + every)
            self.run_once(on_proposal)

        worker.on(WATCHDOG_JOB, handle)
        schedule(slot_start(self.engine.clock()))


def _production_version(conn: psycopg.Connection, model: str) -> str | None:
    return first_value(conn, "SELECT version FROM model_deployment_log WHERE model_name = %s AND is_production"
                             " ORDER BY deployed_at DESC LIMIT 1", (model,), "version")


def _as_date(value: Any) -> date:
    return value.item() if isinstance(value, np.generic) else value


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None
