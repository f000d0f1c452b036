"""`rollback-bot` command line: the entry point and composition root.

Settings are read here, once, and handed down. Errors a person can fix are one line on stderr and a
non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import SecretStr

from core.errors import ConfigError, RollbackError
from core.settings import Settings, load_settings

EXIT_USAGE = 2
EXIT_FAILED = 1


def _settings_with_database(settings: Settings, *, ensure_local: bool) -> Settings:
    """DATABASE_URL defaults to the project's private local cluster (see bot/localpg.py)."""
    if settings.database_url is not None:
        return settings
    from bot import localpg

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


def build_services(settings: Settings):
    from core.db import Database, migrate
    from core.services import Services

    dsn = settings.database_dsn()
    migrate(dsn)
    db = Database(dsn, max_size=settings.db_pool_max).open()
    return Services(settings, db)


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
    from bot.membership import ensure_in_channel
    from bot.server import build_web_app, serve_http
    from bot.workproc import WorkProcess

    # Uploads and ephemeral answers fail in a channel the bot has not joined: join it, or stop with the fix.
    ensure_in_channel(build_client(settings), settings.incident_channel)
    services = build_services(settings)
    # Slow work and the background worker (recovery, jobs, timers, monitoring) run in a child process, so
    # this one only acknowledges Slack (see bot/workproc.py).
    work = WorkProcess().start()
    app = build_app(settings, services, remote=work.submit)
    try:
        if settings.slack_app_token is not None:
            from slack_bolt.adapter.socket_mode import SocketModeHandler

            logging.getLogger("rollback_bot").info("starting in Socket Mode")
            handler = SocketModeHandler(app, settings.slack_app_token.get_secret_value(), web_client=app.client)
            freeze_startup_heap()
            handler.start()
            return 0
        logging.getLogger("rollback_bot").info("serving HTTP on port %s", settings.port)
        secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
        web_app = build_web_app(app, services, forward=work.forward, signing_secret=secret, work_alive=work.alive)
        freeze_startup_heap()
        serve_http(web_app, host=args.host, port=settings.port)
        return 0
    finally:
        work.stop()
        app.progress.flush(5)


def cmd_work(args: argparse.Namespace, settings: Settings) -> int:
    """The work process of `serve` (bot/workproc.py): work items on standard input, plus the worker."""
    from bot.app import build_app
    from bot.workproc import serve_stdin
    from core.worker import lower_process_priority

    lower_process_priority()  # acknowledging Slack (the parent) comes first when both want a CPU
    settings = _settings_with_database(settings, ensure_local=False)
    services = build_services(settings)
    # Requests reach this process from `serve`, which verified their signatures already.
    app = build_app(settings.model_copy(update={"slack_signing_secret": None}), services)
    freeze_startup_heap()
    services.start_background()
    try:
        serve_stdin(app.deps, app.client, app=app)
    finally:
        services.stop_background()
        app.progress.flush(10)
    return 0


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


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    """Break-glass: the same engine and journal as Slack, printing each step as it happens."""
    from core.incidents import Event

    services = build_services(_settings_with_database(settings, ensure_local=False))

    def show(event: Event) -> None:
        inc = event.incident
        if event.kind == "step":
            print(f"  {event.step:<17} ok  {_brief(event.detail)}", flush=True)
        elif event.kind == "warning":
            print(f"  WARNING: {event.error}", flush=True)
        else:
            print(f"{inc.ref}: {inc.state}" + (f" ({event.error})" if event.error else ""), flush=True)

    services.engine.subscribe(show)
    inc = services.engine.break_glass(model=args.model, backup=args.to, reason=args.reason, by=args.by)
    if inc.state in ("monitoring", "verified", "resolved"):
        print(f"{inc.ref}: {args.model} is now {args.to}; "
              + ("trading stays halted until `/rollback resume`." if inc.state == "verified" else "trading resumed."))
        return 0
    print(f"rollback-bot: {inc.ref} ended {inc.state}: {inc.error or 'see the journal'}", file=sys.stderr)
    return EXIT_FAILED


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """The embedded demo: never touches DATABASE_URL (it builds platform tables), only the local cluster."""
    from bot import demo

    return demo.run(root=args.dir.resolve(), size=args.size)


def cmd_console(args: argparse.Namespace, settings: Settings) -> int:
    from bot import console

    return console.run(root=args.dir.resolve(), size=args.size)


def _brief(detail: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in detail.items() if v not in (None, [], {}))[:160]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rollback-bot", description="Emergency model rollback, as a Slack bot.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the Slack app (HTTP, or Socket Mode when SLACK_APP_TOKEN is set)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (HTTP mode)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="play one whole incident against a local Slack stand-in (no workspace needed)")
    p.add_argument("--dir", type=Path, default=Path(".local/demo"), help="where demo models and reports go")
    p.add_argument("--size", choices=("demo", "test"), default="demo", help="size of the generated world")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("console", help="an interactive shell: act as a person, type /rollback, click buttons")
    p.add_argument("--dir", type=Path, default=Path(".local/console"), help="where its models and reports go")
    p.add_argument("--size", choices=("demo", "test"), default="test", help="size of the generated world")
    p.set_defaults(func=cmd_console)

    p = sub.add_parser("work", help=argparse.SUPPRESS)  # the work process `serve` starts for itself
    p.set_defaults(func=cmd_work)

    p = sub.add_parser("db", help="database administration")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    m = dbsub.add_parser("migrate", help="apply the bot's schema migrations (idempotent)")
    m.set_defaults(func=cmd_db_migrate)

    p = sub.add_parser("status", help="break-glass: production models, open incidents, trading state")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("backups", help="break-glass: the backups of one model and the recommended target")
    p.add_argument("model")
    p.set_defaults(func=cmd_backups)

    p = sub.add_parser("rollback", help="break-glass: roll a model back without Slack (audited, same engine)")
    p.add_argument("model")
    p.add_argument("--to", required=True, metavar="BACKUP", help="the backup folder to restore (backup_*)")
    p.add_argument("--reason", required=True, help="why (kept in the journal and the deployment log)")
    p.add_argument("--by", required=True, metavar="NAME", help="who is running this (audited)")
    p.set_defaults(func=cmd_rollback)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from bot.observability import configure_logging

    configure_logging(None, json_format=False, verbose=args.verbose)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        settings = load_settings()
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
