"""The demo's first scenario: a rollback that fixes the problem.

``growth_momentum_large`` stopped predicting after the market changed regime. Alice looks (status, backups,
diagnose), requests a rollback to the recommended backup; the card shows the evidence before anybody approves;
she cannot approve her own request, Bob does; the bot runs the runbook; new market data confirms the restored
model; the incident resolves. Carol takes the root-cause follow-up, writes the root cause and marks it done; Bob
takes the 24-hour watch, which runs on the demo's clock; when it completes with no trouble the bot marks its
follow-up done (Bob is not reminded of it). The report lists the follow-ups. Every step is then checked in PostgreSQL and on disk.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import psycopg
from psycopg.rows import dict_row

from bot.devtools import demo_world
from bot.devtools.demo_stage import (CHANNEL, Check, followups_message, press_followup, quiet, report_says,
                            request_rollback, shows, wait_until)
from bot.devtools.slack_standin import SlackStandIn
from bot.devtools.transcript import render_message
from core.modelio import sha256_file
from core.report import target_status
from core.services import Services

if TYPE_CHECKING:  # pragma: no cover
    from bot.devtools.demo import Environment

MODEL = "growth_momentum_large"

__all__ = ["MODEL", "play"]


def play(env: Environment) -> list[Check]:
    """Play the scenario, then check what really happened."""
    with psycopg.connect(env.url, row_factory=dict_row, autocommit=True) as conn:
        settings_before = client_settings(conn)
    checks = _play(env)
    with psycopg.connect(env.url, row_factory=dict_row, autocommit=True) as conn:
        checks += _verify(conn, env.services, settings_before, env.box.standin)
    return checks


def client_settings(conn: psycopg.Connection) -> dict[str, tuple]:
    return {r["client_id"]: (r["auto_rebalance"], r["require_manual_approval"])
            for r in conn.execute("SELECT * FROM client_settings")}


def _play(env: Environment) -> list[Check]:
    box, n, clock, world = env.box, env.narrator, env.clock, env.world
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
    inc = request_rollback(box, n, MODEL, target.name, reason)

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
    quiet(services)
    clock.advance(31)
    wait_until(lambda: engine.get(inc.id).state == "resolved", 30, "the end of monitoring")
    wait_until(lambda: report_says(services, inc.id, "| State | resolved |"), 30, "the final report")
    box.settle()
    n.show_new()
    inc = engine.get(inc.id)
    n.card(inc.message_ts, f"{inc.ref} resolved")
    resolved = inc.state == "resolved"
    _watch_a_day(env, inc)
    inc = engine.get(inc.id)
    report = services.reports.path(inc.id)
    if report is not None:
        lines = report.read_text(encoding="utf-8").splitlines()
        n.narrate(f"The incident report, {report} (first lines):")
        for line in lines[1:16]:
            n.say(f"  │ {line}")
        n.narrate("… and its follow-ups, further down:")
        for line in _section(lines, "## Follow-ups"):
            n.say(f"  │ {line}")
    return [Check("the rollback ran end to end after one approval", resolved and inc.state == "resolved",
                  f"approval → trading resumed in {machine_seconds:.2f} s of machine time")]


def _section(lines: list[str], heading: str) -> list[str]:
    if heading not in lines:
        return []
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [line for line in lines[start:end] if line.strip()]


def _followup(services: Services, incident_id: int, kind: str):
    return next(i for i in services.followups.items(incident_id) if i.kind == kind)


def _watch_a_day(env: Environment, inc) -> None:
    """The runbook's root cause by T+2h and its 24 hours of enhanced monitoring, condensed on the demo clock, with
    the follow-ups they belong to taken and closed by people."""
    box, n, clock = env.box, env.narrator, env.clock
    services, engine = box.services, box.services.engine
    root_cause = _followup(services, inc.id, "root_cause")
    watching = _followup(services, inc.id, "monitoring")

    n.person("U0CAROL", "clicks [Take it] on “Investigate the root cause” in the follow-ups message")
    press_followup(box, "U0CAROL", "followup_take", inc.message_ts, root_cause.id)
    wait_until(lambda: _followup(services, inc.id, "root_cause").owner == "U0CAROL", 30, "Carol owning it")
    n.person("U0BOB", "clicks [Take it] on “Enhanced monitoring … for 24 hours”")
    press_followup(box, "U0BOB", "followup_take", inc.message_ts, watching.id)
    wait_until(lambda: _followup(services, inc.id, "monitoring").owner == "U0BOB", 30, "Bob owning it")
    shows(box, CHANNEL, "Owner: <@U0BOB>", ts=followups_message(box, inc.message_ts).ts)
    box.settle()
    n.show_new()

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
    box.settle()
    n.show_new()
    n.person("U0CAROL", "clicks [Done] on “Investigate the root cause” (and confirms)")
    press_followup(box, "U0CAROL", "followup_done", inc.message_ts, root_cause.id)
    wait_until(lambda: _followup(services, inc.id, "root_cause").done, 30, "the root cause follow-up done")
    shows(box, CHANNEL, "done by <@U0CAROL>", ts=followups_message(box, inc.message_ts).ts)
    box.settle()
    n.show_new()
    n.message(followups_message(box, inc.message_ts).ts, f"the follow-ups message of {inc.ref}, updated in place")

    slots = int(((engine.get(inc.id).plan or {}).get("watch") or {}).get("slots") or 0)
    n.narrate(f"The next 24 hours pass on the demo clock: the watch checks every "
              f"{services.settings.enhanced_monitor_every_minutes:g} minutes and updates one thread message")

    def checks() -> int:
        return len(((engine.get(inc.id).plan or {}).get("watch") or {}).get("checks") or [])

    while checks() < slots:
        done = checks()
        quiet(services)
        clock.advance(services.settings.enhanced_monitor_every_minutes)
        services.worker.run_due()  # beside the background worker: jobs are claimed once either way
        wait_until(lambda: checks() > done, 30, f"enhanced monitoring check {done + 1}")
    wait_until(lambda: any(s.step == "watch_end" for s in engine.steps(inc.id)), 30, "the watch's summary")
    wait_until(lambda: report_says(services, inc.id, "Completed: "), 30, "the report of the watch")
    box.settle()
    n.show_new()
    ts = ((engine.get(inc.id).plan or {}).get("watch") or {}).get("message_ts")
    message = box.standin.message(CHANNEL, ts) if ts else None
    if message is not None:
        n.say(render_message("rollback-bot in #incidents (thread), the watch's message after "
                             f"{len(message.versions)} updates", message.text, None, n.name, indent="      ↳ "))
    n.narrate("The watch completed with no trouble, so the bot marks its follow-up done: Bob, its owner, is not "
              "reminded of work the bot did")
    wait_until(lambda: _followup(services, inc.id, "monitoring").done, 30, "the watch follow-up done")
    board_ts = followups_message(box, inc.message_ts).ts
    shows(box, CHANNEL, "The 24-hour watch completed", ts=board_ts)
    wait_until(lambda: report_says(services, inc.id, "done by rollback-bot"), 30, "the report's follow-ups")
    box.settle()
    n.show_new()
    n.message(board_ts, f"the follow-ups message of {inc.ref} after the watch")
    n.card(inc.message_ts, f"{inc.ref} after 24 hours")


def _verify(conn: psycopg.Connection, services: Services, settings_before: dict[str, tuple],
            standin: SlackStandIn) -> list[Check]:
    inc = services.engine.get(1)
    steps_all = services.engine.steps(inc.id)
    steps = {s.step: s for s in steps_all}
    watch = (inc.plan or {}).get("watch") or {}
    rows = conn.execute("SELECT * FROM model_deployment_log WHERE model_name = %s AND is_production", (MODEL,)).fetchall()
    folder = services.settings.models_dir / MODEL
    items = {i.kind: i for i in services.followups.items(inc.id)}
    report = services.reports.path(inc.id)
    report_text = report.read_text(encoding="utf-8") if report is not None else ""
    out = [
        Check("a second person approved; the requester could not", inc.approved_by == "U0BOB" and
              conn.execute("SELECT count(*) AS n FROM rollback_bot.audit_log WHERE outcome = 'refused'"
                           " AND actor = 'U0ALICE'").fetchone()["n"] == 1),
        Check("trading was halted, then resumed", "halt" in steps and "resume" in steps and
              not conn.execute("SELECT halted FROM rollback_bot.trading_state").fetchone()["halted"]),
        Check("every client is back on its own settings", client_settings(conn) == settings_before,
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
        Check("the incident report was written and uploaded", "| State | resolved |" in report_text and any(
            u.completed and u.thread_ts == inc.message_ts for u in standin.uploads())),
        Check("24 hours of enhanced monitoring: every check made, none missed, summary posted",
              "watch_end" in steps and steps["watch_end"].outcome == "ok" and not watch.get("missed")
              and len(watch.get("checks") or []) == watch.get("slots"),
              f"{len(watch.get('checks') or [])} checks every {watch.get('every_minutes', 0):g} min"),
        Check("the runbook's T+30, T+2h and T+24h targets were met",
              all(t.status == "met" for t in target_status(inc, list(steps_all), services.engine.clock())
                  if t.name in ("stable", "root_cause", "watched"))),
        Check("follow-ups: the root cause taken and done by Carol, the 24-hour watch taken by Bob and done by the "
              "bot when the watch completed, both in the report",
              len(items) == 5 and items["root_cause"].owner == items["root_cause"].completed_by == "U0CAROL"
              and items["monitoring"].owner == "U0BOB" and items["monitoring"].completed_by == "rollback-bot"
              and "- [x] 9. Root-cause analysis initiated" in report_text
              and report_text.count("| done by ") >= 2,
              f"{sum(i.done for i in items.values())} of {len(items)} done"),
        Check("stakeholders were told in the thread and by DM at every milestone",
              conn.execute("SELECT count(*) AS n FROM rollback_bot.steps WHERE incident_id = %s AND step = 'notify'"
                           " AND outcome = 'ok'", (inc.id,)).fetchone()["n"] >= 5),
    ]
    return out
