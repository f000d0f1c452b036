"""Block Kit for an incident whose rollback did not fix it (core.aftercare) and for its 24-hour watch (core.watch):
the card's "needs attention" part with the next actions, the accept modal, and the watch's thread message."""

from __future__ import annotations

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    InputBlock,
    PlainTextInputElement,
)

from core.incidents import Incident
from core.watchview import watch_message_lines
from handlers.blocks import clip, context, esc, form, section
from handlers.ids import Action, Block as B, View as V

MAX_MESSAGE = 3900  # one chat.update text, well under Slack's limit


def attention_blocks(incident: Incident) -> list[Block]:
    """What the card shows about needing attention, superseding and follow-ups (nothing for other incidents)."""
    plan = incident.plan or {}
    out: list[Block] = []
    follows = plan.get("follows") or {}
    if follows:
        out.append(context(f":link: Follows up {esc(follows.get('ref'))}, whose rollback did not resolve the issue;"
                           " approving this one closes it as superseded."))
    if incident.state == "needs_attention":
        attention = plan.get("attention") or {}
        reasons = "\n".join(f"• {esc(clip(r, 400))}" for r in (attention.get("reasons") or [])[:5])
        out.append(section(
            f":rotating_light: *Needs attention*: {esc(attention.get('source') or 'monitoring')} found trouble after"
            f" the rollback to `{esc(incident.target_backup)}`:\n{reasons}\nThe incident stays open and escalates"
            " until a person decides."))
        out.append(ActionsBlock(block_id=B.ATTENTION.value, elements=[
            ButtonElement(text="Roll back to another backup", action_id=Action.ROLLBACK_AGAIN.value,
                          value=str(incident.id), style="primary"),
            ButtonElement(text="Halt trading", action_id=Action.ATTENTION_HALT.value, value=str(incident.id),
                          style="danger", confirm=ConfirmObject(
                              title="Halt automated trading?",
                              text="Every active client's settings are saved; an approver resumes with "
                                   "`/rollback resume`.", confirm="Halt", deny="Cancel")),
            ButtonElement(text="Accept with a reason", action_id=Action.ACCEPT.value, value=str(incident.id)),
            ButtonElement(text="Add root cause", action_id=Action.ADD_ROOT_CAUSE.value, value=str(incident.id)),
        ]))
    elif incident.state == "superseded":
        by = plan.get("superseded_by") or {}
        out.append(context(f":arrow_right_hook: Superseded by {esc(by.get('ref'))} (rollback to "
                           f"`{esc(by.get('backup'))}`)."))
    accepted = plan.get("accepted") or {}
    if accepted and incident.state == "resolved":
        out.append(context(f":memo: Accepted by <@{esc(accepted.get('by'))}>: {esc(clip(accepted.get('reason') or '', 1500))}"))
    return out


def attention_reply(incident: Incident) -> str:
    """The thread reply when the incident starts needing attention or is superseded."""
    plan = incident.plan or {}
    if incident.state == "superseded":
        by = plan.get("superseded_by") or {}
        return (f":arrow_right_hook: Superseded by {esc(by.get('ref'))}: {esc(incident.model_name)} is rolled back to "
                f"`{esc(by.get('backup'))}` there; this incident is closed.")
    attention = plan.get("attention") or {}
    again = " again" if int(attention.get("count") or 1) > 1 else ""
    return (f":rotating_light: *{incident.ref} needs attention{again}*: the rollback to `{esc(incident.target_backup)}`"
            f" did not resolve the issue ({esc('; '.join(attention.get('reasons') or []))[:1500]}). It stays open and"
            " escalates; on the card: roll back to another backup, halt trading, or accept it with a reason.")


def accept_modal(incident: Incident) -> dict:
    blocks = [
        section(f"Close *{esc(incident.ref)}* although monitoring found trouble?"),
        context("Approvers only. Your reason is kept in the journal, the audit log and the report."),
        InputBlock(block_id=B.ACCEPT_REASON.value, label="Why is it acceptable?",
                   element=PlainTextInputElement(action_id="reason", multiline=True, max_length=1000)),
    ]
    return form(V.ACCEPT, "Accept and close", submit="Accept", close="Back",
                meta={"incident": incident.id}, blocks=blocks)


def watch_message(watch: dict, *, ref: str) -> str:
    """The 24-hour watch as one thread message (mrkdwn), updated in place after every check."""
    lines = watch_message_lines(watch, ref=ref)
    head, rest = lines[0], lines[1:]
    icon = ":warning:" if watch.get("missed") or any(not c.get("ok") for c in watch.get("checks") or []) else ":eyes:"
    text = f"{icon} *{esc(head)}*"
    for line in rest:
        mark = ":x: " if "TROUBLE" in line or line.startswith("MISSED") else "• "
        text += "\n" + mark + esc(line)
    return clip(text, MAX_MESSAGE)
