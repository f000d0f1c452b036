"""Block Kit for incidents: the request / live status card, thread replies, the incidents list (the forms are in
handlers/incident_forms.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    DividerBlock,
    HeaderBlock,
    SectionBlock,
)

from core.halt_now import denial_note
from core.incidents import CLOSED, Incident, Step
from core.timeline import Milestone, fmt_elapsed, milestones, target_label
from handlers.blocks import clip, context, esc, finish, md, num, section
from handlers.attention_views import attention_blocks, attention_reply
from handlers.evidence import evidence_blocks, halt_now_button
from handlers.ids import Action, Block as B
from handlers.paging_views import live_blocks
from handlers.kind_text import text_for

STATE_EMOJI = {
    "requested": ":hourglass_flowing_sand:",
    "approved": ":white_check_mark:",
    "halting": ":octagonal_sign:",
    "halted": ":octagonal_sign:",
    "backing_up": ":floppy_disk:",
    "restoring": ":arrows_counterclockwise:",
    "recording": ":ledger:",
    "verifying": ":mag:",
    "verified": ":pause_button:",
    "resuming": ":arrow_forward:",
    "monitoring": ":eyes:",
    "resolved": ":large_green_circle:",
    "denied": ":no_entry_sign:",
    "cancelled": ":heavy_multiplication_x:",
    "failed": ":red_circle:",
    "reverting": ":rewind:",
    "revert_failed": ":sos:",
    "halt_not_effective": ":rotating_light:",
    "needs_attention": ":rotating_light:",
    "superseded": ":arrow_right_hook:",
}
def _tick(m: Milestone, failed: bool) -> str:
    if m.outcome == "ok":
        return ":white_check_mark:"
    if m.outcome == "warning":
        return ":warning:"
    if m.outcome == "failed":
        return ":x:"
    if m.outcome == "running":
        return ":hourglass_flowing_sand:" if not failed else ":x:"
    return ":white_medium_square:"


def checklist_text(incident: Incident, steps: list[Step]) -> str:
    failed = incident.state in ("failed", "reverting", "revert_failed")
    lines = []
    keep = {"halt": ("halted", "resolved"), "fix": ("requested", "approved", "resolved")}.get(incident.kind)
    for m in milestones(incident, steps):
        if keep is not None and m.key not in keep:
            continue
        line = f"{_tick(m, failed)} {m.label}"
        if m.elapsed_seconds is not None:
            line += f" — {fmt_elapsed(m.elapsed_seconds)}"
        if m.target_minutes is not None:
            target = f"target {target_label(m.target_minutes, unit='m')}"
            line += f" ({'missed ' if m.breached else ''}{target})"
        lines.append(line)
    return "\n".join(lines)


def _model_line(label: str, version: str | None, info: dict | None) -> str:
    info = info or {}
    return (
        f"*{label}*\n`{esc(version or 'unknown')}`\ntrained {esc(info.get('training_date') or 'n/a')}\n"
        f"IC {num(info.get('spearman_ic'), 4)} · Sharpe {num(info.get('sharpe_ratio'), 2)}"
    )


def incident_title(incident: Incident) -> str:
    if incident.kind == "rollback":
        return f"{incident.ref} · Rollback of {incident.model_name}"
    if incident.kind == "halt":
        return f"{incident.ref} · Trading halt"
    if incident.kind == "fix":
        return f"{incident.ref} · Quick fix: {(incident.plan or {}).get('label') or 'fix'}"
    if incident.kind == "resume":
        return f"{incident.ref} · Resume on mismatched files (override)"
    return f"{incident.ref} · {incident.kind}"


def _person(ident: str | None, source: str) -> str:
    if not ident:
        return "n/a"
    if source == "slack":
        return f"<@{esc(ident)}>"
    if source == "cli":
        return f"{esc(ident)} (break-glass CLI)"
    return esc(ident)


def incident_card(incident: Incident, steps: list[Step]) -> list[dict]:
    """The request message, updated in place as the status card."""
    if incident.kind == "resume":
        from handlers.override_views import override_card

        return override_card(incident, emoji=STATE_EMOJI.get(incident.state, ""))
    emoji = STATE_EMOJI.get(incident.state, "")
    blocks: list[Block] = [HeaderBlock(text=clip(incident_title(incident), 150))]
    taken = (incident.plan or {}).get("taken_over") if incident.source == "watchdog" else None
    if taken:
        who = f"Proposed by the watchdog, taken over by {_person(incident.requested_by, 'slack')}"
    else:
        who = f"Requested by {_person(incident.requested_by, incident.source)}"
    if incident.source == "watchdog" and incident.state == "requested" and not taken:
        who += (" — the watchdog only proposes: a person takes it over as requester (*Take over*), then a different"
                " approver approves")
    if incident.approved_by:
        approver_source = "cli" if incident.source == "cli" else "slack"
        who += f" · approved by {_person(incident.approved_by, approver_source) if approver_source == 'slack' else esc(incident.approved_by)}"
    blocks.append(
        section(
            f"{emoji} *State: {esc(incident.state.replace('_', ' '))}* · severity *{esc(incident.severity)}*\n{who}\n"
            f"*Reason:* {esc(clip(incident.reason, 1500))}"
            + (f"\n*Estimated loss:* {incident.estimated_loss:,.0f}" if incident.estimated_loss is not None else "")
            + ("\n:pause_button: Trading stays halted after the rollback until an approver resumes it." if incident.keep_halted else "")
        )
    )
    if incident.kind == "rollback":
        plan = incident.plan or {}
        pre = plan.get("preflight") or {}
        blocks.append(
            SectionBlock(
                fields=[
                    md(_model_line("Current", incident.from_version, plan.get("current"))),
                    md(_model_line("Target", incident.target_backup, pre)),
                ]
            )
        )
        if pre.get("checks"):
            blocks.append(context(":white_check_mark: Pre-flight passed: " + esc("; ".join(pre["checks"]))))
        blocks += evidence_blocks(incident)  # handlers/evidence.py: evidence, checks, Halt now
    blocks.append(DividerBlock())
    blocks.append(section(checklist_text(incident, steps)))
    if incident.error:
        blocks.append(section(f":red_circle: *{esc(clip(incident.error, 2500))}*"))
    if incident.state == "failed" and (incident.decision_note or "").startswith("closed at resume"):
        blocks.append(context(_failed_files(incident)))
    elif incident.state == "failed":
        blocks.append(context(f"{_failed_files(incident)} Trading stays halted; an approver resumes with `/rollback resume` after a look."))
    if incident.state == "revert_failed":
        blocks.append(context(":sos: The original files could not all be put back: the production files are mixed (above). Trading stays halted."
                              " Put the original files back by hand; `/rollback resume` checks them, and resuming on mixed files needs two different approvers."))
    blocks += attention_blocks(incident)
    if incident.state == "halt_not_effective":
        blocks += halt_not_effective_blocks(incident)
    elif incident.state == "requested" and incident.source == "watchdog" and not taken:
        blocks.append(ActionsBlock(block_id=B.DECISION.value, elements=[
            ButtonElement(text="Take over", action_id=Action.TAKE_OVER.value, value=str(incident.id), style="primary"),
            ButtonElement(text="Deny", action_id=Action.DENY.value, value=str(incident.id), style="danger"),
        ]))
    elif incident.state == "requested":
        blocks.append(
            ActionsBlock(
                block_id=B.DECISION.value,
                elements=[
                    ButtonElement(
                        text="Approve",
                        action_id=Action.APPROVE.value,
                        value=str(incident.id),
                        style="primary",
                        confirm=ConfirmObject(
                            title=text_for(incident).approve_title,
                            text=clip(text_for(incident).will(incident), 300),
                            confirm="Approve",
                            deny="Cancel",
                        ),
                    ),
                    *[b for b in [halt_now_button(incident)] if b is not None],
                    ButtonElement(text="Deny", action_id=Action.DENY.value, value=str(incident.id), style="danger"),
                ],
            )
        )
        if incident.expires_at:
            blocks.append(context(f"Approval window ends {incident.expires_at:%H:%M:%S} UTC. You cannot approve your own request."))
    elif incident.state in CLOSED or incident.state in ("monitoring", "verified", "revert_failed"):
        blocks.append(ActionsBlock(elements=[ButtonElement(text="Add root cause", action_id=Action.ADD_ROOT_CAUSE.value, value=str(incident.id))]))
    blocks += live_blocks(incident, steps)  # the latest loss figure, the page; Update loss, Acknowledge
    return finish(blocks)


def halt_not_effective_blocks(incident: Incident) -> list[Block]:
    """The pause: trades still came after the halt. Proceed anyway (an approver other than the requester) or
    abandon (nothing was swapped; trading stays halted)."""
    return [
        context("Trading stays halted and nothing was swapped. Escalation was paged. An approver other than the"
                " requester may *Proceed anyway*; *Abandon* ends the incident (an approver then resumes trading)."),
        ActionsBlock(block_id=B.DECISION.value, elements=[
            ButtonElement(
                text="Proceed anyway", action_id=Action.PROCEED_ANYWAY.value, value=str(incident.id), style="danger",
                confirm=ConfirmObject(
                    title="Proceed although trades continue?",
                    text=clip(f"Trades were still executing after the halt. Swap {incident.model_name} to "
                              f"{incident.target_backup} anyway? This is audited under your name.", 300),
                    confirm="Proceed anyway", deny="Cancel"),
            ),
            ButtonElement(text="Abandon", action_id=Action.ABANDON.value, value=str(incident.id)),
        ]),
    ]


# The swap's steps whose reply is one line from their detail.
STEP_LINES: dict[str, Callable[[dict], str]] = {
    "emergency_backup": lambda d: (f":floppy_disk: Emergency backup `{esc(d.get('backup'))}` taken"
                                   f" (sha256 {str(d.get('model_sha256'))[:12]}…)."),
    "restore": lambda d: f":arrows_counterclockwise: `{esc(d.get('from'))}` restored atomically into place.",
    "record": lambda d: f":ledger: `model_deployment_log`: `{esc(d.get('version'))}` is production (one transaction).",
    "verify": lambda d: (f":mag: Verified: model loads, checksum matches, prediction on {d.get('rows')} rows of "
                         f"{esc(d.get('prediction_day'))} is finite and varies."),
}

# States in which a rollback stopped for a person to act: (title, the error's stand-in when there is none, what next).
STOPPED_LINES: dict[str, tuple[str, str, str]] = {
    "revert_failed": ("Rollback failed and the revert failed", "see the journal",
                      " Escalated; `/rollback resume` is refused until the files match the production row (or two"
                      " approvers override)."),
    "halt_not_effective": ("Halt not effective", "trades continue after the halt",
                           " Escalation is paged. An approver other than the requester may *Proceed anyway* on the"
                           " card."),
}


def step_reply(incident: Incident, step: str, detail: dict, error: str | None = None) -> str:
    """One thread reply per step, with its details."""
    d = detail or {}
    if step == "halt":
        joined = " (joined the halt already in place)" if d.get("joined") else ""
        return f":octagonal_sign: Automated trading halted for {d.get('clients', 0)} active clients{joined}; each client's own settings are saved."
    if step == "verify_halt":
        n = d.get("trades_after_halt", 0)
        cmd = f" {d['stop_command']}." if d.get("stop_command") else ""
        if error:
            return f":rotating_light: {esc(error)}{cmd}"
        if str(d.get("source", "")).startswith("none"):
            return f":grey_question: No trade source (TRADES_TABLE=none): trades after the halt were not checked.{cmd}"
        quiet = f"{d['quiet_seconds']:g} s" if d.get("quiet_seconds") is not None else "a while"
        if n:
            return (f":warning: {n} trade(s) executed after the halt; then none for {quiet}, so the swap goes"
                    f" ahead.{cmd}")
        return f":white_check_mark: No trade after the halt (quiet for {quiet}).{cmd}"
    if step == "halt_sweep":
        parts = []
        if d.get("added"):
            parts.append(f":octagonal_sign: Client(s) {esc(', '.join(d['added']))} became active during the halt:"
                         " their own settings are saved and they are halted too.")
        if d.get("reenabled"):
            parts.append(f":warning: A person re-enabled client(s) {esc(', '.join(d['reenabled']))} while trading is"
                         " halted: they may trade during the swap. Left as they set them (not restored on resume).")
        return " ".join(parts) or "Halt sweep: nothing new."
    if step in STEP_LINES:
        return STEP_LINES[step](d)
    if step == "resume":
        if not d.get("resumed"):
            held = ", ".join(d.get("still_held_by") or [])
            return f":pause_button: Rollback done; trading stays halted (also held by {esc(held)})."
        text = f":arrow_forward: Trading resumed: {d.get('restored_clients', 0)} clients back to their own settings."
        if d.get("left_alone"):
            text += f" Left as changed during the halt: {esc(', '.join(d['left_alone']))}."
        if d.get("trades_during_halt"):
            text += f" :warning: {d['trades_during_halt']} trade(s) executed during the halt."
        return text
    if step == "diagnostics":
        from handlers.blocks import mrkdwn_from_markdown

        return ":stethoscope: " + mrkdwn_from_markdown(d.get("markdown") or d.get("summary") or "")[:2900]
    if step == "revert" and d.get("ok") is False:
        return (f":sos: *Revert failed*: {esc(d.get('message'))}. Deployment log"
                f" {'reverted' if d.get('deployment_log_reverted') else 'unchanged'}; trading stays halted.")
    if step == "revert":
        files = ", ".join((d.get("restored_files") or []) + [f"{n} removed" for n in d.get("removed_files") or []]) or "unchanged"
        return (
            f":rewind: Reverted: original files back ({esc(files)}),"
            f" deployment log {'reverted' if d.get('deployment_log_reverted') else 'unchanged'}; trading stays halted."
        )
    return f"{esc(step)}: {esc(json.dumps(d)[:500])}" + (f" — {esc(error)}" if error else "")


def state_reply(incident: Incident) -> str | None:
    s = incident.state
    if incident.kind == "fix":
        result = (incident.plan or {}).get("result") or {}
        if s == "approved":
            return f":white_check_mark: Approved by <@{esc(incident.approved_by)}>. Running the fix."
        if s == "resolved":
            return f":white_check_mark: Fix done: {esc(result.get('message') or 'ok')}"
        if s == "failed":
            return f":red_circle: Fix failed: {esc(incident.error or result.get('message') or 'see the journal')}"
    if s == "approved":
        return f":white_check_mark: Approved by <@{esc(incident.approved_by)}>. Running the runbook now."
    if s == "denied":
        return (f":no_entry_sign: Denied by <@{esc(incident.decided_by)}>: {esc(incident.decision_note or 'no reason given')}"
                + (f"\n:octagonal_sign: {esc(denial_note(incident))}" if denial_note(incident) else ""))
    if s == "cancelled":
        return (f":heavy_multiplication_x: Cancelled: {esc(incident.decision_note or 'by the requester')}"
                + (f"\n:octagonal_sign: {esc(denial_note(incident))}" if denial_note(incident) else ""))
    if incident.kind == "resume":
        from handlers.override_views import override_reply

        return override_reply(incident)
    if s == "failed" and (incident.decision_note or "").startswith("closed at resume"):
        return f":white_check_mark: {esc(incident.ref)} {_failed_files(incident)[0].lower()}{_failed_files(incident)[1:]}"
    if s == "failed":
        return f":red_circle: *Rollback failed*: {esc(incident.error or 'see the journal')}. {_failed_files(incident)} Trading stays halted."
    if s in STOPPED_LINES:
        title, default, then = STOPPED_LINES[s]
        return f"{STATE_EMOJI[s]} *{title}*: {esc(incident.error or default)}{then}"
    if s == "backing_up" and (incident.plan or {}).get("proceeded_anyway"):
        who = incident.plan["proceeded_anyway"].get("by")
        return f":warning: <@{esc(who)}> chose *Proceed anyway*: the swap goes ahead although the halt was late."
    if s == "verified":
        return ":pause_button: Verified. Trading stays halted as requested: an approver resumes with `/rollback resume`."
    if s == "resolved":
        accepted = (incident.plan or {}).get("accepted") or {}
        if accepted:
            return (f":large_green_circle: Accepted and closed by <@{esc(accepted.get('by'))}>: "
                    f"{esc(clip(accepted.get('reason') or '', 1500))}")
        return ":large_green_circle: Incident resolved."
    if s in ("needs_attention", "superseded"):
        return attention_reply(incident)
    return None


def _failed_files(incident: Incident) -> str:
    """What a failed rollback left in place, as its revert recorded it."""
    note = incident.decision_note or ""
    if note.startswith("closed at resume"):
        return f"{esc(note[:1].upper() + note[1:])}."
    message = str(((incident.plan or {}).get("revert") or {}).get("message") or "")
    if message:
        return f"{esc(message[:1].upper() + message[1:])}."
    return "The original model is in place."


def incidents_blocks(incidents: list[Incident], now: datetime) -> list[dict]:
    blocks: list[Block] = [HeaderBlock(text="Incidents")]
    if not incidents:
        blocks.append(section("No incidents yet."))
    open_ = [i for i in incidents if i.is_open]
    recent = [i for i in incidents if not i.is_open]
    for title, group in (("Open", open_), ("Recent", recent)):
        if not group:
            continue
        lines = [
            f"{STATE_EMOJI.get(i.state, '')} *{i.ref}* {esc(i.kind)} `{esc(i.model_name or '-')}` → "
            f"`{esc(i.target_backup or '-')}` · {esc(i.state)} · {i.created_at:%Y-%m-%d %H:%M} UTC"
            for i in group[:25]
        ]
        blocks.append(section(f"*{title}*\n" + "\n".join(lines)))
        if len(group) > 25:
            blocks.append(context(f"…and {len(group) - 25} more."))
    return finish(blocks)
