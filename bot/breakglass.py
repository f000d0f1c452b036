"""The break-glass commands of the CLI: `status`, `backups`, `rollback` (the same engine and journal as Slack,
accountable by name and operating-system identity) and `loss`, for when Slack is down."""

from __future__ import annotations

import argparse
import os
import sys

from bot.cli_support import EXIT_FAILED, EXIT_USAGE, build_services, settings_with_database as _settings_with_database
from core.settings import Settings


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from bot import text

    services = build_services(_settings_with_database(settings, ensure_local=False))
    print(text.status(services.status()))
    return 0


def cmd_backups(args: argparse.Namespace, settings: Settings) -> int:
    from bot import text

    services = build_services(_settings_with_database(settings, ensure_local=False))
    print(text.backups(services.backups(model=args.model)))
    return 0


def os_identity() -> str:
    """Who is at the host's shell, as the operating system knows them: the account, the account that ran sudo
    (``SUDO_USER``) and the login name when they differ. Recorded beside ``--by``."""
    import pwd

    try:
        account = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        account = f"uid {os.getuid()}"
    try:
        login = os.getlogin()
    except OSError:  # no controlling terminal
        login = None
    sudo = os.environ.get("SUDO_USER")
    extra = []
    if sudo and sudo != account:
        extra.append(f"sudo from {sudo}")
    if login and login not in (account, sudo):
        extra.append(f"login {login}")
    return account + (f" ({', '.join(extra)})" if extra else "")


