"""The estimated loss as a live number: every figure kept, the latest on the incident, and a figure over
LOSS_ESCALATION_THRESHOLD escalates at once.

An update (``LossBook.record``: `/rollback loss`, the card's *Update loss* form, ``rollback-bot loss``, or the
P&L query of ``core.pnl``) is one transaction::

    rollback_bot.loss_estimates    a row per figure; the requester's first figure is kept as the first row
    incidents.estimated_loss       the latest figure (the card, the report and the escalation read it)
    journal step ``loss``          a person's update (the P&L query's figures are in the history only)
    audit_log                      action ``loss``
    job ``loss_recorded``          shows the update (thread reply, card) in whichever process runs the worker
    job ``escalate_now``           key ``loss``, when an open incident's figure is over the threshold
    job ``report``                 the report is rewritten, once it exists

The jobs are written with the change (an outbox), so an update made from the CLI, where no Slack app runs,
is still shown and escalated by the serving process. The escalation pages once per incident (core.escalation).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from core import repository as repo, slack_outbox
from core.engine import Engine, enqueue
from core.errors import InvalidInput, clean_text
from core.escalation import NOW_JOB
from core.incidents import Event, Incident, journal

__all__ = ["LOSS_STEP", "SHOW_JOB", "SOURCES", "LossBook", "LossEntry", "loss_history", "money", "parse_amount"]

LOSS_STEP = "loss"
SHOW_JOB = "loss_recorded"
SOURCES = ("request", "slack", "cli", "pnl_query")
MAX_AMOUNT = 1e15
_AMOUNT = re.compile(r"\$?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(k|m|bn)?", re.IGNORECASE)
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "bn": 1e9}


def parse_amount(text: str) -> float:
    """A person's figure: ``250000``, ``250,000``, ``250000.50``, ``250k``, ``1.2m``, ``2bn`` (an optional ``$``).
    Anything else, a negative figure or an absurd one is refused with a clear message."""
    raw = str(text or "").strip()
    match = _AMOUNT.fullmatch(raw.replace(" ", "").replace("_", ""))
    if match is None:
        shown = clip_input(raw)
        raise InvalidInput(f"`{shown}` is not an amount: give a non-negative number such as 250000, 250,000 or 250k.")
    value = float(match.group(1).replace(",", "") + (match.group(2) or "")) * _SCALE[(match.group(3) or "").lower()]
    return check_amount(value)


def check_amount(value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or value >= MAX_AMOUNT:
        raise InvalidInput("The estimated loss must be a non-negative number below 10^15.")
    return float(value)


def clip_input(text: str, limit: int = 40) -> str:
    text = clean_text(text, 200).replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def money(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value - round(value)) < 1e-9 else f"{value:,.2f}"


@dataclass(frozen=True)
class LossEntry:
    id: int
    incident_id: int
    amount: float
    source: str
    recorded_by: str
    recorded_at: datetime
    detail: dict


def loss_history(conn: psycopg.Connection, incident_id: int) -> list[LossEntry]:
    """Every figure of an incident's estimated loss, oldest first."""
    return [LossEntry(**r) for r in repo.loss_rows(conn, incident_id)]


@dataclass(frozen=True)
class LossUpdate:
    incident: Incident        # after the update
    entry: LossEntry
    previous: float | None
    escalating: bool          # over the threshold on an open incident: the escalation is queued


class LossBook:
    """Records loss figures (see the module's docstring); ``register`` installs the job that shows them."""

    def __init__(self, engine: Engine, *, loss_threshold: float | None) -> None:
        self.engine = engine
        self.db = engine.db
        self.threshold = loss_threshold

    def history(self, incident_id: int) -> list[LossEntry]:
        with self.db.transaction() as conn:
            return loss_history(conn, incident_id)

    def record(self, *, incident_id: int, amount: float, by: str, source: str, detail: dict | None = None,
               only_if_changed: bool = False) -> LossUpdate | None:
        """Record ``amount`` as the incident's latest estimated loss. With ``only_if_changed`` (the P&L query),
        a figure equal to the latest is not recorded again (returns None)."""
        if source not in SOURCES:
            raise ValueError(f"unknown loss source {source!r}")
        amount = check_amount(amount)
        by = clean_text(by, 200)
        if not by:
            raise InvalidInput("Say who gives the figure (e.g. --by NAME): loss updates are audited by name.")
        now = self.engine.clock()
        with self.db.transaction() as conn:
            inc = self.engine.get(incident_id, conn, lock=True)
            previous = inc.estimated_loss
            if only_if_changed and previous is not None and previous == amount:
                return None
            if previous is not None and not repo.has_loss_rows(conn, inc.id):
                self._insert(conn, inc.id, previous, "request", inc.requested_by, inc.created_at, {})
            entry = self._insert(conn, inc.id, amount, source, by, now, detail or {})
            repo.set_estimated_loss(conn, inc.id, amount)
            new = self.engine.get(inc.id, conn)
            shown = {"amount": amount, "previous": previous, "source": source, "by": by, "entry_id": entry.id}
            if source != "pnl_query":
                journal(conn, incident_id=inc.id, step=LOSS_STEP, actor=by, at=now, detail=shown)
            self.engine.audit(conn, actor=by, action="loss", outcome="ok", incident_id=inc.id, amount=amount,
                              previous=previous, source=source)
            escalating = self.threshold is not None and amount > self.threshold and new.is_open
            if escalating:
                # Its own dedupe key per figure: a figure corrected back under the threshold before the job ran
                # must not use up a later crossing. The page itself is claimed once per incident.
                enqueue(conn, NOW_JOB, incident_id=inc.id, payload={"key": "loss"}, run_at=now,
                        dedupe_key=f"escalate-now:{inc.id}:loss:{entry.id}")
            queued = slack_outbox.queue_event(self.engine, conn, new, LOSS_STEP, {**shown, "escalating": escalating})
            enqueue(conn, SHOW_JOB, incident_id=inc.id, payload={**shown, "escalating": escalating, "queued": queued},
                    run_at=now, dedupe_key=f"loss-shown:{entry.id}")
            repo.queue_report_refresh(conn, inc.id, why=f"loss:{entry.id}")  # the report shows the figure
        return LossUpdate(new, entry, previous, escalating)

    @staticmethod
    def _insert(conn: psycopg.Connection, incident_id: int, amount: float, source: str, by: str, at: datetime,
                detail: dict) -> LossEntry:
        return LossEntry(**repo.insert_loss(conn, incident_id=incident_id, amount=amount, source=source, by=by,
                                            at=at, detail=detail))

    # -- showing it

    def register(self, worker: Any) -> None:
        worker.on(SHOW_JOB, self._show)

    def _show(self, job: dict) -> None:
        """Tell the listeners about a recorded figure (its Slack reply and card update were queued with it, when
        the recording engine queues Slack updates: core.slack_outbox)."""
        detail = dict(job["payload"])
        queued = bool(detail.pop("queued", False))
        self.engine.publish(Event("step", self.engine.get(job["incident_id"]), LOSS_STEP, detail, queued=queued))

