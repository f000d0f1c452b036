"""The *Retrain* quick fix in Slack (core.retrain): the button on `/rollback diagnose`, the request form with an
editable training start date, the approval text, and the command's output followed in the thread (one message,
updated with ``chat.update`` as the command runs).
"""

from __future__ import annotations

import json
from datetime import date

from slack_bolt import Ack, App
from slack_sdk import WebClient
from slack_sdk.models.blocks import ButtonElement, DatePickerElement, InputBlock, PlainTextInputElement
from slack_sdk.models.views import View

from core import fixes
from core.incidents import Event, Incident
from core.retrain import OUTPUT_EVENT
from handlers import loading as modal
from handlers.blocks import clip, esc, section
from handlers.deps import Deps
from handlers.errors import describe
from handlers.ids import Action, Block as B, View as V
from handlers.progress import SlackProgress
from handlers.respond import acking, answer, post_for_approval, require_operator, tell_submitter

START_ACTION = "start_date"
REASON_ACTION = "reason"


def retrain_button(model: str, start: date) -> ButtonElement:
    return ButtonElement(text="Retrain", action_id=Action.FIX_RETRAIN.value,
                         value=json.dumps({"model": model, "start": start.isoformat()}))


def retrain_modal(model: str, start: date, channel: str | None, response_url: str | None = None) -> View:
    """The retrain form; ``response_url`` (the click's) is where the answer to its submission goes."""
    return View(
        type="modal", callback_id=V.RETRAIN.value, title="Retrain model", submit="Request", close="Cancel",
        private_metadata=json.dumps({"model": model, "channel": channel, "response_url": response_url}),
        blocks=[
            section(f"Retrain *{esc(model)}* with `RETRAIN_COMMAND`. The result becomes a new `backup_retrain_*`"
                    " candidate after validation; production is not touched. A second person approves the run."),
            InputBlock(block_id=B.RETRAIN_START.value, label="Training data from",
                       hint="Default: the regime change the diagnostics found, else one year back.",
                       element=DatePickerElement(action_id=START_ACTION, initial_date=start.isoformat())),
            InputBlock(block_id=B.REASON.value, label="Reason", optional=True,
                       element=PlainTextInputElement(action_id=REASON_ACTION, max_length=500)),
        ],
    )


def approve_confirm_text(incident: Incident) -> str:
    """What the Approve button's confirmation says for a retrain request."""
    plan = incident.plan or {}
    return (f"Run RETRAIN_COMMAND for {incident.model_name} on data from {plan.get('start_date')}. Its output is"
            " validated and kept as a new backup_retrain_* candidate; production is not touched (deploying it is a"
            " separate, approved rollback).")


def output_text(incident: Incident, lines: list[str], running: bool) -> str:
    shown = clip("\n".join(lines).replace("```", "'''"), 2800) or "(no output yet)"
    head = ":hourglass_flowing_sand: Retrain running" if running else ":checkered_flag: Retrain command ended"
    return f"{head} ({esc(incident.ref)}), last lines:\n```{shown}```"


def register(app: App, deps: Deps, progress: SlackProgress) -> None:
    services = deps.services
    engine = deps.engine
    output_ts: dict[int, str] = {}  # incident id -> ts of its output message in the thread

    def show_output(inc: Incident, event: Event) -> None:
        if not (inc.channel and inc.message_ts):
            return
        text = output_text(inc, event.detail.get("lines") or [], bool(event.detail.get("running")))
        ts = output_ts.get(inc.id)
        if ts is None:
            resp = progress.client.chat_postMessage(channel=inc.channel, thread_ts=inc.thread_ts or inc.message_ts,
                                                    text=text)
            output_ts[inc.id] = resp["ts"]
        else:
            progress.client.chat_update(channel=inc.channel, ts=ts, text=text)

    progress.on_step[OUTPUT_EVENT] = show_output

    def open_retrain_form(body: dict, client: WebClient, loading: dict | None = None) -> None:
        action = (body.get("actions") or [{}])[0]
        user = body["user"]["id"]
        try:
            value = json.loads(action.get("value") or "{}")
            require_operator(deps, user, action="fix_request", to="request a quick fix")
            start = date.fromisoformat(value["start"])
            modal.show(client, loading, trigger_id=body["trigger_id"], view=retrain_modal(
                str(value["model"]), start, (body.get("channel") or {}).get("id"), body.get("response_url")))
        except Exception as exc:  # noqa: BLE001
            answer(client, body, loading, f":no_entry: {describe(exc)}", modal.RETRAIN)

    def retrain_submit(body: dict, client: WebClient) -> None:
        meta = json.loads(body["view"].get("private_metadata") or "{}")
        values = body["view"]["state"]["values"]
        user = body["user"]["id"]
        start = date.fromisoformat(((values.get(B.RETRAIN_START.value) or {}).get(START_ACTION) or {})["selected_date"])
        reason = (((values.get(B.REASON.value) or {}).get(REASON_ACTION) or {}).get("value") or "").strip()

        def request() -> Incident:
            require_operator(deps, user, action="fix_request", to="request a quick fix")
            return services.request_fix(fix=fixes.RETRAIN, requested_by=user, model=meta.get("model"),
                                        channel=deps.channel, start_date=start, reason=reason)

        tell_submitter(client, body, post_for_approval(
            deps, progress, request, lambda inc: f"{inc.ref} (retrain from {start.isoformat()})"))

    deps.work(retrain_submit)

    def retrain_ack(ack: Ack, body: dict, client: WebClient) -> None:
        values = body["view"]["state"]["values"]
        picked = ((values.get(B.RETRAIN_START.value) or {}).get(START_ACTION) or {}).get("selected_date")
        try:
            start = date.fromisoformat(picked or "")
        except ValueError:
            return ack(response_action="errors", errors={B.RETRAIN_START.value: "Choose the first day of training data."})
        if start > engine.clock().date():
            return ack(response_action="errors", errors={B.RETRAIN_START.value: "The start date is in the future."})
        ack()
        deps.later(retrain_submit, body=body, client=client)

    app.action(Action.FIX_RETRAIN.value)(acking(deps, open_retrain_form, opens=modal.RETRAIN))
    app.view(V.RETRAIN.value)(retrain_ack)

