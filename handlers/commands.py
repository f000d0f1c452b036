"""`/rollback …` listeners: ack at once, parse, one call into core, render, respond.

Every command is acked at once; the work runs afterwards on the app's pool (``Deps.later``). A delivery is
handled once: the command's ``trigger_id`` is claimed in PostgreSQL, so Slack retries (and a second bot
process receiving the same delivery) do nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from core.errors import FilesMismatch
from core.prerollback import confirmed, split_confirm
from core.loss import money, parse_amount
from handlers import blocks as views
from handlers import followup_views
from handlers import incident_forms as forms
from handlers import incident_views as iv
from handlers import loading as modal
from handlers.deps import Deps
from handlers.doctor import doctor_blocks, slack_checks
from handlers.errors import describe, guarded
from handlers.evidence import confirm_prompt
from handlers.ids import Command
from handlers.progress import SlackProgress
from handlers.replies import PrivateReply


@dataclass(frozen=True)
class ParsedCommand:
    verb: str
    args: list[str]
    rest: str
    user_id: str
    channel_id: str
    trigger_id: str
    loading: dict | None = None  # the loading modal opened for this command (handlers/loading.py)

    @classmethod
    def from_body(cls, body: dict) -> ParsedCommand:
        text = (body.get("text") or "").strip()
        verb, _, rest = text.partition(" ")
        return cls(
            verb=verb.lower() or "help",
            args=rest.split(),
            rest=rest.strip(),
            user_id=body.get("user_id", ""),
            channel_id=body.get("channel_id", ""),
            trigger_id=body.get("trigger_id", ""),
        )


# Subcommands whose ack is empty (their work runs afterwards); `help` and unknown ones are answered in the ack.
WORK_VERBS = frozenset({"status", "backups", "incidents", "start", "halt", "resume", "diagnose", "report", "doctor",
                        "followups", "loss"})

USAGE = {
    "backups": "Usage: `/rollback backups MODEL` (see `/rollback status` for the models).",
    "report": "Usage: `/rollback report INCIDENT` (for example `/rollback report INC-12`).",
    "diagnose": "Usage: `/rollback diagnose MODEL`.",
    "followups": "Usage: `/rollback followups [INCIDENT]` (for example `/rollback followups INC-12`).",
    "loss": "Usage: `/rollback loss INCIDENT AMOUNT` (for example `/rollback loss INC-12 250000`).",
}


def parse_incident_ref(text: str) -> int | None:
    text = text.strip().upper().removeprefix("INC-").removeprefix("#")
    return int(text) if text.isdigit() and len(text) < 12 else None


def register(app: App, deps: Deps, progress: SlackProgress) -> None:
    services = deps.services
    engine = deps.engine
    handlers: dict[str, Callable[[ParsedCommand, Respond, WebClient], None]] = {}

    def on(verb: str) -> Callable:
        def deco(fn: Callable[[ParsedCommand, Respond, WebClient], None]) -> Callable:
            handlers[verb] = fn
            return fn

        return deco

    def tell(respond: Respond, text: str) -> None:
        respond(text=text, blocks=views.error_blocks(text), response_type="ephemeral", replace_original=False)

    def refuse(cmd: ParsedCommand, respond: Respond, action: str, why: str, client: WebClient | None = None) -> None:
        engine.audit(None, actor=cmd.user_id, action=action, outcome="refused", reason=why)
        if client is None or not modal.tell(client, cmd.loading, why, kind=modal.START):
            tell(respond, why)

    def on_command(ack: Ack, body: dict, respond: Respond, client: WebClient, context: dict) -> None:
        cmd = ParsedCommand.from_body(body)
        if cmd.verb == "help" or cmd.verb not in handlers:
            prefix = "" if cmd.verb == "help" else f"Unknown subcommand `{views.esc(cmd.verb[:40])}`.\n\n"
            ack(text=prefix + views.HELP, blocks=views.finish([views.section(prefix + views.HELP)]),
                response_type="ephemeral")
            return
        ack()
        kind = modal.modal_for(body)
        if kind is not None:  # a form: its loading view opens now, whatever the work waits behind
            deps.later_modal(run_command, kind=kind, trigger_id=cmd.trigger_id, client=client,
                             loading=context.get("loading"), body=body, respond=respond)
        else:
            deps.later(run_command, body=body, respond=respond, client=client)

    @guarded
    def run_command(body: dict, respond: Respond, client: WebClient, loading: dict | None = None) -> None:
        cmd = ParsedCommand.from_body(body)
        handler = handlers.get(cmd.verb)
        if handler is None:
            return
        if cmd.trigger_id and not services.claim_delivery(f"command:{cmd.trigger_id}"):
            return  # a retried or duplicate delivery: already handled once
        reply = PrivateReply(respond, client, cmd.user_id)
        if loading is None:
            return handler(cmd, reply, client)
        try:
            handler(replace(cmd, loading=loading), reply, client)
        except Exception as exc:  # noqa: BLE001 - the person is looking at the loading view: say it there
            if not modal.tell(client, loading, describe(exc), kind=modal.START):
                raise

    deps.work(run_command)

    # ------------------------------------------------------------------------------------ queries

    @on("status")
    def status(cmd: ParsedCommand, respond: Respond, client: WebClient) -> None:
        if cmd.args:
            return status_of_model(cmd, respond, client)
        report = services.status()
        respond(text="Production models", blocks=views.status_blocks(report), response_type="ephemeral")

    def heavy(cmd: ParsedCommand, command: str) -> None:
        """Operators, approvers and stakeholders only, a few a minute per person (raises with the reason)."""
        services.heavy_command(user=cmd.user_id, command=command, allowed=deps.auth.may_look(cmd.user_id))

    def status_of_model(cmd: ParsedCommand, respond: Respond, client: WebClient) -> None:
        """`/rollback status MODEL`: its backups and recommendation, and its performance chart in a DM."""
        heavy(cmd, "status MODEL")
        report = services.backups(model=cmd.args[0])
        respond(text=f"Status of {report.model}", blocks=views.backups_blocks(report), response_type="ephemeral")
        png = services.model_chart(model=report.model)
        dm = client.conversations_open(users=cmd.user_id)["channel"]["id"]
        client.files_upload_v2(content=png, filename=f"{report.model}-performance.png",
                               title=f"{report.model}: daily IC and rolling Sharpe, last 30 days", channel=dm,
                               initial_comment=f"Performance of {report.model} (production beside the recommended "
                                               "backup), as you asked with `/rollback status`.")

    @on("report")
    def report(cmd: ParsedCommand, respond: Respond, client: WebClient) -> None:
        incident_id = parse_incident_ref(cmd.args[0]) if len(cmd.args) == 1 else None
        if incident_id is None:
            return tell(respond, USAGE["report"])
        path = services.report(incident_id=incident_id, actor=cmd.user_id,
                               is_approver=deps.auth.is_approver(cmd.user_id))
        inc = engine.get(incident_id)
        where = f"<#{inc.channel}>" if inc.channel else f"<#{deps.channel}>"
        respond(text=f"The report of {inc.ref} ({path.name}) is posted again in its thread in {where}.",
                response_type="ephemeral", replace_original=False)

    def heavy_on_model(cmd: ParsedCommand, respond: Respond) -> str | None:
        """The MODEL of `/rollback {backups,diagnose} MODEL` once ``heavy`` let it through; None when the usage was
        told instead."""
        if len(cmd.args) != 1:
            tell(respond, USAGE[cmd.verb])
            return None
        heavy(cmd, cmd.verb)
        return cmd.args[0]

    @on("backups")
    def backups(cmd: ParsedCommand, respond: Respond, client: WebClient) -> None:
        if (model := heavy_on_model(cmd, respond)) is None:
            return
        report = services.backups(model=model)
        respond(text=f"Backups of {report.model}", blocks=views.backups_blocks(report), response_type="ephemeral")

    @on("incidents")
    def incidents(cmd: ParsedCommand, respond: Respond, client: WebClient) -> None:
        items = engine.list_incidents(limit=40)
        respond(text="Incidents", blocks=iv.incidents_blocks(items, engine.clock()), response_type="ephemeral")

    @on("diagnose")
    def diagnose(cmd: ParsedCommand, respond: Respond, client: WebClient) -> None:
        if (model := heavy_on_model(cmd, respond)) is None:
            return
        report = services.diagnose(model=model)
        respond(text=f"Diagnostics of {report.model}: {report.likely_cause}",
                blocks=views.diagnostics_blocks(report, retrain_from=services.retrain_start(report)),
                response_type="ephemeral", replace_original=False)

    @on("doctor")
    def doctor(cmd: ParsedCommand, respond: Respond, client: WebClient) -> None:
        if not deps.auth.is_approver(cmd.user_id):
            return refuse(cmd, respond, "doctor", "Only approvers may run the platform check (APPROVERS).")
        run = services.doctor(source=f"/rollback doctor by {cmd.user_id}", chat=slack_checks(client, deps.channel))
        respond(text=f"rollback-bot doctor: {run.summary()}", blocks=doctor_blocks(run), response_type="ephemeral",
                replace_original=False)

    @on("followups")
    def followups(cmd: ParsedCommand, respond: Respond, client: WebClient) -> None:
        incident_id = parse_incident_ref(cmd.args[0]) if len(cmd.args) == 1 else None
        if cmd.args and incident_id is None:
            return tell(respond, USAGE["followups"])
        items = deps.followups.listing(incident_id=incident_id)
        inc = engine.get(incident_id) if incident_id is not None else None
        respond(text=f"Follow-ups of {inc.ref}" if inc else "Open follow-ups", response_type="ephemeral",
                blocks=followup_views.listing_blocks(items, engine.clock(), incident=inc), replace_original=False)

    # ------------------------------------------------------------------------------------ actions

    @on("start")
    def start(cmd: ParsedCommand, respond: Respond, client: WebClient) -> None:
        if not deps.auth.is_operator(cmd.user_id):
            return refuse(cmd, respond, "request", "Only operators may request a rollback (OPERATORS).", client)
        args, confirm = split_confirm(cmd.args)  # `--confirm`: the runbook's pre-rollback checks hold
        model, backup, reason = modal.start_fields(args)
        if model is not None:
            existing = services.open_rollback(model=model)  # validates the name; points to an open one
            if existing is not None:
                text = f"{model} already has an open rollback, {existing.ref} ({existing.state}); nothing new was posted."
                if not modal.tell(client, cmd.loading, text, kind=modal.START):
                    tell(respond, text)
                return
        if model and backup and reason:
            if not confirm:  # nothing is posted or changed: the checklist and the command with --confirm
                deps.registry.backup_dir(model, backup)  # a wrong backup is said now, not after confirming
                text, blocks = confirm_prompt(model, backup, reason)
                return respond(text=text, blocks=blocks, response_type="ephemeral", replace_original=False)
            inc, _ = engine.request_rollback(model=model, backup=backup, reason=reason, requested_by=cmd.user_id,
                                             channel=deps.channel, confirmations=confirmed(
                                                 by=cmd.user_id, via="/rollback start --confirm", at=engine.clock()))
            inc = progress.post_card(inc)
            link = client.chat_getPermalink(channel=inc.channel, message_ts=inc.message_ts).get("permalink", "")
            respond(text=f"Rollback request {inc.ref} posted in <#{deps.channel}> for a second person to approve. {link}",
                    response_type="ephemeral", replace_original=False)
            return
        view = services.start_form(model=model)
        modal.show(client, cmd.loading, trigger_id=cmd.trigger_id, view=forms.start_modal(
            model=view.model, backups=view.backups, recommended=view.recommended, channel=cmd.channel_id,
            reason=reason or None, response_url=getattr(respond, "response_url", None)))

    @on("halt")
    def halt(cmd: ParsedCommand, respond: Respond, client: WebClient) -> None:
        if not deps.auth.is_operator(cmd.user_id):
            return refuse(cmd, respond, "halt", "Only operators may halt trading (OPERATORS).")
        inc = engine.halt_trading(user=cmd.user_id, reason=cmd.rest or "manual halt from Slack")
        inc = progress.post_card(inc)
        progress.reply(inc, f":octagonal_sign: <@{cmd.user_id}> halted automated trading: {views.esc(inc.reason)}."
                            " Each client's own settings are saved; `/rollback resume` (an approver) restores them.")
        respond(text=f"Automated trading halted ({inc.ref}).", response_type="ephemeral", replace_original=False)

    @on("resume")
    def resume(cmd: ParsedCommand, respond: Respond, client: WebClient) -> None:
        if not deps.auth.is_approver(cmd.user_id):
            return refuse(cmd, respond, "resume", "Only approvers may resume trading (APPROVERS).")
        try:
            result = engine.resume_trading(user=cmd.user_id)
        except FilesMismatch as exc:  # a second, different approver may override: posted for them
            inc, new = engine.request_resume_override(user=cmd.user_id, allowed=True)
            if new:
                inc = progress.post_card(inc)
            return tell(respond, f"{exc} {inc.ref} in <#{deps.channel}> asks a second, different approver to press"
                                 " *Override*.")
        if not result.halt_id:
            return tell(respond, "Trading is not halted; nothing to resume.")
        if not result.resumed:  # e.g. a rollback request whose *Halt now* holds it (core/halt_now.py)
            return tell(respond, "Trading stays halted: it is still held by "
                                 + ", ".join(h.replace("incident:", "INC-") for h in result.remaining_holders)
                                 + " (open incidents keep their halt; settle them first).")
        text = (
            f":arrow_forward: <@{cmd.user_id}> resumed automated trading: {result.restored} clients back to their own settings."
            + (f" Left as changed during the halt: {', '.join(result.left_alone)}." if result.left_alone else "")
        )
        client.chat_postMessage(channel=deps.channel, text=text)
        respond(text="Trading resumed.", response_type="ephemeral", replace_original=False)

    @on("loss")
    def loss(cmd: ParsedCommand, respond: Respond, client: WebClient) -> None:
        """`/rollback loss INCIDENT AMOUNT`: the estimated loss, updated at any time (core.loss)."""
        incident_id = parse_incident_ref(cmd.args[0]) if len(cmd.args) == 2 else None
        if incident_id is None:
            return tell(respond, USAGE["loss"])
        if not deps.auth.is_operator(cmd.user_id):
            return refuse(cmd, respond, "loss", "Only operators may update the estimated loss (OPERATORS).")
        amount = parse_amount(cmd.args[1])
        update = deps.loss.record(incident_id=incident_id, amount=amount, by=cmd.user_id, source="slack")
        was = f" (was {money(update.previous)})" if update.previous is not None else ""
        respond(text=f"{update.incident.ref}: the estimated loss is now {money(update.entry.amount)}{was}."
                     + (" It is over LOSS_ESCALATION_THRESHOLD: escalating now." if update.escalating else ""),
                response_type="ephemeral", replace_original=False)

    assert set(handlers) == WORK_VERBS, "WORK_VERBS must list every subcommand (bot/server.py relies on it)"
    app.command(Command.ROLLBACK.value)(on_command)

