"""Block Kit for a resume override: `/rollback resume` refused on production files that do not match their
production row, and a second approver's *Override* (core.resume)."""

from __future__ import annotations

from slack_sdk.models.blocks import ActionsBlock, Block, ButtonElement, ConfirmObject, HeaderBlock

from core.incidents import Incident
from handlers.blocks import clip, context, esc, finish, section
from handlers.ids import Action


def mismatch_lines(incident: Incident, limit: int = 10) -> str:
    items = (incident.plan or {}).get("mismatches") or []
    lines = []
    for m in items[:limit]:
        files = "; ".join(f"`{esc(name)}` is {esc(what)}" for name, what in (m.get("differs") or {}).items())
        lines.append(f"• *{esc(m.get('model'))}*: {files} (expected {esc(m.get('expected_from'))})")
    if len(items) > limit:
        lines.append(f"… and {len(items) - limit} more")
    return "\n".join(lines) or "(no details recorded)"


def override_card(incident: Incident, *, emoji: str = "") -> list[dict]:
    blocks: list[Block] = [
        HeaderBlock(text=clip(f"{incident.ref} · Resume on mismatched files (override)", 150)),
        section(clip(
            f"{emoji} *State: {esc(incident.state)}* · asked by <@{esc(incident.requested_by)}>"
            + (f" · confirmed by <@{esc(incident.approved_by)}>" if incident.approved_by else "")
            + "\n`/rollback resume` was refused: these production files do not match their production row.\n"
            + mismatch_lines(incident), 2900)),
    ]
    if incident.state == "requested":
        blocks.append(ActionsBlock(elements=[ButtonElement(
            text="Override", action_id=Action.RESUME_OVERRIDE.value, value=str(incident.id), style="danger",
            confirm=ConfirmObject(
                title="Resume on these files?",
                text=clip("Automated trading resumes although the production files listed do not match their "
                          "production row. A second approver, other than the one who asked, must confirm.", 300),
                confirm="Override", deny="Cancel"),
        )]))
        if incident.expires_at:
            blocks.append(context(f"A second, different approver may override until {incident.expires_at:%H:%M:%S} UTC."
                                  " The override holds only for exactly these files."))
    elif incident.decision_note:
        blocks.append(context(esc(incident.decision_note)))
    return finish(blocks)


def override_reply(incident: Incident) -> str | None:
    s = incident.state
    if s == "requested":
        return (f":warning: <@{esc(incident.requested_by)}> asks to resume trading although production files do not"
                " match their production row. A second, different approver may press *Override*.")
    if s == "approved":
        return f":warning: Override confirmed by <@{esc(incident.approved_by)}>: resuming trading."
    if s == "resolved":
        return ":arrow_forward: Trading resumed under this override (two approvers)."
    if s == "cancelled":
        return f":heavy_multiplication_x: Override not used: {esc(incident.decision_note or 'cancelled')}"
    return None
