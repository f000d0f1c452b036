"""Follow-up items: what each rollback gets (``KINDS``, ``plan_for``), the rows as data, and their SQL.

The service that creates, assigns, completes and reminds is ``core.followups.FollowUps``; this module is what it
and the readers (the report, the 24-hour watch) share. Jobs are queued here so that the outbox writer
(``queue_creation``) and the reminders use one name and one dedupe key each.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from core import repository as repo
from core.engine import enqueue
from core.errors import RollbackError
from core.incidents import Incident

__all__ = [
    "COLUMNS",
    "CREATE_JOB",
    "DUE_JOB",
    "KINDS",
    "NOT_ALLOWED",
    "REMIND_EVERY",
    "TRIGGER_STATES",
    "FollowUp",
    "PreventionMeasure",
    "UnknownFollowUp",
    "due_after",
    "for_incident",
    "locked",
    "owns",
    "plan_for",
    "prevention_measures",
    "queue_creation",
    "schedule_reminder",
]

CREATE_JOB = "followups"
DUE_JOB = "followup_due"
REMIND_EVERY = timedelta(hours=24)
# A rollback in one of these states has finished its runbook run: its follow-ups are due.
TRIGGER_STATES = frozenset({"monitoring", "verified", "failed", "revert_failed", "needs_attention"})
_FAILED_STATES = frozenset({"failed", "revert_failed"})

#: (kind, title template, due after the incident opened, also after a failed rollback)
KINDS: tuple[tuple[str, str, timedelta, bool], ...] = (
    ("root_cause", "Investigate the root cause of {model}'s failure", timedelta(hours=2), True),
    ("monitoring", "Enhanced monitoring of {target} for 24 hours (IC, error logs, trades)", timedelta(hours=24),
     False),
    ("retrain", "Retrain {model} on recent data and evaluate it before it is redeployed", timedelta(days=3), True),
    ("checklist", "Update the deployment checklist with what {ref} taught", timedelta(days=7), True),
    ("prevention", "Identify prevention measures (write them into the report's Prevention section)",
     timedelta(days=7), True),
)
NOT_ALLOWED = ("Only the incident's people (who requested or approved it, the owners of its follow-ups), operators "
               "and approvers may act on its follow-ups.")
COLUMNS = repo.FOLLOWUP_COLUMNS


class UnknownFollowUp(RollbackError):
    """No follow-up with that id."""


@dataclass(frozen=True)
class FollowUp:
    id: int
    incident_id: int
    kind: str
    title: str
    owner: str | None
    assigned_by: str | None
    assigned_at: datetime | None
    due_at: datetime
    state: str  # open | done
    completed_by: str | None
    completed_at: datetime | None
    reminded_at: datetime | None
    reminders: int
    created_at: datetime

    @property
    def done(self) -> bool:
        return self.state == "done"

    def overdue(self, now: datetime) -> bool:
        return not self.done and now >= self.due_at


@dataclass(frozen=True)
class PreventionMeasure:
    id: int
    incident_id: int
    text: str
    added_by: str
    added_at: datetime


def due_after(settings: Any) -> dict[str, timedelta]:
    """Each kind's delay after the incident opened, from the settings ``followup_{kind}_hours`` (every kind has
    one: core/settings.py; their defaults are ``KINDS``')."""
    hours = {"root_cause": settings.followup_root_cause_hours, "monitoring": settings.followup_monitoring_hours,
             "retrain": settings.followup_retrain_hours, "checklist": settings.followup_checklist_hours,
             "prevention": settings.followup_prevention_hours}
    return {kind: timedelta(hours=float(hours[kind])) for kind, *_ in KINDS}


def plan_for(incident: Incident, due: dict[str, timedelta] | None = None) -> list[tuple[str, str, datetime]]:
    """The follow-ups an incident gets: (kind, title, due); ``due``: each kind's delay (``due_after``), else the
    defaults."""
    failed = incident.state in _FAILED_STATES
    names = {"model": incident.model_name or "the model", "target": incident.target_backup or "the restored model",
             "ref": incident.ref}
    due = due or {}
    return [(kind, title.format(**names), incident.created_at + due.get(kind, after))
            for kind, title, after, after_failure in KINDS if after_failure or not failed]


# ------------------------------------------------------------------------------------------- SQL


def for_incident(conn: psycopg.Connection, incident_id: int) -> list[FollowUp]:
    return [FollowUp(**r) for r in repo.followup_rows(conn, incident_id)]


def prevention_measures(conn: psycopg.Connection, incident_id: int) -> list[PreventionMeasure]:
    return [PreventionMeasure(**r) for r in repo.prevention_rows(conn, incident_id)]


def locked(conn: psycopg.Connection, followup_id: int) -> FollowUp:
    """The follow-up, locked FOR UPDATE until the transaction ends; UnknownFollowUp if none."""
    row = repo.followup_row(conn, followup_id, lock=True)
    if row is None:
        raise UnknownFollowUp(f"There is no follow-up #{followup_id}.")
    return FollowUp(**row)



def owns(conn: psycopg.Connection, incident_id: int, user: str) -> bool:
    """Whether ``user`` owns one of the incident's follow-ups."""
    return bool(user) and repo.owns_followup(conn, incident_id, user)


def queue_creation(conn: psycopg.Connection, inc: Incident) -> None:
    """The engine's outbox writer: a rollback that reached a state where its runbook run is over gets its
    follow-ups queued in the same transaction."""
    if inc.kind == "rollback" and inc.state in TRIGGER_STATES:
        enqueue(conn, CREATE_JOB, incident_id=inc.id, dedupe_key=f"followups:{inc.id}")


def schedule_reminder(conn: psycopg.Connection, item: FollowUp, n: int, run_at: datetime) -> None:
    enqueue(conn, DUE_JOB, incident_id=item.incident_id, payload={"followup": item.id}, run_at=run_at,
            dedupe_key=f"followup-due:{item.id}:{n}")
