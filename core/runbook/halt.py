"""Runbook step 2, stop automated trading: the halt, then the check that it works (the quiet wait).

Two journal steps:

* ``halt`` (state ``halting`` → ``halted``): every client's settings saved and halted and the halt flag set, in
  one transaction (``core.trading.halt``), with the incident as one of the halt's holders.
* ``verify_halt`` (``halted`` → ``backing_up``): the stop command (TRADING_STOP_COMMAND), then the quiet wait
  (``core.halt_watch.wait_for_quiet``): no trade for HALT_QUIET_SECONDS since the halt. Trades still coming
  after HALT_QUIET_TIMEOUT_SECONDS pause the rollback in ``halt_not_effective`` (``core.halt_watch``).

``halt_trading`` is ``/rollback halt``: a trading-only incident (kind ``halt``) that takes the same halt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core import halt_watch, trading
from core import repository as repo
from core.errors import RollbackError, clean_text
from core.incidents import BACKING_UP, HALTED, HALTING, Event, Incident
from core.runbook.emergency_backup import name_for
from core.runbook.journal import begin, finish, finish_in

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["NAME", "VERIFY_NAME", "halt_trading", "run", "verify_halt"]

NAME = "halt"
VERIFY_NAME = "verify_halt"


def run(engine: Engine, inc: Incident, actor: str) -> Incident:
    """halting → halted: client settings saved and halted, halt flag set, in one transaction."""
    sid = begin(engine, inc, NAME, actor)
    with engine.db.transaction() as conn:
        cur = engine.get(inc.id, conn, lock=True)
        result = trading.halt(conn, holder=f"incident:{inc.id}", actor=inc.approved_by or actor,
                              reason=f"{inc.ref} rollback of {inc.model_name}: {inc.reason}"[:500])
        detail = {"halt_id": result.halt_id, "clients": result.clients, "joined": result.joined}
        new = engine.move(conn, cur, HALTED, step=(NAME, detail, None), halted_at=result.halted_at,
                          plan={**cur.plan, "halt_id": result.halt_id})
        finish_in(engine, conn, sid, "ok", detail)
    engine.publish(Event("step", new, NAME, detail, queued=True))
    engine.publish(Event("state", new))
    return new


def verify_halt(engine: Engine, inc: Incident, actor: str) -> Incident:
    """halted → backing_up: the stop command, then no trade after the halt (or halt_not_effective)."""
    sid = begin(engine, inc, VERIFY_NAME, actor)
    try:
        note = trading.run_stop_command(engine.settings.trading_stop_command,
                                        engine.settings.trading_stop_timeout_seconds)
        watch = halt_watch.wait_for_quiet(engine, inc)  # until no trade for HALT_QUIET_SECONDS, or the timeout
    except RollbackError as exc:
        finish(engine, sid, "failed", error=str(exc))
        raise
    detail = {**watch.detail, "stop_command": note}
    if not watch.quiet:
        return halt_watch.not_effective(engine, inc, sid, detail)
    n = watch.trades
    if n:
        finish(engine, sid, "warning", detail, error=f"{n} trade(s) executed after the halt")
    else:
        finish(engine, sid, "ok", detail)
    name = inc.emergency_backup or name_for(engine, inc)
    with engine.db.transaction() as conn:  # the step's reply is announced with the state it leads to
        new = engine.move(conn, engine.get(inc.id, conn, lock=True), BACKING_UP, step=(VERIFY_NAME, detail, None),
                          emergency_backup=name)
    engine.publish(Event("step", inc, VERIFY_NAME, detail, queued=True))
    engine.publish(Event("state", new))
    return new


def halt_trading(engine: Engine, *, user: str, reason: str) -> Incident:
    """A manual halt (``/rollback halt``), journaled as an incident of kind 'halt'."""
    now = engine.clock()
    with engine.db.transaction() as conn:
        inc = repo.insert_incident(conn, follow_ups=engine.write_follow_ups, kind="halt", state=HALTING,
                                   reason=clean_text(reason) or "manual halt", requested_by=user, created_at=now,
                                   updated_at=now)
        sid = repo.start_step(conn, inc.id, NAME, user, at=engine.clock())
        result = trading.halt(conn, holder=f"incident:{inc.id}", actor=user, reason=inc.reason)
        new = engine.move(conn, inc, HALTED, halted_at=result.halted_at, plan={"halt_id": result.halt_id})
        finish_in(engine, conn, sid, "ok", {"halt_id": result.halt_id, "clients": result.clients,
                                            "joined": result.joined})
        engine.audit(conn, actor=user, action="halt", outcome="ok", incident_id=inc.id)
    engine.publish(Event("state", new))
    return new
