"""Listeners for the estimated loss and for pages, and how both show in the incident's thread and card.

- *Update loss* on the card opens a small form (``View.LOSS``); its submission is checked and recorded in the
  ack (one short transaction), errors shown in the form. `/rollback loss INCIDENT AMOUNT` is in commands.py.
- *Acknowledge* on a page (a DM, the thread message, or the card) acknowledges the incident's page once: the
  emergency contacts are then not paged and PagerDuty's alert is acknowledged. The pressed message loses its
  button; a second press is told who was first.
- Engine events: a recorded loss figure (``loss``), an acknowledgement, a page or a missed target update the
  card; a person's loss update and an acknowledgement also get a thread reply.
"""

from __future__ import annotations


from slack_bolt import Ack, App
from slack_sdk import WebClient

from core.errors import UnknownIncident
from core.incidents import Event, Incident
from core.loss import parse_amount
from handlers import loading as modal
from handlers.deps import Deps
from handlers.errors import describe
from handlers.ids import Action, Block as B, View as V
from handlers.paging_views import acknowledged_blocks, loss_modal, loss_reply
from handlers.progress import SlackProgress
from handlers.respond import acking, answer, channel_of, clicked_id, once_per_click, require_operator, submitted


def may_acknowledge(deps: Deps, user: str) -> bool:
    """The escalation contacts (user groups expanded), operators and approvers."""
    s = deps.services.settings
    return (deps.auth.is_in(user, [*s.primary_contacts, *s.emergency_contacts]) or deps.auth.is_operator(user)
            or deps.auth.is_approver(user))


def register(app: App, deps: Deps, progress: SlackProgress) -> None:
    engine = deps.engine

    # ------------------------------------------------------------------------------------ Acknowledge

    def acknowledge_page(incident_id: int, user: str, body: dict, client: WebClient) -> None:
        page = deps.paging.acknowledge(incident_id=incident_id, user=user, allowed=may_acknowledge(deps, user))
        message = body.get("message") or {}
        channel = channel_of(body)
        inc = engine.get(incident_id)
        if channel and message.get("ts") and message.get("ts") != inc.message_ts:  # a page message, not the card
            text = message.get("text") or f"Escalation of {inc.ref}"
            client.chat_update(channel=channel, ts=message["ts"], text=text, blocks=acknowledged_blocks(
                text, by=user, at_text=f"{page.acknowledged_at:%H:%M:%S} UTC"))

    # ------------------------------------------------------------------------------------ the loss

    def update_loss(body: dict, client: WebClient, loading: dict | None = None) -> None:
        incident_id = clicked_id(body)
        user = body["user"]["id"]
        try:
            if incident_id is None:
                raise UnknownIncident("This button names no incident.")
            require_operator(deps, user, action="loss", to="update the estimated loss", incident_id=incident_id)
            modal.show(client, loading, trigger_id=body["trigger_id"],
                       view=loss_modal(engine.get(incident_id), channel=channel_of(body)))
        except Exception as exc:  # noqa: BLE001 - the person is told why, where they look; nothing changed
            answer(client, body, loading, f":no_entry: {describe(exc)}", modal.LOSS)

    def loss_submitted(ack: Ack, body: dict) -> None:
        def record(text: str | None, meta: dict, user: str) -> None:
            amount = parse_amount(text or "")
            require_operator(deps, user, action="loss", to="update the estimated loss", incident_id=meta.get("incident"))
            deps.loss.record(incident_id=int(meta["incident"]), amount=amount, by=user, source="slack")

        submitted(ack, body, B.LOSS, "loss", record, empty=None)

    # ------------------------------------------------------------------------------------ showing

    # The card is updated before the reply: a retried delivery (handlers/slack_delivery.py) never doubles a reply.
    def show_loss(inc: Incident, event: Event) -> None:
        if not (inc.channel and inc.message_ts):
            return
        d = event.detail
        progress.update_card(inc)
        if d.get("source") != "pnl_query" or d.get("escalating"):
            progress.reply(inc, loss_reply(d))

    def show_acknowledged(inc: Incident, event: Event) -> None:
        if not (inc.channel and inc.message_ts):
            return
        d = event.detail
        then = ("the emergency contacts had been paged already" if d.get("emergency_paged")
                else "the emergency contacts will not be paged")
        progress.update_card(inc)
        progress.reply(inc, f":white_check_mark: <@{d.get('by')}> acknowledged the page; {then}.")

    def show_card(inc: Incident, event: Event) -> None:
        if inc.channel and inc.message_ts:
            progress.update_card(inc)

    progress.on_step["loss"] = show_loss
    progress.on_step["acknowledge"] = show_acknowledged
    progress.on_step["escalate"] = show_card
    progress.on_step["target_missed"] = show_card

    app.action(Action.ACKNOWLEDGE_PAGE.value)(acking(deps, once_per_click(deps, acknowledge_page)))
    app.action(Action.UPDATE_LOSS.value)(acking(deps, update_loss, opens=modal.LOSS))
    app.view(V.LOSS.value)(loss_submitted)
