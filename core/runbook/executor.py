"""The executor: runs an approved rollback's steps (``core.runbook.steps``) as far as they go without a person.

* One process at a time: a session-level advisory lock on the incident (``lock_key``), held for the whole run. A
  second process finds it taken and leaves the incident alone; when a process dies PostgreSQL releases the lock,
  so ``recover`` elsewhere (or after a restart) can take over. Right before every file operation a step checks
  that this process still holds the lock and its fencing token (``fence``, ``core.fencing``).
* Every transaction of a step runs with SET LOCAL lock_timeout and statement_timeout (``core.db.step_limits``).
* Attempts: each step's start is journaled, and a step started MAX_STEP_ATTEMPTS times (it killed the process
  each time) is not started again: the rollback fails, or is undone when the files may have changed.
* A step that fails: a swap step moves the incident to ``reverting`` (the undo runs next), a step before the
  swap to ``failed`` (nothing was changed), the undo itself to ``revert_failed``. A database that does not answer
  leaves the state as it is: the step runs again when it is back.
* The fault hook (``Engine.fault``) is called with ``before:<state>`` and ``after:<state>`` around each step (and
  by the file steps at their own points), so tests can kill or disturb the process anywhere.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import psycopg

from core import halt_watch
from core import repository as repo
from core.db import step_limits
from core.errors import DatabaseUnavailable, RollbackError
from core.fencing import Fence, LostLock
from core.incidents import (
    APPROVED,
    FAILED,
    HALTED,
    HALTING,
    MONITORING,
    REVERT_FAILED,
    REVERTING,
    RUNNABLE,
    SWAP_STATES,
    Event,
    Incident,
)
from core.logctx import incident_context
from core.runbook.revert import files_now
from core.runbook.steps import step_for
from core.runbook.verify import ParseAhead

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["MAX_STEP_ATTEMPTS", "Executor", "lock_key"]

log = logging.getLogger("rollback_bot.engine")

MAX_STEP_ATTEMPTS = 3


def lock_key(incident_id: int) -> int:
    """The incident's advisory lock key."""
    return 0x524F4C4C0000 + incident_id  # "ROLL" namespace


class Executor:
    """One engine's executor: the locks it holds and the models it parses ahead, by incident id."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.fences: dict[int, Fence] = {}  # incident id -> this process's lock on it (core.fencing)
        self.parsed = ParseAhead()  # incident id -> the approved backup's model, parsed ahead

    def execute(self, incident_id: int, *, actor: str = "rollback-bot") -> Incident:
        """Run the incident from its current state as far as it goes without a person. Safe to call again."""
        engine = self.engine
        lock_conn = engine.db.connect(autocommit=True)
        try:
            got = lock_conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (lock_key(incident_id),)).fetchone()
            if not got["ok"]:
                return engine.get(incident_id)  # another process is running it
            self.fences[incident_id] = Fence.take(lock_conn, key=lock_key(incident_id), incident_id=incident_id,
                                                  owner=engine.owner)
            with incident_context(f"INC-{incident_id}"):
                try:
                    # Every transaction of the steps runs with SET LOCAL lock_timeout and statement_timeout.
                    s = engine.settings
                    with step_limits(s.step_lock_timeout_seconds, s.step_statement_timeout_seconds):
                        return self._run_steps(engine.get(incident_id), actor, lock_conn)
                finally:
                    self.parsed.drop(incident_id)
        finally:
            self.fences.pop(incident_id, None)
            lock_conn.close()  # releases the advisory lock

    def fence(self, inc: Incident, what: str) -> None:
        """Right before a file operation: this process still holds the incident's lock (core.fencing)."""
        fence = self.fences.get(inc.id)
        if fence is None:
            raise LostLock(f"{inc.ref}: this process does not hold the rollback's lock; refusing {what}")
        fence.check(what)

    def _run_steps(self, inc: Incident, actor: str, lock_conn: psycopg.Connection) -> Incident:
        engine = self.engine
        incident_id = inc.id
        # Attempts by earlier runs: no state repeats within one run, so one read at the start is enough.
        with engine.db.transaction() as conn:
            attempts = repo.attempt_counts(conn, incident_id)
        while inc.state in RUNNABLE:
            state = inc.state
            step = step_for(state)
            _still_locked(lock_conn)  # a restarted PostgreSQL dropped our lock: another process may take over
            if step.capped and attempts.get(step.name, 0) >= MAX_STEP_ATTEMPTS:
                inc = self.fail_or_revert(inc, f"step '{step.name}' was interrupted {MAX_STEP_ATTEMPTS} times")
                continue
            if state in halt_watch.HELD_STATES:
                halt_watch.sweep(engine)  # clients activated or added while the halt is held are halted too
            self.parsed.start(inc, engine.registry)
            engine.fault(f"before:{state}")
            try:
                inc = step.run(engine, inc, actor)
            except (DatabaseUnavailable, psycopg.OperationalError):
                raise  # transient: leave the state as it is; the step runs again when the database is back
            except Exception as exc:  # noqa: BLE001 - every failure is journaled and handled below
                message = str(exc) if isinstance(exc, RollbackError) else f"{type(exc).__name__}: {exc}"
                log.warning("%s step %s failed: %s", inc.ref, step.name, message)
                current = engine.get(incident_id)
                if current.state != state:
                    inc = current
                    continue
                inc = self.fail_or_revert(current, message)
            engine.fault(f"after:{state}")
        return inc

    def fail_or_revert(self, inc: Incident, message: str) -> Incident:
        """A step failed: undo the swap (reverting), or fail (nothing changed), or stop (the undo failed)."""
        engine = self.engine
        with engine.db.transaction() as conn:
            inc = engine.get(inc.id, conn, lock=True)
            if inc.state in SWAP_STATES and inc.state != REVERTING:
                new = engine.move(conn, inc, REVERTING, error=message[:2000])
            elif inc.state in (APPROVED, HALTING, HALTED, MONITORING):
                new = engine.move(conn, inc, FAILED, error=message[:2000])
            elif inc.state == REVERTING:
                # Reverting itself failed: stop, keep trading halted, say what is in place; a person must look.
                new = engine.move(conn, inc, REVERT_FAILED, error=(
                    (inc.error or "") + f"; revert failed: {message}; {files_now(engine, inc)}")[:2000])
            else:  # resuming: the model is verified; retry later rather than undo a good rollback
                raise RollbackError(message)
            repo.journal(conn, incident_id=inc.id, step="error", actor="rollback-bot", at=engine.clock(),
                         outcome="failed", error=message[:2000])
        engine.publish(Event("state", new, error=message))
        return new

    def recover(self, *, actor: str = "rollback-bot (recovery)") -> list[Incident]:
        """Finish or undo every rollback left mid-way by a crash (those whose executor's lock is gone)."""
        engine = self.engine
        with engine.db.transaction() as conn:
            ids = repo.incident_ids_in(conn, RUNNABLE)
        out = []
        for incident_id in ids:
            try:
                out.append(engine.execute(incident_id, actor=actor))
            except DatabaseUnavailable:
                raise
            except RollbackError as exc:  # one stuck incident must not keep the others from recovering
                log.error("INC-%s could not be recovered: %s", incident_id, exc)
                out.append(engine.get(incident_id))
        return out


def _still_locked(lock_conn: psycopg.Connection) -> None:
    """The executor's advisory lock lives as long as its session: check the session is still there."""
    try:
        lock_conn.execute("SELECT 1")
    except psycopg.Error:
        raise DatabaseUnavailable("PostgreSQL does not answer: the connection holding this rollback's lock was"
                                  " lost; stopping here so that recovery can take over") from None
