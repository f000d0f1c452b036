"""Follow-ups in Slack: the incident's follow-ups message with *Take it*, *Assign…* and *Done* per item and
*Add prevention measure*, the modals behind them, and reminders (a DM to the owner, or a reply in the incident's
thread when nobody owns the item).

The rules (who may act, what "done" needs, reminding once) are core.followups'; this module only shows and
listens. Clicks are acked at once and handled afterwards; a retried delivery is handled once.
"""

from __future__ import annotations

import json
import logging
import threading

from slack_bolt import Ack, App
from slack_sdk import WebClient

from core.errors import Conflict, NotAuthorized, UnknownIncident
from core.followups import NOT_ALLOWED, FollowUp, UnknownFollowUp
from core.incidents import Incident
from handlers import followup_views as fv
from handlers import loading as modal
from handlers.deps import Deps
from handlers.errors import describe
from handlers.ids import Action, Block as B, View as V
from handlers.progress import SlackProgress
from handlers.respond import acking, answer, clicked_id, once_per_click, submitted

log = logging.getLogger("rollback_bot.followups")


class FollowUpBoard:
    """Posts and updates an incident's follow-ups message; sends reminders."""

    def __init__(self, client: WebClient, deps: Deps, progress: SlackProgress) -> None:
        self.client = client
        self.deps = deps
        self.progress = progress
        self.followups = deps.followups
        self.engine = deps.engine

    def show(self, incident_id: int) -> None:
        """Post the message (once, across processes) or update it in place."""
        inc = self.engine.get(incident_id)
        items = self.followups.items(incident_id)
        if not items:
            return
        for hook in self.progress.after_followups:
            hook(incident_id)
        now = self.engine.clock()
        blocks = fv.board_blocks(inc, items, self.followups.prevention(incident_id), now)
        text = fv.board_text(inc, items, now)
        where = self.followups.board(incident_id)
        if where is not None:
            self.client.chat_update(channel=where[0], ts=where[1], text=text, blocks=blocks)
            return
        if not self.followups.claim_board(incident_id):
            return  # another process is posting it
        try:
            channel, thread = self._thread(inc)
            resp = self.client.chat_postMessage(channel=channel, thread_ts=thread, text=text, blocks=blocks)
        except Exception:
            self.followups.release_board(incident_id)
            raise
        self.followups.set_board(incident_id, channel=resp["channel"], message_ts=resp["ts"])

    def post_now(self, incident: Incident) -> None:
        """The creation job's callback: shown in order with the thread's other replies; a failure is raised so
        that the job is retried."""
        done = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.show(incident.id)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting job below
                failure.append(exc)
            finally:
                done.set()

        self.progress.submit(run, ref=incident.ref)
        if not done.wait(60):
            raise TimeoutError(f"the follow-ups message of {incident.ref} was not shown within 60 s")
        if failure:
            raise failure[0]

    def refresh(self, incident_id: int) -> None:
        """After a click or a modal: update the message on the reporting thread (a failure is logged)."""
        self.progress.submit(lambda: self.show(incident_id), ref=f"INC-{incident_id}")

    def remind(self, incident: Incident, item: FollowUp) -> None:
        """An overdue item: a DM to its owner, or a reply in the incident's thread when nobody owns it."""
        inc = self.engine.get(incident.id)
        measures = len(self.followups.prevention(inc.id)) if item.kind == "prevention" else 0
        text = fv.reminder_text(inc, item, self.engine.clock(), self._link(inc), measures=measures)
        if item.owner:
            self._dm(item.owner, text)
        else:
            channel, thread = self._thread(inc)
            self.client.chat_postMessage(channel=channel, thread_ts=thread, text=text)
        self.refresh(inc.id)  # the message marks the item overdue

    def tell_owner(self, item: FollowUp, by: str) -> None:
        """A DM to a person someone else made the owner of a follow-up."""
        if not item.owner or item.owner == by:
            return
        inc = self.engine.get(item.incident_id)
        self._dm(item.owner, fv.assigned_text(inc, item, by, self._link(inc)))

    def _dm(self, user: str, text: str) -> None:
        dm = self.client.conversations_open(users=user)["channel"]["id"]
        self.client.chat_postMessage(channel=dm, text=text)

    def _thread(self, inc: Incident) -> tuple[str, str | None]:
        if inc.channel and inc.message_ts:
            return inc.channel, inc.thread_ts or inc.message_ts
        return self.deps.channel, None  # e.g. a break-glass rollback: no card, so no thread

    def _link(self, inc: Incident) -> str:
        if not (inc.channel and inc.message_ts):
            return ""
        try:
            return self.client.chat_getPermalink(channel=inc.channel, message_ts=inc.message_ts).get("permalink", "")
        except Exception:  # noqa: BLE001 - a reminder without a link is still a reminder
            return ""


