"""A rollback request (journal step ``requested``), and the break-glass path that requests and approves at once.

``request_rollback`` checks the names and that the model has no open rollback (a partial unique index holds it
too), runs the pre-flight (``core.runbook.preflight.check_target``) with both files' checksums pinned around it,
and opens the incident in ``requested`` with its follow-up jobs (``core.outbox``) in the same transaction.

``break_glass`` is ``rollback-bot rollback`` for when Slack is down: the same request, then the operator at the
host's shell is the approval, recorded as such with the operating-system account; then the executor runs it.
"""

from __future__ import annotations

import math
import socket
from datetime import timedelta
from typing import TYPE_CHECKING

import psycopg

from core import aftercare, integrity
from core import repository as repo
from core.errors import Conflict, NotAuthorized, PreflightFailed, clean_text
from core.incidents import APPROVED, REQUESTED, Event, Incident, PreflightReport
from core.modelio import MODEL_FILE
from core.registry import validate_name
from core.runbook.journal import done

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["NAME", "break_glass", "request_rollback"]

NAME = "requested"


def request_rollback(
    engine: Engine, *, model: str, backup: str, reason: str, requested_by: str, severity: str = "high",
    estimated_loss: float | None = None, keep_halted: bool = False, source: str = "slack", channel: str | None = None,
    confirmations: dict | None = None,
) -> tuple[Incident, PreflightReport]:
    """Open a rollback request after pre-flight. A second open request for the model is a Conflict.
    ``confirmations``: the requester's pre-rollback checks (``core.prerollback.confirmed``), kept in the plan."""
    reason = clean_text(reason)
    requested_by = clean_text(requested_by, 200)
    if not reason:
        raise PreflightFailed("A reason is required for a rollback.")
    if estimated_loss is not None and (not math.isfinite(estimated_loss) or estimated_loss < 0):
        raise PreflightFailed("The estimated loss must be a non-negative number.")
    validate_name(model, "model")
    existing = engine.open_incident_for(model)
    if existing:
        raise Conflict(
            f"{model} already has an open rollback, {existing.ref} ({existing.state}, requested by "
            f"{existing.requested_by}); nothing new was posted."
        )
    # What is approved is what runs: both files' checksums are pinned here, around the pre-flight that
    # read them, and checked again before the halt, at the restore and at verification.
    target_dir = engine.registry.backup_dir(model, backup)
    before = integrity.file_sums(target_dir)
    report = engine.preflight(model=model, backup=backup)
    pinned = integrity.file_sums(target_dir)
    if pinned != before or pinned[MODEL_FILE] != report.sha256:
        raise PreflightFailed(f"Backup {backup} of {model} changed while it was being checked; nothing was"
                              " changed. Request it again.")
    current = engine.registry.production(model)
    current_info = {
        "training_date": current.training_date.isoformat() if current.training_date else None,
        "spearman_ic": current.spearman_ic,
        "sharpe_ratio": current.sharpe_ratio,
        "problems": list(current.problems),
    }
    now = engine.clock()
    with engine.db.transaction() as conn:
        prod = conn.execute(
            "SELECT version FROM model_deployment_log WHERE model_name = %s AND is_production "
            "ORDER BY deployed_at DESC LIMIT 1",
            (model,),
        ).fetchone()
        follows = aftercare.follow_up_of(conn, model)
        try:
            incident = repo.insert_incident(
                conn, follow_ups=engine.write_follow_ups, kind="rollback", model_name=model, target_backup=backup,
                from_version=prod["version"] if prod else None, state=REQUESTED, reason=reason[:2000],
                severity=severity, estimated_loss=estimated_loss, keep_halted=keep_halted,
                requested_by=requested_by, source=source, channel=channel, target_sha256=report.sha256,
                plan={"preflight": report.__dict__, "current": current_info, "pinned": pinned,
                      **({"follows": follows} if follows else {}),
                      **({"confirmations": confirmations} if confirmations else {})},
                created_at=now, updated_at=now,
                expires_at=now + timedelta(minutes=engine.settings.approval_timeout_minutes),
            )
        except psycopg.errors.UniqueViolation:
            conn.rollback()
            other = engine.open_incident_for(model)
            ref = other.ref if other else "another request"
            raise Conflict(f"{model} already has an open rollback, {ref}; nothing new was posted.") from None
        done(engine, conn, incident.id, NAME, requested_by, detail={"backup": backup, "reason": reason})
        engine.audit(conn, actor=requested_by, action="request", outcome="ok", incident_id=incident.id,
                     model=model, backup=backup)
    engine.publish(Event("state", incident))
    return incident, report


def break_glass(engine: Engine, *, model: str, backup: str, reason: str, by: str, os_user: str | None = None,
                confirmations: dict | None = None) -> Incident:
    """The CLI path for when Slack is down: same pre-flight, engine and journal; the operator at the
    host's shell is the approval, recorded as such, with the operating-system account beside ``--by``."""
    by = clean_text(by, 200)
    if not by:
        raise NotAuthorized("--by NAME is required: break-glass rollbacks are audited by name.")
    os_user = clean_text(os_user, 200) or "unknown"
    inc, _ = request_rollback(engine, model=model, backup=backup, reason=reason, requested_by=by, source="cli",
                              confirmations=confirmations)
    now = engine.clock()
    who = {"by": by, "os_user": os_user, "host": socket.gethostname()}
    with engine.db.transaction() as conn:
        cur = engine.get(inc.id, conn, lock=True)
        new = engine.move(conn, cur, APPROVED, approved_by=f"{by} (break-glass CLI, OS user {os_user})"[:300],
                          decided_by=by, approved_at=now, plan={**cur.plan, "break_glass": who})
        done(engine, conn, inc.id, "approved", by, detail={"break_glass": True, **who})
        engine.audit(conn, actor=by, action="break_glass_rollback", outcome="ok", incident_id=inc.id, **who)
        superseded = aftercare.supersede(conn, new, at=now, follow_ups=engine.write_follow_ups)
    for old in superseded:
        engine.publish(Event("state", old))
    engine.publish(Event("state", new))
    return engine.execute(inc.id, actor=by)
