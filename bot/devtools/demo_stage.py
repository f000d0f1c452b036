"""What the demo's scenarios share: its people, its clock, the narrator that prints Slack as a person reads it,
the checks it ends with, and the helpers that drive the app through signed Slack requests like a person would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, TextIO

from bot.devtools.slack_standin import SlackStandIn, StoredMessage
from bot.devtools.transcript import plain, render_blocks, render_message

if TYPE_CHECKING:  # pragma: no cover
    from bot.devtools.sandbox import Sandbox
    from core.incidents import Incident
    from core.services import Services

CHANNEL = "C0INCIDENTS"
#: alice requests (an operator); bob and carol approve; dave and erin are stakeholders; frank is on call (the
#: primary escalation contact) and grace the head of trading (the emergency contact, paged when nobody
#: acknowledges within ESCALATION_ACK_MINUTES).
PEOPLE = {"U0ALICE": "alice", "U0BOB": "bob", "U0CAROL": "carol", "U0DAVE": "dave", "U0ERIN": "erin",
          "U0FRANK": "frank", "U0GRACE": "grace"}
PRIMARY_CONTACTS = ["U0FRANK"]
EMERGENCY_CONTACTS = ["U0GRACE"]

__all__ = [
    "CHANNEL",
    "EMERGENCY_CONTACTS",
    "PEOPLE",
    "PRIMARY_CONTACTS",
    "Check",
    "DemoClock",
    "Narrator",
    "click",
    "followups_message",
    "press_followup",
    "quiet",
    "report_says",
    "request_rollback",
    "shows",
    "wait_until",
]


class DemoClock:
    """Real time plus an offset the demo can move forward (to show 30 minutes of monitoring at once, the 24 hours
    of enhanced monitoring in 30-minute steps, and the minutes an escalation waits for *Acknowledge*)."""

    def __init__(self) -> None:
        self.offset = timedelta()
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return datetime.now(timezone.utc) + self.offset

    def advance(self, minutes: float) -> None:
        with self._lock:
            self.offset += timedelta(minutes=minutes)


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


@dataclass
class Narrator:
    """Prints the conversation as it happens, each Slack message once (cards when they change)."""

    standin: SlackStandIn
    out: TextIO
    printed_calls: int = 0
    seen_ts: set[str] = field(default_factory=set)

    def name(self, ident: str) -> str:
        if ident in PEOPLE:
            return PEOPLE[ident]
        if ident == CHANNEL:
            return "incidents"
        return ident

    def where(self, channel: str) -> str:
        if channel == CHANNEL:
            return "#incidents"
        for uid, name in PEOPLE.items():
            if channel == self.standin.dm_channel(uid):
                return f"a DM to {name}"
        return f"DM {channel}"

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def person(self, user: str, what: str) -> None:
        self.say(f"\n▶ {PEOPLE[user]}: {what}")

    def narrate(self, text: str) -> None:
        self.say(f"\n— {text}")

    def heading(self, text: str) -> None:
        self.say("\n" + "═" * 100 + f"\n{text}\n" + "═" * 100)

    def show_new(self) -> None:
        """Print every message, reply and ephemeral the app sent since the last call."""
        calls = self.standin.calls()
        for call in calls[self.printed_calls:]:
            body = call.body
            if call.method == "response_url":
                blocks = body.get("blocks")
                self.say(render_message("rollback-bot (only visible to you)", body.get("text", ""), blocks, self.name,
                                        indent="  "))
            elif call.method == "chat.postEphemeral" and call.ok:
                who = self.name(body.get("user", ""))
                self.say(render_message(f"rollback-bot (only visible to {who})", body.get("text", ""),
                                        body.get("blocks"), self.name, indent="  "))
            elif call.method == "chat.postMessage" and call.ok:
                channel = (call.response or {}).get("channel", body.get("channel"))
                indent = "      ↳ " if body.get("thread_ts") else "  "
                label = f"rollback-bot in {self.where(channel)}" + (" (thread)" if body.get("thread_ts") else "")
                self.say(render_message(label, body.get("text", ""), body.get("blocks"), self.name, indent=indent))
            elif call.method == "files.completeUploadExternal" and call.ok:
                files = body.get("files") or []
                titles = ", ".join(f.get("title") or f.get("id", "") for f in files if isinstance(f, dict))
                self.say(f"      ↳ rollback-bot uploaded a file to the thread: {titles}")
            elif call.method == "views.open":
                self.say("  (a form opens)")
        self.printed_calls = len(calls)

    def card(self, ts: str, title: str) -> None:
        self.message(ts, f"{title} (the request message, updated in place)")

    def message(self, ts: str, title: str, *, channel: str = CHANNEL) -> None:
        """A message as it stands now (cards and the follow-ups message are updated in place)."""
        msg = self.standin.message(channel, ts)
        if msg is None:
            return
        self.say(f"\n  ┌─ {title} ─")
        for line in (render_blocks(msg.blocks, self.name) if msg.blocks else plain(msg.text, self.name).splitlines()):
            self.say(f"  │ {line}")
        self.say("  └" + "─" * 60)


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def quiet(services: Services, timeout: float = 60.0) -> None:
    """Wait until the bot's worker has no job running and none due. Call it before moving the demo's clock: a job
    still running when the clock jumps past its lease (5 minutes) would be claimed and run a second time."""
    kinds = list(services.worker.handlers)

    def idle() -> bool:
        now = services.engine.clock()
        with services.db.transaction() as conn:
            return conn.execute(
                "SELECT count(*) AS n FROM rollback_bot.jobs WHERE done_at IS NULL AND kind = ANY(%s)"
                " AND (locked_until >= %s OR (locked_until IS NULL AND run_at <= %s))", (kinds, now, now),
            ).fetchone()["n"] == 0

    wait_until(idle, timeout, "the bot's background work")


def report_says(services: Services, incident_id: int, text: str) -> bool:
    path = services.reports.path(incident_id)
    return path is not None and text in path.read_text(encoding="utf-8")


def click(box: Sandbox, user: str, action_id: str, message: StoredMessage, *, channel: str = CHANNEL,
          value: str | None = None, block_id: str | None = None) -> None:
    """A person presses a button on a message (a signed block_actions request, as Slack sends it)."""
    extra = {k: v for k, v in (("value", value), ("block_id", block_id)) if v is not None}
    r = box.sender.block_action(user_id=user, action_id=action_id, channel_id=channel, message_ts=message.ts,
                                message=message.as_slack(), **extra)
    if r.status != 200:
        raise RuntimeError(f"pressing {action_id} as {user} was answered HTTP {r.status}")


def shows(box: Sandbox, channel: str, needle: str, *, ts: str | None = None, timeout: float = 30.0) -> None:
    """Wait until a message in ``channel`` (the one at ``ts``, if given) shows ``needle`` in its text or blocks: what
    a person would see, not only what the database holds (people are told after the state is committed)."""
    def seen() -> bool:
        messages = [box.standin.message(channel, ts)] if ts else box.standin.messages(channel)
        return any(m is not None and (needle in m.text or needle in json.dumps(m.blocks, ensure_ascii=False))
                   for m in messages)

    wait_until(seen, timeout, f"“{needle}” in Slack")


def followups_message(box: Sandbox, incident_ts: str) -> StoredMessage:
    """The incident's follow-ups message in its thread (one, updated in place)."""
    board = next((m for m in box.standin.thread(CHANNEL, incident_ts) if m.text.startswith("Follow-ups of")), None)
    if board is None:
        raise RuntimeError("no follow-ups message in the incident's thread")
    return box.standin.message(CHANNEL, board.ts)


def press_followup(box: Sandbox, user: str, action_id: str, incident_ts: str, followup_id: int) -> None:
    """A person presses *Take it*, *Assign…* or *Done* on one item of the follow-ups message."""
    click(box, user, action_id, followups_message(box, incident_ts), value=str(followup_id),
          block_id=f"followup:{followup_id}")


def request_rollback(box: Sandbox, n: Narrator, model: str, target: str, reason: str) -> Incident:
    """Alice asks for the rollback of ``model`` to ``target`` from the command line; the new incident, once its card
    shows the evidence for the approver."""
    engine = box.services.engine
    n.person("U0ALICE", f"/rollback start {model} {target} {reason} --confirm")
    r = box.command("U0ALICE", f"start {model} {target} {reason} --confirm")
    box.responses(r.response_key)
    box.settle()
    n.show_new()
    inc = engine.list_incidents(limit=1)[0]
    if inc.model_name != model:
        raise RuntimeError(f"expected a new incident for {model}, found {inc.ref} ({inc.model_name})")
    wait_until(lambda: "evidence" in (engine.get(inc.id).plan or {}), 60, "the evidence before approval")
    box.settle()
    n.card(inc.message_ts, f"{inc.ref} with the evidence for the approver")
    return inc
