"""`rollback-bot demo`: one whole incident, played through the real app, printed as a person reads Slack.

No Slack workspace is needed: the app is served over HTTP and receives signed requests; its WebClient
talks to a local stand-in of the Slack Web API; PostgreSQL is the project's private local cluster (a
database of its own, rebuilt at every run); the models are real XGBoost models trained on a generated
market with a regime change. The demo exits 0 only if every step really happened, as checked in the
database and on disk.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TextIO

import psycopg
from psycopg.rows import dict_row

from bot.devtools import demo_world
from bot.devtools.sandbox import BOT_TOKEN, SIGNING_SECRET, Sandbox
from bot.devtools.slack_standin import SlackStandIn
from bot.devtools.transcript import render_blocks, render_message
from core.db import Database, migrate
from core.modelio import sha256_file
from core.report import target_status
from core.services import Services
from core.settings import Settings

DEMO_DB = "rollback_bot_demo"
CHANNEL = "C0INCIDENTS"
PEOPLE = {"U0ALICE": "alice", "U0BOB": "bob", "U0CAROL": "carol", "U0DAVE": "dave", "U0ERIN": "erin"}
MODEL = "growth_momentum_large"


class DemoClock:
    """Real time plus an offset the demo can move forward (to show 30 minutes of monitoring at once, and the
    24 hours of enhanced monitoring in 30-minute steps)."""

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

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def person(self, user: str, what: str) -> None:
        self.say(f"\n▶ {PEOPLE[user]}: {what}")

    def narrate(self, text: str) -> None:
        self.say(f"\n— {text}")

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
                where = "#incidents" if channel == CHANNEL else f"DM {channel}"
                indent = "      ↳ " if body.get("thread_ts") else "  "
                label = f"rollback-bot in {where}" + (" (thread)" if body.get("thread_ts") else "")
                self.say(render_message(label, body.get("text", ""), body.get("blocks"), self.name, indent=indent))
            elif call.method == "files.completeUploadExternal" and call.ok:
                files = body.get("files") or []
                titles = ", ".join(f.get("title") or f.get("id", "") for f in files if isinstance(f, dict))
                self.say(f"      ↳ rollback-bot uploaded a file to the thread: {titles}")
            elif call.method == "views.open":
                self.say("  (a form opens)")
        self.printed_calls = len(calls)

    def card(self, ts: str, title: str) -> None:
        msg = self.standin.message(CHANNEL, ts)
        if msg is None:
            return
        self.say(f"\n  ┌─ {title} (the request message, updated in place) ─")
        for line in render_blocks(msg.blocks, self.name):
            self.say(f"  │ {line}")
        self.say("  └" + "─" * 60)


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


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


@dataclass
class Environment:
    """The demo's world: the app over HTTP with its worker, the Slack stand-in, a database, models."""

    box: Sandbox
    narrator: Narrator
    clock: DemoClock
    world: demo_world.World
    services: Services
    url: str


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
    for uid, name in PEOPLE.items():
        standin.add_user(uid, name=name, real_name=name.title())
    settings = demo_settings(database_url=url, root=root).model_copy(update={"slack_api_url": standin.base_url})
    db = Database(url, max_size=8).open()
    services = Services(settings, db, clock=clock.now)
    try:
        with Sandbox(services, standin=standin, start_worker=True) as box:
            yield Environment(box, Narrator(standin, out), clock, world, services, url)
    finally:
        db.close()
        standin.stop()


def run(*, root: Path, database_url: str | None = None, out: TextIO = sys.stdout, size: str = "demo") -> int:
    started = time.monotonic()
    say = lambda text="": print(text, file=out, flush=True)  # noqa: E731
    say("rollback-bot demo: one emergency model rollback, start to finish, without a Slack workspace.")
    checks: list[Check] = []
    with environment(root=root, database_url=database_url, size=size, out=out) as env:
        with psycopg.connect(env.url, row_factory=dict_row, autocommit=True) as conn:
            settings_before = _client_settings(conn)
        checks += _play(env.box, env.narrator, env.clock, env.world)
        with psycopg.connect(env.url, row_factory=dict_row, autocommit=True) as conn:
            checks += _verify(conn, env.services, env.world, settings_before, env.box.standin)
    say("\nWhat really happened (checked in PostgreSQL and on disk):")
    for c in checks:
        say(f"  {'✔' if c.ok else '✘'} {c.what}" + (f" — {c.detail}" if c.detail else ""))
    ok = all(c.ok for c in checks)
    say(f"\nDemo {'finished' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s. Files under {root}.")
    return 0 if ok else 1


def _client_settings(conn: psycopg.Connection) -> dict[str, tuple]:
    return {r["client_id"]: (r["auto_rebalance"], r["require_manual_approval"])
            for r in conn.execute("SELECT * FROM client_settings")}


