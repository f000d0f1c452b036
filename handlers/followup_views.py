"""Block Kit for follow-ups: the incident's follow-ups message, its modals, `/rollback followups`, reminders."""

from __future__ import annotations

from datetime import datetime, timedelta

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    HeaderBlock,
    InputBlock,
    PlainTextInputElement,
    UserSelectElement,
)

from core.followups import FollowUp, PreventionMeasure
from core.incidents import Incident
from core.report import human_span
from core.watch_followup import BOT, KIND as WATCHED, WatchOutcome, watch_outcome
from handlers.blocks import MAX_BLOCKS, clip, context, esc, finish, form, section, when
from handlers.ids import Action, Block as B, View as V


def span(delta: timedelta) -> str:
    """A due date's distance: "1 h 05 min", or in days from two days on."""
    if delta >= timedelta(days=2):
        days = delta / timedelta(days=1)
        return f"{days:.0f} days" if abs(days - round(days)) < 0.05 else f"{days:.1f} days"
    return human_span(delta)


def _owner(item: FollowUp) -> str:
    return f"<@{esc(item.owner)}>" if item.owner else "_unassigned_"


def due_text(item: FollowUp, now: datetime, *, relative: bool = True) -> str:
    """``relative``: how long until (or since) the due date, for an answer read at once; a message that stays in
    the thread gives the date alone (and is updated when the item becomes overdue)."""
    if item.done:
        by = "the bot" if item.completed_by == BOT else f"<@{esc(item.completed_by)}>"
        return f"done by {by} {when(item.completed_at)}"
    if item.overdue(now):
        late = f"overdue by {span(now - item.due_at)}" if relative else "overdue"
        return f"due {when(item.due_at)} · :alarm_clock: *{late}*"
    return f"due {when(item.due_at)}" + (f" (in {span(item.due_at - now)})" if relative else "")


def item_line(item: FollowUp, now: datetime, *, relative: bool = True) -> str:
    if item.done:
        return f":white_check_mark: ~{esc(item.title)}~ · {due_text(item, now)}"
    return (f":white_medium_square: *{esc(item.title)}*\nOwner: {_owner(item)} · "
            f"{due_text(item, now, relative=relative)}")


def board_text(incident: Incident, items: list[FollowUp], now: datetime) -> str:
    open_ = [i for i in items if not i.done]
    overdue = [i for i in open_ if i.overdue(now)]
    return (f"Follow-ups of {incident.ref}: {len(open_)} open" + (f", {len(overdue)} overdue" if overdue else "")
            + f", {len(items) - len(open_)} done")


def board_blocks(incident: Incident, items: list[FollowUp], measures: list[PreventionMeasure],
                 now: datetime) -> list[dict]:
    """The incident's follow-ups message (one per incident, in its thread, updated in place)."""
    blocks: list[Block] = [section(
        f":clipboard: *Follow-ups of {incident.ref}* — the runbook's next steps, each with an owner and a due date."
        " The owner gets a reminder when one is overdue.")]
    watch = watch_outcome(incident)
    for item in items:
        blocks.append(section(item_line(item, now, relative=False)))
        if item.kind == WATCHED and watch is not None:
            blocks.append(context(watch_note(item, watch)))
        if not item.done:
            value = str(item.id)
            blocks.append(ActionsBlock(block_id=f"followup:{item.id}", elements=[
                ButtonElement(text="Take it", action_id=Action.FOLLOWUP_TAKE.value, value=value),
                ButtonElement(text="Assign…", action_id=Action.FOLLOWUP_ASSIGN.value, value=value),
                ButtonElement(text="Done", action_id=Action.FOLLOWUP_DONE.value, value=value, style="primary",
                              confirm=ConfirmObject(title="Mark it done?", text=clip(item.title, 280),
                                                    confirm="Done", deny="Cancel")),
            ]))
    written = (f"{len(measures)} prevention measure(s) written into the report" if measures
               else "No prevention measure written yet")
    blocks.append(context(f"{written}. `/rollback followups {incident.ref}` lists these."))
    blocks.append(ActionsBlock(block_id=B.PREVENTION_ACTIONS.value, elements=[
        ButtonElement(text="Add prevention measure", action_id=Action.ADD_PREVENTION.value, value=str(incident.id)),
    ]))
    return finish(blocks)


def watch_note(item: FollowUp, watch: WatchOutcome) -> str:
    """Under the monitoring follow-up, once the 24-hour watch has ended: what the bot did about it."""
    if item.done and item.completed_by == BOT:
        head = ":robot_face: The 24-hour watch completed, so the bot marked this done."
    elif item.done:
        head = "The 24-hour watch has ended."
    else:
        head = (f":warning: The 24-hour watch did not end cleanly ({esc(watch.why_open or 'trouble found')}), so this"
                " is left open: look into it, then mark it done.")
    return clip(f"{head} {esc(watch.summary)}", 2900)


