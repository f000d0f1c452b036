"""Runbook step 6, resume automated trading (journal step ``resume``, state ``resuming`` → ``monitoring``).

Trading never resumes on a model that was not verified: ``assert_verified`` re-checks the journal and the file's
checksum first. Then, in one transaction, the incident lets go of the halt (each client's own settings back,
``core.trading.release``; trading resumes when no other holder is left), the trades seen during the halt are
counted, and the end of the 30-minute monitoring is queued.

A rollback asked to keep trading halted stops in ``verified``; ``resume_verified`` (an approver) runs this step.
``/rollback resume`` for trading as a whole is ``core.resume``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from core import repository as repo
from core import trading
from core.errors import InvalidTransition, VerificationFailed
from core.incidents import MONITORING, RESUMING, VERIFIED, Event, Incident
from core.modelio import MODEL_FILE, sha256_file
from core.runbook.journal import begin, finish_in
from core.runbook.verify import NAME as VERIFY

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["NAME", "assert_verified", "resume_verified", "run"]

NAME = "resume"


def run(engine: Engine, inc: Incident, actor: str) -> Incident:
    """resuming → monitoring: only a verified model, each client's own settings back."""
    sid = begin(engine, inc, NAME, actor)
    assert_verified(engine, inc)
    s = engine.settings
    with engine.db.transaction() as conn:
        cur = engine.get(inc.id, conn, lock=True)
        trades = trading.trades_after(conn, cur.halted_at, table=s.trades_table, time_column=s.trades_time_column,
                                      log_path=s.trading_log) if cur.halted_at else 0
        result = trading.release(conn, holder=f"incident:{inc.id}", actor=actor)
        now = engine.clock()
        detail = {"resumed": result.resumed, "restored_clients": result.restored,
                  "left_alone": result.left_alone, "still_held_by": result.remaining_holders,
                  "trades_during_halt": trades}
        new = engine.move(conn, cur, MONITORING, step=(NAME, detail, None), resumed_at=now)
        finish_in(engine, conn, sid, "warning" if trades else "ok", detail,
                  error=f"{trades} trade(s) executed during the halt" if trades else None)
        repo.enqueue(conn, "monitor_end", incident_id=inc.id, dedupe_key=f"monitor_end:{inc.id}",
                     run_at=now + timedelta(minutes=s.monitor_minutes))
    engine.publish(Event("step", new, NAME, detail, queued=True))
    engine.publish(Event("state", new))
    return new


def assert_verified(engine: Engine, inc: Incident) -> None:
    """VerificationFailed unless the journal holds a verification that passed and the file in place is still the
    approved one."""
    with engine.db.transaction() as conn:
        ok = repo.step_succeeded(conn, inc.id, VERIFY)
    folder = engine.registry.model_dir(inc.model_name)
    if not ok or sha256_file(folder / MODEL_FILE) != inc.target_sha256:
        raise VerificationFailed("refusing to resume trading: the model in place was not verified")


def resume_verified(engine: Engine, *, incident_id: int, actor: str) -> Incident:
    """For a rollback that was asked to keep trading halted: an approver resumes it."""
    with engine.db.transaction() as conn:
        inc = engine.get(incident_id, conn, lock=True)
        if inc.state != VERIFIED:
            raise InvalidTransition(f"{inc.ref} is {inc.state}, not waiting to resume.")
        new = engine.move(conn, inc, RESUMING)
    engine.publish(Event("state", new))
    return engine.execute(incident_id, actor=actor)