def _play(box: Sandbox, n: Narrator, clock: DemoClock, world: demo_world.World) -> list[Check]:
    services = box.services
    engine = services.engine

    n.person("U0ALICE", "/rollback status")
    r = box.command("U0ALICE", "status")
    box.responses(r.response_key)
    n.show_new()

    n.person("U0ALICE", f"/rollback backups {MODEL}")
    r = box.command("U0ALICE", f"backups {MODEL}")
    box.responses(r.response_key)
    n.show_new()
    target = services.backups(model=MODEL).recommendation.backup
    assert target is not None, "the demo world always has a good backup"

    n.person("U0ALICE", f"/rollback diagnose {MODEL}")
    r = box.command("U0ALICE", f"diagnose {MODEL}")
    box.responses(r.response_key, timeout=30)
    n.show_new()

    reason = "Sharpe collapsed since the market turned; IC negative for days"
    n.person("U0ALICE", f"/rollback start {MODEL} {target.name} {reason} --confirm")
    r = box.command("U0ALICE", f"start {MODEL} {target.name} {reason} --confirm")
    box.responses(r.response_key)
    box.settle()
    n.show_new()
    inc = engine.list_incidents(limit=1)[0]
    wait_until(lambda: "evidence" in (engine.get(inc.id).plan or {}), 60, "the evidence before approval")
    box.settle()
    n.card(inc.message_ts, f"{inc.ref} with the evidence for the approver")

    n.person("U0ALICE", "clicks [Approve] on her own request")
    card = box.standin.message(CHANNEL, inc.message_ts)
    box.sender.block_action(user_id="U0ALICE", action_id="rollback_approve", channel_id=CHANNEL,
                            message_ts=inc.message_ts, message=card.as_slack())
    box.standin.wait_for("response_url", lambda c: "own request" in c.body.get("text", ""))
    n.show_new()

    n.person("U0BOB", "clicks [Approve] (and confirms)")
    t0 = time.monotonic()
    box.sender.block_action(user_id="U0BOB", action_id="rollback_approve", channel_id=CHANNEL,
                            message_ts=inc.message_ts, message=card.as_slack())
    wait_until(lambda: engine.get(inc.id).state in ("monitoring", "failed", "verified"), 120, "the rollback")
    machine_seconds = time.monotonic() - t0
    box.settle()
    n.show_new()
    inc = engine.get(inc.id)
    n.card(inc.message_ts, f"{inc.ref} after the rollback")

    with psycopg.connect(services.settings.database_dsn()) as conn:
        day = demo_world.release_day(conn, world.market)
    n.narrate(f"The market closes: bars for {day} arrive and ml_training_features is refreshed.")
    n.narrate("30 minutes of monitoring pass (the demo moves its clock forward)")
    clock.advance(31)
    wait_until(lambda: engine.get(inc.id).state == "resolved", 30, "the end of monitoring")
    wait_until(lambda: _report_says_resolved(services, inc.id), 30, "the final report")
    box.settle()
    n.show_new()
    inc = engine.get(inc.id)
    n.card(inc.message_ts, f"{inc.ref} resolved")
    resolved = inc.state == "resolved"
    _watch_a_day(box, n, clock, inc)
    inc = engine.get(inc.id)
    report = services.reports.path(inc.id)
    if report is not None:
        n.narrate(f"The incident report, {report} (first lines):")
        for line in report.read_text(encoding="utf-8").splitlines()[1:16]:
            n.say(f"  │ {line}")
    return [Check("the rollback ran end to end after one approval", resolved and inc.state == "resolved",
                  f"approval → trading resumed in {machine_seconds:.2f} s of machine time")]


def _watch_a_day(box: Sandbox, n: Narrator, clock: DemoClock, inc) -> None:
    """The runbook's root cause by T+2h and its 24 hours of enhanced monitoring, condensed on the demo clock."""
    services, engine = box.services, box.services.engine
    n.person("U0CAROL", "clicks [Add root cause] and writes what the diagnostics showed")
    card = box.standin.message(CHANNEL, inc.message_ts)
    box.sender.block_action(user_id="U0CAROL", action_id="add_root_cause", channel_id=CHANNEL,
                            message_ts=inc.message_ts, message=card.as_slack())
    # the form opens as a loading view at once and is filled in a moment later (handlers/loading.py)
    view = box.standin.wait_for("views.update", lambda c: c.ok and c.response["view"]["callback_id"]
                                == "root_cause_modal")[-1].response["view"]
    box.sender.view_submission(user_id="U0CAROL", callback_id="root_cause_modal", private_metadata=view[
        "private_metadata"], state_values={"root_cause_block": {"text": "Regime change in late October: momentum "
                                                                        "reversed; the model learned the old regime."}})
    wait_until(lambda: any(s.step == "root_cause" for s in engine.steps(inc.id)), 30, "the root cause")
    slots = int(((engine.get(inc.id).plan or {}).get("watch") or {}).get("slots") or 0)
    n.narrate(f"The next 24 hours pass on the demo clock: the watch checks every "
              f"{services.settings.enhanced_monitor_every_minutes:g} minutes and updates one thread message")

    def checks() -> int:
        return len(((engine.get(inc.id).plan or {}).get("watch") or {}).get("checks") or [])

    while checks() < slots:
        done = checks()
        clock.advance(services.settings.enhanced_monitor_every_minutes)
        services.worker.run_due()  # beside the background worker: jobs are claimed once either way
        wait_until(lambda: checks() > done, 30, f"enhanced monitoring check {done + 1}")
    wait_until(lambda: any(s.step == "watch_end" for s in engine.steps(inc.id)), 30, "the watch's summary")
    wait_until(lambda: _report_says(services, inc.id, "Completed: "), 30, "the report of the watch")
    box.settle()
    n.show_new()
    ts = ((engine.get(inc.id).plan or {}).get("watch") or {}).get("message_ts")
    message = box.standin.message(CHANNEL, ts) if ts else None
    if message is not None:
        n.say(render_message("rollback-bot in #incidents (thread), the watch's message after "
                             f"{len(message.versions)} updates", message.text, None, n.name, indent="      ↳ "))
    n.card(inc.message_ts, f"{inc.ref} after 24 hours")


