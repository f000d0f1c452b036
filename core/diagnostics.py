"""Root-cause diagnostics of a production model (runbook step 8): the bot notices and diagnoses, people decide.

``run_diagnostics`` returns a ``DiagnosticsReport`` with five sections, each computed independently (a
section that fails reports its error and the others still run), plus a list of ``Finding``s (only real
problems: ``critical`` or ``warning``; a clean data set yields none) and a short plain-text ``summary()``
for an incident report's root-cause section.

The checks and their thresholds (``DiagnosticsConfig``)
-------------------------------------------------------
* **performance** -- the production ``model.json`` predicts on the last N feature dates of
  ``ml_training_features`` that have a next trading day in ``daily_bars``; the label is the ticker's
  next-day close-to-close return from ``daily_bars``. Daily Spearman IC, its mean, and the annualised
  Sharpe of the daily top-20%/bottom-20% long-short return (``core.metrics``), compared with
  ``metadata.json``'s ``performance``. Verdict ``degraded`` (critical) when the mean IC or the Sharpe is
  <= 0; ``below expectations`` (warning) when the mean IC is under ``ic_ratio_floor`` (0.5) times the
  metadata IC; ``does not load`` (critical) when the file does not load; ``insufficient data`` under
  ``min_days`` (5) days with an IC.
* **data quality** -- tickers per day in ``daily_bars`` over the last 7 trading days, a day flagged when
  more than ``ticker_drop`` (10%) below the median of the (up to) 20 trading days before it; weekdays
  inside that span without any bars; NULLs per feature column of the view over the last N feature dates;
  the view is stale when its latest date is behind ``daily_bars``'s.
* **log scan** -- lines of the training log matching ERROR (a word ending in error/exception/traceback/fatal/
  critical, so ``ValueError`` counts), WARNING (ending in warn/warning, so ``UserWarning`` counts) or NaN (the
  word nan), case-insensitive; counts and the last 5 matching lines.
  Only the last ``log_tail_bytes`` (8 MiB) of the file are read.
* **drift** -- population stability index per model feature between the reference window (the model's
  ``train_start``..``train_end`` from metadata.json when present, else the ``reference_days`` (90) feature
  dates before the recent window) and the last N feature dates; 10 bins at the reference's deciles;
  ``PSI = sum((a - e) * ln(a / e))`` with bin shares floored at 1e-4. PSI > 0.25 significant (a warning
  finding), 0.10-0.25 moderate (listed only). The decisive PSI is computed on cross-sectionally centred
  values (each value minus that day's median over the tickers): return-type features (ret_20d, rsi_14, ...)
  move together with the market's trend, and on clean data their raw PSI between a 60-day training window
  and the last 30 days is often above 1 with nothing wrong. Centring removes what every ticker shares on a
  day and keeps changes in spread and shape (a volatility regime, a feed or unit problem that does not hit
  every ticker alike). The raw PSI is reported too (``psi_raw``); a shift common to all tickers shows
  there only.
* **regime** -- for each day, the market return (the mean of the tickers' close-to-close returns in
  ``daily_bars``) and the cross-sectional dispersion (their standard deviation). The recent 30 trading days
  against the 120 before them: the market volatility ratio ``std(recent) / std(prior)``, the dispersion
  ratio ``mean(recent dispersion) / mean(prior dispersion)`` and Welch's t statistic of the shift in the
  mean market return. Verdict ``regime change`` when either ratio is above 1.5 or below 1/1.5, or ``|t| > 3``.
  Under a stable market the log of the volatility ratio has a standard error of about
  ``sqrt(1/58 + 1/238) = 0.15`` (1.5 is ~2.8 of them away); the dispersion ratio, averaged over many tickers
  and days, is far tighter. A doubling of volatility (market and stock-specific) is found by both.

``now`` is an "as of" date: with it every check only reads rows dated on or before it (the recent window
ends there), so a past day can be diagnosed as it looked then. Platform tables are found through the
connection's ``search_path``. No Slack here; plain values in, dataclasses out.
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from core import metrics
from core.errors import BackupCorrupt
from core.modelio import Metadata, predict, read_metadata
from core.platform import FEATURE_VIEW, feature_columns
from core.registry import ModelRegistry

__all__ = [
    "DiagnosticsConfig",
    "DiagnosticsReport",
    "Finding",
    "PerformanceSection",
    "DayCount",
    "DataQualitySection",
    "LogLine",
    "LogScanSection",
    "FeatureDrift",
    "DriftSection",
    "RegimeSection",
    "run_diagnostics",
    "check_performance",
    "check_data_quality",
    "scan_log",
    "check_drift",
    "check_regime",
    "psi",
    "recent_frame",
    "recent_predictions",
]

log = logging.getLogger("rollback_bot.diagnostics")

CRITICAL, WARNING = "critical", "warning"
_SEVERITY_ORDER = {CRITICAL: 0, WARNING: 1}


@dataclass(frozen=True)
class DiagnosticsConfig:
    """Thresholds of the checks (see the module docstring)."""

    min_days: int = 5
    ic_ratio_floor: float = 0.5
    quantile: float = 0.2
    count_days: int = 7
    trailing_days: int = 20
    ticker_drop: float = 0.10
    log_tail_bytes: int = 8 << 20
    log_last_lines: int = 5
    reference_days: int = 90
    psi_bins: int = 10
    psi_moderate: float = 0.10
    psi_significant: float = 0.25
    regime_recent_days: int = 30
    regime_prior_days: int = 120
    regime_vol_ratio: float = 1.5
    regime_t_stat: float = 3.0


@dataclass(frozen=True)
class Finding:
    severity: str  # "critical" | "warning"
    area: str      # "performance" | "data_quality" | "log" | "drift" | "regime"
    message: str


@dataclass(frozen=True)
class PerformanceSection:
    loads: bool | None              # None: not checked (the section failed before)
    problem: str | None             # why the model does not load
    window: tuple[date, date] | None
    daily_ic: list[tuple[date, float]]
    mean_ic: float
    sharpe: float
    days: int                       # days with a finite IC
    expected_ic: float | None       # metadata.json performance
    expected_sharpe: float | None
    verdict: str                    # ok | below expectations | degraded | does not load | insufficient data | error
    error: str | None = None


@dataclass(frozen=True)
class DayCount:
    day: date
    tickers: int
    trailing_median: float | None
    flagged: bool


@dataclass(frozen=True)
class DataQualitySection:
    ticker_counts: list[DayCount] = field(default_factory=list)
    missing_weekdays: list[date] = field(default_factory=list)
    null_counts: dict[str, int] = field(default_factory=dict)
    null_worst_day: dict[str, tuple[date, int]] = field(default_factory=dict)
    window: tuple[date, date] | None = None
    view_latest: date | None = None
    bars_latest: date | None = None
    stale_days: int = 0             # trading days in daily_bars after the view's latest date
    error: str | None = None

    @property
    def stale(self) -> bool:
        return self.bars_latest is not None and (self.view_latest is None or self.view_latest < self.bars_latest)

    @property
    def flagged_days(self) -> list[DayCount]:
        return [d for d in self.ticker_counts if d.flagged]


@dataclass(frozen=True)
class LogLine:
    number: int        # 1-based line number in the file (in the part read)
    kinds: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class LogScanSection:
    path: Path | None
    status: str        # "not configured" | "missing" | "ok" | "error"
    counts: dict[str, int] = field(default_factory=lambda: {"error": 0, "warning": 0, "nan": 0})
    last_lines: list[LogLine] = field(default_factory=list)
    lines_scanned: int = 0
    truncated: bool = False   # only the tail of a large file was read
    error: str | None = None


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    psi: float        # PSI of the cross-sectionally centred values (decides the level)
    psi_raw: float    # PSI of the raw values
    level: str        # "significant" | "moderate" | "stable" | "no data"
    reference_rows: int
    recent_rows: int


@dataclass(frozen=True)
class DriftSection:
    reference: tuple[date, date] | None = None
    reference_source: str = ""
    recent: tuple[date, date] | None = None
    features: list[FeatureDrift] = field(default_factory=list)   # most drifted first
    error: str | None = None

    @property
    def significant(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.level == "significant"]


@dataclass(frozen=True)
class RegimeSection:
    test: str
    recent: tuple[date, date] | None = None
    prior: tuple[date, date] | None = None
    recent_days: int = 0
    prior_days: int = 0
    vol_recent: float = math.nan
    vol_prior: float = math.nan
    vol_ratio: float = math.nan
    dispersion_recent: float = math.nan
    dispersion_prior: float = math.nan
    dispersion_ratio: float = math.nan
    mean_recent: float = math.nan
    mean_prior: float = math.nan
    t_stat: float = math.nan
    verdict: str = "insufficient data"   # "regime change" | "no regime change" | "insufficient data" | "error"
    error: str | None = None


@dataclass(frozen=True)
class DiagnosticsReport:
    model: str
    as_of: date | None
    days: int
    performance: PerformanceSection
    data_quality: DataQualitySection
    log_scan: LogScanSection
    drift: DriftSection
    regime: RegimeSection
    findings: list[Finding]
    elapsed_seconds: float = 0.0

    @property
    def healthy(self) -> bool:
        return not self.findings

    def by_area(self, area: str) -> list[Finding]:
        return [f for f in self.findings if f.area == area]

    @property
    def likely_cause(self) -> str:
        """One sentence naming the most likely root cause among the checks' findings."""
        perf = self.performance
        areas = {f.area for f in self.findings}
        if perf.verdict == "does not load":
            return "The production model file does not load: restore it from a backup."
        dq = self.data_quality
        data_issue = dq.stale or dq.flagged_days or any(dq.null_counts.values()) or dq.missing_weekdays
        regime = self.regime.verdict == "regime change"
        if perf.verdict in ("degraded", "below expectations"):
            if regime:
                return ("A market regime change: the model's learned relationships no longer hold; a model "
                        "trained in a similar regime may do better.")
            if data_issue:
                return "Data-quality problems in the model's inputs (see data quality)."
            if "drift" in areas:
                return "Feature drift: the inputs no longer look like the training data."
            if "log" in areas:
                return "The training run reported errors or NaNs: the model itself may be faulty."
            return "The model underperforms, but none of the checks explains why."
        if regime:
            return "A market regime change, not (yet) visible in the model's performance."
        if data_issue:
            return "Data-quality problems (see data quality); performance is not affected yet."
        if areas:
            return "Some checks raised warnings; performance is as expected."
        return "No anomaly found: performance, data, training log, drift and regime are as expected."

    def summary(self) -> str:
        """A few plain-text lines for an incident report's root-cause section."""
        when = f" as of {self.as_of.isoformat()}" if self.as_of else ""
        lines = [f"Diagnostics of {self.model}{when} (last {self.days} trading days):"]
        lines.append(f"- performance: {_perf_line(self.performance)}")
        shown = sorted(self.findings, key=lambda f: _SEVERITY_ORDER.get(f.severity, 9))
        for f in shown:
            if f.area != "performance":
                lines.append(f"- {f.severity} ({f.area.replace('_', ' ')}): {f.message}")
        if not any(f.area != "performance" for f in shown):
            lines.append("- data, training log, drift and regime: nothing unusual")
        lines.append(f"Likely cause: {self.likely_cause}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """A compact Markdown report (``/rollback diagnose MODEL``)."""
        out = [f"### Diagnostics: {self.model}" + (f" (as of {self.as_of.isoformat()})" if self.as_of else "")]
        out.append(f"**Likely cause:** {self.likely_cause}")
        if self.findings:
            out.append("")
            for f in sorted(self.findings, key=lambda f: _SEVERITY_ORDER.get(f.severity, 9)):
                out.append(f"- **{f.severity}** _{f.area.replace('_', ' ')}_: {f.message}")
        p = self.performance
        out += ["", f"**Performance** ({p.verdict}): {_perf_line(p)}"]
        dq = self.data_quality
        if dq.error:
            out.append(f"**Data quality**: could not be checked ({dq.error})")
        else:
            counts = ", ".join(f"{d.day:%m-%d} {d.tickers}{'!' if d.flagged else ''}" for d in dq.ticker_counts)
            nulls = ", ".join(f"{k} {v}" for k, v in dq.null_counts.items() if v) or "none"
            view = "stale" if dq.stale else "current"
            out.append(f"**Data quality**: tickers/day {counts or 'n/a'}; NULLs {nulls}; feature view {view}"
                       f" (view {_d(dq.view_latest)}, bars {_d(dq.bars_latest)})")
        ls = self.log_scan
        if ls.status == "ok":
            c = ls.counts
            out.append(f"**Training log**: {c['error']} error, {c['warning']} warning, {c['nan']} NaN lines"
                       f" in {ls.lines_scanned} lines")
        else:
            out.append(f"**Training log**: {ls.status}" + (f" ({ls.error})" if ls.error else ""))
        dr = self.drift
        if dr.error:
            out.append(f"**Drift**: could not be checked ({dr.error})")
        else:
            top = ", ".join(f"{f.feature} {f.psi:.2f}" for f in dr.features[:3]) or "n/a"
            out.append(f"**Drift** (PSI vs {dr.reference_source}): {top}")
        rg = self.regime
        out.append(f"**Regime** ({rg.verdict}): market vol ratio {_f(rg.vol_ratio)}, dispersion ratio"
                   f" {_f(rg.dispersion_ratio)}, mean-shift t {_f(rg.t_stat)} (recent {rg.recent_days} vs prior"
                   f" {rg.prior_days} days)")
        return "\n".join(out)


def _d(day: date | None) -> str:
    return day.isoformat() if day else "n/a"


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def _perf_line(p: PerformanceSection) -> str:
    if p.error:
        return f"could not be evaluated ({p.error})"
    if p.verdict == "does not load":
        return f"the production model does not load ({p.problem})"
    exp = ""
    if p.expected_ic is not None:
        exp = f" (metadata IC {_f(p.expected_ic, '.3f')}, Sharpe {_f(p.expected_sharpe, '.1f')})"
    return f"mean daily IC {_f(p.mean_ic, '.3f')}, long-short Sharpe {_f(p.sharpe, '.1f')} over {p.days} days{exp}"


# --------------------------------------------------------------------------------------------- helpers

T = TypeVar("T")


def _guarded(conn: psycopg.Connection, fn: Callable[[], T], on_error: Callable[[str], T]) -> T:
    """Run one section in its own transaction (or savepoint); a failure becomes the section's error."""
    try:
        with conn.transaction():
            return fn()
    except Exception as exc:  # noqa: BLE001 - a section reports its failure instead of crashing the report
        log.warning("diagnostics section failed", exc_info=True)
        text = str(exc).strip().splitlines()
        return on_error((text[0] if text else type(exc).__name__)[:300])


def _rows(conn: psycopg.Connection, query: Any, params: Any = None) -> list[tuple]:
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(query, params).fetchall()


def _view_dates(conn: psycopg.Connection, as_of: date | None, limit: int, *, before: date | None = None) -> list[date]:
    """The latest ``limit`` feature dates on or before ``as_of`` (and strictly before ``before``), oldest first."""
    query = sql.SQL(
        "SELECT DISTINCT date FROM {v} WHERE (%(a)s::date IS NULL OR date <= %(a)s::date)"
        " AND (%(b)s::date IS NULL OR date < %(b)s::date) ORDER BY date DESC LIMIT %(n)s"
    ).format(v=sql.Identifier(FEATURE_VIEW))
    return sorted(r[0] for r in _rows(conn, query, {"a": as_of, "b": before, "n": limit}))


def _bar_dates(conn: psycopg.Connection, as_of: date | None, *, since: date | None = None,
               limit: int | None = None) -> list[date]:
    query = ("SELECT DISTINCT date FROM daily_bars WHERE (%(a)s::date IS NULL OR date <= %(a)s::date)"
             " AND (%(s)s::date IS NULL OR date >= %(s)s::date) ORDER BY date DESC")
    if limit is not None:
        query += " LIMIT %(n)s"
    return sorted(r[0] for r in _rows(conn, query, {"a": as_of, "s": since, "n": limit}))


def _model_files(registry: ModelRegistry, model: str) -> tuple[Path, Metadata | None, str | None]:
    folder = registry.model_dir(model)
    try:
        return folder, read_metadata(folder), None
    except BackupCorrupt as exc:
        return folder, None, str(exc)


def _features_of(conn: psycopg.Connection, meta: Metadata | None, booster: Any = None) -> list[str]:
    if meta is not None:
        return list(meta.features)
    if booster is not None and booster.feature_names:
        return list(booster.feature_names)
    return sorted(feature_columns(conn))


def recent_frame(
    conn: psycopg.Connection, features: list[str], *, days: int, as_of: date | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dates, X, realized)`` for the last ``days`` feature dates that have a next trading day.

    ``X`` holds ``features`` in that order (NULL -> NaN). ``realized`` is the ticker's close-to-close return
    from ``daily_bars`` between the feature date and the next date present in ``daily_bars`` (NaN when either
    bar is missing). Rows dated after ``as_of`` are not read. Rows are sorted by (date, ticker).
    """
    empty = (np.empty(0, dtype="datetime64[D]"), np.empty((0, len(features))), np.empty(0))
    recent = _view_dates(conn, as_of, days + 1)
    if not recent:
        return empty
    bars = _bar_dates(conn, as_of, since=recent[0])
    nxt = {d: n for d, n in zip(bars, bars[1:])}
    window = [d for d in recent if d in nxt][-days:]
    if not window:
        return empty
    cols = sql.SQL("").join(sql.SQL(", f.") + sql.Identifier(c) for c in features)
    query = sql.SQL(
        "SELECT f.date, b1.close / NULLIF(b0.close, 0) - 1{cols}"
        " FROM unnest(%s::date[], %s::date[]) AS w(date, next_date)"
        " JOIN {v} f ON f.date = w.date"
        " LEFT JOIN daily_bars b0 ON b0.ticker = f.ticker AND b0.date = w.date"
        " LEFT JOIN daily_bars b1 ON b1.ticker = f.ticker AND b1.date = w.next_date"
        " ORDER BY f.date, f.ticker"
    ).format(cols=cols, v=sql.Identifier(FEATURE_VIEW))
    rows = _rows(conn, query, (window, [nxt[d] for d in window]))
    if not rows:
        return empty
    dates = np.array([r[0] for r in rows], dtype="datetime64[D]")
    realized = np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=np.float64)
    X = np.array([r[2:] for r in rows], dtype=np.float64).reshape(len(rows), len(features))
    return dates, X, realized


def recent_predictions(
    conn: psycopg.Connection, booster: Any, features: list[str], *, days: int, as_of: date | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dates, predictions, realized)`` of ``booster`` over ``recent_frame``."""
    dates, X, realized = recent_frame(conn, features, days=days, as_of=as_of)
    if dates.size == 0:
        return dates, np.empty(0), realized
    return dates, np.asarray(predict(booster, features, X), dtype=np.float64), realized


# --------------------------------------------------------------------------------------------- performance


def check_performance(
    conn: psycopg.Connection, registry: ModelRegistry, *, model: str, days: int = 30, as_of: date | None = None,
    config: DiagnosticsConfig = DiagnosticsConfig(),
) -> tuple[PerformanceSection, list[Finding]]:
    """Recent IC and long-short Sharpe of the production model against its metadata."""
    folder, meta, _ = _model_files(registry, model)
    expected_ic = meta.performance.spearman_ic if meta else None
    expected_sharpe = meta.performance.sharpe_ratio if meta else None
    problem = registry.load_problem(folder)
    booster = None
    if problem is None:
        try:
            booster = registry.booster(folder)
        except (BackupCorrupt, OSError) as exc:
            problem = str(exc).split(": ", 1)[-1]
    if booster is None:
        section = PerformanceSection(False, problem, None, [], math.nan, math.nan, 0, expected_ic, expected_sharpe,
                                     "does not load")
        return section, [Finding(CRITICAL, "performance", f"the production model.json does not load: {problem}")]
    features = _features_of(conn, meta, booster)
    dates, preds, realized = recent_predictions(conn, booster, features, days=days, as_of=as_of)
    ics = metrics.daily_ic(dates, preds, realized)
    perf = metrics.evaluate(dates, preds, realized, quantile=config.quantile)
    window = (ics[0][0], ics[-1][0]) if ics else None
    findings: list[Finding] = []
    line = f"mean daily IC {_f(perf.spearman_ic, '.3f')}, long-short Sharpe {_f(perf.sharpe_ratio, '.1f')} " \
           f"over {perf.days} days"
    if expected_ic is not None:
        line += f" (metadata: IC {expected_ic:.3f}, Sharpe {expected_sharpe:.1f})"
    if perf.days < config.min_days:
        verdict = "insufficient data"
    elif perf.spearman_ic <= 0 or (math.isfinite(perf.sharpe_ratio) and perf.sharpe_ratio <= 0):
        verdict = "degraded"
        findings.append(Finding(CRITICAL, "performance", f"the model no longer predicts: {line}"))
    elif expected_ic is not None and expected_ic > 0 and perf.spearman_ic < config.ic_ratio_floor * expected_ic:
        verdict = "below expectations"
        findings.append(Finding(WARNING, "performance",
                                f"IC below {config.ic_ratio_floor:.0%} of what metadata.json promises: {line}"))
    else:
        verdict = "ok"
    section = PerformanceSection(True, None, window, ics, perf.spearman_ic, perf.sharpe_ratio, perf.days,
                                 expected_ic, expected_sharpe, verdict)
    return section, findings


# --------------------------------------------------------------------------------------------- data quality


def check_data_quality(
    conn: psycopg.Connection, *, days: int = 30, as_of: date | None = None,
    config: DiagnosticsConfig = DiagnosticsConfig(), features: list[str] | None = None,
) -> tuple[DataQualitySection, list[Finding]]:
    """Ticker counts per day, NULLs per feature column, and a stale feature view."""
    findings: list[Finding] = []
    # tickers per day: the last `count_days` trading days, each against the median of the days before it
    counts = _rows(
        conn,
        "SELECT date, count(*) FROM daily_bars WHERE (%(a)s::date IS NULL OR date <= %(a)s::date) AND date >= "
        "(SELECT min(date) FROM (SELECT DISTINCT date FROM daily_bars"
        " WHERE (%(a)s::date IS NULL OR date <= %(a)s::date)"
        " ORDER BY date DESC LIMIT %(n)s) x) GROUP BY date ORDER BY date",
        {"a": as_of, "n": config.count_days + config.trailing_days},
    )
    day_counts: list[DayCount] = []
    for i in range(max(0, len(counts) - config.count_days), len(counts)):
        day, n = counts[i]
        prev = [c for _, c in counts[max(0, i - config.trailing_days):i]]
        median = float(np.median(prev)) if len(prev) >= 3 else None
        flagged = median is not None and n < (1 - config.ticker_drop) * median
        day_counts.append(DayCount(day, int(n), median, flagged))
        if flagged:
            findings.append(Finding(WARNING, "data_quality",
                                    f"{day.isoformat()}: {n} tickers in daily_bars, {1 - n / median:.0%} below the"
                                    f" trailing median of {median:g}"))
    missing_weekdays: list[date] = []
    if day_counts:
        present = {d.day for d in day_counts}
        d = day_counts[0].day
        while d < day_counts[-1].day:
            if d.weekday() < 5 and d not in present:
                missing_weekdays.append(d)
            d += timedelta(days=1)
        for d in missing_weekdays:
            findings.append(Finding(WARNING, "data_quality",
                                    f"{d.isoformat()} (a weekday) has no bars at all in daily_bars (a holiday?)"))
    # NULLs per feature column over the last `days` feature dates
    cols = features if features is not None else sorted(feature_columns(conn))
    recent = _view_dates(conn, as_of, days)
    null_counts: dict[str, int] = {c: 0 for c in cols}
    worst: dict[str, tuple[date, int]] = {}
    if recent and cols:
        query = sql.SQL(
            "SELECT date, count(*), {counts} FROM {v} WHERE date >= %s AND date <= %s GROUP BY date"
        ).format(
            counts=sql.SQL(", ").join(sql.SQL("count({})").format(sql.Identifier(c)) for c in cols),
            v=sql.Identifier(FEATURE_VIEW),
        )
        for row in _rows(conn, query, (recent[0], recent[-1])):
            day, total = row[0], row[1]
            for c, nonnull in zip(cols, row[2:]):
                nulls = int(total - nonnull)
                if nulls:
                    null_counts[c] += nulls
                    if nulls > worst.get(c, (day, 0))[1]:
                        worst[c] = (day, nulls)
        for c in cols:
            if null_counts[c]:
                wd, wn = worst[c]
                findings.append(Finding(WARNING, "data_quality",
                                        f"{c}: {null_counts[c]} NULL(s) in {FEATURE_VIEW} over the last {len(recent)}"
                                        f" days ({wn} on {wd.isoformat()})"))
    # staleness of the materialized view
    view_latest = _rows(conn, sql.SQL("SELECT max(date) FROM {v} WHERE (%(a)s::date IS NULL OR date <= %(a)s::date)")
                        .format(v=sql.Identifier(FEATURE_VIEW)), {"a": as_of})[0][0]
    bars_latest = _rows(conn, "SELECT max(date) FROM daily_bars WHERE (%(a)s::date IS NULL OR date <= %(a)s::date)",
                        {"a": as_of})[0][0]
    stale_days = 0
    if bars_latest is not None and (view_latest is None or view_latest < bars_latest):
        stale_days = len(_bar_dates(conn, as_of, since=(view_latest + timedelta(days=1)) if view_latest else None))
        findings.append(Finding(WARNING, "data_quality",
                                f"{FEATURE_VIEW} is stale: its latest date is {_d(view_latest)}, {stale_days} trading"
                                f" day(s) behind daily_bars ({bars_latest.isoformat()}); refresh the feature view"))
    section = DataQualitySection(
        ticker_counts=day_counts, missing_weekdays=missing_weekdays, null_counts=null_counts, null_worst_day=worst,
        window=(recent[0], recent[-1]) if recent else None, view_latest=view_latest, bars_latest=bars_latest,
        stale_days=stale_days,
    )
    return section, findings


# --------------------------------------------------------------------------------------------- training log

_LOG_PATTERNS = {
    # no \b in front: "ValueError", "XGBoostError", "UserWarning" count too
    "error": re.compile(r"(error|errors|exception|traceback|fatal|critical)\b", re.IGNORECASE),
    "warning": re.compile(r"(warn|warning|warnings)\b", re.IGNORECASE),
    "nan": re.compile(r"\bnan\b", re.IGNORECASE),
}


def scan_log(
    path: Path | None, *, config: DiagnosticsConfig = DiagnosticsConfig()
) -> tuple[LogScanSection, list[Finding]]:
    """Count ERROR, WARNING and NaN lines of a training log; keep the last few matching lines."""
    if path is None:
        return LogScanSection(None, "not configured"), []
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            truncated = size > config.log_tail_bytes
            if truncated:
                fh.seek(size - config.log_tail_bytes)
                fh.readline()  # skip the partial first line
            data = fh.read()
    except FileNotFoundError:
        return LogScanSection(path, "missing", error=f"{path} does not exist"), []
    except OSError as exc:
        return LogScanSection(path, "error", error=f"{path} cannot be read ({exc.strerror})"), []
    counts = {k: 0 for k in _LOG_PATTERNS}
    last: deque[LogLine] = deque(maxlen=config.log_last_lines)
    n = 0
    for n, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        kinds = tuple(k for k, pattern in _LOG_PATTERNS.items() if pattern.search(raw))
        if kinds:
            for k in kinds:
                counts[k] += 1
            last.append(LogLine(n, kinds, raw.strip()[:300]))
    findings: list[Finding] = []
    if counts["error"] or counts["nan"]:
        latest = next((l for l in reversed(last) if "error" in l.kinds or "nan" in l.kinds), None)
        tail = f"; last: {latest.text[:160]!r}" if latest else ""
        findings.append(Finding(WARNING, "log", f"training log {path.name}: {counts['error']} error line(s), "
                                f"{counts['nan']} NaN line(s), {counts['warning']} warning line(s){tail}"))
    return LogScanSection(path, "ok", counts, list(last), n, truncated), findings


# --------------------------------------------------------------------------------------------- drift


def psi(reference: Any, recent: Any, bins: int = 10, floor: float = 1e-4) -> float:
    """Population stability index of ``recent`` against ``reference`` (non-finite values ignored).

    Bins are cut at the reference's quantiles ``1/bins .. (bins-1)/bins`` (repeated cut points merged);
    ``PSI = sum((a_i - e_i) * ln(a_i / e_i))`` over the bins' shares ``e`` (reference) and ``a`` (recent),
    each floored at ``floor``. NaN when either side has no finite value.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(recent, dtype=np.float64)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if ref.size == 0 or cur.size == 0:
        return math.nan
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    # bins (-inf, q1], (q1, q2], ..., (q_last, inf): a value equal to a cut point goes to the lower bin
    e = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=edges.size + 1) / ref.size
    a = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=edges.size + 1) / cur.size
    e, a = np.maximum(e, floor), np.maximum(a, floor)
    return float(np.sum((a - e) * np.log(a / e)))


def _centre_by_date(dates: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Each value minus the median of its column on the same date (rows sorted by date; NaN ignored)."""
    out = X.copy()
    if X.size == 0:
        return out
    bounds = np.flatnonzero(np.r_[True, dates[1:] != dates[:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        block = X[lo:hi]
        finite = np.isfinite(block)
        if finite.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NULL column on a day
                med = np.nanmedian(np.where(finite, block, np.nan), axis=0)
            out[lo:hi] = block - np.where(np.isfinite(med), med, 0.0)
    return out


def _train_window(meta: Metadata | None) -> tuple[date, date] | None:
    extra = (meta.model_extra or {}) if meta is not None else {}
    try:
        lo, hi = date.fromisoformat(str(extra["train_start"])), date.fromisoformat(str(extra["train_end"]))
    except (KeyError, ValueError, TypeError):
        return None
    return (lo, hi) if lo <= hi else None


def check_drift(
    conn: psycopg.Connection, *, features: list[str], days: int = 30, as_of: date | None = None,
    train_window: tuple[date, date] | None = None, config: DiagnosticsConfig = DiagnosticsConfig(),
) -> tuple[DriftSection, list[Finding]]:
    """PSI per feature between the training window (or the days before the recent window) and the recent days."""
    available = feature_columns(conn)
    feats = [f for f in features if f in available]
    recent = _view_dates(conn, as_of, days)
    if not recent or not feats:
        return DriftSection(error="no recent rows in the feature view" if not recent else "no feature to compare"), []
    if train_window is not None:
        ref_lo, ref_hi, source = train_window[0], train_window[1], "the training window (metadata.json)"
    else:
        before = _view_dates(conn, as_of, config.reference_days, before=recent[0])
        if not before:
            return DriftSection(recent=(recent[0], recent[-1]), error="no feature rows before the recent window"), []
        ref_lo, ref_hi = before[0], before[-1]
        source = f"the {len(before)} trading days before the recent window"
    query = sql.SQL(
        "SELECT date, date BETWEEN %(rl)s AND %(rh)s, date >= %(lo)s AND date <= %(hi)s, {cols} FROM {v}"
        " WHERE (date BETWEEN %(rl)s AND %(rh)s) OR (date >= %(lo)s AND date <= %(hi)s) ORDER BY date"
    ).format(cols=sql.SQL(", ").join(sql.Identifier(c) for c in feats), v=sql.Identifier(FEATURE_VIEW))
    rows = _rows(conn, query, {"rl": ref_lo, "rh": ref_hi, "lo": recent[0], "hi": recent[-1]})
    if rows:
        row_dates = np.array([r[0] for r in rows], dtype="datetime64[D]")
        in_ref = np.array([r[1] for r in rows], dtype=bool)
        in_recent = np.array([r[2] for r in rows], dtype=bool)
        X = np.array([r[3:] for r in rows], dtype=np.float64).reshape(len(rows), len(feats))
    else:
        row_dates = np.empty(0, dtype="datetime64[D]")
        in_ref = in_recent = np.zeros(0, dtype=bool)
        X = np.empty((0, len(feats)))
    Xc = _centre_by_date(row_dates, X)
    out: list[FeatureDrift] = []
    for j, f in enumerate(feats):
        value = psi(Xc[in_ref, j], Xc[in_recent, j], bins=config.psi_bins)
        raw = psi(X[in_ref, j], X[in_recent, j], bins=config.psi_bins)
        if not math.isfinite(value):
            level = "no data"
        elif value > config.psi_significant:
            level = "significant"
        elif value >= config.psi_moderate:
            level = "moderate"
        else:
            level = "stable"
        out.append(FeatureDrift(f, value, raw, level, int(np.isfinite(X[in_ref, j]).sum()),
                                int(np.isfinite(X[in_recent, j]).sum())))
    out.sort(key=lambda d: -d.psi if math.isfinite(d.psi) else math.inf)
    section = DriftSection((ref_lo, ref_hi), source, (recent[0], recent[-1]), out)
    findings = []
    if section.significant:
        listed = ", ".join(f"{d.feature} (PSI {d.psi:.2f})" for d in section.significant[:5])
        findings.append(Finding(WARNING, "drift", f"significant drift against {source}: {listed}"))
    return section, findings


# --------------------------------------------------------------------------------------------- regime

REGIME_TEST = (
    "daily market return = mean of the tickers' close-to-close returns in daily_bars, dispersion = their "
    "cross-sectional standard deviation; the recent {r} trading days against the {p} before: regime change when "
    "the market volatility ratio or the mean-dispersion ratio is above {v:g} or below 1/{v:g}, or when Welch's t "
    "of the mean market return's shift exceeds {t:g} in absolute value"
)


def _ratio_off(ratio: float, limit: float) -> bool:
    return math.isfinite(ratio) and (ratio > limit or ratio < 1 / limit)


def check_regime(
    conn: psycopg.Connection, *, as_of: date | None = None, config: DiagnosticsConfig = DiagnosticsConfig(),
) -> tuple[RegimeSection, list[Finding]]:
    """Volatility and dispersion ratios and the mean-shift t statistic, recent window vs the prior window."""
    r_n, p_n = config.regime_recent_days, config.regime_prior_days
    test = REGIME_TEST.format(r=r_n, p=p_n, v=config.regime_vol_ratio, t=config.regime_t_stat)
    rows = _rows(
        conn,
        "WITH d AS (SELECT DISTINCT date FROM daily_bars WHERE (%(a)s::date IS NULL OR date <= %(a)s::date)"
        " ORDER BY date DESC LIMIT %(n)s),"
        " r AS (SELECT date, close / NULLIF(lag(close) OVER (PARTITION BY ticker ORDER BY date), 0) - 1 AS ret"
        " FROM daily_bars WHERE date >= (SELECT min(date) FROM d) AND (%(a)s::date IS NULL OR date <= %(a)s::date))"
        " SELECT date, avg(ret), stddev_samp(ret) FROM r WHERE ret IS NOT NULL GROUP BY date ORDER BY date",
        {"a": as_of, "n": r_n + p_n + 1},
    )
    rows = [(d, float(m), math.nan if sd is None else float(sd)) for d, m, sd in rows
            if m is not None and math.isfinite(m)]
    recent, prior = rows[-r_n:], rows[:-r_n][-p_n:]
    if len(recent) < min(10, r_n) or len(prior) < min(20, p_n):
        return RegimeSection(test, recent_days=len(recent), prior_days=len(prior)), []
    x, y = np.array([r[1] for r in recent]), np.array([r[1] for r in prior])
    dx, dy = np.array([r[2] for r in recent]), np.array([r[2] for r in prior])
    dx, dy = dx[np.isfinite(dx)], dy[np.isfinite(dy)]
    disp_x = float(dx.mean()) if dx.size else math.nan
    disp_y = float(dy.mean()) if dy.size else math.nan
    disp_ratio = disp_x / disp_y if math.isfinite(disp_y) and disp_y > 0 else math.nan
    sx, sy = float(x.std(ddof=1)), float(y.std(ddof=1))
    ratio = sx / sy if sy > 0 else math.inf
    se = math.sqrt(sx * sx / x.size + sy * sy / y.size)
    t = (float(x.mean()) - float(y.mean())) / se if se > 0 else 0.0
    limit = config.regime_vol_ratio
    why = []
    if _ratio_off(ratio, limit):
        why.append(f"market volatility {ratio:.2f}x that of the prior {len(prior)} days ({sx:.2%} vs {sy:.2%} a day)")
    if _ratio_off(disp_ratio, limit):
        why.append(f"cross-sectional dispersion {disp_ratio:.2f}x ({disp_x:.2%} vs {disp_y:.2%} a day)")
    if abs(t) > config.regime_t_stat:
        why.append(f"mean market return shifted ({x.mean():+.3%} vs {y.mean():+.3%} a day, t = {t:.1f})")
    section = RegimeSection(
        test, (recent[0][0], recent[-1][0]), (prior[0][0], prior[-1][0]), len(recent), len(prior), sx, sy, ratio,
        disp_x, disp_y, disp_ratio, float(x.mean()), float(y.mean()), t,
        "regime change" if why else "no regime change",
    )
    findings = []
    if why:
        since = recent[0][0].isoformat()
        findings.append(Finding(WARNING, "regime", f"regime change since {since}: " + "; ".join(why)))
    return section, findings


# --------------------------------------------------------------------------------------------- all of it


def run_diagnostics(
    conn: psycopg.Connection,
    registry: ModelRegistry,
    *,
    model: str,
    days: int = 30,
    training_log: Path | None = None,
    now: date | None = None,
    config: DiagnosticsConfig = DiagnosticsConfig(),
) -> DiagnosticsReport:
    """Run every check for one production model; raises only for an unknown or invalid model name."""
    if days < 2:
        raise ValueError("days must be at least 2")
    started = time.perf_counter()
    _, meta, _ = _model_files(registry, model)  # UnknownModel / InvalidName for a bad name
    findings: list[Finding] = []

    def err_perf(msg: str) -> tuple[PerformanceSection, list[Finding]]:
        return PerformanceSection(None, None, None, [], math.nan, math.nan, 0,
                                  meta.performance.spearman_ic if meta else None,
                                  meta.performance.sharpe_ratio if meta else None, "error", msg), []

    perf, f1 = _guarded(conn, lambda: check_performance(conn, registry, model=model, days=days, as_of=now,
                                                        config=config), err_perf)
    dq, f2 = _guarded(conn, lambda: check_data_quality(conn, days=days, as_of=now, config=config),
                      lambda msg: (DataQualitySection(error=msg), []))
    log_section, f3 = scan_log(training_log, config=config)

    def drift() -> tuple[DriftSection, list[Finding]]:
        return check_drift(conn, features=_features_of(conn, meta), days=days, as_of=now,
                           train_window=_train_window(meta), config=config)

    dr, f4 = _guarded(conn, drift, lambda msg: (DriftSection(error=msg), []))
    rg, f5 = _guarded(conn, lambda: check_regime(conn, as_of=now, config=config),
                      lambda msg: (RegimeSection("", verdict="error", error=msg), []))
    for part in (f1, f2, f3, f4, f5):
        findings.extend(part)
    for name, section in (("performance", perf), ("data_quality", dq), ("drift", dr), ("regime", rg)):
        if section.error:
            findings.append(Finding(WARNING, name, f"could not be checked: {section.error}"))
    return DiagnosticsReport(model, now, days, perf, dq, log_section, dr, rg, findings,
                             time.perf_counter() - started)
