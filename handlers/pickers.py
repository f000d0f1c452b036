"""Options for the request form's model and backup menus (``external_select``), served in the ack.

Slack sends a ``block_suggestion`` request on every keystroke, with the typed text as ``value``, and shows what
the acknowledgement carries: at most 100 options, best matches first. Nothing slow runs here (no model is
loaded): the lists come from ``core.picker``. The backup menu offers the backups of the model chosen in the
form (its state), or of the model the form was opened for (``private_metadata``); the recommended backup,
computed when the model was chosen, comes first and is starred.
"""

from __future__ import annotations

import json
import logging

from slack_bolt import Ack, App

from core.errors import RollbackError
from core.picker import Picker
from handlers import incident_forms as forms
from handlers.deps import Deps
from handlers.ids import Action, Block as B

log = logging.getLogger("rollback_bot.pickers")


def chosen_model(view: dict) -> str | None:
    """The model selected in the request form's state, if any."""
    field = ((view.get("state") or {}).get("values") or {}).get(B.MODEL.value, {}).get(Action.MODAL_MODEL_SELECT.value)
    return ((field or {}).get("selected_option") or {}).get("value") or None


def register(app: App, deps: Deps) -> None:
    picker = Picker(deps.registry)
    picker.warm()

    def model_options(ack: Ack, payload: dict) -> None:
        names = picker.models(str(payload.get("value") or ""))
        ack(options=[forms.model_option(n) for n in names])

    def backup_options(ack: Ack, body: dict, payload: dict) -> None:
        view = body.get("view") or {}
        try:
            meta = json.loads(view.get("private_metadata") or "{}")
        except ValueError:
            meta = {}
        model = chosen_model(view) or meta.get("model")
        if not isinstance(model, str) or not model:
            return ack(options=[])
        recommended = meta.get("recommended") if meta.get("model") == model else None
        try:
            backups = picker.backups(model, str(payload.get("value") or ""), recommended=recommended)
        except RollbackError as exc:  # an unknown or invalid model: nothing to offer
            log.info("no backup options for %r: %s", model[:80], exc)
            backups = []
        ack(options=[forms.backup_option(b, recommended) for b in backups])

    app.options(Action.MODAL_MODEL_SELECT.value)(model_options)
    app.options(Action.MODAL_BACKUP_SELECT.value)(backup_options)
