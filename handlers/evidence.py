"""Before approval, in Slack: the evidence on the request card, the pre-rollback checks (form and `--confirm`),
and the *Halt now* button.

* The card's *Evidence* section is filled in by the ``evidence`` job (core/evidence.py): the engine event it
  publishes updates the card in place (``chat.update``), no thread reply. Until then the card says it is being
  computed.
* The request form asks the runbook's pre-rollback checks (core/prerollback.py) as checkboxes, all required:
  the submission is refused inside the form (``response_action="errors"``) until every one is ticked.
* `/rollback start MODEL BACKUP reason…` without ``--confirm`` posts nothing and changes nothing: the answer is the
  checklist and the same command with ``--confirm`` appended.
* *Halt now* (operators) halts trading for the request before approval (core/halt_now.py); the thread is told, and
  the card shows who halted it. A second click is answered with who did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.models.blocks import Block, ButtonElement, CheckboxesElement, ConfirmObject, InputBlock, Option

from core.errors import Conflict
from core.evidence import summary_lines
from core.halt_now import STEP_EVENT, denial_note, early_halt, halt_before_approval
from core.incidents import REQUESTED, Event, Incident
from core.prerollback import CHECKS, command_with_confirm, missing
from handlers.blocks import MAX_SECTION, clip, context, esc, finish, section
from handlers.deps import Deps
from handlers.ids import Action, Block as B
from handlers.respond import acking, once_per_click, whisper

if TYPE_CHECKING:
    from handlers.progress import SlackProgress

CHECKS_ACTION = "checks"

VERDICT_EMOJI = {"model-specific": ":dart:", "market-wide": ":globe_with_meridians:", "data problem": ":warning:",
                 "inconclusive": ":grey_question:"}


# ------------------------------------------------------------------------------------------------ the card


def evidence_blocks(incident: Incident) -> list[Block]:
    """The card's compact *Evidence* section, and what happened before approval (checks, Halt now)."""
    if incident.kind != "rollback":
        return []
    plan = incident.plan or {}
    evidence = plan.get("evidence")
    blocks: list[Block] = []
    if evidence:
        verdict = evidence.get("verdict")
        head = (f"*Evidence* {VERDICT_EMOJI.get(verdict, '')} *{esc(verdict)}*" if evidence.get("state") == "ready"
                else "*Evidence* :x:")
        lines = [esc(line) for line in summary_lines(evidence)]
        if evidence.get("state") == "ready":
            lines[0] = esc(evidence.get("why", ""))
        blocks.append(section(clip(head + "\n" + "\n".join(f"• {line}" for line in lines), MAX_SECTION - 10)))
    elif incident.state == REQUESTED:
        blocks.append(section("*Evidence* :hourglass_flowing_sand: being computed: diagnostics (regime, data"
                              " quality) and the live IC of the current model and of the target…"))
    confirmations = plan.get("confirmations")
    if confirmations:
        who = f"<@{esc(confirmations.get('by'))}>" if incident.source == "slack" else esc(confirmations.get("by"))
        blocks.append(context(f":ballot_box_with_check: Pre-rollback checks confirmed by {who}"
                              f" ({esc(confirmations.get('via'))}): " + "; ".join(esc(c.label) for c in CHECKS)))
    elif incident.state == REQUESTED:
        blocks.append(context(":grey_question: Pre-rollback checks not confirmed by a person (a proposal): check"
                              " them before approving."))
    halt = early_halt(incident)
    if halt:
        when = str(halt.get("at", ""))[11:19]
        text = f":octagonal_sign: Trading halted before approval by <@{esc(halt.get('by'))}> at {when} UTC (*Halt now*)."
        if denial_note(incident):  # the thread said so when it happened; the card stays true after a resume
            text += (f" A {esc(incident.state)} request does not resume trading: an approver resumes it with"
                     " `/rollback resume`.")
        elif incident.state == REQUESTED:
            text += (" The request holds the halt: on approval the rollback joins it; a denial does not resume"
                     " trading (an approver resumes with `/rollback resume`).")
        blocks.append(context(text))
    return blocks


