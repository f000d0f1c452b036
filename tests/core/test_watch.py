"""The 24-hour enhanced monitoring after the resume (core.watch), driven by a controlled clock on real data."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import incidents
from core.report import render_report, target_status
from bot.compose import build_services
from core.watchview import watch_message_lines
from tests.helpers import Clock
from tests.core.test_monitoring import new_day  # noqa: F401 - the fixture that closes a trading day

MODEL = "growth_momentum_large"


@pytest.fixture
def clock():
    return Clock(incidents.utcnow().replace(microsecond=0))


class Posts:
    """What the Slack layer would have shown: each update of the one message, and the summary."""

    def __init__(self):
        self.updates: list[dict] = []
        self.ends: list[str] = []

    def update(self, incident, watch):
        self.updates.append(watch)

    def end(self, incident, summary):
        self.ends.append(summary)


def process(settings, db, clock, *, hours=2.0, logs=()):
    """One bot process with the watch (and only the watch) registered."""
    services = build_services(watch_settings(settings, hours=hours, logs=logs), db, clock=clock)
    posts = Posts()
    services.watch.register(services.worker, posts.update, posts.end)  # started by the outbox
    return services, posts


def watch_settings(settings, *, hours=2.0, logs=()):
    """The watch is built and started by the services (bot/compose.py, core.outbox.aftercare_jobs) from the
    settings: ``logs`` (at most two) are followed as MONITOR_LOG and API_LOG."""
    logs = list(logs)
    assert len(logs) <= 2
    return settings.model_copy(update={"enhanced_monitor_hours": hours, "enhanced_monitor_every_minutes": 30,
                                       "monitor_log": logs[0] if logs else None,
                                       "api_log": logs[1] if len(logs) > 1 else None})


def resumed_rollback(services):
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    inc = services.engine.execute(inc.id)
    assert inc.state == "monitoring"
    return services.engine.get(inc.id)


def pending_watch_jobs(conn):
    return [(r["n"], r["run_at"]) for r in conn.execute(
        "SELECT payload->>'n' AS n, run_at FROM rollback_bot.jobs WHERE kind = 'watch_check' AND done_at IS NULL"
        " ORDER BY run_at")]


def test_checks_every_interval_from_t30_and_end_with_a_summary_meeting_the_targets(settings, db, world, clock,
                                                                                  conn):
    services, posts = process(settings, db, clock, hours=2)
    inc = resumed_rollback(services)
    watch = inc.plan["watch"]
    assert (watch["slots"], watch["first"], watch["every_minutes"]) == (4, 1, 30)
    [(n, run_at)] = pending_watch_jobs(conn)
    assert n == "1" and run_at == inc.created_at + timedelta(minutes=30), "the first check is the runbook's T+30"

    clock.at(minutes=29)
    services.worker.run_due()
    assert posts.updates == []
    clock.at(minutes=30, seconds=20)  # the worker picks it up a little late: still on time
    services.worker.run_due()
    (w,) = posts.updates
    assert [c["n"] for c in w["checks"]] == [1] and w["checks"][0]["ok"] and w["missed"] == []
    assert services.engine.get(inc.id).state == "resolved", "the 30-minute monitoring resolved it; the watch goes on"
    stable = next(s for s in services.engine.steps(inc.id) if s.step == "stable")
    assert stable.detail["due"] == (inc.created_at + timedelta(minutes=30)).isoformat()

    for minutes in (60, 90):
        clock.at(minutes=minutes)
        services.worker.run_due()
    assert len(posts.updates) == 3 and posts.ends == []
    clock.at(minutes=120)
    services.worker.run_due()
    assert [c["n"] for c in posts.updates[-1]["checks"]] == [1, 2, 3, 4] and posts.updates[-1]["ended"]
    (summary,) = posts.ends
    assert "4 check(s) made, 0 missed" in summary and "No trouble found." in summary
    assert pending_watch_jobs(conn) == [], "nothing is queued after the last check"
    clock.at(minutes=200)
    assert services.worker.run_due() >= 0 and len(posts.updates) == 4

    done = services.engine.get(inc.id)
    steps = services.engine.steps(inc.id)
    end = next(s for s in steps if s.step == "watch_end")
    assert end.outcome == "ok" and end.detail["summary"] == summary
    status = {t.name: t.status for t in target_status(done, steps, clock())}
    assert status["stable"] == "met" and status["watched"] == "met" and status["root_cause"] == "overdue"
    md = render_report(incident=done, steps=steps, diagnostics_summary=None, now=clock())
    assert "### Enhanced monitoring (24 hours)" in md and "Completed: 4 of 4 check(s) made" in md
    assert "| T+30 | Monitoring confirms stability |" in md and "| T+24h | 24-hour enhanced monitoring" in md


def test_error_lines_in_every_log_and_trades_while_halted_reopen_a_resolved_incident(settings, db, world, clock,
                                                                                      conn, tmp_path):
    trading_log, api_log = tmp_path / "trading.log", tmp_path / "api.log"
    trading_log.write_text("2026-01-01T00:00:00 ERROR before the resume\n")
    api_log.write_text("ERROR before the resume too\n")
    services, posts = process(settings, db, clock, logs=[trading_log, api_log])
    inc = resumed_rollback(services)
    with trading_log.open("a") as fh:
        fh.write("INFO rebalanced\n")
    clock.at(minutes=30)
    services.worker.run_due()
    assert posts.updates[-1]["checks"][-1]["ok"] and services.engine.get(inc.id).state == "resolved"

    with api_log.open("a") as fh:
        fh.write("12:40 ERROR upstream 502 from the broker gateway\n")
    services.engine.halt_trading(user="U0ALICE", reason="suspicious fills")
    conn.execute("INSERT INTO trades (client_id, ticker, side, quantity, price, executed_at)"
                 " VALUES ('c1', 'AAA', 'buy', 1, 1, %s)", (clock.at(minutes=45),))
    clock.at(minutes=60)
    services.worker.run_due()
    check = posts.updates[-1]["checks"][-1]
    assert check["errors"] == {"trading.log": 0, "api.log": 1} and check["trades"] == 1 and not check["ok"]
    assert any("1 in api.log" in t and "upstream 502" in t for t in check["trouble"])
    assert any("1 trade(s) executed while trading is halted" in t for t in check["trouble"])
    reopened = services.engine.get(inc.id)
    assert reopened.state == "needs_attention" and reopened.resolved_at is None and reopened.is_open
    step = next(s for s in services.engine.steps(inc.id) if s.step == "needs_attention")
    assert step.detail["reopened"] and step.detail["source"] == "24-hour enhanced monitoring"
    lines = watch_message_lines(posts.updates[-1], ref=inc.ref)
    assert any(line.startswith("#2 ") and "TROUBLE" in line for line in lines)


def test_checks_missed_while_no_bot_ran_are_flagged_and_a_new_process_carries_on(settings, db, world, clock, conn):
    first, first_posts = process(settings, db, clock, hours=4)
    inc = resumed_rollback(first)
    clock.at(minutes=30)
    first.worker.run_due()
    assert len(first_posts.updates) == 1
    # the first process is gone; another one starts at T+2h10 and finds the chain's job in PostgreSQL
    second, posts = process(settings, db, clock, hours=4)
    clock.at(minutes=130)
    second.worker.run_due()
    (w,) = posts.updates
    assert [m["n"] for m in w["missed"]] == [2, 3], "T+60 and T+90 passed by more than one interval"
    assert [c["n"] for c in w["checks"]] == [1, 4], "then it checks for the slot whose time has come"
    missed_steps = [s for s in second.engine.steps(inc.id) if s.step == "watch_missed"]
    assert [s.detail["n"] for s in missed_steps] == [2, 3] and all(s.outcome == "warning" for s in missed_steps)
    lines = watch_message_lines(w, ref=inc.ref)
    due2 = (inc.created_at + timedelta(minutes=60)).strftime("%H:%M")
    assert lines[1].startswith("MISSED (2): #2 due " + due2)
    [(n, run_at)] = pending_watch_jobs(conn)
    assert n == "5" and run_at == inc.created_at + timedelta(minutes=150)
    second.worker.run_due()
    assert len(posts.updates) == 1, "a slot is looked at once"
    clock.at(minutes=150)
    second.worker.run_due()
    assert [c["n"] for c in posts.updates[-1]["checks"]] == [1, 4, 5]
    done = second.engine.get(inc.id)
    md = render_report(incident=done, steps=second.engine.steps(inc.id), diagnostics_summary=None, now=clock())
    assert f"Missed (no bot process ran within one interval of their time): #2 due {due2} UTC" in md
    assert "2 enhanced monitoring check(s) were missed while the bot was down" in md
    assert "Monitoring check missed" in md


def test_the_restored_model_failing_on_new_data_needs_attention(settings, db, world, clock, new_day):  # noqa: F811
    services, posts = process(settings, db, clock)
    inc = resumed_rollback(services)
    new_day(world.models_dir, sign=-1.0)  # realized returns rank opposite to the model's predictions
    clock.at(minutes=30)
    services.worker.run_due()
    check = posts.updates[-1]["checks"][-1]
    assert check["rows"] == 40 and check["ic"] == pytest.approx(-1.0) and not check["ok"]
    now = services.engine.get(inc.id)
    assert now.state == "needs_attention" and "IC is -1.000" in now.plan["attention"]["reasons"][0]
    steps = services.engine.steps(inc.id)
    assert not any(s.step == "stable" for s in steps), "stability is not confirmed"
    assert {t.name: t.status for t in target_status(now, steps, clock.at(minutes=31))}["stable"] == "overdue"
    clock.at(minutes=60)
    services.worker.run_due()
    assert posts.updates[-1]["checks"][-1]["ok"], "no new rows: the same IC is not news again"
    assert services.engine.get(inc.id).state == "needs_attention", "it stays open until a person decides"


def test_the_watch_stops_when_a_follow_up_rollback_takes_the_model(settings, db, world, clock):
    from core import aftercare

    services, posts = process(settings, db, clock)
    old = resumed_rollback(services)
    clock.at(minutes=10)
    aftercare.raise_attention(services.engine, old.id, ["the restored model's IC is -0.300"], source="test")
    other = next(b.name for b in services.start_form(model=MODEL).backups
                 if b.name != old.target_backup and not b.name.startswith("backup_emergency"))
    follow, _ = services.engine.request_rollback(model=MODEL, backup=other, reason="again", requested_by="U0ALICE")
    services.engine.approve(incident_id=follow.id, approver="U0BOB")
    assert services.engine.execute(follow.id).state == "monitoring"
    clock.at(minutes=30)
    services.worker.run_due()
    stopped = next(w for w in posts.updates if w.get("stopped"))
    assert stopped["stopped"] == "the incident is superseded" and stopped["checks"] == []
    steps = services.engine.steps(old.id)
    assert next(s for s in steps if s.step == "watch_end").outcome == "skipped"
    status = {t.name: t.status for t in target_status(services.engine.get(old.id), steps, clock.at(hours=25))}
    assert status["watched"] == "not reached" and status["stable"] == "not reached"
    clock.at(minutes=40)  # the follow-up opened at T+10: its first check is its own T+30
    services.worker.run_due()
    follow_watch = services.engine.get(follow.id).plan["watch"]
    assert [c["n"] for c in follow_watch["checks"]] == [1], "the follow-up has a watch of its own"
