"""Every callback, block and action id the app uses, in one place."""

from enum import StrEnum


class Command(StrEnum):
    ROLLBACK = "/rollback"


class Action(StrEnum):
    APPROVE = "rollback_approve"
    DENY = "rollback_deny"
    ADD_ROOT_CAUSE = "add_root_cause"
    FIX_REFRESH_VIEW = "fix_refresh_view"
    FIX_RESTORE_MODEL = "fix_restore_model"
    FIX_RETRAIN = "fix_retrain"
    MODAL_MODEL_SELECT = "start_model_select"
    MODAL_BACKUP_SELECT = "backup"
    RESUME_OVERRIDE = "resume_override"
    PROCEED_ANYWAY = "rollback_proceed_anyway"
    ABANDON = "rollback_abandon"
    TAKE_OVER = "rollback_take_over"
    ROLLBACK_AGAIN = "attention_rollback_again"
    ATTENTION_HALT = "attention_halt"
    ACCEPT = "attention_accept"
    HALT_NOW = "rollback_halt_now"
    FOLLOWUP_TAKE = "followup_take"
    FOLLOWUP_ASSIGN = "followup_assign"
    FOLLOWUP_DONE = "followup_done"
    ADD_PREVENTION = "add_prevention"
    UPDATE_LOSS = "loss_update"
    ACKNOWLEDGE_PAGE = "page_acknowledge"


# Clicks that decide an incident: handled on a lane of their own, never behind slow commands.
DECISIONS = frozenset({Action.APPROVE, Action.DENY, Action.PROCEED_ANYWAY, Action.ABANDON, Action.TAKE_OVER,
                       Action.RESUME_OVERRIDE})


class View(StrEnum):
    START = "rollback_start_modal"
    DENY = "rollback_deny_modal"
    ROOT_CAUSE = "root_cause_modal"
    LOADING = "loading_modal"  # opened at once, then filled in (handlers/loading.py)
    NOTICE = "notice_modal"  # a loading view turned into a message (a refusal, an error)
    ACCEPT = "accept_modal"
    RETRAIN = "retrain_modal"
    FOLLOWUP_ASSIGN = "followup_assign_modal"
    PREVENTION = "prevention_modal"
    LOSS = "loss_modal"


class Block(StrEnum):
    MODEL = "model_block"
    BACKUP = "backup_block"
    REASON = "reason_block"
    SEVERITY = "severity_block"
    LOSS = "loss_block"
    KEEP_HALTED = "keep_halted_block"
    DENY_REASON = "deny_reason_block"
    ROOT_CAUSE = "root_cause_block"
    DECISION = "decision_block"
    ACCEPT_REASON = "accept_reason_block"
    ATTENTION = "attention_block"
    CHECKS = "checks_block"
    RETRAIN_START = "retrain_start_block"
    FOLLOWUP_OWNER = "followup_owner_block"
    PREVENTION = "prevention_block"
    PREVENTION_ACTIONS = "prevention_actions"
    LIVE = "live_actions_block"
    PAGE = "page_actions_block"


class Event(StrEnum):
    APP_HOME_OPENED = "app_home_opened"
