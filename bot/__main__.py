"""`rollback-bot` command line: the entry point and composition root.

Settings are read here, once, and handed down. Errors a person can fix are one line on stderr and a
non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import SecretStr

from core.errors import ConfigError, RollbackError
from core.settings import Settings, load_settings

EXIT_USAGE = 2
EXIT_FAILED = 1
# `serve` names each of its starts for its work process, so the doctor runs once per start (handlers/doctor.py at_start).
START_ID_ENV = "ROLLBACK_BOT_START_ID"
#: Docker/Compose secrets and Kubernetes secret volumes: one file per setting, named after it.
SECRETS_DIR = Path("/run/secrets")


def _settings_with_database(settings: Settings, *, ensure_local: bool) -> Settings:
    """DATABASE_URL defaults to the project's private local cluster (see bot/devtools/localpg.py)."""
    if settings.database_url is not None:
        return settings
    from bot.devtools import localpg

    if ensure_local:
        url = localpg.ensure().url("rollback_bot")
    else:
        local = localpg.cluster()
        url = local.url("rollback_bot") if local.port is not None and local.is_running() else None
        if url is None:
            raise ConfigError(
                "DATABASE_URL is not set and no local PostgreSQL cluster is running (`make demo` starts one)"
            )
    return settings.model_copy(update={"database_url": SecretStr(url)})


def build_services(settings: Settings, *, migrate_first: bool = True, wait: bool = True):
    from core.db import Database, migrate
    from bot.compose import build_services as compose

    dsn = settings.database_dsn()
    if migrate_first:
        migrate(dsn)
    db = Database(dsn, max_size=settings.db_pool_max).open(wait=wait)
    return compose(settings, db)


def freeze_startup_heap() -> None:
    """Everything built at start (modules, the app, the services) lives as long as the process: collect the
    start's garbage once, then move the rest out of the garbage collector's sight. A full collection then scans
    only what requests create: in `serve` it took about 27 ms (every request in flight waited for it) and now
    takes under 1 ms."""
    import gc

    gc.collect()
    gc.freeze()


# ------------------------------------------------------------------------------------------ commands


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from core.settings import SERVE_REQUIRED

    settings = _settings_with_database(settings, ensure_local=False)
    settings.require(*SERVE_REQUIRED)
    if settings.slack_app_token is None:
        settings.require("slack_signing_secret")
    from bot.app import build_app, build_client
    from bot.health import Health, SlackAuth, build_ops_app, verify_token
    from bot.membership import ensure_in_channel
    from bot.server import BackgroundServer, build_web_app, serve_http
    from bot.workproc import WorkProcess

    client = build_client(settings)
    verify_token(client)  # a token Slack refuses stops start-up here, with one line
    # Uploads and ephemeral answers fail in a channel the bot has not joined: join it, or stop with the fix.
    ensure_in_channel(client, settings.incident_channel)
    services = build_services(settings)
    # Slow work and the background worker (recovery, jobs, timers, monitoring) run in a child process, so
    # this one only acknowledges Slack (see bot/workproc.py). It also runs the doctor once for this start.
    import os
    import uuid

    os.environ[START_ID_ENV] = uuid.uuid4().hex
    work = WorkProcess().start()
    app = build_app(settings, services, remote=work.submit)
    slack_auth = SlackAuth(app.client, every=settings.slack_auth_check_seconds).start()
    health = Health(db_ping=services.db.ping, slack=slack_auth, work_alive=work.alive)
    side: list[BackgroundServer] = []  # /metrics on METRICS_ADDR; /healthz (and /metrics) on HEALTH_PORT
    log = logging.getLogger("rollback_bot")
    try:
        metrics_bind = settings.metrics_bind()
        if metrics_bind is not None:
            side.append(BackgroundServer(build_ops_app(render=app.metrics.render), *metrics_bind).start())
            log.info("serving /metrics on %s", settings.metrics_addr)
        if settings.slack_app_token is not None:
            import signal

            from slack_bolt.adapter.socket_mode import SocketModeHandler

            port = settings.health_port or settings.port
            side.append(BackgroundServer(build_ops_app(
                health=health, render=None if metrics_bind else app.metrics.render), args.host, port).start())
            log.info("starting in Socket Mode; /healthz on port %s", port)
            handler = SocketModeHandler(app, settings.slack_app_token.get_secret_value(), web_client=app.client)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop as HTTP mode does: work stops, files go
            freeze_startup_heap()
            handler.start()
            return 0
        log.info("serving HTTP on port %s", settings.port)
        secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
        web_app = build_web_app(app, services, forward=work.forward, signing_secret=secret, work_alive=work.alive,
                                health=health, serve_metrics=metrics_bind is None)
        freeze_startup_heap()
        serve_http(web_app, host=args.host, port=settings.port)
        return 0
    finally:
        for server in side:
            server.stop()
        slack_auth.stop()
        work.stop()
        app.progress.flush(5)


