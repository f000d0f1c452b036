"""The status and backups queries behind `/rollback status` and `/rollback backups` (core.services' facade calls
them; their names stay importable from core.services)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core import repository as repo
from core.db import Database
from core.doctor import DoctorRun, latest_run
from core.errors import UnknownModel
from core.incidents import CLOSED
from core.monitoring import LabelledRows, labelled_rows
from core.performance import evaluate_booster
from core.platform import DeploymentRow, feature_columns, production_rows
from core.registry import BackupInfo, ModelRegistry, Recommendation, validate_name


@dataclass(frozen=True)
class ModelStatus:
    name: str
    deployment: DeploymentRow | None
    production_files: BackupInfo | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpenIncident:
    id: int
    kind: str
    model_name: str | None
    state: str
    requested_by: str
    created_at: datetime


@dataclass(frozen=True)
class StatusReport:
    models: list[ModelStatus]
    incidents: list[OpenIncident]
    trading_halted: bool
    halted_since: datetime | None = None
    halt_reason: str | None = None
    doctor: DoctorRun | None = None  # the latest `rollback-bot doctor` run, from any process


@dataclass(frozen=True)
class BackupsReport:
    model: str
    production: BackupInfo
    deployment: DeploymentRow | None
    backups: list[BackupInfo]
    recommendation: Recommendation
    extra: dict[str, Any] = field(default_factory=dict)


CLOSED_STATES = tuple(sorted(CLOSED))


def status_report(db: Database, registry: ModelRegistry) -> StatusReport:
    """`/rollback status`: every model's production row and files, the open incidents, the halt, the doctor."""
    with db.transaction() as conn:
        rows = production_rows(conn)
        incidents = [
            OpenIncident(**r)
            for r in repo.open_incident_rows(conn)
        ]
        halt = repo.trading_state(conn)
        doctor = latest_run(conn)
    by_model: dict[str, list[DeploymentRow]] = {}
    for row in rows:
        by_model.setdefault(row.model_name, []).append(row)
    names = sorted(set(by_model) | set(registry.list_models()))
    models = []
    for name in names:
        problems: list[str] = []
        dep_rows = by_model.get(name, [])
        if len(dep_rows) > 1:
            problems.append(f"{len(dep_rows)} rows are marked production in model_deployment_log")
        if not dep_rows:
            problems.append("no production row in model_deployment_log")
        files = None
        try:
            files = registry.production(name)
            problems.extend(files.problems)
        except (UnknownModel, Exception) as exc:  # noqa: BLE001 - reported per model, never a crash
            problems.append(str(exc))
        models.append(ModelStatus(name, dep_rows[0] if dep_rows else None, files, tuple(problems)))
    return StatusReport(
        models=models,
        incidents=incidents,
        trading_halted=bool(halt and halt["halted"]),
        halted_since=halt["since"] if halt else None,
        halt_reason=halt["reason"] if halt else None,
        doctor=doctor,
    )


def backups_report(db: Database, registry: ModelRegistry, model: str) -> BackupsReport:
    """`/rollback backups MODEL`: its backups, with the recommendation by live performance."""
    validate_name(model, "model")
    production = registry.production(model)
    backups = registry.list_backups(model)
    with db.transaction() as conn:
        features = feature_columns(conn)
        rows = production_rows(conn, model)
        recommendation = registry.recommend(
            model, backups, available_features=features or None, live_score=live_scorer(conn, registry)
        )
    return BackupsReport(
        model=model,
        production=production,
        deployment=rows[0] if rows else None,
        backups=backups,
        recommendation=recommendation,
    )


def live_scorer(conn, registry: ModelRegistry, days: int = 20):
    """Score a backup on the last ``days`` trading days of live data (see core.performance)."""
    cache: dict[tuple[str, ...], LabelledRows] = {}

    def score(b: BackupInfo):
        if not b.features:
            return None
        key = tuple(b.features)
        if key not in cache:
            cache[key] = labelled_rows(conn, b.features, last_days=days)
        return evaluate_booster(registry.booster(b.path), b.features, cache[key])

    return score
