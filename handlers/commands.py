"""`/rollback …` listeners: ack at once, parse, one call into core, render, respond."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from slack_bolt import Ack, App, Respond

from core.services import Services
from handlers import blocks as views
from handlers.errors import guarded
from handlers.ids import Command


@dataclass(frozen=True)
class ParsedCommand:
    verb: str
    args: list[str]
    rest: str
    user_id: str
    channel_id: str

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
        )


USAGE_BACKUPS = "Usage: `/rollback backups MODEL` (see `/rollback status` for the models)."


def register(app: App, services: Services) -> None:
    handlers: dict[str, Callable[[ParsedCommand, Respond], None]] = {}

    def on(verb: str) -> Callable:
        def deco(fn: Callable[[ParsedCommand, Respond], None]) -> Callable:
            handlers[verb] = fn
            return fn

        return deco

    def ack_command(ack: Ack, body: dict) -> None:
        cmd = ParsedCommand.from_body(body)
        if cmd.verb == "help" or cmd.verb not in handlers:
            prefix = "" if cmd.verb == "help" else f"Unknown subcommand `{views.esc(cmd.verb[:40])}`.\n\n"
            ack(text=prefix + views.HELP, blocks=views.finish([views.section(prefix + views.HELP)]), response_type="ephemeral")
            return
        ack()

    @guarded
    def run_command(body: dict, respond: Respond) -> None:
        cmd = ParsedCommand.from_body(body)
        handler = handlers.get(cmd.verb)
        if handler is not None:
            handler(cmd, respond)

    @on("status")
    def status(cmd: ParsedCommand, respond: Respond) -> None:
        report = services.status()
        respond(text="Production models", blocks=views.status_blocks(report), response_type="ephemeral")

    @on("backups")
    def backups(cmd: ParsedCommand, respond: Respond) -> None:
        if len(cmd.args) != 1:
            respond(text=USAGE_BACKUPS, blocks=views.error_blocks(USAGE_BACKUPS), response_type="ephemeral")
            return
        report = services.backups(model=cmd.args[0])
        respond(text=f"Backups of {report.model}", blocks=views.backups_blocks(report), response_type="ephemeral")

    app.command(Command.ROLLBACK.value)(ack=ack_command, lazy=[run_command])