def cmd_work(args: argparse.Namespace, settings: Settings) -> int:
    """The work process of `serve` (bot/workproc.py): work items on standard input, plus the worker."""
    from bot.app import build_app
    from bot.workproc import serve_stdin
    from core.worker import lower_process_priority

    lower_process_priority()  # acknowledging Slack (the parent) comes first when both want a CPU
    settings = _settings_with_database(settings, ensure_local=False)
    # `serve` migrated before starting it; started again while PostgreSQL is down, it still answers Slack
    # (that the database does not answer, since when, and what to check) instead of dying at start.
    services = build_services(settings, migrate_first=False, wait=False)
    # Requests reach this process from `serve`, which verified their signatures already.
    app = build_app(settings.model_copy(update={"slack_signing_secret": None}), services)
    freeze_startup_heap()
    services.start_background()
    doctor_at_start(app, services)
    try:
        serve_stdin(app.deps, app.client, app=app)
    finally:
        services.stop_background()
        app.progress.flush(10)
    return 0


def doctor_at_start(app, services) -> None:
    """`serve` start: the doctor runs once on a thread of the work process; its problems go to INCIDENT_CHANNEL
    and `/rollback status` (handlers/doctor.py)."""
    import os
    import threading
    import uuid

    from handlers.doctor import at_start

    start_id = os.environ.get(START_ID_ENV) or uuid.uuid4().hex

    def run() -> None:
        try:
            at_start(services, app.client, start_id=start_id)
        except Exception:  # noqa: BLE001 - the doctor must never take the work process down
            logging.getLogger("rollback_bot").exception("the doctor at start could not run")

    threading.Thread(target=run, name="doctor-at-start", daemon=True).start()


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    """Check the platform against what a rollback needs: one line per check, exit 1 on any problem."""
    import psycopg

    from core.db import Database
    from core.doctor import run_doctor, store_run
    from core.errors import DatabaseUnavailable
    from core.incidents import utcnow

    settings = _settings_with_database(settings, ensure_local=False)
    chat = None
    if settings.slack_bot_token is not None:  # Slack is configured: check it too
        from bot.app import build_client
        from handlers.doctor import slack_checks

        chat = slack_checks(build_client(settings), settings.incident_channel)
    db = Database(settings.database_dsn())
    run = run_doctor(settings, db.connect, source="rollback-bot doctor (CLI)", at=utcnow(), chat=chat)
    for check in run.checks:
        print(check.line(), flush=True)
    try:
        with db.connect() as conn:
            store_run(conn, run)
    except (psycopg.Error, DatabaseUnavailable) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"rollback-bot: this run is not kept for /rollback status: {first}", file=sys.stderr)
    if run.ok:
        print(f"rollback-bot doctor: {run.summary()}.")
        return 0
    print(f"rollback-bot doctor: {run.summary()}; a rollback may fail until they are fixed.")
    return EXIT_FAILED


def cmd_db_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from core.db import migrate

    settings = _settings_with_database(settings, ensure_local=False)
    applied = migrate(settings.database_dsn())
    print("applied: " + ", ".join(applied) if applied else "the database schema is up to date")
    return 0


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


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """The embedded demo: never touches DATABASE_URL (it builds platform tables), only the local cluster."""
    from bot.devtools import demo

    return demo.run(root=args.dir.resolve(), size=args.size)


