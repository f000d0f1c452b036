"""The runbook's "corrupt model file" fix: propose a restore target, then open an ordinary rollback for it.

When the production ``model.json`` does not load, ``propose_model_restore`` picks a target by ``RESTORE_RULE``
(each candidate through the one pre-flight) and ``request_restore`` opens a rollback request for it (approval by
a second person, emergency backup, atomic restore, verification): a restore is never done outside the engine's
rollback flow.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg

from core.engine import Engine
from core.errors import BackupCorrupt, PreflightFailed
from core.incidents import Incident, PreflightReport
from core.platform import production_rows
from core.registry import BackupInfo, ModelRegistry
from core.runbook.preflight import check_target

__all__ = ["RESTORE_RULE", "RestoreProposal", "propose_model_restore", "request_restore"]


@dataclass(frozen=True)
class RestoreProposal:
    model: str
    problem: str                   # why the production model.json does not load
    backup: str | None             # the proposed target; None when no backup passes pre-flight
    production_version: str | None  # model_deployment_log's production version
    same_version: bool             # the target is the backup of the version in production
    checks: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    preflight: PreflightReport | None = None
    rule: str = ""

    @property
    def possible(self) -> bool:
        return self.backup is not None


RESTORE_RULE = (
    "the backup of the version model_deployment_log lists as production (the same model, uncorrupted) when it "
    "passes pre-flight, else the newest passing backup by training date; emergency backups last"
)


def _restore_order(backups: list[BackupInfo], production_version: str | None) -> list[BackupInfo]:
    def key(b: BackupInfo) -> tuple:
        return (b.name != production_version, b.is_emergency, -(b.training_date or date.min).toordinal(), b.name)

    return sorted(backups, key=key)


def propose_model_restore(
    registry: ModelRegistry, conn: psycopg.Connection, *, model: str, engine: Engine | None = None,
    settings: Any = None,
) -> RestoreProposal | None:
    """None when the production model.json loads; else the restore target by RESTORE_RULE.

    Each candidate goes through the one pre-flight (``core.runbook.preflight.check_target``, exactly the checks a
    rollback runs): with ``engine`` as ``Engine.preflight`` does it, without it on ``conn`` (the trades source too
    when ``settings`` are given).
    """
    folder = registry.model_dir(model)
    problem = registry.load_problem(folder)
    if problem is None:
        return None
    rows = production_rows(conn, model)
    production_version = rows[0].version if rows else None
    rejected: dict[str, str] = {}
    for b in _restore_order(registry.list_backups(model), production_version):
        try:
            if engine is not None:
                report = engine.preflight(model=model, backup=b.name)
            else:
                report = check_target(registry, settings, model=model, backup=b.name,
                                      transaction=lambda: nullcontext(conn))
        except (PreflightFailed, BackupCorrupt) as exc:
            rejected[b.name] = str(exc).split(" fails pre-flight: ", 1)[-1]
            continue
        checks = list(report.checks)
        return RestoreProposal(model, problem, b.name, production_version, b.name == production_version, checks,
                               rejected, report, RESTORE_RULE)
    return RestoreProposal(model, problem, None, production_version, False, [], rejected, None, RESTORE_RULE)


def request_restore(
    engine: Engine, proposal: RestoreProposal, requested_by: str, *, channel: str | None = None,
    source: str = "slack",
) -> tuple[Incident, PreflightReport]:
    """Open the rollback request that restores the proposal's backup (approved and executed like any rollback)."""
    if proposal.backup is None:
        raise PreflightFailed(
            f"No backup of {proposal.model} passes pre-flight, so the corrupt model.json cannot be restored: "
            + "; ".join(f"{k}: {v}" for k, v in list(proposal.rejected.items())[:5])
        )
    what = "the same version" if proposal.same_version else "the newest backup that passes pre-flight"
    reason = (f"Quick fix: the production model.json of {proposal.model} does not load ({proposal.problem});"
              f" restore {proposal.backup} ({what}).")
    return engine.request_rollback(model=proposal.model, backup=proposal.backup, reason=reason,
                                   requested_by=requested_by, severity="high", channel=channel, source=source)
