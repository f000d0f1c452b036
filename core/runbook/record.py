"""Runbook step 4c, record the rollback (journal step ``record``, state ``recording`` → ``verifying``).

One transaction, serialised with every other writer of the model's deployment rows: the old production rows of
``model_deployment_log`` are un-marked BEFORE the new row is inserted (never two production rows), and which rows
were production is kept on the incident so that a revert can put them back (``core.runbook.revert``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from core.incidents import VERIFYING, Event, Incident
from core.modelio import read_metadata
from core.runbook.journal import begin, finish_in

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["NAME", "lock_deployments", "run"]

NAME = "record"


def lock_deployments(conn: psycopg.Connection, model: str) -> None:
    """Serialise writers of this model's deployment rows (until the caller's transaction ends)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollback_bot.deploy:' || %s))", (model,))


def run(engine: Engine, inc: Incident, actor: str) -> Incident:
    """recording → verifying: the target is the production row of model_deployment_log."""
    sid = begin(engine, inc, NAME, actor)
    meta = read_metadata(engine.registry.backup_dir(inc.model_name, inc.target_backup))
    with engine.db.transaction() as conn:
        cur = engine.get(inc.id, conn, lock=True)
        lock_deployments(conn, inc.model_name)
        previous = conn.execute(
            "SELECT version, deployed_at FROM model_deployment_log WHERE model_name = %s AND is_production",
            (inc.model_name,),
        ).fetchall()
        conn.execute(
            "UPDATE model_deployment_log SET is_production = false WHERE model_name = %s AND is_production",
            (inc.model_name,),
        )
        deployed_at = engine.clock()
        by = inc.requested_by if not inc.approved_by else f"{inc.requested_by} (approved by {inc.approved_by})"
        conn.execute(
            "INSERT INTO model_deployment_log (model_name, version, deployed_at, deployed_by, deployment_reason,"
            " is_production, is_rollback, spearman_ic, sharpe_ratio) VALUES (%s, %s, %s, %s, %s, true, true, %s, %s)",
            (inc.model_name, inc.target_backup, deployed_at, by[:200], f"{inc.ref}: {inc.reason}"[:2000],
             meta.performance.spearman_ic, meta.performance.sharpe_ratio),
        )
        prev = [{"version": r["version"], "deployed_at": r["deployed_at"].isoformat()} for r in previous]
        new = engine.move(conn, cur, VERIFYING, step=(NAME, {"version": inc.target_backup}, None),
                          deployed_at=deployed_at, previous_rows=prev)
        finish_in(engine, conn, sid, "ok", {"version": inc.target_backup, "previous": prev})
    engine.publish(Event("step", new, NAME, {"version": inc.target_backup}, queued=True))
    engine.publish(Event("state", new))
    return new
