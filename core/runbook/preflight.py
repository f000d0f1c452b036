"""Pre-flight: check a target before anything changes, at request time and again right before the halt.

``check_target`` is the one pre-flight: the engine runs it at request time (``Engine.preflight``) and the quick
fixes run it on each restore candidate (``core.fixes.propose_model_restore``). The target loads, its metadata
parses, its features exist in ``ml_training_features``, a prediction on the latest rows is finite and not
constant, and the platform passes the doctor's rollback checks and the trades source can be read.

``run`` is the runbook step of an approved rollback (journal step ``preflight``): cancelled when it did not
start within APPROVED_START_TIMEOUT_MINUTES, else ``recheck_target`` and on to the halt (or failed; nothing
was changed).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from core import integrity, trading
from core.doctor import refuse_if_not_ready
from core.errors import BackupCorrupt, PreflightFailed, RollbackError
from core.incidents import CANCELLED, FAILED, HALTING, Event, Incident, PreflightReport
from core.modelio import METADATA_FILE, MODEL_FILE, load_booster, predict, read_metadata, sha256_file
from core.platform import feature_columns, feature_rows
from core.registry import ModelRegistry, validate_name
from core.runbook.journal import begin, done, finish

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["NAME", "check_prediction", "check_target", "check_trades_source", "not_started_note", "recheck_target",
           "run", "start_timeout"]

NAME = "preflight"
Transaction = Callable[[], AbstractContextManager[psycopg.Connection]]


def check_target(registry: ModelRegistry, settings: Any, *, model: str, backup: str,
                 transaction: Transaction) -> PreflightReport:
    """The pre-flight of ``backup`` as the new production model of ``model`` (see the module's docstring).
    ``transaction`` opens a unit of work (``Database.transaction``, or the caller's own connection);
    ``settings`` None skips the trades source. Raises PreflightFailed saying what fails."""
    validate_name(model, "model")
    validate_name(backup, "backup")
    with transaction() as conn:
        refuse_if_not_ready(conn, settings, models_dir=registry.models_dir, model=model)
    folder = registry.backup_dir(model, backup)
    what = f"Backup {backup} of {model} fails pre-flight"
    checks: list[str] = []
    try:
        meta = read_metadata(folder)
        checks.append("metadata.json parses")
        booster = load_booster(folder / MODEL_FILE, max_bytes=registry.max_model_bytes)
        checks.append("model.json loads with xgboost")
    except BackupCorrupt as exc:
        raise PreflightFailed(f"{what}: {exc}") from None
    if booster.num_features() != len(meta.features):
        raise PreflightFailed(f"{what}: the model expects {booster.num_features()} features, metadata lists"
                              f" {len(meta.features)}.")
    if booster.feature_names and list(booster.feature_names) != list(meta.features):
        raise PreflightFailed(f"{what}: the model's feature names differ from metadata.json.")
    with transaction() as conn:
        available = feature_columns(conn)
        missing = [f for f in meta.features if f not in available]
        if missing:
            raise PreflightFailed(f"{what}: ml_training_features lacks {', '.join(missing[:8])}.")
        checks.append("features match ml_training_features")
        if settings is not None:
            checks.append(check_trades_source(conn, settings, f"A rollback of {model} fails pre-flight"))
        day, _, rows = feature_rows(conn, meta.features)
    check_prediction(booster, meta.features, rows, what=what)
    checks.append(f"prediction on {len(rows)} rows of {day} is finite and varies")
    return PreflightReport(
        model=model, backup=backup, sha256=sha256_file(folder / MODEL_FILE),
        training_date=meta.training_date.isoformat(), spearman_ic=meta.performance.spearman_ic,
        sharpe_ratio=meta.performance.sharpe_ratio, features=list(meta.features),
        prediction_day=day.isoformat() if day else None, prediction_rows=len(rows), checks=checks,
    )


def check_prediction(booster: Any, features: list[str], rows: list, *, what: str) -> None:
    import numpy as np

    if len(rows) < 2:
        raise PreflightFailed(f"{what}: ml_training_features has no recent rows to predict on.")
    preds = np.asarray(predict(booster, features, rows), dtype=float)
    if not np.all(np.isfinite(preds)):
        raise PreflightFailed(f"{what}: the prediction on recent rows has non-finite values.")
    if float(np.std(preds)) <= 0.0:
        raise PreflightFailed(f"{what}: the prediction on recent rows is constant ({preds[0]:.6g}).")


def check_trades_source(conn: psycopg.Connection, settings: Any, what: str) -> str:
    """The trades source the halt is verified against can be read; fail closed before anything changes."""
    if not trading.has_trades_source(settings):
        return "no trade source (TRADES_TABLE=none): trades after the halt will not be checked"
    problem = trading.trades_source_problem(conn, settings)
    if problem:
        raise PreflightFailed(f"{what}: {problem}; nothing was changed.")
    return "the trades source can be read"


def recheck_target(engine: Engine, inc: Incident) -> list[str]:
    """Pre-flight again right before the halt. When model.json still has the bytes that passed pre-flight
    at request time, loading it again proves nothing new (and takes most of a second for a large model):
    check the checksum, the metadata's features and the feature view instead."""
    with engine.db.transaction() as conn:
        refuse_if_not_ready(conn, engine.settings, models_dir=engine.registry.models_dir, model=inc.model_name)
    what = f"Backup {inc.target_backup} of {inc.model_name} fails pre-flight"
    folder = engine.registry.backup_dir(inc.model_name, inc.target_backup)
    try:
        sha = sha256_file(folder / MODEL_FILE)
    except OSError as exc:
        raise PreflightFailed(f"{what}: {MODEL_FILE} cannot be read ({exc.strerror}).") from None
    if inc.target_sha256 and sha != inc.target_sha256:
        raise PreflightFailed(f"{what}: it changed on disk after the request; nothing was changed.")
    pinned_meta = integrity.pins_of(inc).get(METADATA_FILE)
    if pinned_meta and integrity.file_sums(folder)[METADATA_FILE] != pinned_meta:
        raise PreflightFailed(f"{what}: its metadata.json changed on disk after the request; nothing was changed.")
    checked = (inc.plan or {}).get("preflight") or {}
    if not inc.target_sha256 or not checked.get("features"):
        return engine.preflight(model=inc.model_name, backup=inc.target_backup).checks
    try:
        meta = read_metadata(folder)
    except BackupCorrupt as exc:
        raise PreflightFailed(f"{what}: {exc}") from None
    if list(meta.features) != list(checked["features"]):
        raise PreflightFailed(f"{what}: the features in metadata.json changed after the request.")
    with engine.db.transaction() as conn:
        available = feature_columns(conn)
        trades = check_trades_source(conn, engine.settings, f"A rollback of {inc.model_name} fails pre-flight")
    missing = [f for f in meta.features if f not in available]
    if missing:
        raise PreflightFailed(f"{what}: ml_training_features lacks {', '.join(missing[:8])}.")
    return ["model.json is the file that passed pre-flight (sha256)", "metadata.json parses, same features",
            "features match ml_training_features", trades]


def start_timeout(settings: Any) -> timedelta:
    return timedelta(minutes=settings.approved_start_timeout_minutes)


def not_started_note(settings: Any) -> str:
    return (f"approved but not started within {settings.approved_start_timeout_minutes:g} minutes"
            " (APPROVED_START_TIMEOUT_MINUTES): cancelled rather than run late; request it again")


def run(engine: Engine, inc: Incident, actor: str) -> Incident:
    """approved → halting (the target passes pre-flight again) | failed | cancelled (started too late)."""
    if inc.approved_at is not None and engine.clock() - inc.approved_at > start_timeout(engine.settings):
        note = not_started_note(engine.settings)
        with engine.db.transaction() as conn:
            new = engine.move(conn, engine.get(inc.id, conn, lock=True), CANCELLED, decision_note=note)
            done(engine, conn, inc.id, "expired", actor, outcome="skipped", detail={"note": note})
            engine.audit(conn, actor=actor, action="execute", outcome="refused", incident_id=inc.id, reason=note)
        engine.publish(Event("state", new))
        return new
    sid = begin(engine, inc, NAME, actor)
    try:
        checks = recheck_target(engine, inc)
    except RollbackError as exc:
        finish(engine, sid, "failed", error=str(exc))
        with engine.db.transaction() as conn:
            new = engine.move(conn, engine.get(inc.id, conn, lock=True), FAILED, error=str(exc)[:2000])
        engine.publish(Event("state", new, error=str(exc)))
        return new
    finish(engine, sid, "ok", {"checks": checks})
    with engine.db.transaction() as conn:
        new = engine.move(conn, engine.get(inc.id, conn, lock=True), HALTING)
    engine.publish(Event("state", new))
    return new
