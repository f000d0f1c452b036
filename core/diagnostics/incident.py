"""An incident's diagnostics: the version that failed, and the restored model's live figures apart.

The root cause is about the version that was in production when the incident opened (``failed_version``),
measured against its own metadata.json, whenever the job runs (before or after the swap). The rollback's
target, the model that is (or will be) in production after the swap, is measured on the same recent days and
kept apart, for the monitoring that follows the resume: ``detail["restored"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from core.db import Database
from core.diagnostics.common import DiagnosticsConfig, guarded
from core.diagnostics.performance import PerformanceSection, check_performance, perf_line
from core.diagnostics.run import run_diagnostics
from core.diagnostics.summary import DiagnosticsReport
from core.diagnostics.version import backup_version, failed_version
from core.errors import RollbackError
from core.incidents import Incident
from core.registry import ModelRegistry


def restored_line(name: str, section: PerformanceSection | None, error: str | None = None) -> str:
    what = f"Restored model {name} (the rollback's target), on the same recent days"
    if section is None:
        return f"{what}: could not be measured ({error})"
    return f"{what}: {perf_line(section)}"


def diagnose_incident(
    db: Database, registry: ModelRegistry, inc: Incident, reread: Callable[[], Incident], *, days: int,
    training_log: Path | None, api_log: Path | None, today: date, config: DiagnosticsConfig = DiagnosticsConfig(),
) -> tuple[DiagnosticsReport, dict[str, Any]]:
    """Diagnose ``inc``'s failed version; measure its target apart. Returns the report and the detail kept in
    the incident's plan (``plan.diagnostics``)."""
    failed = failed_version(registry, inc, reread)
    restored: dict[str, Any] = {"version": inc.target_backup}
    with db.transaction() as conn:
        report = run_diagnostics(conn, registry, model=inc.model_name, days=days, training_log=training_log,
                                 version=failed, api_log=api_log, today=today, config=config)
        section, error = None, None
        try:
            target = backup_version(registry, inc.model_name, inc.target_backup or "",
                                    note=f"the target of {inc.ref}")
            section, _ = guarded(conn, lambda: check_performance(conn, registry, model=inc.model_name, days=days,
                                                                 config=config, version=target),
                                 lambda msg: (None, []))
            if section is None:
                error = "see the log"
        except RollbackError as exc:
            error = str(exc)
    if section is not None:
        restored.update(mean_ic=_finite(section.mean_ic), sharpe=_finite(section.sharpe), days=section.days,
                        verdict=section.verdict, expected_ic=section.expected_ic,
                        expected_sharpe=section.expected_sharpe)
    restored["line"] = restored_line(inc.target_backup or "?", section, error)
    markdown = report.to_markdown() + f"\n_{restored['line']}_ (for the monitoring after the resume)"
    detail = {"summary": report.summary(), "markdown": markdown, "likely_cause": report.likely_cause,
              "findings": len(report.findings), "version": failed.name, "version_note": failed.note,
              "version_folder": failed.folder.name, "restored": restored}
    return report, detail


def _finite(x: float) -> float | None:
    return float(x) if x == x and abs(x) != float("inf") else None
