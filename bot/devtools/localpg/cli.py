"""``python -m bot.devtools.localpg``: ensure, status, url, stop, restart, destroy."""

from __future__ import annotations

import argparse
import logging
import sys

import psycopg

from bot.devtools.localpg import cluster, ensure
from bot.devtools.localpg.common import _SHUTDOWN_SIGNALS, DEFAULT_DATABASES, START_TIMEOUT, LocalPGError, log


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", help="project root (default: the parent of the bot/ package)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress messages on stderr")
    parser = argparse.ArgumentParser(
        prog="python -m bot.devtools.localpg",
        description="Private PostgreSQL cluster of this project (see bot/devtools/localpg.py).",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_ensure = sub.add_parser(
        "ensure", parents=[common],
        help="init/start if needed, create role and databases; print the URL of the first database",
    )
    p_ensure.add_argument("--db", action="append", dest="dbs", metavar="NAME",
                          help=f"database to create (repeatable; default {DEFAULT_DATABASES[0]})")
    p_ensure.add_argument("--timeout", type=float, default=START_TIMEOUT)
    p_stop = sub.add_parser("stop", parents=[common], help="stop the server")
    p_stop.add_argument("--mode", choices=sorted(_SHUTDOWN_SIGNALS), default="fast")
    p_restart = sub.add_parser("restart", parents=[common], help="stop (fast) and start on the same port")
    p_restart.add_argument("--mode", choices=sorted(_SHUTDOWN_SIGNALS), default="fast")
    sub.add_parser("status", parents=[common],
                   help="print the state; exit 0 running, 3 stopped, 4 not initialised")
    p_url = sub.add_parser("url", parents=[common], help="print a connection URL (does not start anything)")
    p_url.add_argument("--db", help=f"database (default {DEFAULT_DATABASES[0]}; postgres with --superuser)")
    p_url.add_argument("--superuser", action="store_true", help="URL for the postgres superuser")
    sub.add_parser("destroy", parents=[common], help="stop the server and delete the cluster")
    args = parser.parse_args(argv)

    if not args.quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("localpg: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False

    try:
        if args.command == "ensure":
            cl = ensure(args.dbs or DEFAULT_DATABASES, root=args.root, timeout=args.timeout)
            print(cl.url(), flush=True)
            return 0
        cl = cluster(args.root)
        if args.command == "stop":
            if not cl.stop(args.mode):
                log.info("PostgreSQL is not running")
            return 0
        if args.command == "restart":
            if not cl.is_initialized():
                raise LocalPGError(f"no cluster under {cl.root}: run `python -m bot.devtools.localpg ensure`")
            cl.restart(args.mode)
            return 0
        if args.command == "status":
            if not cl.is_initialized():
                print(f"not initialised ({cl.data_dir})")
                return 4
            if cl.is_running():
                print(f"running: pid {cl.pid()}, {cl.url()} (data {cl.data_dir})")
                return 0
            print(f"stopped (data {cl.data_dir}, port {cl.port})")
            return 3
        if args.command == "url":
            print(cl.superuser_url(args.db or "postgres") if args.superuser else cl.url(args.db))
            return 0
        if args.command == "destroy":
            cl.destroy()
            return 0
    except (LocalPGError, psycopg.Error, OSError) as exc:
        print(f"localpg: error: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")
    return 2
