"""`rollback-bot` command line: the entry point (the services are built by bot/compose.py; the break-glass
commands are in bot/breakglass.py).

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

from bot.breakglass import cmd_backups, cmd_loss, cmd_rollback, cmd_status, confirm_break_glass, os_identity
from bot.cli_support import EXIT_FAILED, EXIT_USAGE, build_services, settings_with_database as _settings_with_database
from core.errors import ConfigError, RollbackError
from core.settings import Settings, load_settings

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "build_parser", "build_services", "cmd_backups", "cmd_loss", "cmd_rollback",
           "cmd_status", "cmd_work", "confirm_break_glass", "freeze_startup_heap", "main", "os_identity"]

# `serve` names each of its starts for its work process, so the doctor runs once per start (handlers/doctor.py at_start).
START_ID_ENV = "ROLLBACK_BOT_START_ID"
#: Docker/Compose secrets and Kubernetes secret volumes: one file per setting, named after it.
SECRETS_DIR = Path("/run/secrets")


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


def cmd_loading(args: argparse.Namespace, settings: Settings) -> int:
    from bot.loading_proc import cmd_loading as run

    return run(args, settings)


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

    p = sub.add_parser("loading")  # the loading process `serve` starts for itself (bot/loading_proc.py)
    p.set_defaults(func=cmd_loading)

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
        json_logs = args.command in ("serve", "work", "loading") and settings.log_format == "json"
        configure_logging(settings, json_format=json_logs, verbose=args.verbose)
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
