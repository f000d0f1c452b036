"""The SQL on the bot's own tables (schema ``rollback_bot``), one module per group of tables; every other module
calls these functions instead of writing SQL on them (tests/project/test_architecture.py keeps it so):

    incidents   ``incidents`` rows: reads, THE state change (``move``), a new incident, the other columns
    plans       the incident's ``plan`` JSON (evidence, diagnostics, early halt, monitoring, the watch)
    steplog     the journal, ``steps``
    auditlog    the audit log, ``audit_log``
    jobs        queueing work in ``jobs``, once-markers (core.worker claims jobs; core.outbox writes a state's
                follow-ups)
    losses      ``loss_estimates``, every figure of an incident's estimated loss
    pages       ``pages`` and ``page_log``
    followups   ``followups``, ``prevention_measures`` and ``followup_boards``
    trading     the halt's records: ``trading_halts``, ``halt_holders``, ``trading_state``, the saved settings' count
    ratelimit   ``command_uses`` (heavy commands per person and minute)
    doctor      ``doctor_results``
    fences      ``executor_fences`` (each rollback's fencing token)
    deliveries  ``deliveries`` (each Slack request once) and ``home_viewers``

The few statements still outside (the worker's job claims, the outbox, two periodic sweeps, the halt's
``client_settings`` statements joined to its saved copy) are named, with why, in that test.

Every function works in the caller's transaction (``conn``): a state change, its journal row, its audit row
and the jobs it implies commit together or not at all; the caller keeps its transaction boundaries. Nothing here
decides anything; the rules (who may approve, which move is allowed) are in ``core.approval``,
``core.incidents`` and ``core.runbook``.

``from core import repository as repo`` and ``from core.repository import move, journal, …`` reach every
function through this package.
"""

from __future__ import annotations

from core.repository.auditlog import audit, audit_returning_id, mark_audit_failed, recent_audit_of_model
from core.repository.deliveries import claim_delivery_key, home_viewers_within, record_home_viewer
from core.repository.doctor import insert_doctor_run, latest_doctor_run
from core.repository.fences import fence_state, take_fence_token
from core.repository.followups import (
    FOLLOWUP_COLUMNS,
    assign_followup,
    claim_followup_board,
    complete_followup,
    complete_open_followup_of_kind,
    followup_board,
    followup_row,
    followup_rows,
    insert_followup,
    insert_prevention,
    locked_reminded_at,
    mark_reminded,
    open_followup_rows,
    open_followup_rows_owned_by,
    owns_followup,
    prevention_rows,
    release_followup_board,
    set_followup_board,
    unmark_reminded,
)
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
from core.repository.jobs import (
    JOBS_CHANNEL,
    claim_marker,
    count_undone,
    enqueue,
    extend_lease,
    finish_job,
    job_error,
    lease_job,
    next_due_job,
    queue_report_refresh,
    release_job,
    release_marker,
    report_written,
    undone_jobs,
)
from core.repository.losses import has_loss_rows, insert_loss, loss_rows
from core.repository.pages import (
    acknowledge_page,
    claim_emergency_page,
    close_page,
    insert_page,
    log_page,
    page_log_rows,
    page_row,
    set_pagerduty_error,
    set_pagerduty_sent,
    unclaim_emergency_page,
)
from core.repository.plans import locked_plan, merge_plan, merge_plan_touched, set_in_plan
from core.repository.ratelimit import command_uses_since, record_command_use
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
from core.repository.trading import (
    active_halt,
    add_halt_holder,
    end_trading_halt,
    halt_holders,
    insert_trading_halt,
    mark_saved_settings_restored,
    remove_halt_holder,
    remove_halt_holders_except,
    saved_settings_count,
    trading_state,
)

__all__ = [
    "FOLLOWUP_COLUMNS",
    "FollowUps",
    "JOBS_CHANNEL",
    "acknowledge_page",
    "active_halt",
    "add_halt_holder",
    "append_root_cause",
    "approved_not_started",
    "assign_followup",
    "attempt_counts",
    "audit",
    "audit_returning_id",
    "claim_delivery_key",
    "claim_emergency_page",
    "claim_followup_board",
    "claim_marker",
    "close_page",
    "command_uses_since",
    "complete_followup",
    "complete_open_followup_of_kind",
    "count_undone",
    "end_trading_halt",
    "enqueue",
    "expired_requests",
    "extend_lease",
    "fence_state",
    "find",
    "finish_job",
    "finish_step",
    "followup_board",
    "followup_row",
    "followup_rows",
    "get",
    "halt_holders",
    "has_loss_rows",
    "has_step",
    "home_viewers_within",
    "incident_ids_in",
    "incidents_in",
    "insert_doctor_run",
    "insert_followup",
    "insert_incident",
    "insert_loss",
    "insert_page",
    "insert_prevention",
    "insert_trading_halt",
    "job_error",
    "journal",
    "later_approved_rollback",
    "latest_doctor_run",
    "lease_job",
    "list_incidents",
    "locked_plan",
    "locked_reminded_at",
    "log_page",
    "loss_rows",
    "mark_audit_failed",
    "mark_reminded",
    "mark_saved_settings_restored",
    "merge_plan",
    "merge_plan_touched",
    "move",
    "needing_attention",
    "next_due_job",
    "no_follow_ups",
    "notify_journaled",
    "open_fix",
    "open_followup_rows",
    "open_followup_rows_owned_by",
    "open_incident_ids",
    "open_incident_rows",
    "open_incidents_among",
    "open_rollback_for",
    "owns_followup",
    "page_log_rows",
    "page_row",
    "prevention_rows",
    "queue_report_refresh",
    "recent_audit_of_model",
    "record_command_use",
    "record_early_halt",
    "record_home_viewer",
    "release_followup_board",
    "release_job",
    "release_marker",
    "remove_halt_holder",
    "remove_halt_holders_except",
    "report_written",
    "rollbacks_that_swapped",
    "saved_settings_count",
    "set_estimated_loss",
    "set_followup_board",
    "set_in_plan",
    "set_message",
    "set_pagerduty_error",
    "set_pagerduty_sent",
    "start_step",
    "step_succeeded",
    "steps",
    "take_fence_token",
    "take_over",
    "trading_state",
    "unclaim_emergency_page",
    "undone_jobs",
    "unmark_reminded",
    "verified_prediction_day",
]