def assign_modal(incident: Incident, item: FollowUp) -> dict:
    blocks = [
        section(f"*{esc(clip(item.title, 2000))}* ({incident.ref}), due {when(item.due_at)}"),
        InputBlock(block_id=B.FOLLOWUP_OWNER.value, label="Owner",
                   element=UserSelectElement(action_id="owner", placeholder="Choose a person",
                                             initial_user=item.owner)),
    ]
    return form(V.FOLLOWUP_ASSIGN, "Assign a follow-up", submit="Assign",
                meta={"followup": item.id, "incident": incident.id}, blocks=blocks)


def prevention_modal(incident: Incident, measures: list[PreventionMeasure]) -> dict:
    so_far = "; ".join(clip(m.text, 200) for m in measures[-5:])
    blocks = [
        section(f"Prevention for *{esc(incident.ref)}*"
                + (f" (rollback of `{esc(incident.model_name)}`)" if incident.model_name else "")),
        context("What you write goes into the report's Prevention section."
                + (f" So far: {esc(clip(so_far, 1500))}" if so_far else "")),
        InputBlock(block_id=B.PREVENTION.value, label="Prevention measure",
                   element=PlainTextInputElement(action_id="text", multiline=True, max_length=2900,
                                                 placeholder="What will keep this from happening again?")),
    ]
    return form(V.PREVENTION, "Add prevention measure", meta={"incident": incident.id}, blocks=blocks)


def listing_blocks(items: list[FollowUp], now: datetime, *, incident: Incident | None = None) -> list[dict]:
    """`/rollback followups [INCIDENT]`: one incident's follow-ups, or every open one, by incident."""
    title = f"Follow-ups of {incident.ref}" if incident else "Open follow-ups"
    blocks: list[Block] = [section(f"*{title}*")]
    if not items:
        blocks.append(section("None." if incident else "No open follow-ups."))
        return finish(blocks)
    by_incident: dict[int, list[FollowUp]] = {}
    for item in items:
        by_incident.setdefault(item.incident_id, []).append(item)
    shown = 0
    for incident_id, group in by_incident.items():
        if len(blocks) >= MAX_BLOCKS - 2:
            break
        lines = [item_line(i, now) for i in group]
        head = "" if incident else f"*INC-{incident_id}*\n"
        blocks.append(section(clip(head + "\n".join(lines), 3000)))
        shown += len(group)
    if shown < len(items):
        blocks.append(context(f"…and {len(items) - shown} more."))
    return finish(blocks)


def reminder_text(incident: Incident, item: FollowUp, now: datetime, link: str = "", *, measures: int = 0) -> str:
    """An overdue item's reminder; when the facts that close it are there already, it says so."""
    where = f" <{link}|Open the incident's thread>." if link else ""
    late = f"is overdue by {span(now - item.due_at)}: *{esc(item.title)}* (due {when(item.due_at)})."
    if item.kind == "root_cause" and (incident.root_cause or "").strip():
        late += " A root cause is recorded: press *Done* if the investigation is over."
    elif item.kind == "prevention" and measures:
        late += f" {measures} measure(s) are written: press *Done* if that is all."
    if item.owner:
        return f":alarm_clock: <@{esc(item.owner)}>, your follow-up of {incident.ref} {late}{where}"
    return (f":alarm_clock: A follow-up of {incident.ref} that nobody owns {late} Press *Take it* or *Assign…* on "
            f"the follow-ups message.{where}")


def assigned_text(incident: Incident, item: FollowUp, by: str, link: str = "") -> str:
    where = f" <{link}|Open the incident's thread>." if link else ""
    return (f":clipboard: <@{esc(by)}> made you the owner of a follow-up of {incident.ref}: *{esc(item.title)}*, "
            f"due {when(item.due_at)}.{where}")


def home_blocks(mine: list[FollowUp], nobody: list[FollowUp], now: datetime) -> list[dict]:
    """App Home's follow-ups: the viewer's own open ones and the unassigned ones, overdue first."""
    def lines(items: list[FollowUp], empty: str) -> Block:
        if not items:
            return context(empty)
        return section(clip("\n".join(f"*INC-{i.incident_id}* · {esc(i.title)}\n      {due_text(i, now)}"
                                      for i in items), 3000))

    return [b.to_dict() for b in (
        HeaderBlock(text="Your follow-ups"),
        lines(mine, "No open follow-up is yours."),
        HeaderBlock(text="Unassigned follow-ups"),
        lines(nobody, "Every open follow-up has an owner."),
        context("*Take it*, *Assign…* and *Done* are on each incident's follow-ups message;"
                " `/rollback followups` lists every open one."),
    )]
