"""`rollback-bot console`: an interactive shell adapter over the demo environment.

Choose who you are (``as bob``), type ``/rollback …`` as that person, press a button by its label
(``click Approve``), and see the bot's messages as they arrive. Everything goes through the real app over
signed HTTP, exactly as in the demo.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import TextIO

from bot.devtools.demo import CHANNEL, PEOPLE, Environment, environment
from handlers.loading import modal_for

HELP = """Commands:
  as NAME                 act as alice, bob, carol, dave or erin (operators: alice, bob, carol; approvers: bob, carol)
  /rollback …             type a slash command as the current person
  click LABEL [INC-N]     press the button labelled LABEL (on the newest message that has it, or on INC-N's card)
  show INC-N              print an incident's card as it stands
  wait                    let the background work finish and show what it posted
  help                    this text
  quit                    leave"""


class Console:
    def __init__(self, env: Environment, out: TextIO) -> None:
        self.env = env
        self.out = out
        self.user = "U0ALICE"
        self.by_name = {name: uid for uid, name in PEOPLE.items()}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def prompt(self) -> str:
        return f"{PEOPLE[self.user]}> "

    def handle(self, line: str, read: Callable[[str], str]) -> bool:
        line = line.strip()
        if not line:
            return True
        if line in ("quit", "exit"):
            return False
        if line == "help":
            self.say(HELP)
        elif line.startswith("as "):
            name = line[3:].strip().lower()
            if name not in self.by_name:
                self.say(f"Unknown person {name!r}; choose one of {', '.join(self.by_name)}.")
            else:
                self.user = self.by_name[name]
                self.say(f"You are now {name}.")
        elif line.startswith("/rollback"):
            self.command(line[len("/rollback"):].strip(), read)
        elif line.startswith("click "):
            self.click(line[len("click "):].strip(), read)
        elif line.startswith("show "):
            inc = self._incident(line[5:].strip())
            if inc is not None:
                self.env.narrator.card(inc.message_ts, inc.ref)
        elif line == "wait":
            self.settle()
        else:
            self.say("Not understood. Type `help`.")
        return True

    def settle(self) -> None:
        self.env.services.worker.run_due()
        self.env.box.settle()
        self.env.narrator.show_new()

    def command(self, text: str, read: Callable[[str], str]) -> None:
        opens_form = modal_for({"command": "/rollback", "text": text, "trigger_id": "-"}) is not None
        forms_before = len(self.env.box.standin.calls("views.open"))
        reply = self.env.box.command(self.user, text, channel=CHANNEL)
        if reply.status != 200:
            self.say(f"(Slack got HTTP {reply.status})")
        if reply.ack.strip():
            try:
                body = json.loads(reply.ack)
                self.say(self._render_ack(body))
            except ValueError:
                self.say(reply.ack)
        elif opens_form:  # it answers in the form, whose loading view opens right after the ack
            try:
                self.env.box.standin.wait_for("views.open", count=forms_before + 1, timeout=5)
            except AssertionError:
                pass
        else:
            try:
                self.env.box.responses(reply.response_key, timeout=15)
            except AssertionError:
                pass
        self.settle()
        self._form_if_opened(read)

    def _render_ack(self, body: dict) -> str:
        from bot.devtools.transcript import render_message

        return render_message("rollback-bot (only visible to you)", body.get("text", ""), body.get("blocks"),
                              self.env.narrator.name, indent="  ")

    def _incident(self, ref: str):
        digits = ref.upper().removeprefix("INC-")
        if not digits.isdigit():
            self.say(f"Not an incident: {ref!r} (use INC-N).")
            return None
        try:
            return self.env.services.engine.get(int(digits))
        except Exception as exc:  # noqa: BLE001 - shown to the person
            self.say(str(exc))
            return None

    def _find_button(self, label: str, ref: str | None):
        standin = self.env.box.standin
        messages = standin.messages(CHANNEL)
        if ref:
            inc = self._incident(ref)
            if inc is None:
                return None, None
            messages = [m for m in messages if m.ts == inc.message_ts]
        for msg in reversed(messages):
            for block in msg.blocks:
                for element in block.get("elements") or []:
                    if block.get("type") == "actions" and (element.get("text") or {}).get("text", "").lower() == label.lower():
                        return msg, element
        return None, None

    def click(self, spec: str, read: Callable[[str], str]) -> None:
        parts = shlex.split(spec)
        ref = parts[-1] if len(parts) > 1 and parts[-1].upper().startswith("INC-") else None
        label = " ".join(parts[:-1] if ref else parts)
        msg, element = self._find_button(label, ref)
        if msg is None:
            self.say(f"No button labelled [{label}] in #incidents.")
            return
        if element.get("confirm"):
            self.say(f"  ({element['confirm']['title']['text']} → {element['confirm']['confirm']['text']})")
        before = len(self.env.box.standin.calls())
        self.env.box.sender.block_action(user_id=self.user, action_id=element["action_id"], channel_id=CHANNEL,
                                         message_ts=msg.ts, message=msg.as_slack())
        # The click's work runs after the ack: wait for its first effect (or give up quietly after 3 s).
        deadline = time.monotonic() + 3
        while len(self.env.box.standin.calls()) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        self.settle()
        self._form_if_opened(read)

    def _form_if_opened(self, read: Callable[[str], str]) -> None:
        """A modal opened: ask its one free-text question here (deny reason, root cause). A form opens as a loading
        view first and is filled in a moment later (handlers/loading.py): wait for that."""
        standin = self.env.box.standin
        opened = [c for c in standin.calls("views.open") if c.ok and not c.body.get("_console_seen")]
        for call in opened:
            call.body["_console_seen"] = True
            view = call.response["view"]
            if view.get("callback_id") == "loading_modal":
                try:
                    view = standin.wait_for("views.update", lambda c: c.ok and c.response["view"]["id"] == view["id"],
                                            timeout=30)[0].response["view"]
                except AssertionError:
                    self.say("  (a form began to open but was not filled in)")
                    continue
            callback = view.get("callback_id")
            if callback == "notice_modal":
                notice = " ".join((b.get("text") or {}).get("text", "") for b in view.get("blocks") or [])
                self.say(f"  (in the form) {notice}")
                continue
            if callback == "rollback_deny_modal":
                block, action, question = "deny_reason_block", "reason", "Why deny? "
            elif callback == "root_cause_modal":
                block, action, question = "root_cause_block", "text", "Root cause: "
            else:
                self.say("  (a form opened; in the console give MODEL BACKUP and a reason on the command line:"
                         " /rollback start MODEL BACKUP reason… --confirm)")
                continue
            answer = read(question)
            r = self.env.box.sender.view_submission(user_id=self.user, callback_id=callback,
                                                    state_values={block: {action: answer}},
                                                    private_metadata=view.get("private_metadata", ""))
            if r.body.strip():
                errors = r.json().get("errors", {})
                self.say("  form refused: " + "; ".join(errors.values()))
            self.settle()


def run(*, root: Path, database_url: str | None = None, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout,
        size: str = "test") -> int:
    print("rollback-bot console: the real app, a Slack stand-in and a generated platform. Type `help`.",
          file=out, flush=True)
    with environment(root=root, database_url=database_url, size=size, out=out) as env:
        console = Console(env, out)

        def read(question: str) -> str:
            print(question, end="", file=out, flush=True)
            line = stdin.readline()
            return line.rstrip("\n")

        console.say(HELP)
        while True:
            print(console.prompt(), end="", file=out, flush=True)
            line = stdin.readline()
            if not line:
                break
            if not console.handle(line, read):
                break
    print("bye", file=out, flush=True)
    return 0
