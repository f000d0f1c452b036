"""Live performance of one version of a model against what its metadata.json promises."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

import psycopg

from core import metrics
from core.diagnostics.common import (
    CRITICAL,
    WARNING,
    DiagnosticsConfig,
    Finding,
    features_of,
    num,
    recent_predictions,
)
from core.diagnostics.version import ModelVersion, production_version
from core.registry import ModelRegistry


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
    version: str | None = None      # the version measured (its name), against its own metadata.json


def perf_line(p: PerformanceSection) -> str:
    if p.error:
        return f"could not be evaluated ({p.error})"
    if p.verdict == "does not load":
        return f"model.json does not load ({p.problem})"
    exp = ""
    if p.expected_ic is not None:
        exp = f" (its metadata: IC {num(p.expected_ic, '.3f')}, Sharpe {num(p.expected_sharpe, '.1f')})"
    return f"mean daily IC {num(p.mean_ic, '.3f')}, long-short Sharpe {num(p.sharpe, '.1f')} over {p.days} days{exp}"


def check_performance(
    conn: psycopg.Connection, registry: ModelRegistry, *, model: str, days: int = 30, as_of: date | None = None,
    config: DiagnosticsConfig = DiagnosticsConfig(), version: ModelVersion | None = None,
) -> tuple[PerformanceSection, list[Finding]]:
    """Recent IC and long-short Sharpe of ``version`` (default: the production files) against its own
    metadata.json."""
    v = version or production_version(registry, model)
    meta = v.meta
    expected_ic = meta.performance.spearman_ic if meta else None
    expected_sharpe = meta.performance.sharpe_ratio if meta else None
    if v.booster is None:
        section = PerformanceSection(False, v.problem, None, [], math.nan, math.nan, 0, expected_ic, expected_sharpe,
                                     "does not load", version=v.name)
        return section, [Finding(CRITICAL, "performance", f"model.json of {v.label} does not load: {v.problem}")]
    features = features_of(conn, meta, v.booster)
    dates, preds, realized = recent_predictions(conn, v.booster, features, days=days, as_of=as_of)
    ics = metrics.daily_ic(dates, preds, realized)
    perf = metrics.evaluate(dates, preds, realized, quantile=config.quantile)
    window = (ics[0][0], ics[-1][0]) if ics else None
    findings: list[Finding] = []
    line = f"mean daily IC {num(perf.spearman_ic, '.3f')}, long-short Sharpe {num(perf.sharpe_ratio, '.1f')} " \
           f"over {perf.days} days"
    if expected_ic is not None:
        line += f" (its metadata: IC {expected_ic:.3f}, Sharpe {expected_sharpe:.1f})"
    if perf.days < config.min_days:
        verdict = "insufficient data"
    elif perf.spearman_ic <= 0 or (math.isfinite(perf.sharpe_ratio) and perf.sharpe_ratio <= 0):
        verdict = "degraded"
        findings.append(Finding(CRITICAL, "performance", f"{v.name} no longer predicts: {line}"))
    elif expected_ic is not None and expected_ic > 0 and perf.spearman_ic < config.ic_ratio_floor * expected_ic:
        verdict = "below expectations"
        findings.append(Finding(WARNING, "performance", f"{v.name}: IC below {config.ic_ratio_floor:.0%} of what its"
                                                        f" metadata.json promises: {line}"))
    else:
        verdict = "ok"
    section = PerformanceSection(True, None, window, ics, perf.spearman_ic, perf.sharpe_ratio, perf.days,
                                 expected_ic, expected_sharpe, verdict, version=v.name)
    return section, findings
