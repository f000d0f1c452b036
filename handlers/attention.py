"""When the rollback does not fix it, in Slack: the card's next actions (roll back to another backup, halt,
accept with a reason) and the 24-hour watch's thread message (posted once, then updated in place)."""

from __future__ import annotations

import logging

from slack_bolt import Ack, App
from slack_sdk import WebClient

from core.errors import InvalidTransition, NotAuthorized
from core.incidents import Incident
from handlers import incident_forms as forms
from handlers import loading as modal
from handlers.attention_views import accept_modal, watch_message
from handlers.blocks import esc
from handlers.deps import Deps
from handlers.errors import describe
from handlers.ids import Action, Block as B, View as V
from handlers.progress import SlackProgress
from handlers.respond import acking, answer, clicked_id, require_operator, submitted, whisper

log = logging.getLogger("rollback_bot.attention")


def register(app: App, deps: Deps, progress: SlackProgress) -> None:
    services = deps.services
    engine = deps.engine

    def needing_attention(body: dict) -> Incident:
        incident_id = clicked_id(body)
        if incident_id is None:
            raise InvalidTransition("This button does not name an incident.")
        inc = engine.get(incident_id)
        if inc.state != "needs_attention":
            raise InvalidTransition(f"{inc.ref} is {inc.state.replace('_', ' ')}: it no longer needs attention.")
        return inc

    def rollback_again(body: dict, client: WebClient, loading: dict | None = None) -> None:
        """The request form for the same model; the new request follows this incident up."""
        user = body["user"]["id"]
        try:
            require_operator(deps, user, action="request", to="request a rollback")
            inc = needing_attention(body)
            form = services.start_form(model=inc.model_name)
            modal.show(client, loading, trigger_id=body["trigger_id"], view=forms.start_modal(
                model=form.model, backups=form.backups, recommended=form.recommended,
                channel=(body.get("channel") or {}).get("id"), response_url=body.get("response_url"),
                reason=f"Follow-up of {inc.ref}: the rollback to {inc.target_backup} did not resolve the issue."))
        except Exception as exc:  # noqa: BLE001 - the person is told why
            answer(client, body, loading, f":no_entry: {describe(exc)}", modal.START)

    def attention_halt(body: dict, client: WebClient) -> None:
        user = body["user"]["id"]
        try:
            require_operator(deps, user, action="halt", to="halt trading")
            inc = needing_attention(body)
            halt = engine.halt_trading(user=user, reason=f"{inc.ref} needs attention: the rollback of "
                                                          f"{inc.model_name} did not resolve the issue")
            halt = progress.post_card(halt)
            progress.submit(lambda: progress.reply(inc, f":octagonal_sign: <@{esc(user)}> halted automated trading "
                                                        f"({halt.ref}); `/rollback resume` (an approver) lets it go."),
                            ref=inc.ref)
        except Exception as exc:  # noqa: BLE001
            whisper(client, body, f":no_entry: {describe(exc)}")

    def accept_open(body: dict, client: WebClient, loading: dict | None = None) -> None:
        user = body["user"]["id"]
        try:
            inc = needing_attention(body)
            if not deps.auth.is_approver(user):
                engine.audit(None, actor=user, action="accept", outcome="refused", incident_id=inc.id,
                             reason="not an approver")
                raise NotAuthorized("Only approvers may accept an incident that needs attention (APPROVERS).")
            modal.show(client, loading, trigger_id=body["trigger_id"], view=accept_modal(inc))
        except Exception as exc:  # noqa: BLE001
            answer(client, body, loading, f":no_entry: {describe(exc)}", modal.ACCEPT)

    def accept_ack(ack: Ack, body: dict) -> None:
        def accept(reason: str, meta: dict, user: str) -> None:
            services.accept(incident_id=int(meta["incident"]), user=user, reason=reason,
                            allowed=deps.auth.is_approver(user))

        submitted(ack, body, B.ACCEPT_REASON, "reason", accept, empty="Say why it is acceptable.")

    app.action(Action.ROLLBACK_AGAIN.value)(acking(deps, rollback_again, opens=modal.START))
    app.action(Action.ATTENTION_HALT.value)(acking(deps, attention_halt))
    app.action(Action.ACCEPT.value)(acking(deps, accept_open, opens=modal.ACCEPT))
    app.view(V.ACCEPT.value)(accept_ack)
    register_watch(deps, progress)


def register_watch(deps: Deps, progress: SlackProgress) -> None:
    """Show the 24-hour watch in the incident's thread: one message, updated in place after each check, and a
    summary at the end. Through the reporting thread, in order with the incident's other messages."""
    services = deps.services

    def show(inc: Incident, watch: dict) -> None:
        if not inc.channel or not inc.message_ts:
            return
        text = watch_message(watch, ref=inc.ref)

        def post() -> None:  # the message's ts is read now: an earlier post queued before may have just set it
            fresh = deps.engine.get(inc.id)
            ts = ((fresh.plan or {}).get("watch") or {}).get("message_ts")
            if ts:
                progress.client.chat_update(channel=inc.channel, ts=ts, text=text)
            else:
                resp = progress.client.chat_postMessage(channel=inc.channel, text=text,
                                                        thread_ts=inc.thread_ts or inc.message_ts)
                services.watch.set_message(inc.id, resp["ts"])
            progress.update_card(fresh)  # its checklist: monitoring confirms stability, 24 hours completed

        progress.submit(post, ref=inc.ref)

    def end(inc: Incident, summary: str) -> None:
        if inc.channel and inc.message_ts:
            icon = ":white_check_mark:" if "No trouble found." in summary else ":warning:"
            progress.submit(lambda: progress.reply(inc, f"{icon} {esc(summary)}"), ref=inc.ref)

    services.register_watch(on_update=show, on_end=end)
