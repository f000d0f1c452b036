"""Button listeners: Approve, Deny, Take over (a watchdog proposal), Proceed anyway and Abandon (a halt that is
not effective), Add root cause, and the model picker inside the request modal.

Clicks are acked at once; the work runs afterwards on the app's pool, and decisions on a lane of their own
(``Deps.decisions``), so slow commands never delay them. Exactly-once is the engine's conditional state change
in PostgreSQL: of ten approvers clicking together one wins, the others are told who did.
"""

from __future__ import annotations

import json

from slack_bolt import App
from slack_sdk import WebClient

from core import access, halt_watch
from core.errors import NotAuthorized, RollbackError
from core.incidents import Incident, already_decided
from handlers import incident_forms as forms
from handlers import loading as modal
from handlers.deps import Deps
from handlers.errors import describe
from handlers.ids import Action
from handlers.progress import SlackProgress
from handlers.respond import (acking, answer, clicked_id, first_delivery, once_per_click, post_for_approval,
                              require_operator, whisper)


def register(app: App, deps: Deps, progress: SlackProgress) -> None:
    services = deps.services
    engine = deps.engine

    def approve(incident_id: int, user: str, body: dict, client: WebClient) -> None:
        if engine.get(incident_id).kind == "fix":
            services.approve_fix(incident_id=incident_id, approver=user, allowed=deps.auth.is_approver(user))
        else:
            engine.approve(incident_id=incident_id, approver=user, allowed=deps.auth.is_approver(user))

    def deny(body: dict, client: WebClient, loading: dict | None = None) -> None:
        incident_id = clicked_id(body)
        user = body["user"]["id"]
        if incident_id is None:
            return answer(client, body, loading, ":no_entry: This button names no incident.", modal.DENY)
        if not first_delivery(deps, body):
            return
        try:
            inc = engine.get(incident_id)
            if not (deps.auth.is_approver(user) or user == inc.requested_by):
                engine.audit(None, actor=user, action="deny", outcome="refused", incident_id=incident_id,
                             reason="not an approver")
                raise NotAuthorized("Only approvers or the requester may deny a rollback.")
            if inc.state != "requested":
                raise already_decided(inc)
            modal.show(client, loading, trigger_id=body["trigger_id"], view=forms.deny_modal(
                inc, channel=(body.get("channel") or {}).get("id"), message_ts=(body.get("message") or {}).get("ts")))
        except Exception as exc:  # noqa: BLE001
            answer(client, body, loading, f":no_entry: {describe(exc)}", modal.DENY)

    # Take over / Proceed anyway / Abandon: one call into core; refusals are whispered to the person.
    def take_over(incident_id: int, user: str, body: dict, client: WebClient) -> None:
        access.take_over(engine, incident_id=incident_id, user=user, allowed=deps.auth.is_operator(user))

    def proceed_anyway(incident_id: int, user: str, body: dict, client: WebClient) -> None:
        halt_watch.proceed_anyway(engine, incident_id=incident_id, approver=user, allowed=deps.auth.is_approver(user))

    def abandon(incident_id: int, user: str, body: dict, client: WebClient) -> None:
        allowed = deps.auth.is_approver(user) or user == engine.get(incident_id).requested_by
        halt_watch.abandon(engine, incident_id=incident_id, user=user, allowed=allowed)

    def add_root_cause(body: dict, client: WebClient, loading: dict | None = None) -> None:
        incident_id = clicked_id(body)
        if incident_id is None:
            return answer(client, body, loading, ":no_entry: This button names no incident.", modal.ROOT_CAUSE)
        try:
            inc = engine.get(incident_id)
            user = body["user"]["id"]
            if not access.may_annotate(inc, user, is_approver=deps.auth.is_approver(user),
                                       owns_followup=deps.followups.owns(incident_id=incident_id, user=user)):
                engine.audit(None, actor=user, action="root_cause", outcome="refused", incident_id=incident_id,
                             reason="not the incident's requester or approver, nor an approver")
                raise NotAuthorized("Only the incident's requester and approver, the owners of its follow-ups, and"
                                    " approvers, may add its root cause.")
            modal.show(client, loading, trigger_id=body["trigger_id"], view=forms.root_cause_modal(inc))
        except Exception as exc:  # noqa: BLE001
            answer(client, body, loading, f":no_entry: {describe(exc)}", modal.ROOT_CAUSE)

    def model_selected(body: dict, client: WebClient) -> None:
        view = body.get("view") or {}
        model = ((body.get("actions") or [{}])[0].get("selected_option") or {}).get("value")
        meta = json.loads(view.get("private_metadata") or "{}")
        try:
            form = services.start_form(model=model)
        except RollbackError:
            form = services.start_form()
        client.views_update(
            view_id=view.get("id"), hash=view.get("hash"),
            view=forms.start_modal(model=form.model, backups=form.backups,
                                recommended=form.recommended, channel=meta.get("channel"),
                                response_url=meta.get("response_url")),
        )

    def quick_fix(body: dict, client: WebClient) -> None:
        """A quick-fix button from `/rollback diagnose`: it opens a request that a second person approves."""
        action = (body.get("actions") or [{}])[0]
        user = body["user"]["id"]
        model = action.get("value") or None
        if not first_delivery(deps, body):
            return

        def request() -> Incident:
            require_operator(deps, user, action="fix_request", to="request a quick fix")
            if action.get("action_id") == Action.FIX_RESTORE_MODEL.value:
                return services.request_model_restore(model=model, requested_by=user, channel=deps.channel)
            return services.request_fix(fix="refresh_feature_view", requested_by=user, model=model,
                                        channel=deps.channel)

        whisper(client, body, post_for_approval(deps, progress, request))

    def resume_override(incident_id: int, user: str, body: dict, client: WebClient) -> None:
        """*Override* on a refused resume: a second, different approver resumes trading on those files."""
        inc, result = engine.approve_resume_override(incident_id=incident_id, approver=user,
                                                     allowed=deps.auth.is_approver(user))
        client.chat_postMessage(
            channel=deps.channel,
            text=f":warning: <@{user}> confirmed <@{inc.requested_by}>'s override ({inc.ref}): automated trading"
                 + (f" resumed on mismatched files; {result.restored} clients back to their own settings."
                    if result.resumed else " is released by this override; other holders keep it halted."))

    app.action(Action.APPROVE.value)(acking(deps, once_per_click(deps, approve), urgent=True))
    app.action(Action.RESUME_OVERRIDE.value)(acking(deps, once_per_click(deps, resume_override), urgent=True))
    app.action(Action.FIX_REFRESH_VIEW.value)(acking(deps, quick_fix))
    app.action(Action.FIX_RESTORE_MODEL.value)(acking(deps, quick_fix))
    app.action(Action.DENY.value)(acking(deps, deny, urgent=True, opens=modal.DENY))
    app.action(Action.TAKE_OVER.value)(acking(deps, once_per_click(deps, take_over), urgent=True))
    app.action(Action.PROCEED_ANYWAY.value)(acking(deps, once_per_click(deps, proceed_anyway), urgent=True))
    app.action(Action.ABANDON.value)(acking(deps, once_per_click(deps, abandon), urgent=True))
    app.action(Action.ADD_ROOT_CAUSE.value)(acking(deps, add_root_cause, opens=modal.ROOT_CAUSE))
    app.action(Action.MODAL_MODEL_SELECT.value)(acking(deps, model_selected))
