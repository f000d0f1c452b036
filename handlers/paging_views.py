"""Block Kit for the estimated loss and for pages: the card's live part, the page messages, the loss form."""

from __future__ import annotations

from slack_sdk.models.blocks import ActionsBlock, Block, ButtonElement, InputBlock, NumberInputElement

from core.incidents import CANCELLED, DENIED, RESOLVED, Incident, Step
from core.loss import money
from handlers.blocks import clip, context, esc, finish, form, section
from handlers.ids import Action, Block as B, View as V

LOSS_SOURCES = {"request": "with the request", "slack": "in Slack", "cli": "from the command line",
                "pnl_query": "from the P&L query"}


def _who(ident: str | None) -> str:
    if not ident:
        return "n/a"
    return f"<@{esc(ident)}>" if ident[:1] in "UW" and ident.isalnum() else esc(ident)


def acknowledge_button(incident_id: int) -> ButtonElement:
    return ButtonElement(text="Acknowledge", action_id=Action.ACKNOWLEDGE_PAGE.value, value=str(incident_id),
                         style="primary")


def live_blocks(incident: Incident, steps: list[Step]) -> list[Block]:
    """The card's live part: the latest loss figure and the page's state, with *Update loss* and, while a page
    waits for somebody, *Acknowledge*."""
    if incident.kind not in ("rollback", "halt"):
        return []
    lines = []
    losses = [s for s in steps if s.step == "loss" and s.outcome == "ok"]
    if losses:
        d = losses[-1].detail or {}
        lines.append(f":money_with_wings: Estimated loss {money(d.get('amount'))} (updated {len(losses)}×, last at "
                     f"{losses[-1].started_at:%H:%M} UTC by {_who(d.get('by') or losses[-1].actor)})")
    pages = [s for s in steps if s.step == "escalate" and s.outcome == "ok"]
    ack = next((s for s in steps if s.step == "acknowledge" and s.outcome == "ok"), None)
    waiting = bool(pages) and ack is None and incident.state not in (RESOLVED, DENIED, CANCELLED)
    if pages:
        line = f":rotating_light: Paged at {pages[0].started_at:%H:%M} UTC"
        emergency = next((s for s in pages if (s.detail or {}).get("tier") == "emergency"), None)
        if emergency:
            line += f" · emergency contacts paged at {emergency.started_at:%H:%M} UTC"
        if ack:
            line += f" · acknowledged by {_who(ack.actor)} at {ack.started_at:%H:%M} UTC"
        elif waiting:
            line += " · *not acknowledged yet*"
        lines.append(line)
    out: list[Block] = [context("\n".join(lines))] if lines else []
    buttons = [ButtonElement(text="Update loss", action_id=Action.UPDATE_LOSS.value, value=str(incident.id))]
    if waiting:
        buttons.append(acknowledge_button(incident.id))
    out.append(ActionsBlock(block_id=B.LIVE.value, elements=buttons))
    return out


def page_blocks(incident: Incident, text: str, *, acknowledgeable: bool) -> list[dict]:
    """A page (DM or thread message): what happened, and *Acknowledge* while nobody has."""
    blocks: list[Block] = [section(text)]
    if acknowledgeable:
        blocks.append(ActionsBlock(block_id=B.PAGE.value, elements=[acknowledge_button(incident.id)]))
        blocks.append(context("Acknowledging stops the escalation to the emergency contacts"
                              " (and acknowledges the PagerDuty alert)."))
    return finish(blocks)


def acknowledged_blocks(text: str, *, by: str, at_text: str) -> list[dict]:
    """A page message once somebody acknowledged it (its button gone)."""
    return finish([section(text), context(f":white_check_mark: Acknowledged by {_who(by)} at {at_text}.")])


def loss_reply(d: dict) -> str:
    was = f" (was {money(d['previous'])})" if d.get("previous") is not None else ""
    text = (f":money_with_wings: Estimated loss updated to *{money(d.get('amount'))}*{was} by {_who(d.get('by'))} "
            f"{LOSS_SOURCES.get(d.get('source'), '')}.")
    if d.get("escalating"):
        text += " It is over LOSS_ESCALATION_THRESHOLD: escalating."
    return text


def loss_modal(incident: Incident, *, channel: str | None) -> dict:
    latest = f" The latest figure is {money(incident.estimated_loss)}." if incident.estimated_loss is not None else ""
    title = f"{incident.ref} · {incident.model_name}" if incident.model_name else incident.ref
    blocks = [
        section(f"*{esc(clip(title, 200))}*.{latest} Every figure is kept; the card and the report show the"
                " latest."),
        InputBlock(block_id=B.LOSS.value, label="Estimated loss", element=NumberInputElement(
            action_id="loss", is_decimal_allowed=True, min_value="0")),
    ]
    return form(V.LOSS, "Update estimated loss", submit="Update",
                meta={"incident": incident.id, "channel": channel}, blocks=blocks)
