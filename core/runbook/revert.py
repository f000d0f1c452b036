"""The undo (journal step ``revert``, state ``reverting`` → ``failed``, or ``revert_failed``).

When a step of the swap fails (the emergency backup, the restore, the record or the verification), the original
files go back (``core.revert.put_back``: from the emergency backup, retried with back-off, each file's version
named when that fails) and the deployment log's production rows are put back as they were. Trading stays halted:
a person looks before it resumes (``/rollback resume``).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from core import integrity
from core import revert as files
from core.errors import RollbackError
from core.incidents import FAILED, REVERT_FAILED, Event, Incident
from core.runbook.journal import begin, clean_temporaries, finish_in
from core.runbook.record import lock_deployments

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["NAME", "files_now", "originals", "run"]

NAME = "revert"


def run(engine: Engine, inc: Incident, actor: str) -> Incident:
    """reverting → failed (the original is back) | revert_failed (the files are mixed; escalated)."""
    sid = begin(engine, inc, NAME, actor)
    folder = engine.registry.model_dir(inc.model_name)
    engine.executor.fence(inc, "removing temporary files")
    clean_temporaries(folder)  # a copy interrupted by a crash in an earlier attempt
    # Each file back to the original (core.revert), retried with back-off; the outcome names what is in place.
    before = originals(inc, folder)
    outcome = files.put_back(
        folder, before, folder / inc.emergency_backup if inc.emergency_backup else None,
        original_label=integrity.original_label(inc, folder, before),
        target=(f"target {inc.target_backup}", integrity.pins_of(inc)),
        fence=lambda what: engine.executor.fence(inc, what), fault=engine.fault, wait=engine.revert_wait)
    with engine.db.transaction() as conn:
        cur = engine.get(inc.id, conn, lock=True)
        reverted_log = False
        if cur.deployed_at is not None:
            lock_deployments(conn, inc.model_name)
            ours = conn.execute(
                "UPDATE model_deployment_log SET is_production = false WHERE model_name = %s AND version = %s"
                " AND deployed_at = %s AND is_rollback AND is_production",
                (inc.model_name, inc.target_backup, cur.deployed_at),
            ).rowcount
            if ours:
                for prev in cur.previous_rows or []:
                    conn.execute(
                        "UPDATE model_deployment_log SET is_production = true WHERE model_name = %s AND version = %s"
                        " AND deployed_at = %s",
                        (inc.model_name, prev["version"], datetime.fromisoformat(prev["deployed_at"])),
                    )
                reverted_log = True
        detail = {"ok": outcome.ok, "restored_files": outcome.restored, "removed_files": outcome.removed,
                  "attempts": outcome.attempts, "files": outcome.files, "message": outcome.message,
                  "deployment_log_reverted": reverted_log, "trading": "stays halted"}
        plan = {**cur.plan, "revert": {"ok": outcome.ok, "message": outcome.message, "files": outcome.files}}
        if outcome.ok:
            new = engine.move(conn, cur, FAILED, step=(NAME, detail, None), plan=plan)
        else:  # the files are mixed: open, trading halted, escalated; resume refuses until they are fixed
            new = engine.move(conn, cur, REVERT_FAILED, step=(NAME, detail, None), plan=plan, error=(
                (cur.error + "; " if cur.error else "") + outcome.message[0].upper() + outcome.message[1:]
                + ". Trading stays halted.")[:2000])
        finish_in(engine, conn, sid, "ok" if outcome.ok else "failed", detail,
                  error=None if outcome.ok else outcome.message[:2000])
    engine.publish(Event("step", new, NAME, detail, queued=True))
    engine.publish(Event("state", new, error=new.error))
    return new


def originals(inc: Incident, folder: Path) -> integrity.Sums | None:
    """The original files' checksums (recorded by the emergency backup step); None if it never ran."""
    return integrity.originals_of(inc, folder / inc.emergency_backup if inc.emergency_backup else None)


def files_now(engine: Engine, inc: Incident) -> str:
    """Which version each production file of ``inc``'s model is now (for a failure message)."""
    try:
        folder = engine.registry.model_dir(inc.model_name)
        before = originals(inc, folder) or {}
        known = [(integrity.original_label(inc, folder, before), before),
                 (f"target {inc.target_backup}", integrity.pins_of(inc))]
        now = integrity.describe(folder, integrity.file_sums(folder), known)
    except (OSError, RollbackError) as exc:
        return f"the production files could not be read ({exc})"
    return "production files now: " + ", ".join(f"{name} is {what}" for name, what in now.items())
