"""The service layer's public face: plain values in, plain values (dataclasses) out, domain errors raised.

Slack handlers, the CLI and the demo all call these; none of this module knows about Slack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.db import Database
from core.engine import Engine, _no_fault, utcnow
from core.worker import Worker
from core.errors import UnknownModel
from core.platform import DeploymentRow, feature_columns, production_rows
from core.registry import BackupInfo, ModelRegistry, Recommendation, validate_name
from core.settings import Settings


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


@dataclass(frozen=True)
class BackupsReport:
    model: str
    production: BackupInfo
    deployment: DeploymentRow | None
    backups: list[BackupInfo]
    recommendation: Recommendation
    extra: dict[str, Any] = field(default_factory=dict)


CLOSED_STATES = ("resolved", "denied", "failed", "cancelled")


class Services:
    """Composition of the service layer, built once at the entry point."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        registry: ModelRegistry | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        fault_hook: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry or ModelRegistry(settings.models_dir)
        self.engine = Engine(settings, db, self.registry, clock=clock or utcnow, fault_hook=fault_hook or _no_fault)
        self.worker = Worker(self.engine)
        self._background = False

    def start_background(self) -> None:
        """Recover interrupted rollbacks, then run queued jobs and timers until ``stop_background``."""
        if not self._background:
            self.worker.start()
            self._background = True

    def stop_background(self) -> None:
        if self._background:
            self.worker.stop()
            self._background = False

    # ------------------------------------------------------------------ queries

    def status(self) -> StatusReport:
        with self.db.transaction() as conn:
            rows = production_rows(conn)
            incidents = [
                OpenIncident(**r)
                for r in conn.execute(
                    "SELECT id, kind, model_name, state, requested_by, created_at FROM rollback_bot.incidents "
                    "WHERE state <> ALL(%s) ORDER BY id",
                    (list(CLOSED_STATES),),
                )
            ]
            halt = conn.execute("SELECT halted, since, reason FROM rollback_bot.trading_state").fetchone()
        by_model: dict[str, list[DeploymentRow]] = {}
        for row in rows:
            by_model.setdefault(row.model_name, []).append(row)
        names = sorted(set(by_model) | set(self.registry.list_models()))
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
                files = self.registry.production(name)
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
        )

    def backups(self, *, model: str) -> BackupsReport:
        validate_name(model, "model")
        production = self.registry.production(model)
        backups = self.registry.list_backups(model)
        with self.db.transaction() as conn:
            features = feature_columns(conn)
            rows = production_rows(conn, model)
        recommendation = self.registry.recommend(model, backups, available_features=features or None)
        return BackupsReport(
            model=model,
            production=production,
            deployment=rows[0] if rows else None,
            backups=backups,
            recommendation=recommendation,
        )