def confirm_break_glass(args: argparse.Namespace, who: str) -> bool:
    """``--yes``, or a person at a terminal who types the model's name. Without a terminal and without --yes:
    refused (a script must say --yes explicitly)."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        print("rollback-bot: break-glass rollback refused: no terminal to confirm on; pass --yes to confirm in a"
              " script", file=sys.stderr)
        return False
    print(f"Break-glass rollback of {args.model} to {args.to}, by {args.by} (OS user {who}).\n"
          "This halts automated trading and swaps the production model without a second person in Slack.\n"
          f"Type the model name ({args.model}) to go ahead: ", end="", flush=True)
    answer = sys.stdin.readline().strip()
    if answer != args.model:
        print("rollback-bot: not confirmed; nothing was changed", file=sys.stderr)
        return False
    return True


class BreakGlassAlert:
    """Tells the incident channel about a break-glass rollback when Slack is reachable (SLACK_BOT_TOKEN and
    INCIDENT_CHANNEL set). A failure to post is reported on stderr and in the audit log, never fatal."""

    def __init__(self, settings: Settings, services) -> None:
        self.services = services
        self.channel = settings.incident_channel
        self.client = None
        self.ts: str | None = None
        if settings.slack_bot_token is not None and settings.incident_channel:
            from bot.app import build_client

            self.client = build_client(settings)
            self.client.timeout = 5

    def post(self, incident, text: str, *, reply: bool = False) -> None:
        if self.client is None or (reply and self.ts is None):
            return
        try:
            if not reply and self.ts is None:  # a `serve` already posted the incident's card: the alert goes in its thread
                current = self.services.engine.get(incident.id)
                if current.message_ts:
                    self.ts = current.thread_ts or current.message_ts
                    reply = True
            resp = self.client.chat_postMessage(channel=self.channel, text=text,
                                                thread_ts=self.ts if reply else None)
            if not reply:
                self.ts = resp["ts"]
                self.services.engine.set_message(incident.id, channel=resp["channel"], message_ts=resp["ts"])
        except Exception as exc:  # noqa: BLE001 - Slack being down is why break-glass exists
            error = getattr(getattr(exc, "response", None), "data", None) or exc
            error = error.get("error", error) if isinstance(error, dict) else error
            print(f"rollback-bot: WARNING: could not post the break-glass alert to Slack ({str(error)[:200]});"
                  " the rollback goes on", file=sys.stderr, flush=True)
            self.services.engine.audit(None, actor="rollback-bot", action="break_glass_alert", outcome="failed",
                                       incident_id=incident.id, error=str(error)[:300])


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    """Break-glass: the same engine and journal as Slack, printing each step as it happens."""
    import socket

    from core.incidents import Event, utcnow
    from core.prerollback import cli_prompt, confirmed

    if not args.confirm:  # the runbook's pre-rollback checks: nothing is touched (not even the database) without it
        print(cli_prompt(["rollback-bot", "rollback", args.model, "--to", args.to, "--reason", args.reason,
                          "--by", args.by] + (["--yes"] if args.yes else [])), file=sys.stderr)
        return EXIT_USAGE
    who = os_identity()
    services = build_services(_settings_with_database(settings, ensure_local=False))
    services.registry.backup_dir(args.model, args.to)  # bad names are a clear error before anyone is asked
    if not confirm_break_glass(args, who):
        services.engine.audit(None, actor=args.by, action="break_glass_rollback", outcome="refused",
                              reason="not confirmed", os_user=who, model=args.model, backup=args.to)
        return EXIT_USAGE
    alert = BreakGlassAlert(settings, services)

    def show(event: Event) -> None:
        inc = event.incident
        if event.kind == "step":
            print(f"  {event.step:<17} ok  {_brief(event.detail)}", flush=True)
        elif event.kind == "warning":
            print(f"  WARNING: {event.error}", flush=True)
        else:
            print(f"{inc.ref}: {inc.state}" + (f" ({event.error})" if event.error else ""), flush=True)
        if event.kind == "state" and inc.state == "approved" and alert.ts is None:
            alert.post(inc, f":rotating_light: *Break-glass rollback* {inc.ref}: `{inc.model_name}` to "
                            f"`{inc.target_backup}` from the command line on {socket.gethostname()}, by {args.by} "
                            f"(OS user {who}), without approval in Slack. Reason: {inc.reason[:500]}")

    services.engine.subscribe(show)
    inc = services.engine.break_glass(model=args.model, backup=args.to, reason=args.reason, by=args.by, os_user=who,
                                      confirmations=confirmed(by=args.by, via="rollback-bot rollback --confirm",
                                                              at=utcnow()))
    alert.post(inc, f"{inc.ref} ended {inc.state}" + (f": {inc.error}" if inc.error else ".")
               + (" Trading stays halted until `/rollback resume`." if inc.state in ("verified", "failed",
                                                                                   "halt_not_effective") else ""),
               reply=True)
    _deliver_follow_ups(services, inc)
    if inc.state in ("monitoring", "verified", "resolved"):
        print(f"{inc.ref}: {args.model} is now {args.to}; "
              + ("trading stays halted until `/rollback resume`." if inc.state == "verified" else "trading resumed."))
        return 0
    print(f"rollback-bot: {inc.ref} ended {inc.state}: {inc.error or 'see the journal'}", file=sys.stderr)
    return EXIT_FAILED


def _deliver_follow_ups(services, inc) -> None:
    """The follow-ups the rollback queued with its state changes (core.outbox): the e-mail and the report go out
    from here, before the CLI exits; the rest (escalation timers, diagnostics, ...) is said and left queued."""
    from core import outbox
    from core.notify import EMAIL_JOB

    if services.mailer is not None:
        services.mailer.on_failed = lambda i, milestone, exc: print(
            f"  WARNING: the {milestone} e-mail was not sent: {exc}", file=sys.stderr, flush=True)
    outbox.deliver(services.worker, inc.id, ("report", EMAIL_JOB))
    left = outbox.pending(services.db, inc.id)
    if left:
        kinds = ", ".join(sorted({q.kind for q in left}))
        print(f"{inc.ref}: {len(left)} follow-up job(s) stay queued for `rollback-bot serve` ({kinds}).", flush=True)


def cmd_loss(args: argparse.Namespace, settings: Settings) -> int:
    """The estimated loss from a shell, audited by name; the serving bot shows it and escalates (core.loss)."""
    from core.loss import money, parse_amount
    from handlers.commands import parse_incident_ref

    incident_id = parse_incident_ref(args.incident)
    if incident_id is None:
        print(f"rollback-bot: {args.incident!r} is not an incident (for example INC-12)", file=sys.stderr)
        return EXIT_USAGE
    amount = parse_amount(args.amount)
    services = build_services(_settings_with_database(settings, ensure_local=False))
    update = services.loss.record(incident_id=incident_id, amount=amount, by=args.by, source="cli")
    was = f" (was {money(update.previous)})" if update.previous is not None else ""
    print(f"{update.incident.ref}: the estimated loss is now {money(update.entry.amount)}{was}"
          + ("; over LOSS_ESCALATION_THRESHOLD: the serving bot escalates now" if update.escalating else ""))
    return 0


def _brief(detail: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in detail.items() if v not in (None, [], {}))[:160]
