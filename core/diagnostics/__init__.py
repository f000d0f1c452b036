"""Root-cause diagnostics of a model (runbook step 8): the bot notices and diagnoses, people decide.

``run_diagnostics`` returns a ``DiagnosticsReport`` with six sections, each computed independently (a
section that fails reports its error and the others still run), plus a list of ``Finding``s (only real
problems: ``critical`` or ``warning``; a clean data set yields none) and a short plain-text ``summary()``
for an incident report's root-cause section. Each section says what it is about:

* about one **version** of the model (``ModelVersion``, ``version.py``: by default the files in production
  now; for an incident, the version that was in production when it opened, read from its emergency backup):
  **performance** (``performance.py``: its live IC and long-short Sharpe against its own metadata.json) and
  **drift** (``drift.py``, ``levels.py``: its features against its training window; PSI of day-centred values,
  and level shifts common to every ticker);
* about the **model**: its **training log** (``trainlog.py``; ``TRAINING_LOG`` may name one per model);
* about **every model**: **data quality** (``dataquality.py``: tickers per day, NULLs, ``return_1d IS NULL``, a
  stale feature view), the market **regime** (``regime.py``) and **system**-wide problems (``system.py``: the
  database, the API log, the data pipeline's freshness).

The thresholds are ``DiagnosticsConfig`` (``common.py``); each module's docstring gives its checks. ``now`` is
an "as of" date: with it every check only reads rows dated on or before it (the recent window ends there), so
a past day can be diagnosed as it looked then. Platform tables are found through the connection's
``search_path``. No Slack here; plain values in, dataclasses out.
"""

from __future__ import annotations

from core.diagnostics.common import (
    CRITICAL,
    WARNING,
    DiagnosticsConfig,
    Finding,
    recent_predictions,
)
from core.diagnostics.dataquality import DataQualitySection, DayCount, ReturnNulls, check_data_quality
from core.diagnostics.drift import DriftSection, FeatureDrift, check_drift, psi
from core.diagnostics.levels import LevelShift
from core.diagnostics.performance import PerformanceSection, check_performance, perf_line
from core.diagnostics.regime import RegimeSection, check_regime
from core.diagnostics.run import run_diagnostics
from core.diagnostics.summary import DiagnosticsReport
from core.diagnostics.system import DatabaseHealth, PipelineFreshness, SystemSection, check_system
from core.diagnostics.trainlog import LogLine, LogScanSection, scan_log, training_log_path
from core.diagnostics.version import ModelVersion, backup_version, failed_version, production_version

__all__ = [
    "CRITICAL",
    "WARNING",
    "DiagnosticsConfig",
    "DiagnosticsReport",
    "Finding",
    "ModelVersion",
    "PerformanceSection",
    "DayCount",
    "ReturnNulls",
    "DataQualitySection",
    "LogLine",
    "LogScanSection",
    "FeatureDrift",
    "LevelShift",
    "DriftSection",
    "RegimeSection",
    "SystemSection",
    "DatabaseHealth",
    "PipelineFreshness",
    "run_diagnostics",
    "check_performance",
    "check_data_quality",
    "scan_log",
    "training_log_path",
    "check_drift",
    "check_regime",
    "check_system",
    "psi",
    "perf_line",
    "recent_predictions",
    "production_version",
    "backup_version",
    "failed_version",
]
