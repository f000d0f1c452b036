"""The P&L query (PNL_QUERY), polled while an incident is open and recorded in its loss history.

PNL_QUERY is SQL returning one number: the platform's P&L since the incident opened, negative for a loss. It may
use ``%(start)s`` (the incident's ``created_at``, a timestamptz); a literal ``%`` is written ``%%``. It runs on a
connection of its own, in a READ ONLY transaction with ``statement_timeout`` = PNL_QUERY_TIMEOUT_SECONDS, as one
prepared statement (a second statement is refused by PostgreSQL), and is rolled back. The loss recorded is
``max(0, -P&L)`` (the P&L itself is kept in the entry's detail), only when it differs from the latest figure.

Polls are jobs (``loss_poll``, dedupe key ``loss-poll:{id}:{n}``: the n-th slot of PNL_POLL_MINUTES after the
incident opened), so two bot processes poll once. The first is queued in the transaction of the incident's state
change (``follow_up``, an outbox writer: ``core.outbox``) and each poll queues the next, before its query runs,
while the incident is open: a failing query or a dying process never ends the chain, and no sweep is needed. A
failing query is reported once per incident (a ``pnl_query`` step, failed, and a warning) and polled again at
the next slot.
"""

from __future__ import annotations

import decimal
import logging
import math
from datetime import datetime, timedelta
from typing import Any

import psycopg

from core import slack_outbox
from core.engine import Engine, enqueue
from core.escalation import claim_once
from core.incidents import Event, Incident, journal
from core.loss import LossBook, LossUpdate

__all__ = ["POLL_JOB", "PnlPoller", "PnlQueryFailed", "run_pnl_query"]

log = logging.getLogger("rollback_bot.pnl")

POLL_JOB = "loss_poll"


class PnlQueryFailed(Exception):
    """PNL_QUERY did not give one finite number."""


def run_pnl_query(conn: psycopg.Connection, query: str, *, start: datetime, timeout_seconds: float) -> float:
    """Run ``query`` read-only with a statement timeout, on ``conn`` (not autocommit), and roll back."""
    try:
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute("SELECT set_config('statement_timeout', %s, true)", (str(max(1, int(timeout_seconds * 1000))),))
        params = {"start": start} if "%(start)s" in query else None
        cur = conn.execute(query, params, prepare=True)
        columns = len(cur.description or ())
        rows = cur.fetchall() if columns else []
    except psycopg.Error as exc:
        raise PnlQueryFailed(f"PNL_QUERY failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}") \
            from None
    finally:
        conn.rollback()
    if len(rows) != 1 or columns != 1:
        raise PnlQueryFailed(f"PNL_QUERY must return one row of one column; it returned {len(rows)} row(s)"
                             f" of {columns} column(s)")
    value = next(iter(rows[0].values())) if isinstance(rows[0], dict) else rows[0][0]
    if isinstance(value, bool) or not isinstance(value, (int, float, decimal.Decimal)):
        raise PnlQueryFailed(f"PNL_QUERY must return a number; it returned {type(value).__name__}"
                             + (" (NULL)" if value is None else ""))
    number = float(value)
    if not math.isfinite(number):
        raise PnlQueryFailed(f"PNL_QUERY returned {number}, not a finite number")
    return number


class PnlPoller:
    def __init__(self, engine: Engine, book: LossBook, *, query: str, every_minutes: float,
                 timeout_seconds: float) -> None:
        self.engine = engine
        self.db = engine.db
        self.book = book
        self.query = query
        self.every = timedelta(minutes=every_minutes)
        self.timeout = timeout_seconds

    def register(self, worker: Any) -> None:
        """Install the poll job's handler. Polls start in the transaction of an incident's state change
        (``follow_up``, added to the engine's outbox writers by bot/compose.py) and each poll queues the next one
        before it runs the query, so neither a listener nor a sweep keeps them going."""
        worker.on(POLL_JOB, self._poll_job)

    # -- scheduling

    def _slot(self, inc: Incident, at: datetime) -> int:
        return max(0, math.floor((at - inc.created_at) / self.every))

    def schedule(self, conn: psycopg.Connection, inc: Incident, slot: int) -> None:
        enqueue(conn, POLL_JOB, incident_id=inc.id, payload={"slot": slot},
                run_at=inc.created_at + slot * self.every, dedupe_key=f"loss-poll:{inc.id}:{slot}")

    def follow_up(self, conn: psycopg.Connection, inc: Incident) -> None:
        """Outbox writer (core.outbox): an open rollback or halt polls now, in its state change's transaction."""
        if inc.is_open and inc.kind in ("rollback", "halt"):
            self.schedule(conn, inc, self._slot(inc, self.engine.clock()))

    # -- polling

    def poll(self, inc: Incident) -> LossUpdate | None:
        """Run the query for ``inc`` now and record the loss if it changed."""
        conn = self.db.connect(autocommit=False)
        try:
            pnl = run_pnl_query(conn, self.query, start=inc.created_at, timeout_seconds=self.timeout)
        finally:
            conn.close()
        return self.book.record(incident_id=inc.id, amount=max(0.0, -pnl), by="PNL_QUERY", source="pnl_query",
                                detail={"pnl": pnl}, only_if_changed=True)

    def _poll_job(self, job: dict) -> None:
        with self.db.transaction() as conn:  # the next poll first: a query or a process that fails keeps the chain
            inc = self.engine.get(job["incident_id"], conn)
            if not inc.is_open:
                return
            slot = max(int(job["payload"].get("slot", 0)), self._slot(inc, self.engine.clock()))
            self.schedule(conn, inc, slot + 1)
        try:
            self.poll(inc)
        except PnlQueryFailed as exc:
            self._report_failure(inc, str(exc))

    def _report_failure(self, inc: Incident, error: str) -> None:
        log.warning("%s: %s", inc.ref, error)
        now = self.engine.clock()
        with self.db.transaction() as conn:
            if not claim_once(conn, f"pnl-failed:{inc.id}", incident_id=inc.id, at=now, detail={"error": error}):
                return  # told once already
            journal(conn, incident_id=inc.id, step="pnl_query", actor="rollback-bot", at=now, outcome="failed",
                    error=error)
            self.engine.audit(conn, actor="rollback-bot", action="pnl_query", outcome="failed", incident_id=inc.id,
                              error=error[:500])
            warning = (f"{error}. The estimated loss is not updated from the P&L until it works; `/rollback loss`"
                       " still updates it.")
            queued = slack_outbox.queue_event(self.engine, conn, self.engine.get(inc.id, conn), None, error=warning)
        self.engine.publish(Event("warning", self.engine.get(inc.id), error=warning, queued=queued))
