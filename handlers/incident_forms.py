"""Block Kit for the incident forms: the rollback request (with its searching model and backup menus), the deny
reason and the root cause. Each is filled into the loading view its click or command opened (handlers/loading.py)."""

from __future__ import annotations

from slack_sdk.models.blocks import (
    Block,
    CheckboxesElement,
    ExternalDataSelectElement,
    InputBlock,
    NumberInputElement,
    Option,
    PlainTextInputElement,
    PlainTextObject,
    StaticSelectElement,
)

from core.incidents import Incident
from core.registry import BackupInfo
from handlers.blocks import clip, context, esc, form, num, section
from handlers.evidence import checks_input
from handlers.ids import Action, Block as B, View as V
from handlers.incident_views import incident_title
from handlers.kind_text import text_for

SEVERITIES = ("critical", "high", "medium", "low")


def backup_option(b: BackupInfo, recommended: str | None) -> Option:
    star = "★ " if b.name == recommended else ""
    label = f"{star}{b.name} · IC {num(b.spearman_ic, 3)} · Sharpe {num(b.sharpe_ratio, 2)}"
    return Option(text=PlainTextObject(text=clip(label, 75)), value=b.name)


def model_option(model: str) -> Option:
    return Option(text=PlainTextObject(text=clip(model, 75)), value=model)


def start_modal(*, model: str | None, backups: list[BackupInfo], recommended: str | None,
                channel: str | None, reason: str | None = None, response_url: str | None = None) -> dict:
    """The request form. Its model and backup menus load their options as the person types
    (``external_select``, answered by handlers/pickers.py), so they scale past Slack's 100 static options; the
    backup menu offers the chosen model's backups (the model is in ``private_metadata`` and in the form's state),
    with ``recommended`` pre-selected. ``response_url`` (the command's) is kept in its metadata: the answer to
    the submission goes there, so it reaches the person even in a channel the bot is not a member of."""
    model_select = ExternalDataSelectElement(
        action_id=Action.MODAL_MODEL_SELECT.value,
        placeholder="Type to search models",
        min_query_length=0,
        initial_option=model_option(model) if model else None,
    )
    blocks: list[Block] = [
        InputBlock(block_id=B.MODEL.value, label="Model", element=model_select, dispatch_action=True),
    ]
    chosen = next((b for b in backups if b.name == recommended), None)
    if model:
        if backups:
            blocks.append(
                InputBlock(
                    block_id=B.BACKUP.value,
                    label="Roll back to",
                    element=ExternalDataSelectElement(
                        action_id=Action.MODAL_BACKUP_SELECT.value,
                        placeholder="Type to search backups",
                        min_query_length=0,
                        initial_option=backup_option(chosen, recommended) if chosen else None,
                    ),
                    hint="★ marks the recommended target (best Sharpe among backups that pass checks)." if chosen else None,
                )
            )
        else:
            blocks.append(section(":warning: This model has no backups."))
    blocks += [
        InputBlock(block_id=B.REASON.value, label="Reason", element=PlainTextInputElement(
            action_id="reason", multiline=True, max_length=2000, initial_value=clip(reason, 2000) if reason else None,
            placeholder="What went wrong? (Sharpe collapsed, losses, crashes, bad data…)")),
        InputBlock(
            block_id=B.SEVERITY.value,
            label="Severity",
            element=StaticSelectElement(
                action_id="severity",
                options=[Option(text=s.title(), value=s) for s in SEVERITIES],
                initial_option=Option(text="High", value="high"),
            ),
        ),
        InputBlock(block_id=B.LOSS.value, label="Estimated loss (optional)", optional=True, element=NumberInputElement(action_id="loss", is_decimal_allowed=True, min_value="0")),
        checks_input(),  # handlers/evidence.py: the runbook's pre-rollback checks, all required
        InputBlock(
            block_id=B.KEEP_HALTED.value,
            label="After the rollback",
            optional=True,
            element=CheckboxesElement(action_id="keep_halted", options=[Option(text="Keep trading halted until an approver resumes it", value="keep")]),
        ),
    ]
    return form(V.START, "Request a rollback", blocks, submit="Request",
                meta={"channel": channel, "model": model, "recommended": recommended, "response_url": response_url})


def deny_modal(incident: Incident, *, channel: str | None, message_ts: str | None) -> dict:
    words = text_for(incident)
    return form(V.DENY, words.deny_title, [
        section(f"Deny *{esc(incident_title(incident))}*?"),
        context(f"Approving it would: {esc(words.will(incident))} Denying it changes nothing; the {words.noun}"
                " is closed and the requester is told in its thread."),
        InputBlock(block_id=B.DENY_REASON.value, label="Why?",
                   element=PlainTextInputElement(action_id="reason", multiline=True, max_length=1000)),
    ], submit="Deny", close="Back", meta={"incident": incident.id, "channel": channel, "ts": message_ts})


def root_cause_modal(incident: Incident) -> dict:
    return form(V.ROOT_CAUSE, "Add root cause", [
        section(f"Root cause of *{esc(incident_title(incident))}*"),
        context("What you write is added to the incident's root cause and its report." + (
            f" So far: {esc(clip(incident.root_cause, 1500))}" if incident.root_cause else "")),
        InputBlock(block_id=B.ROOT_CAUSE.value, label="Root cause",
                   element=PlainTextInputElement(action_id="text", multiline=True, max_length=2900)),
    ], meta={"incident": incident.id})
