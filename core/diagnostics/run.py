"""Run every check for one version of a model."""

from __future__ import annotations

import math
import time
from datetime import date
from pathlib import Path

import psycopg

from core.diagnostics.common import WARNING, DiagnosticsConfig, Finding, features_of, guarded
from core.diagnostics.dataquality import DataQualitySection, check_data_quality
from core.diagnostics.drift import DriftSection, check_drift, train_window
from core.diagnostics.performance import PerformanceSection, check_performance
from core.diagnostics.regime import RegimeSection, check_regime
from core.diagnostics.summary import DiagnosticsReport
from core.diagnostics.system import check_system
from core.diagnostics.trainlog import is_per_model, scan_log, training_log_path
from core.diagnostics.version import ModelVersion, production_version
from core.registry import ModelRegistry


def run_diagnostics(
    conn: psycopg.Connection,
    registry: ModelRegistry,
    *,
    model: str,
    days: int = 30,
    training_log: Path | None = None,
    now: date | None = None,
    config: DiagnosticsConfig = DiagnosticsConfig(),
    version: ModelVersion | None = None,
    api_log: Path | None = None,
    today: date | None = None,
) -> DiagnosticsReport:
    """Run every check for ``version`` of ``model`` (default: the files in production now); raises only for an
    unknown or invalid model name. ``training_log`` may name one log per model (``{model}``, ``{strategy}``,
    ``{marketcap}``); ``today`` (default: the system's date) dates the data pipeline's freshness."""
    if days < 2:
        raise ValueError("days must be at least 2")
    started = time.perf_counter()
    v = version or production_version(registry, model)  # UnknownModel / InvalidName for a bad name
    meta = v.meta
    findings: list[Finding] = []

    def err_perf(msg: str) -> tuple[PerformanceSection, list[Finding]]:
        return PerformanceSection(None, None, None, [], math.nan, math.nan, 0,
                                  meta.performance.spearman_ic if meta else None,
                                  meta.performance.sharpe_ratio if meta else None, "error", msg, version=v.name), []

    perf, f1 = guarded(conn, lambda: check_performance(conn, registry, model=model, days=days, as_of=now,
                                                       config=config, version=v), err_perf)
    dq, f2 = guarded(conn, lambda: check_data_quality(conn, days=days, as_of=now, config=config),
                     lambda msg: (DataQualitySection(error=msg), []))
    log_path = training_log_path(training_log, model)
    log_section, f3 = scan_log(log_path, config=config, model=model if is_per_model(training_log) else None)

    def drift() -> tuple[DriftSection, list[Finding]]:
        return check_drift(conn, features=features_of(conn, meta, v.booster), days=days, as_of=now,
                           train_window=train_window(meta), config=config, version=v.name)

    dr, f4 = guarded(conn, drift, lambda msg: (DriftSection(error=msg, version=v.name), []))
    rg, f5 = guarded(conn, lambda: check_regime(conn, as_of=now, config=config),
                     lambda msg: (RegimeSection("", verdict="error", error=msg), []))
    system, f6 = check_system(conn, today=today or date.today(), as_of=now, api_log=api_log, config=config)
    for part in (f1, f2, f3, f4, f5, f6):
        findings.extend(part)
    for name, section in (("performance", perf), ("data_quality", dq), ("drift", dr), ("regime", rg)):
        if section.error:
            findings.append(Finding(WARNING, name, f"could not be checked: {section.error}"))
    return DiagnosticsReport(model, now, days, perf, dq, log_section, dr, rg, findings,
                             time.perf_counter() - started, version=v.name, version_note=v.note, system=system)