def register(app: App, client: WebClient, deps: Deps, progress: SlackProgress) -> FollowUpBoard:
    followups = deps.followups
    board = FollowUpBoard(client, deps, progress)
    followups.register(deps.worker, on_board=board.post_now, on_reminder=board.remind)

    def operator(user: str) -> bool:
        return deps.auth.is_operator(user)

    def check_may_act(incident_id: int, user: str, action: str) -> None:
        if not followups.may_act(incident_id=incident_id, user=user, operator=operator(user)):
            deps.engine.audit(None, actor=user, action=action, outcome="refused", incident_id=incident_id,
                                  reason="not one of the incident's people, an operator or an approver")
            raise NotAuthorized(NOT_ALLOWED)

    def take_followup(followup_id: int, user: str, body: dict, client: WebClient) -> None:
        item = followups.assign(followup_id=followup_id, owner=user, by=user, operator=operator(user))
        board.refresh(item.incident_id)

    def complete_followup(followup_id: int, user: str, body: dict, client: WebClient) -> None:
        item = followups.complete(followup_id=followup_id, by=user, operator=operator(user))
        board.refresh(item.incident_id)

    def open_assign(body: dict, client: WebClient, loading: dict | None = None) -> None:
        followup_id, user = clicked_id(body), body["user"]["id"]
        try:
            if followup_id is None:
                raise UnknownFollowUp("This button names no follow-up.")
            item = followups.get(followup_id)
            check_may_act(item.incident_id, user, "followup_assign")
            if item.done:
                raise Conflict(f"“{item.title}” is already done (by {item.completed_by}).")
            modal.show(client, loading, trigger_id=body["trigger_id"],
                       view=fv.assign_modal(deps.engine.get(item.incident_id), item))
        except Exception as exc:  # noqa: BLE001 - the person is told why, where they look; nothing changed
            answer(client, body, loading, f":no_entry: {describe(exc)}", modal.ASSIGN)

    def open_prevention(body: dict, client: WebClient, loading: dict | None = None) -> None:
        incident_id, user = clicked_id(body), body["user"]["id"]
        try:
            if incident_id is None:
                raise UnknownIncident("This button names no incident.")
            check_may_act(incident_id, user, "prevention")
            modal.show(client, loading, trigger_id=body["trigger_id"], view=fv.prevention_modal(
                deps.engine.get(incident_id), followups.prevention(incident_id)))
        except Exception as exc:  # noqa: BLE001
            answer(client, body, loading, f":no_entry: {describe(exc)}", modal.PREVENTION)

    # -- modal submissions: validated in the ack, the message updated afterwards

    def assign_ack(ack: Ack, body: dict, client: WebClient) -> None:
        def assign(owner: str, meta: dict, user: str) -> None:
            followups.assign(followup_id=int(meta["followup"]), owner=owner, by=user, operator=operator(user))

        if submitted(ack, body, B.FOLLOWUP_OWNER, "owner", assign, key="selected_user",
                     empty="Choose who owns this follow-up."):
            deps.later(after_assign, body=body, client=client)

    def after_assign(body: dict, client: WebClient) -> None:
        meta = json.loads(body["view"].get("private_metadata") or "{}")
        item = followups.get(int(meta["followup"]))
        board.refresh(item.incident_id)
        board.tell_owner(item, body["user"]["id"])

    def prevention_ack(ack: Ack, body: dict, client: WebClient) -> None:
        def add(text: str, meta: dict, user: str) -> None:
            followups.add_prevention(incident_id=int(meta["incident"]), text=text, by=user, operator=operator(user))

        if submitted(ack, body, B.PREVENTION, "text", add, empty="Describe the prevention measure."):
            deps.later(after_prevention, body=body, client=client)

    def after_prevention(body: dict, client: WebClient) -> None:
        meta = json.loads(body["view"].get("private_metadata") or "{}")
        board.refresh(int(meta["incident"]))

    deps.work(after_assign)
    deps.work(after_prevention)
    app.action(Action.FOLLOWUP_TAKE.value)(acking(deps, once_per_click(deps, take_followup)))
    app.action(Action.FOLLOWUP_DONE.value)(acking(deps, once_per_click(deps, complete_followup)))
    app.action(Action.FOLLOWUP_ASSIGN.value)(acking(deps, open_assign, opens=modal.ASSIGN))
    app.action(Action.ADD_PREVENTION.value)(acking(deps, open_prevention, opens=modal.PREVENTION))
    app.view(V.FOLLOWUP_ASSIGN.value)(assign_ack)
    app.view(V.PREVENTION.value)(prevention_ack)
    return board
