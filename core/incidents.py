"""The incident model: states, the moves allowed between them, and what is read from the journal.

States of a rollback incident::

    requested → approved → halting → halted → backing_up → restoring → recording → verifying
              ↘ denied    ↘ failed (pre-flight; nothing changed)                      │
              ↘ cancelled                                                             ├→ resuming → monitoring → resolved
                                                                                      └→ verified (keep halted) → resuming
    any swap state (backing_up … verifying) → reverting → failed   (original model back, trading stays halted)
                                                            ↘ revert_failed → failed
    revert_failed: the original files could not all be put back (retried with back-off); the production files are
    mixed, trading stays halted, the incident is open and escalated. ``/rollback resume`` closes it (→ failed)
    once the files match the production row again, or when two approvers override (core.resume).

A resume override (`/rollback resume` refused on production files that do not match their production row)
is an incident of kind ``resume``: requested → approved (a second approver) → resolved | cancelled.

A rollback paused by a halt that is not working:

    halted → halt_not_effective (trades still coming after HALT_QUIET_TIMEOUT_SECONDS; paged; trading stays
             halted) → backing_up (an approver other than the requester: "Proceed anyway") | failed ("Abandon")

When the rollback does not fix it (``core.aftercare``)::

    monitoring / resolved → needs_attention → resolved    (an approver accepts, with a written reason)
                                            → superseded  (a follow-up rollback of the same model was approved)

``needs_attention`` is open: monitoring found trouble (IC below the threshold on new data, error lines, trades
while halted), so the incident never resolves by itself; a resolved incident whose 24-hour watch finds trouble
is reopened as ``needs_attention``.

A trading-only incident (`/rollback halt`) goes halting → halted → resolved (on resume).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg

from core.errors import Conflict, InvalidTransition

REQUESTED, APPROVED, HALTING, HALTED = "requested", "approved", "halting", "halted"
BACKING_UP, RESTORING, RECORDING, VERIFYING = "backing_up", "restoring", "recording", "verifying"
VERIFIED, RESUMING, MONITORING, RESOLVED = "verified", "resuming", "monitoring", "resolved"
DENIED, FAILED, CANCELLED, REVERTING = "denied", "failed", "cancelled", "reverting"
REVERT_FAILED = "revert_failed"
HALT_NOT_EFFECTIVE = "halt_not_effective"
NEEDS_ATTENTION, SUPERSEDED = "needs_attention", "superseded"

TRANSITIONS: dict[str, frozenset[str]] = {
    REQUESTED: frozenset({APPROVED, DENIED, CANCELLED}),
    APPROVED: frozenset({HALTING, FAILED, CANCELLED}),
    HALTING: frozenset({HALTED, FAILED}),
    HALTED: frozenset({BACKING_UP, FAILED, HALT_NOT_EFFECTIVE}),
    BACKING_UP: frozenset({RESTORING, REVERTING}),
    RESTORING: frozenset({RECORDING, REVERTING}),
    RECORDING: frozenset({VERIFYING, REVERTING}),
    VERIFYING: frozenset({RESUMING, VERIFIED, REVERTING}),
    VERIFIED: frozenset({RESUMING}),
    RESUMING: frozenset({MONITORING}),
    MONITORING: frozenset({RESOLVED, FAILED, NEEDS_ATTENTION}),
    REVERTING: frozenset({FAILED, REVERT_FAILED}),
    RESOLVED: frozenset({NEEDS_ATTENTION}),  # the 24-hour watch found trouble after the incident resolved
    DENIED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
    REVERT_FAILED: frozenset({FAILED}),
    # Open, trading stays halted, nothing runs it forward: a person proceeds anyway or abandons.
    HALT_NOT_EFFECTIVE: frozenset({BACKING_UP, FAILED}),
    NEEDS_ATTENTION: frozenset({RESOLVED, SUPERSEDED}),
    SUPERSEDED: frozenset(),
}
# Trading-only incidents (`/rollback halt`): halting → halted → resolved (on resume).
HALT_TRANSITIONS: dict[str, frozenset[str]] = {HALTING: frozenset({HALTED}), HALTED: frozenset({RESOLVED})}
# Quick fixes (core.fixes): a second person approves, then the fix runs once.
FIX_TRANSITIONS: dict[str, frozenset[str]] = {
    REQUESTED: frozenset({APPROVED, DENIED, CANCELLED}),
    APPROVED: frozenset({RESOLVED, FAILED}),
}
# A resume override (core.resume): a second approver confirms, then it is used once (resolved) or cancelled.
RESUME_TRANSITIONS: dict[str, frozenset[str]] = {
    REQUESTED: frozenset({APPROVED, DENIED, CANCELLED}),
    APPROVED: frozenset({RESOLVED, CANCELLED}),
}
# Each incident kind's moves.
TRANSITIONS_OF_KIND: dict[str, dict[str, frozenset[str]]] = {
    "rollback": TRANSITIONS, "halt": HALT_TRANSITIONS, "fix": FIX_TRANSITIONS, "resume": RESUME_TRANSITIONS,
}
CLOSED = frozenset({RESOLVED, DENIED, FAILED, CANCELLED, SUPERSEDED})
# States in which the production files or the deployment log may differ from both "before" and "after".
SWAP_STATES = frozenset({BACKING_UP, RESTORING, RECORDING, VERIFYING, REVERTING})
# Open states in which the production files are known to be mixed: trading stays halted, a person must look.
FILES_MIXED = frozenset({REVERT_FAILED})
# States the executor drives forward without a person.
RUNNABLE = frozenset({APPROVED, HALTING, HALTED, BACKING_UP, RESTORING, RECORDING, VERIFYING, RESUMING, REVERTING})
# The step each of these states runs, and its name: core.runbook.steps (RUNBOOK, STEP_OF_STATE).

# The runbook's recovery timeline (minutes after the incident opened): the one place its targets are written.
RUNBOOK_TARGETS = {"halted": 2, "rolled_back": 5, "verified": 7, "resumed": 10,
                   "stable": 30, "root_cause": 120, "watched": 24 * 60}


def already_decided(inc: Incident) -> Conflict:
    """The answer to a second approval, denial or click: who got there first."""
    who = inc.approved_by or inc.decided_by
    return Conflict(f"{inc.ref} is already {inc.state}" + (f" (by {who})." if who else "."))


def check_transition(current: str, new: str, kind: str = "rollback") -> None:
    table = TRANSITIONS_OF_KIND.get(kind, {})  # an unknown kind moves nowhere (fail closed)
    if new not in table.get(current, frozenset()):
        raise InvalidTransition(f"An incident in state '{current}' cannot move to '{new}'.")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(at: datetime) -> datetime:
    """The same instant in UTC (a connection's TimeZone setting must never change a report or a file name)."""
    return at.astimezone(timezone.utc) if at.tzinfo else at.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Incident:
    id: int
    kind: str
    model_name: str | None
    target_backup: str | None
    from_version: str | None
    state: str
    reason: str
    severity: str
    estimated_loss: float | None
    keep_halted: bool
    requested_by: str
    approved_by: str | None
    decided_by: str | None
    decision_note: str | None
    source: str
    channel: str | None
    message_ts: str | None
    thread_ts: str | None
    emergency_backup: str | None
    target_sha256: str | None
    deployed_at: datetime | None
    previous_rows: Any
    plan: dict
    error: str | None
    root_cause: str | None
    created_at: datetime
    approved_at: datetime | None
    expires_at: datetime | None
    halted_at: datetime | None
    resumed_at: datetime | None
    resolved_at: datetime | None
    updated_at: datetime

    @property
    def ref(self) -> str:
        return f"INC-{self.id}"

    @property
    def is_open(self) -> bool:
        return self.state not in CLOSED


@dataclass(frozen=True)
class Step:
    id: int
    incident_id: int
    step: str
    actor: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    detail: dict
    error: str | None


@dataclass(frozen=True)
class PreflightReport:
    model: str
    backup: str
    sha256: str
    training_date: str
    spearman_ic: float
    sharpe_ratio: float
    features: list[str]
    prediction_day: str | None
    prediction_rows: int
    checks: list[str]


class Event:
    """What the engine tells the outside world (Slack progress, notifications). Plain values only."""

    def __init__(self, kind: str, incident: Incident, step: str | None = None, detail: dict | None = None,
                 error: str | None = None, *, queued: bool = False) -> None:
        self.kind = kind  # "state" | "step" | "warning"
        self.incident = incident
        self.step = step
        self.detail = detail or {}
        self.error = error
        # A step event whose announcement was queued with its state change (``Engine.move(..., step=...)``,
        # core.slack_outbox): listeners that show it in Slack leave it to that job.
        self.queued = queued

    @property
    def resumed_on_restored(self) -> bool:
        """Trading resumed on a restored model: a rollback entered ``monitoring`` (monitoring and the 24-hour
        watch start here)."""
        inc = self.incident
        return self.kind == "state" and inc.kind == "rollback" and inc.state == "monitoring"


Listener = Callable[[Event], None]


def journal(conn: psycopg.Connection, **row: Any) -> None:
    """Add a finished step to an incident's journal, in the caller's transaction (``core.repository.journal``)."""
    from core.repository import journal as write

    write(conn, **row)


def audit(conn: psycopg.Connection, **row: Any) -> None:
    """One row of the audit log, in the caller's transaction (``core.repository.audit``)."""
    from core.repository import audit as write

    write(conn, **row)
