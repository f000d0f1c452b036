"""The SQL on the bot's own tables (schema ``rollback_bot``), one module per group of tables; every other module
calls these functions instead of writing SQL on them (tests/project/test_architecture.py keeps it so):

    incidents   ``incidents`` rows: reads, THE state change (``move``), a new incident, the other columns
    plans       the incident's ``plan`` JSON (evidence, diagnostics, early halt, monitoring, the watch)
    steplog     the journal, ``steps``
    auditlog    the audit log, ``audit_log``
    jobs        queueing work in ``jobs`` (core.worker claims it; core.outbox writes a state's follow-ups)
    losses      ``loss_estimates``, every figure of an incident's estimated loss
    pages       ``pages`` and ``page_log``
    followups   ``followups``, ``prevention_measures`` and ``followup_boards``

Every function works in the caller's transaction (``conn``): a state change, its journal row, its audit row
and the jobs it implies commit together or not at all; the caller keeps its transaction boundaries. Nothing here
decides anything; the rules (who may approve, which move is allowed) are in ``core.approval``,
``core.incidents`` and ``core.runbook``.

``from core import repository as repo`` and ``from core.repository import move, journal, …`` reach every
function through this package.
"""

from __future__ import annotations

from core.repository.auditlog import audit
from core.repository.incidents import (
    FollowUps,
    append_root_cause,
    approved_not_started,
    expired_requests,
    find,
    get,
    incident_ids_in,
    incidents_in,
    insert_incident,
    later_approved_rollback,
    list_incidents,
    move,
    needing_attention,
    no_follow_ups,
    open_fix,
    open_incident_ids,
    open_incident_rows,
    open_incidents_among,
    open_rollback_for,
    record_early_halt,
    rollbacks_that_swapped,
    set_estimated_loss,
    set_message,
    take_over,
)
from core.repository.jobs import JOBS_CHANNEL, enqueue, queue_report_refresh, report_written
from core.repository.losses import has_loss_rows, insert_loss, loss_rows
from core.repository.pages import (
    acknowledge_page,
    claim_emergency_page,
    close_page,
    insert_page,
    log_page,
    page_log_rows,
    page_row,
    pages_without_pending_job,
    set_pagerduty_error,
    set_pagerduty_sent,
    unclaim_emergency_page,
)
from core.repository.plans import locked_plan, merge_plan, merge_plan_touched, set_in_plan
from core.repository.steplog import (
    attempt_counts,
    finish_step,
    has_step,
    journal,
    notify_journaled,
    start_step,
    step_succeeded,
    steps,
    verified_prediction_day,
)

__all__ = [
    "FollowUps",
    "JOBS_CHANNEL",
    "acknowledge_page",
    "append_root_cause",
    "approved_not_started",
    "attempt_counts",
    "audit",
    "claim_emergency_page",
    "close_page",
    "enqueue",
    "expired_requests",
    "find",
    "finish_step",
    "get",
    "has_loss_rows",
    "has_step",
    "incident_ids_in",
    "incidents_in",
    "insert_incident",
    "insert_loss",
    "insert_page",
    "journal",
    "later_approved_rollback",
    "list_incidents",
    "locked_plan",
    "log_page",
    "loss_rows",
    "merge_plan",
    "merge_plan_touched",
    "move",
    "needing_attention",
    "no_follow_ups",
    "notify_journaled",
    "open_fix",
    "open_incident_ids",
    "open_incident_rows",
    "open_incidents_among",
    "open_rollback_for",
    "page_log_rows",
    "page_row",
    "pages_without_pending_job",
    "queue_report_refresh",
    "record_early_halt",
    "report_written",
    "rollbacks_that_swapped",
    "set_estimated_loss",
    "set_in_plan",
    "set_message",
    "set_pagerduty_error",
    "set_pagerduty_sent",
    "start_step",
    "step_succeeded",
    "steps",
    "take_over",
    "unclaim_emergency_page",
    "verified_prediction_day",
]
