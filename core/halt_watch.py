"""Is the halt working? The quiet wait before the swap, the sweep of clients while a halt is held, and the
"halt not effective" pause with its two ways out.

* ``wait_for_quiet``: after the halt (and the stop command) the swap waits until the trades source has been
  quiet for ``HALT_QUIET_SECONDS``. Each trade seen after the halt restarts that window and is announced (one
  ``halt_trades`` event per change of the count, which the Slack layer shows as one message kept up to date).
  If trades still come after ``HALT_QUIET_TIMEOUT_SECONDS``, the halt is not effective: the incident pauses in
  ``halt_not_effective`` (open, trading stays halted, paged at once by ``core.escalation``).
  Time is the engine's clock and the engine's ``sleep``, so tests move time instead of waiting.
* ``proceed_anyway``: an approver other than the requester lets the swap go ahead (audited). ``abandon``: the
  requester or an approver ends the incident as failed; nothing was changed and trading stays halted.
* ``sweep``: while a halt is held, clients that became active or were added are saved and halted too
  (``core.trading.sweep``), and a client a person re-enabled is said in the thread of every incident holding
  the halt, once. The engine sweeps at each step boundary of a rollback; the worker sweeps on every tick.

A trades source that is configured but missing fails closed (``core.trading.trades_source_problem``); only
``TRADES_TABLE=none`` without ``TRADING_LOG`` means "no trade source", and then nothing is waited for.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from core import repository as repo
from core import slack_outbox, trading
from core.decision import settle
from core.errors import InvalidTransition, NotAuthorized, PreflightFailed, RollbackError
from core.incidents import (
    BACKING_UP,
    CLOSED,
    FAILED,
    HALT_NOT_EFFECTIVE,
    HALTED,
    RECORDING,
    RESTORING,
    RESUMING,
    REVERTING,
    VERIFYING,
    Event,
    Incident,
    already_decided,
    journal,
)
from core.runbook.emergency_backup import name_for
from core.runbook.journal import finish_in

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["HELD_STATES", "QuietWatch", "abandon", "proceed_anyway", "remember_trades_message", "sweep",
           "wait_for_quiet"]

log = logging.getLogger("rollback_bot.halt_watch")

POLL_SECONDS = 0.25
ANNOUNCE_EVERY_SECONDS = 2.0  # the live message is updated at most this often (Slack's chat.update limits)
# Rollback states in which the incident holds the halt and the engine sweeps at each step boundary.
HELD_STATES = frozenset({HALTED, BACKING_UP, RESTORING, RECORDING, VERIFYING, RESUMING, REVERTING})
TRADES_EVENT = "halt_trades"
SWEEP_STEP = "halt_sweep"


@dataclass(frozen=True)
class QuietWatch:
    quiet: bool
    trades: int       # trades after the halt, seen while watching
    waited: float     # seconds of the engine's clock spent waiting
    detail: dict


def _count(engine: Engine, inc: Incident, since: Any) -> int:
    s = engine.settings
    with engine.db.transaction() as conn:
        return trading.trades_after(conn, since, table=s.trades_table, time_column=s.trades_time_column,
                                    log_path=s.trading_log)


def wait_for_quiet(engine: Engine, inc: Incident) -> QuietWatch:
    """Block until the trades source has been quiet for HALT_QUIET_SECONDS (``quiet``) or trades still come
    after HALT_QUIET_TIMEOUT_SECONDS (not ``quiet``). Raises when the source cannot be read (fail closed)."""
    s = engine.settings
    quiet_s, timeout_s = float(s.halt_quiet_seconds), float(s.halt_quiet_timeout_seconds)
    base = {"quiet_seconds": quiet_s, "timeout_seconds": timeout_s}
    if not trading.has_trades_source(s):
        return QuietWatch(True, 0, 0.0, {**base, "trades_after_halt": 0, "quiet_wait_seconds": 0.0,
                                         "source": "none (TRADES_TABLE=none): trades after the halt not checked"})
    with engine.db.transaction() as conn:
        problem = trading.trades_source_problem(conn, s)
    if problem:
        raise PreflightFailed(f"Trades after the halt cannot be checked: {problem}. Trading stays halted.")
    start = last_change = engine.clock()
    real_start = time.monotonic()  # a clock that does not move (a test's) must not make the wait endless
    since = inc.halted_at or start
    seen = shown = _count(engine, inc, since)
    announced = None
    if seen:
        _announce(engine, inc, "watching", seen, 0.0, quiet_s, timeout_s)
        announced = start
    while True:
        now = engine.clock()
        quiet_for = (now - last_change).total_seconds()
        elapsed = (now - start).total_seconds()
        if quiet_for >= quiet_s or elapsed >= timeout_s or time.monotonic() - real_start >= timeout_s:
            break
        engine.sleep(max(0.001, min(POLL_SECONDS, quiet_s - quiet_for, timeout_s - elapsed)))
        sweep(engine)
        n = _count(engine, inc, since)
        if n != seen:
            seen, last_change = n, engine.clock()
        if seen != shown and (announced is None
                              or (engine.clock() - announced).total_seconds() >= ANNOUNCE_EVERY_SECONDS):
            shown, announced = seen, engine.clock()
            _announce(engine, inc, "watching", seen, (announced - start).total_seconds(), quiet_s, timeout_s)
    now = engine.clock()
    quiet = (now - last_change).total_seconds() >= quiet_s
    waited = (now - start).total_seconds()
    if seen:
        _announce(engine, inc, "quiet" if quiet else "not_effective", seen, waited, quiet_s, timeout_s)
    return QuietWatch(quiet, seen, waited, {**base, "trades_after_halt": seen, "quiet_wait_seconds": round(waited, 3),
                                            "source": _source_text(s)})


def _source_text(s: Any) -> str:
    parts = [f"table {s.trades_table}"] if trading.has_trades_table(s.trades_table) else []
    if s.trading_log is not None:
        parts.append(f"log {s.trading_log}")
    return " and ".join(parts)


def _announce(engine: Engine, inc: Incident, phase: str, trades: int, waited: float, quiet_s: float,
              timeout_s: float) -> None:
    engine.publish(Event("step", inc, TRADES_EVENT, {"phase": phase, "trades": trades, "waited": round(waited, 1),
                                                     "quiet_seconds": quiet_s, "timeout_seconds": timeout_s}))


def not_effective(engine: Engine, inc: Incident, step_id: int, detail: dict) -> Incident:
    """Pause the rollback: the halt did not stop trading. Trading stays halted; escalation pages at once."""
    error = (f"The halt is not effective: {detail.get('trades_after_halt')} trade(s) after the halt, still coming"
             f" after {detail.get('timeout_seconds'):g} s. Nothing was swapped; trading stays halted.")
    with engine.db.transaction() as conn:
        cur = engine.get(inc.id, conn, lock=True)
        new = engine.move(conn, cur, HALT_NOT_EFFECTIVE, step=("verify_halt", detail, error), error=error)
        finish_in(engine, conn, step_id, "failed", detail, error=error)
        engine.audit(conn, actor="rollback-bot", action="halt_not_effective", outcome="paused", incident_id=inc.id,
                     trades=detail.get("trades_after_halt"))
    engine.publish(Event("step", new, "verify_halt", detail, error, queued=True))
    engine.publish(Event("state", new, error=error))
    return new


def remember_trades_message(engine: Engine, incident_id: int, *, channel: str, ts: str) -> None:
    """Where the live "trades after the halt" message of an incident is (so it is updated, not posted again)."""
    with engine.db.transaction() as conn:
        repo.merge_plan(conn, incident_id, {"halt_trades_message": {"channel": channel, "ts": ts}})


# ------------------------------------------------------------------------------------------ the two ways out


def not_paused(inc: Incident, *, decided: Collection[str]) -> RollbackError | None:
    """Why ``inc`` is not a rollback paused on a halt that is not effective (None: it is); in a state of
    ``decided``, someone else decided first."""
    if inc.kind == "rollback" and inc.state == HALT_NOT_EFFECTIVE:
        return None
    if inc.state in decided:
        return already_decided(inc)
    return InvalidTransition(f"{inc.ref} is {inc.state}, not paused on a halt that is not effective.")


def proceed_anyway(engine: Engine, *, incident_id: int, approver: str, allowed: bool) -> Incident:
    """*Proceed anyway* on a halt that is not effective: an approver other than the requester, audited."""
    from core.engine import enqueue

    refusal: RollbackError | None = None
    new: Incident | None = None
    with engine.db.transaction() as conn:
        inc = engine.get(incident_id, conn, lock=True)
        if (refusal := not_paused(inc, decided={BACKING_UP, FAILED})) is not None:
            pass
        elif approver == inc.requested_by:
            refusal = NotAuthorized("You requested this rollback: an approver other than the requester decides to"
                                    " proceed anyway.")
        elif not allowed:
            refusal = NotAuthorized("Only approvers may proceed anyway (APPROVERS).")
        else:
            active = trading.active_halt(conn)
            if active is None or f"incident:{inc.id}" not in trading.holders(conn, active["id"]):
                refusal = InvalidTransition(f"Trading is no longer halted for {inc.ref}: the swap cannot go ahead.")
        if refusal is None:
            now = engine.clock()
            new = engine.move(conn, inc, BACKING_UP,
                               emergency_backup=inc.emergency_backup or name_for(engine, inc),
                               plan={**inc.plan, "proceeded_anyway": {"by": approver, "at": now.isoformat()}})
            journal(conn, incident_id=inc.id, step="proceed_anyway", actor=approver, at=now, outcome="warning",
                    detail={"trades_after_halt_seen": True}, error="proceeded although the halt was not effective")
            engine.audit(conn, actor=approver, action="proceed_anyway", outcome="ok", incident_id=inc.id)
            enqueue(conn, "execute", incident_id=inc.id, dedupe_key=f"execute:{inc.id}:proceed_anyway")
    return settle(engine, refusal, new, actor=approver, action="proceed_anyway", incident_id=incident_id)


def abandon(engine: Engine, *, incident_id: int, user: str, allowed: bool) -> Incident:
    """End a paused rollback: nothing was swapped, trading stays halted until an approver resumes it."""
    refusal: RollbackError | None = None
    new: Incident | None = None
    with engine.db.transaction() as conn:
        inc = engine.get(incident_id, conn, lock=True)
        if (refusal := not_paused(inc, decided=CLOSED | {BACKING_UP})) is not None:
            pass
        elif not allowed:
            refusal = NotAuthorized("Only approvers or the requester may abandon the rollback.")
        else:
            error = (f"Abandoned by {user}: the halt was not effective. Nothing was swapped; trading stays halted"
                     " until an approver resumes it.")
            new = engine.move(conn, inc, FAILED, error=error, decided_by=user)
            journal(conn, incident_id=inc.id, step="abandoned", actor=user, at=engine.clock())
            engine.audit(conn, actor=user, action="abandon", outcome="ok", incident_id=inc.id)
    return settle(engine, refusal, new, actor=user, action="abandon", incident_id=incident_id,
                  with_error=True)


# ------------------------------------------------------------------------------------------ the sweep


def sweep(engine: Engine) -> trading.SweepResult:
    """Cover clients that became active while the halt is held; tell every holder's thread what is new."""
    with engine.db.transaction() as conn:
        result = trading.sweep(conn)
        if result.halt_id is None or not (result.added or result.reenabled):
            return result
        ids = [int(h.split(":", 1)[1]) for h in trading.holders(conn, result.halt_id)
               if h.startswith("incident:") and h.split(":", 1)[1].isdigit()]
        told: list[tuple[Incident, dict, bool]] = []
        for inc in repo.open_incidents_among(conn, ids, lock=True):
            known = (inc.plan or {}).get(SWEEP_STEP) or {}
            added = sorted(set(known.get("added", [])) | set(result.added))
            new_added = [c for c in result.added if c not in known.get("added", [])]
            new_reenabled = [c for c in result.reenabled if c not in known.get("reenabled", [])]
            if not (new_added or new_reenabled):
                continue
            reenabled = sorted(set(known.get("reenabled", [])) | set(new_reenabled))
            repo.merge_plan(conn, inc.id, {SWEEP_STEP: {"added": added, "reenabled": reenabled}})
            detail = {"added": new_added, "reenabled": new_reenabled, "state": inc.state}
            error = (f"a person re-enabled client(s) {', '.join(new_reenabled)} during the halt: left as they set"
                     " them") if new_reenabled else None
            journal(conn, incident_id=inc.id, step=SWEEP_STEP, actor="rollback-bot", at=engine.clock(),
                    outcome="warning" if new_reenabled else "ok", detail=detail, error=error)
            told.append((inc, detail, slack_outbox.queue_event(engine, conn, inc, SWEEP_STEP, detail)))
    for inc, detail, queued in told:
        log.warning("%s: halt sweep %s", inc.ref, detail)
        engine.publish(Event("step", engine.get(inc.id), SWEEP_STEP, detail, queued=queued))
    return result