def _verify(conn: psycopg.Connection, services: Services, world: demo_world.World,
            settings_before: dict[str, tuple], standin: SlackStandIn) -> list[Check]:
    inc = services.engine.list_incidents(limit=1)[0]
    steps_all = services.engine.steps(inc.id)
    steps = {s.step: s for s in steps_all}
    watch = (inc.plan or {}).get("watch") or {}
    rows = conn.execute("SELECT * FROM model_deployment_log WHERE model_name = %s AND is_production", (MODEL,)).fetchall()
    folder = services.settings.models_dir / MODEL
    out = [
        Check("a second person approved; the requester could not", inc.approved_by == "U0BOB" and
              conn.execute("SELECT count(*) AS n FROM rollback_bot.audit_log WHERE outcome = 'refused'"
                           " AND actor = 'U0ALICE'").fetchone()["n"] == 1),
        Check("trading was halted, then resumed", "halt" in steps and "resume" in steps and
              not conn.execute("SELECT halted FROM rollback_bot.trading_state").fetchone()["halted"]),
        Check("every client is back on its own settings", _client_settings(conn) == settings_before,
              f"{len(settings_before)} clients"),
        Check("an emergency backup of the failing model exists", bool(inc.emergency_backup) and
              (folder / inc.emergency_backup / "model.json").is_file(), inc.emergency_backup or ""),
        Check("exactly one production row, and it is the restored backup",
              len(rows) == 1 and rows[0]["version"] == inc.target_backup and rows[0]["is_rollback"],
              rows[0]["version"] if rows else "none"),
        Check("the model file in place is the backup, byte for byte",
              sha256_file(folder / "model.json") == sha256_file(folder / inc.target_backup / "model.json")),
        Check("verification loaded the model and predicted", steps.get("verify") is not None and
              steps["verify"].outcome == "ok"),
        Check("the incident is resolved", inc.state == "resolved"),
        Check("the approver saw the evidence before approving",
              ((inc.plan or {}).get("evidence") or {}).get("state") == "ready" and
              steps.get("evidence") is not None and steps["evidence"].finished_at <= inc.approved_at,
              ((inc.plan or {}).get("evidence") or {}).get("verdict", "")),
        Check("diagnostics ran after the halt and were posted", "diagnostics" in steps and
              "Likely cause" in ((inc.plan or {}).get("diagnostics") or {}).get("summary", "")),
        Check("monitoring checked the restored model against the newly realized returns",
              "monitor" in steps and (steps["monitor"].detail or {}).get("rows", 0) > 0,
              f"{(steps['monitor'].detail or {}).get('rows', 0)} rows" if "monitor" in steps else ""),
        Check("the incident report was written and uploaded", _report_ok(services, inc) and any(
            u.completed and u.thread_ts == inc.message_ts for u in standin.uploads())),
        Check("24 hours of enhanced monitoring: every check made, none missed, summary posted",
              "watch_end" in steps and steps["watch_end"].outcome == "ok" and not watch.get("missed")
              and len(watch.get("checks") or []) == watch.get("slots"),
              f"{len(watch.get('checks') or [])} checks every {watch.get('every_minutes', 0):g} min"),
        Check("the runbook's T+30, T+2h and T+24h targets were met",
              all(t.status == "met" for t in target_status(inc, list(steps_all), services.engine.clock())
                  if t.name in ("stable", "root_cause", "watched"))),
        Check("stakeholders were told in the thread and by DM at every milestone",
              conn.execute("SELECT count(*) AS n FROM rollback_bot.steps WHERE incident_id = %s AND step = 'notify'"
                           " AND outcome = 'ok'", (inc.id,)).fetchone()["n"] >= 5),
    ]
    return out


def _report_says_resolved(services: Services, incident_id: int) -> bool:
    return _report_says(services, incident_id, "| State | resolved |")


def _report_says(services: Services, incident_id: int, text: str) -> bool:
    path = services.reports.path(incident_id)
    return path is not None and text in path.read_text(encoding="utf-8")


def _report_ok(services: Services, inc) -> bool:
    return _report_says_resolved(services, inc.id)



def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="rollback-bot demo")
    parser.add_argument("--dir", type=Path, default=Path(".local/demo"), help="where models and reports go")
    parser.add_argument("--size", choices=("demo", "test"), default="demo")
    args = parser.parse_args(argv)
    return run(root=args.dir.resolve(), size=args.size)