def cmd_console(args: argparse.Namespace, settings: Settings) -> int:
    from bot.devtools import console

    return console.run(root=args.dir.resolve(), size=args.size)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rollback-bot")
    except PackageNotFoundError:
        return "(not installed)"


def _brief(detail: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in detail.items() if v not in (None, [], {}))[:160]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rollback-bot", description="Emergency model rollback, as a Slack bot.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")  # not listing `work`

    p = sub.add_parser("serve", help="run the Slack app (HTTP, or Socket Mode when SLACK_APP_TOKEN is set)")
    p.add_argument("--host", default="0.0.0.0",
                   help="address to listen on (HTTP mode; /healthz and /metrics in Socket Mode)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="play two whole incidents against local Slack and PagerDuty stand-ins "
                                    "(no workspace needed)")
    p.add_argument("--dir", type=Path, default=Path(".local/demo"), help="where demo models and reports go")
    p.add_argument("--size", choices=("demo", "test"), default="demo", help="size of the generated world")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("console", help="an interactive shell: act as a person, type /rollback, click buttons")
    p.add_argument("--dir", type=Path, default=Path(".local/console"), help="where its models and reports go")
    p.add_argument("--size", choices=("demo", "test"), default="test", help="size of the generated world")
    p.set_defaults(func=cmd_console)

    p = sub.add_parser("work")  # the work process `serve` starts for itself: no help, so not in --help
    p.set_defaults(func=cmd_work)

    p = sub.add_parser("db", help="database administration")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    m = dbsub.add_parser("migrate", help="apply the bot's schema migrations (idempotent)")
    m.set_defaults(func=cmd_db_migrate)

    p = sub.add_parser("doctor", help="check the platform against what a rollback needs (exit 1 on any problem)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("status", help="break-glass: production models, open incidents, trading state")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("backups", help="break-glass: the backups of one model and the recommended target")
    p.add_argument("model")
    p.set_defaults(func=cmd_backups)

    p = sub.add_parser("rollback", help="break-glass: roll a model back without Slack (audited, same engine)")
    p.add_argument("model")
    p.add_argument("--to", required=True, metavar="BACKUP", help="the backup folder to restore (backup_*)")
    p.add_argument("--reason", required=True, help="why (kept in the journal and the deployment log)")
    p.add_argument("--by", required=True, metavar="NAME", help="who is running this (audited, beside the OS user)")
    p.add_argument("--yes", action="store_true", help="confirm without a prompt (required without a terminal)")
    p.add_argument("--confirm", action="store_true",
                   help="the runbook's pre-rollback checks hold (without it: the checklist, nothing done)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("loss", help="update an incident's estimated loss (audited; kept with its history)")
    p.add_argument("incident", metavar="INCIDENT", help="the incident, e.g. INC-12")
    p.add_argument("amount", metavar="AMOUNT", help="the estimated loss, e.g. 250000, 250,000 or 250k")
    p.add_argument("--by", required=True, metavar="NAME", help="who gives the figure (audited)")
    p.set_defaults(func=cmd_loss)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    metrics = None
    if args.command == "serve":  # before anything imports prometheus_client (bot/metrics_dir.py)
        from bot import metrics_dir

        metrics = metrics_dir.begin()
    try:
        return _run(args)
    finally:
        if metrics is not None:
            metrics_dir.end(metrics)


def _run(args: argparse.Namespace) -> int:
    from bot.observability import configure_logging

    configure_logging(None, json_format=False, verbose=args.verbose)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        settings = load_settings(secrets_dir=SECRETS_DIR if SECRETS_DIR.is_dir() else None)
        # JSON lines for the long-running server, readable text for commands a person runs.
        configure_logging(settings, json_format=args.command in ("serve", "work") and settings.log_format == "json",
                          verbose=args.verbose)
        return func(args, settings)
    except ConfigError as exc:
        print(f"rollback-bot: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RollbackError as exc:
        print(f"rollback-bot: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
