"""The Slack updates of a state change, queued in its transaction (the transactional outbox, core.outbox).

Every state change (``core.repository.move``, ``insert_incident``) queues, in its own transaction, jobs of kind
``slack`` for the incident, in this order:

    step        the reply of the runbook step journaled in the same transaction (a move that carries it:
                ``Engine.move(..., step=(name, detail, error))``: halt, verify_halt, emergency_backup, restore,
                record, verify, resume, revert, and the halt watch's "not effective")
    state       the thread reply of the new state (if it has one) and the card updated in place
    milestone   the stakeholders' Slack message of a milestone (core.milestones), when the state marks one

and, for a change that shows on the card without a state change (a watchdog proposal taken over, core.access):

    card        the card updated in place (``queue_card``)

and, for a step journaled in a transaction of its own without a state change (``queue_event``, in that
transaction; the caller publishes its event with ``queued=True``):

    step        the diagnostics, the evidence, an escalation page or missed target, an acknowledgement, a loss
                figure, the early halt (``halt_now``), the halt sweep; shown by the step's
                ``SlackProgress.on_step`` handler when it has one, else as a plain step reply
    warning     the P&L query's warning

Each job carries the incident as it was in that transaction (``snapshot``), so a reply delivered later still
says what happened then; the card always shows the incident as it is now. The jobs are delivered by whichever
process has a Slack client (``serve``/``work``: the Slack lane, handlers/slack_delivery.py); a process without
one (the break-glass CLI, a bare worker) leaves them queued, and nothing is lost when a process dies between
the commit and any listener. An incident's ``slack`` jobs are claimed in order (``core.worker``'s ``ordered``
kinds): only its oldest undone one is claimable, even while another process holds it, so the replies of one
incident appear in the order their transactions committed (a move locks the incident's row), each once. A
rollback that has no card yet (break-glass) gets it posted by its first delivery.

What stays on in-process listeners (handlers/progress.py): live displays that only make sense in the process
doing the work (the halt watch's running trade counts, the retrain's live output), and the report upload (a file
upload, which a retried job would repeat).

Queued only when INCIDENT_CHANNEL is set: without it no process could post them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, fields
from datetime import datetime
from typing import Any

import psycopg

from core.db import Database
from core.incidents import Event, Incident
from core.milestones import milestone_of
from core import repository as repo
from core.repository import enqueue

__all__ = ["KIND", "incident_of", "install", "last_error", "queue_card", "queue_event", "queue_state", "queue_step",
           "snapshot", "undelivered", "wait_delivered"]

KIND = "slack"
_DATETIMES = [f.name for f in fields(Incident) if "datetime" in str(f.type)]


def snapshot(inc: Incident) -> dict[str, Any]:
    """The incident as JSON (its datetimes as ISO strings), for a job's payload."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(inc).items()}


def incident_of(snap: dict[str, Any]) -> Incident:
    return Incident(**{k: (datetime.fromisoformat(v) if k in _DATETIMES and isinstance(v, str) else v)
                       for k, v in snap.items()})


def queue_step(conn: psycopg.Connection, inc: Incident, step: str, detail: dict, error: str | None) -> None:
    """The reply of a runbook step journaled with this state change (an ``Engine.step_follow_ups`` writer)."""
    enqueue(conn, KIND, incident_id=inc.id, payload={
        "what": "step", "step": step, "detail": detail or {}, "error": error, "incident": snapshot(inc)})


def queue_event(engine: Any, conn: psycopg.Connection, inc: Incident, step: str | None, detail: dict | None = None,
                error: str | None = None) -> bool:
    """The Slack update of something journaled without a state change (diagnostics, evidence, a page, an
    acknowledgement, a loss figure, the early halt, the halt sweep; ``step=None``: a warning), queued in the
    transaction that journals it, when this engine queues Slack updates. True when queued: the caller then
    publishes its event with ``queued=True`` so that the in-process listener leaves it to the Slack lane."""
    if not queues_slack(engine):
        return False
    if step is None:
        enqueue(conn, KIND, incident_id=inc.id, payload={"what": "warning", "error": error, "incident": snapshot(inc)})
    else:
        queue_step(conn, inc, step, detail or {}, error)
    return True


def queue_state(conn: psycopg.Connection, inc: Incident) -> None:
    """The state's reply and card update, then the milestone's stakeholder message (an ``engine.follow_ups``
    writer)."""
    enqueue(conn, KIND, incident_id=inc.id, payload={"what": "state", "incident": snapshot(inc)})
    milestone = milestone_of(Event("state", inc))
    if milestone is not None:
        enqueue(conn, KIND, incident_id=inc.id,
                payload={"what": "milestone", "milestone": milestone, "incident": snapshot(inc)})


def queue_card(engine: Any, conn: psycopg.Connection, inc: Incident) -> None:
    """A change that is not a state change but shows on the card (a watchdog proposal taken over): the card
    updated in place, in order with the incident's other updates (when this engine queues Slack updates)."""
    if queues_slack(engine):
        enqueue(conn, KIND, incident_id=inc.id, payload={"what": "card", "incident": snapshot(inc)})


def queues_slack(engine: Any) -> bool:
    """This engine queues Slack updates (``install`` added the writers: there is an incident channel)."""
    return queue_state in engine.follow_ups


def install(engine: Any, *, incident_channel: str | None) -> None:
    """Add the writers to the engine (when there is an incident channel to post in)."""
    if not incident_channel:
        return
    engine.step_follow_ups.append(queue_step)
    engine.follow_ups.append(queue_state)


def undelivered(db: Database, incident_id: int | None = None) -> int:
    """How many Slack updates (of one incident, or of all) are not delivered yet."""
    with db.transaction() as conn:
        return repo.count_undone(conn, KIND, incident_id)


def last_error(db: Database, job_id: int) -> str:
    """Why a job failed last (for a person waiting on it)."""
    with db.transaction() as conn:
        error = repo.job_error(conn, job_id)
    return (error or "no answer")[:300]


def wait_delivered(db: Database, timeout: float, incident_id: int | None = None, *, every: float = 0.02) -> bool:
    """Wait until the Slack updates are delivered (tests, the demo); False when ``timeout`` passed first."""
    deadline = time.monotonic() + timeout
    while undelivered(db, incident_id):
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
    return True
