"""`rollback-bot demo`: two incidents, played through the real app, printed as a person reads Slack.

1. A rollback that fixes the problem (``bot.devtools.demo_fixed``): the evidence on the card before approval, the
   runbook run after one approval, the 24-hour watch condensed on the demo's clock, follow-ups taken and done.
2. A rollback that does not fix it (``bot.devtools.demo_unfixed``): the restored model fails on the next day's data too,
   the incident needs attention, is escalated, pages the primary contact (Slack DM and PagerDuty), then the
   emergency contact when nobody acknowledges in time, and a person presses *Acknowledge*.

No Slack workspace is needed: the app is served over HTTP and receives signed requests; its WebClient
talks to a local stand-in of the Slack Web API, and its PagerDuty client to a local stand-in of PagerDuty's
Events API; PostgreSQL is the project's private local cluster (a database of its own, rebuilt at every run);
the models are real XGBoost models trained on a generated market with a regime change. The demo exits 0 only
if every step really happened, as checked in the database, on disk and in what the stand-ins received.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import psycopg
from pydantic import SecretStr

from bot.devtools import demo_world
from bot.devtools.demo_stage import CHANNEL, EMERGENCY_CONTACTS, PEOPLE, PRIMARY_CONTACTS, Check, DemoClock, Narrator
from bot.devtools.pagerduty_standin import PagerDutyStandIn
from bot.devtools.sandbox import BOT_TOKEN, SIGNING_SECRET, Sandbox
from bot.devtools.slack_standin import SlackStandIn
from core.db import Database, migrate
from bot.compose import build_services
from core.services import Services
from core.settings import Settings

__all__ = ["CHANNEL", "DEMO_DB", "PEOPLE", "Environment", "demo_settings", "environment", "main", "run"]

DEMO_DB = "rollback_bot_demo"
PAGERDUTY_KEY = "demo" + "0" * 28  # the stand-in checks a 32-character routing key, as PagerDuty does


def demo_settings(*, database_url: str, root: Path) -> Settings:
    return Settings(
        _env_file=None,
        database_url=database_url,
        models_dir=root / "models",
        incidents_dir=root / "incidents",
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_url="http://127.0.0.1:9/api/",
        incident_channel=CHANNEL,
        operators=["U0ALICE", "U0BOB", "U0CAROL"],
        approvers=["U0BOB", "U0CAROL"],
        stakeholders=["U0DAVE", "U0ERIN"],
        primary_contacts=PRIMARY_CONTACTS,
        emergency_contacts=EMERGENCY_CONTACTS,
        escalation_ack_minutes=15,
        monitor_minutes=30,
        watchdog_every_minutes=0,
    )


def prepare_database(url: str | None) -> str:
    if url:
        return url
    from bot.devtools import localpg

    cluster = localpg.ensure(databases=("rollback_bot",))
    cluster.drop_database(DEMO_DB)
    return cluster.create_database(DEMO_DB)


@dataclass
class Environment:
    """The demo's world: the app over HTTP with its worker, the Slack stand-in, a database, models."""

    box: Sandbox
    narrator: Narrator
    clock: DemoClock
    world: demo_world.World
    services: Services
    url: str
    pagerduty: PagerDutyStandIn


@contextlib.contextmanager
def environment(*, root: Path, database_url: str | None, size: str, out: TextIO) -> Iterator[Environment]:
    say = lambda text="": print(text, file=out, flush=True)  # noqa: E731
    say("Setting up: a private PostgreSQL, a generated market with a regime change, XGBoost models with backups…")
    url = prepare_database(database_url)
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / "incidents", ignore_errors=True)  # the database is new: so are its incidents
    with psycopg.connect(url) as conn:
        # One more trading day is held back: it "closes" during monitoring, so the demo shows the restored
        # model checked against realized returns as new data arrives.
        world = demo_world.build_world(conn, root / "models", size=size, seed=0, held_back=1)
    migrate(url)
    say(f"  {len(world.tickers)} tickers × {len(world.trading_days)} trading days; regime change on "
        f"{world.regime_change_start}; models: {', '.join(world.models)}; {len(world.clients)} clients "
        f"({world.build_seconds:.1f} s)")
    clock = DemoClock()
    standin = SlackStandIn(channels={"incidents": CHANNEL})
    standin.start()
    pagerduty = PagerDutyStandIn(routing_key=PAGERDUTY_KEY).start()
    for uid, name in PEOPLE.items():
        standin.add_user(uid, name=name, real_name=name.title())
    settings = demo_settings(database_url=url, root=root).model_copy(update={
        "slack_api_url": standin.base_url, "pagerduty_routing_key": SecretStr(PAGERDUTY_KEY),
        "pagerduty_events_url": pagerduty.url})
    db = Database(url, max_size=8).open()
    services = build_services(settings, db, clock=clock.now)
    try:
        with Sandbox(services, standin=standin, start_worker=True) as box:
            yield Environment(box, Narrator(standin, out), clock, world, services, url, pagerduty)
            box.settle()
            box.app.home_publisher.flush(15)  # its debounced App Home refresh must not outlive the pool
    finally:
        db.close()
        pagerduty.stop()
        standin.stop()


def run(*, root: Path, database_url: str | None = None, out: TextIO = sys.stdout, size: str = "demo",
        observe: Callable[[Environment], None] | None = None) -> int:
    """Play both scenarios and print the checks; 0 only if every check passed. ``observe`` is handed the
    environment after the scenarios, before it closes (tests read what the stand-ins received)."""
    from bot.devtools import demo_fixed, demo_unfixed

    started = time.monotonic()
    say = lambda text="": print(text, file=out, flush=True)  # noqa: E731
    say("rollback-bot demo: two emergency model rollbacks, start to finish, without a Slack workspace.")
    checks: list[tuple[str, list[Check]]] = []
    with environment(root=root, database_url=database_url, size=size, out=out) as env:
        env.narrator.heading(f"Scenario 1 of 2: a rollback that fixes the problem ({demo_fixed.MODEL})")
        checks.append(("Scenario 1, the rollback that fixed it", demo_fixed.play(env)))
        env.narrator.heading(f"Scenario 2 of 2: a rollback that does NOT fix the problem ({demo_unfixed.MODEL})")
        checks.append(("Scenario 2, the rollback that did not fix it", demo_unfixed.play(env)))
        if observe is not None:
            observe(env)
    say("\nWhat really happened (checked in PostgreSQL, on disk and in what the Slack and PagerDuty stand-ins "
        "received):")
    for title, group in checks:
        say(f"  {title}:")
        for c in group:
            say(f"    {'✔' if c.ok else '✘'} {c.what}" + (f" — {c.detail}" if c.detail else ""))
    ok = all(c.ok for _, group in checks for c in group)
    say(f"\nDemo {'finished' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s. Files under {root}.")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="rollback-bot demo")
    parser.add_argument("--dir", type=Path, default=Path(".local/demo"), help="where models and reports go")
    parser.add_argument("--size", choices=("demo", "test"), default="demo")
    args = parser.parse_args(argv)
    return run(root=args.dir.resolve(), size=args.size)
