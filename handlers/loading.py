"""Modals open at once.

Slack's ``trigger_id`` opens a view only within 3 seconds, once. A form needs database reads first (and, for a
rollback request, backup scoring), which may wait behind slow work such as twenty ``/rollback diagnose``. So a
small *loading* view is opened with the trigger straight after the ack (by ``serve`` itself, before the request
is handed to the work process; or on a pool of its own in ``Deps.later_modal``), and the work fills it in
with ``views.update`` (by view id, with the hash Slack returned), or turns it into a notice when there is
nothing to fill in (a refusal, an error).

A loading view travels with the work as ``{"id": ..., "hash": ...}``; ``{}`` means it could not be opened (the
work then tries ``views.open`` with the trigger itself), ``None`` that nobody tried yet.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import MarkdownTextObject, SectionBlock
from slack_sdk.models.views import View

from core.prerollback import split_confirm
from handlers.ids import Action, View as V

log = logging.getLogger("rollback_bot.loading")

__all__ = ["ACCEPT", "ASSIGN", "DENY", "LOSS", "PREVENTION", "RETRAIN", "ROOT_CAUSE", "START", "loading_view",
           "modal_for", "open_loading", "show", "start_fields", "tell"]

START, DENY, ROOT_CAUSE, ACCEPT, RETRAIN = "start", "deny", "root_cause", "accept", "retrain"
ASSIGN, PREVENTION, LOSS = "followup_assign", "prevention", "loss"
TITLES = {START: "Request a rollback", DENY: "Deny the request", ROOT_CAUSE: "Add root cause",
          ACCEPT: "Accept with a reason", RETRAIN: "Retrain model", ASSIGN: "Assign a follow-up",
          PREVENTION: "Add prevention measure", LOSS: "Update estimated loss"}
_CLICKS = {Action.DENY.value: DENY, Action.ADD_ROOT_CAUSE.value: ROOT_CAUSE, Action.ROLLBACK_AGAIN.value: START,
           Action.ACCEPT.value: ACCEPT, Action.FIX_RETRAIN.value: RETRAIN, Action.FOLLOWUP_ASSIGN.value: ASSIGN,
           Action.ADD_PREVENTION.value: PREVENTION, Action.UPDATE_LOSS.value: LOSS}

Loading = dict[str, str]


def start_fields(args: list[str]) -> tuple[str | None, str | None, str]:
    """``/rollback start [MODEL [BACKUP]] [reason…] [--confirm]`` as (model, backup, reason); the form opens unless
    all three are given."""
    args, _ = split_confirm(args)
    model = args[0] if args else None
    backup = args[1] if len(args) > 1 and args[1].startswith("backup_") else None
    reason = " ".join(args[2:] if backup else args[1:]).strip()
    return model, backup, reason


def modal_for(body: dict) -> str | None:
    """The modal a request opens, known from the request alone (no database read): ``START`` for a
    ``/rollback start`` missing an argument, the kind of a button that opens a form (``_CLICKS``); else None."""
    if not body.get("trigger_id"):
        return None
    if body.get("command"):
        verb, _, rest = (body.get("text") or "").strip().partition(" ")
        if verb.lower() != "start":
            return None
        model, backup, reason = start_fields(rest.split())
        return None if model and backup and reason else START
    if body.get("type") == "block_actions":
        actions = body.get("actions") or [{}]
        return _CLICKS.get(actions[0].get("action_id", "")) if isinstance(actions[0], dict) else None
    return None


def loading_view(kind: str) -> dict:
    return View(type="modal", callback_id=V.LOADING.value, title=TITLES.get(kind, "Rollback bot"), close="Cancel",
                blocks=[SectionBlock(text=MarkdownTextObject(text=":hourglass_flowing_sand: Loading…"))]).to_dict()


def open_loading(client: WebClient, trigger_id: str, kind: str) -> Loading:
    """Open the loading view now; ``{}`` when Slack refused (the error is logged)."""
    try:
        view = client.views_open(trigger_id=trigger_id, view=loading_view(kind))["view"]
    except SlackApiError as exc:
        log.warning("the loading view could not be opened: %s", exc.response.get("error"))
        return {}
    return {"id": view["id"], "hash": view.get("hash", "")}


def show(client: WebClient, loading: Loading | None, *, trigger_id: str, view: dict) -> Any:
    """Fill the loading view with ``view``; when there is none, open ``view`` with the trigger."""
    if loading:
        return client.views_update(view_id=loading["id"], hash=loading.get("hash") or None, view=view)
    return client.views_open(trigger_id=trigger_id, view=view)


def notice_view(title: str, text: str) -> dict:
    from handlers.blocks import clip, esc

    return View(type="modal", callback_id=V.NOTICE.value, title=clip(title, 24), close="Close",
                blocks=[SectionBlock(text=MarkdownTextObject(text=clip(esc(text), 2900)))]).to_dict()


def tell(client: WebClient, loading: Loading | None, text: str, *, kind: str) -> bool:
    """Show ``text`` in the loading view (a refusal, an error); False when there is no loading view to use."""
    if not loading:
        return False
    try:
        client.views_update(view_id=loading["id"], hash=loading.get("hash") or None,
                            view=notice_view(TITLES.get(kind, "Rollback bot"), text))
        return True
    except SlackApiError as exc:
        log.warning("could not show a notice in the loading view: %s", exc.response.get("error"))
        return False
