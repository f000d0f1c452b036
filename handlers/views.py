"""Modal submissions: the rollback request form, the deny reason, the root cause.

Input is validated inside the modal (``response_action="errors"``); slow work (pre-flight loads and runs the
target model) happens after the ack, and its outcome is posted to the person.
"""

from __future__ import annotations

import math

from slack_bolt import Ack, App
from slack_sdk import WebClient

from core.errors import RollbackError
from core.incidents import Incident
from core.prerollback import confirmed
from handlers.deps import Deps
from handlers.evidence import checks_error, ticked_checks
from handlers.ids import Block as B, View as V
from handlers.progress import SlackProgress
from handlers.respond import post_for_approval, submitted, tell_submitter


def _value(values: dict, block: B, action: str):
    field = (values.get(block.value) or {}).get(action) or {}
    if "selected_option" in field:
        return (field.get("selected_option") or {}).get("value")
    if "selected_options" in field:
        return [o.get("value") for o in field.get("selected_options") or []]
    return field.get("value")


def parse_start(values: dict) -> tuple[dict, dict]:
    """The request form's fields, and per-block errors for anything invalid."""
    errors: dict[str, str] = {}
    model = _value(values, B.MODEL, "start_model_select")
    backup = _value(values, B.BACKUP, "backup")
    reason = (_value(values, B.REASON, "reason") or "").strip()
    severity = _value(values, B.SEVERITY, "severity") or "high"
    loss_text = _value(values, B.LOSS, "loss")
    keep = _value(values, B.KEEP_HALTED, "keep_halted") or []
    if not model or model == "-":
        errors[B.MODEL.value] = "Choose a model."
    if not backup:
        errors[B.BACKUP.value if model else B.MODEL.value] = "Choose a backup to roll back to."
    if not reason:
        errors[B.REASON.value] = "A reason is required."
    loss = None
    if loss_text not in (None, ""):
        try:
            loss = float(loss_text)
            if not math.isfinite(loss) or loss < 0:
                raise ValueError
        except ValueError:
            errors[B.LOSS.value] = "Enter a non-negative number."
    if severity not in ("critical", "high", "medium", "low"):
        errors[B.SEVERITY.value] = "Choose a severity."
    fields = dict(model=model, backup=backup, reason=reason, severity=severity, estimated_loss=loss,
                  keep_halted="keep" in keep)
    return fields, errors


def register(app: App, deps: Deps, progress: SlackProgress) -> None:
    services = deps.services
    engine = deps.engine

    def start_ack(ack: Ack, body: dict, client: WebClient) -> None:
        fields, errors = parse_start(body["view"]["state"]["values"])
        user = body["user"]["id"]
        if not errors and not deps.auth.is_operator(user):
            errors[B.MODEL.value] = "Only operators may request a rollback (OPERATORS)."
            engine.audit(None, actor=user, action="request", outcome="refused", reason="not an operator")
        if not errors:
            try:
                existing = services.open_rollback(model=fields["model"])
                if existing is not None:
                    errors[B.MODEL.value] = f"{existing.ref} is already open for this model ({existing.state})."
            except RollbackError as exc:
                errors[B.MODEL.value] = str(exc)[:150]
        if not errors:
            try:  # the menus search as one types: a backup chosen for another model must not slip through
                deps.registry.backup_dir(fields["model"], fields["backup"])
            except RollbackError as exc:
                errors[B.BACKUP.value] = str(exc)[:150]
        checks = checks_error(body["view"]["state"]["values"])  # the runbook's pre-rollback checks, all required
        if checks:
            errors[B.CHECKS.value] = checks
        if errors:
            ack(response_action="errors", errors=errors)
        else:
            ack()
            deps.later(start_submit, body=body, client=client)

    def start_submit(body: dict, client: WebClient) -> None:
        fields, errors = parse_start(body["view"]["state"]["values"])
        if errors or checks_error(body["view"]["state"]["values"]):
            return
        user = body["user"]["id"]
        if not services.claim_delivery(f"view:{body['view'].get('id')}:{body['view'].get('hash', '')}:{body.get('trigger_id')}"):
            return

        def request() -> Incident:
            confirmations = confirmed(by=user, via="the request form", at=engine.clock(),
                                      keys=ticked_checks(body["view"]["state"]["values"]))
            return engine.request_rollback(requested_by=user, channel=deps.channel, confirmations=confirmations,
                                           **fields)[0]

        tell_submitter(client, body, post_for_approval(deps, progress, request, lambda inc: f"Rollback request {inc.ref}"))

    deps.work(start_submit)

    def deny_ack(ack: Ack, body: dict) -> None:
        def deny(note: str, meta: dict, user: str) -> None:
            inc = engine.get(int(meta["incident"]))
            allowed = deps.auth.is_approver(user) or user == inc.requested_by
            if inc.kind == "fix":
                services.deny_fix(incident_id=inc.id, user=user, note=note, allowed=allowed)
            else:
                engine.deny(incident_id=inc.id, user=user, note=note, allowed=allowed)

        submitted(ack, body, B.DENY_REASON, "reason", deny, empty="Say why the rollback is denied.")

    def root_cause_ack(ack: Ack, body: dict) -> None:
        def record(text: str, meta: dict, user: str) -> None:
            services.set_root_cause(incident_id=int(meta["incident"]), text=text, user=user,
                                    is_approver=deps.auth.is_approver(user))

        submitted(ack, body, B.ROOT_CAUSE, "text", record, empty="Describe the root cause.")

    app.view(V.START.value)(start_ack)
    app.view(V.DENY.value)(deny_ack)
    app.view(V.ROOT_CAUSE.value)(root_cause_ack)