def halt_now_button(incident: Incident) -> ButtonElement | None:
    """*Halt now* on a request waiting for approval, until somebody pressed it."""
    if incident.kind != "rollback" or incident.state != REQUESTED or early_halt(incident):
        return None
    return ButtonElement(
        text="Halt now", action_id=Action.HALT_NOW.value, value=str(incident.id),
        confirm=ConfirmObject(
            title="Halt trading now?",
            text=clip("Automated trading halts at once for every active client (their own settings are saved),"
                      " before anyone approves. The rollback joins this halt when approved; a denial does not"
                      " resume trading.", 300),
            confirm="Halt now", deny="Cancel"),
    )


def halt_now_reply(incident: Incident, detail: dict) -> str:
    joined = " (it joined the halt already in place)" if detail.get("joined") else ""
    return (f":octagonal_sign: <@{esc(detail.get('by'))}> pressed *Halt now*: automated trading halted before"
            f" approval for {detail.get('clients', 0)} active clients{joined}; each client's own settings are saved."
            f" {esc(incident.ref)} holds the halt: on approval the rollback joins it and resumes trading when done."
            " A denial or expiry does not resume trading: an approver resumes with `/rollback resume`.")


# ------------------------------------------------------------------------------------- the form and --confirm


def checks_input() -> InputBlock:
    """The request form's required confirmations (the runbook's pre-rollback checks)."""
    return InputBlock(
        block_id=B.CHECKS.value,
        label="Pre-rollback checks (runbook steps 1–3)",
        hint="All are required: the runbook rolls back only when each of them holds.",
        element=CheckboxesElement(action_id=CHECKS_ACTION, options=[
            Option(text=clip(c.label, 75), value=c.key, description=clip(c.detail, 75)) for c in CHECKS]),
    )


def checks_error(values: dict) -> str | None:
    """The form's error for the checks block, or None when every check is ticked."""
    field = (values.get(B.CHECKS.value) or {}).get(CHECKS_ACTION) or {}
    ticked = [o.get("value") for o in field.get("selected_options") or []]
    lacking = missing(ticked)
    if not lacking:
        return None
    return clip("Confirm every check before requesting: " + "; ".join(c.label for c in lacking) + ".", 150)


def ticked_checks(values: dict) -> list[str]:
    field = (values.get(B.CHECKS.value) or {}).get(CHECKS_ACTION) or {}
    return [o.get("value") for o in field.get("selected_options") or []]


def confirm_prompt(model: str, backup: str, reason: str) -> tuple[str, list[dict]]:
    """The answer to `/rollback start MODEL BACKUP reason…` without ``--confirm``: nothing was posted."""
    command = command_with_confirm(["/rollback", "start", model, backup, *reason.split()])
    checks = "\n".join(f":white_medium_square: *{esc(c.label)}*: {esc(c.detail)}" for c in CHECKS)
    text = (f"Nothing was posted. Before requesting the rollback of `{esc(model)}` to `{esc(backup)}`, confirm the"
            " runbook's pre-rollback checks:")
    code = clip(esc(command).replace("`", "'"), 2900)
    blocks = finish([section(text), section(checks),
                     section("When all of them hold, send the same command with `--confirm`:\n```" + code + "```")])
    return f"{text} {command}", blocks


# ---------------------------------------------------------------------------------------------- listeners


def register(app: App, deps: Deps, progress: SlackProgress) -> None:
    engine = deps.engine

    def show_evidence(inc: Incident, event: Event) -> None:
        if inc.channel and inc.message_ts:
            progress.update_card(inc)

    def show_halt_now(inc: Incident, event: Event) -> None:  # the card first: a retried delivery posts no 2nd reply
        if inc.channel and inc.message_ts:
            progress.update_card(inc)
            progress.reply(inc, halt_now_reply(inc, event.detail))

    progress.on_step["evidence"] = show_evidence
    progress.on_step[STEP_EVENT] = show_halt_now

    def halt_now(incident_id: int, user: str, body: dict, client: WebClient) -> None:
        try:
            inc, _ = halt_before_approval(engine, incident_id=incident_id, user=user,
                                          allowed=deps.auth.is_operator(user))
        except Conflict:
            done = early_halt(engine.get(incident_id))
            if not done:
                raise
            return whisper(client, body, f":octagonal_sign: Trading was already halted for INC-{incident_id} by"
                                         f" <@{esc(done.get('by'))}> at {str(done.get('at', ''))[11:19]} UTC;"
                                         " nothing more to do.")
        whisper(client, body, f"Trading halted for {inc.ref}. An approver still decides on the rollback.")

    app.action(Action.HALT_NOW.value)(acking(deps, once_per_click(deps, halt_now)))
