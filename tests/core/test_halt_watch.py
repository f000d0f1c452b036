"""core.halt_watch and core.trading: a halt that is not working stops the swap, and the halt covers every
client that could trade. Real PostgreSQL, real models, the real app over signed HTTP where Slack is involved;
time is the engine's clock (tests/helpers.Clock), moved by the engine's ``sleep``, never waited for."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from core import incidents, trading
from core.errors import PreflightFailed, RollbackError
from bot.compose import build_services
from tests.helpers import Clock, assert_consistent, client_settings, trading_halted

MODEL = "growth_momentum_large"
CHANNEL = "C0INCIDENT"


def target_of(services):
    return services.registry.recommend(MODEL).backup.name


def trade(conn, client="C001"):
    conn.execute("INSERT INTO trades (client_id, ticker, side, quantity, price, executed_at)"
                 " VALUES (%s, 'AAA', 'buy', 1, 1, clock_timestamp())", (client,))


def moving_clock(engine, on_sleep=None) -> Clock:
    """The engine's clock; its ``sleep`` moves the clock instead of waiting (and may act at each step)."""
    clock = Clock(incidents.utcnow())
    engine.clock = clock

    def sleep(seconds: float) -> None:
        clock.advance(seconds=seconds)
        if on_sleep is not None:
            on_sleep(clock)

    engine.sleep = sleep
    return clock


def approved(services, user="U0ALICE"):
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target_of(services), reason="Sharpe collapsed",
                                              requested_by=user)
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    return inc


def step(services, inc, name):
    return [s for s in services.engine.steps(inc.id) if s.step == name][-1]


# ------------------------------------------------------------------------------------------- the quiet wait


def test_the_swap_waits_until_no_trade_for_the_quiet_seconds(settings, db, world, conn):
    services = build_services(settings.model_copy(update={"halt_quiet_seconds": 3}), db)
    inc = approved(services)
    events = []
    services.engine.subscribe(lambda e: events.append(e) if e.step == "halt_trades" else None)
    start = {}

    def trader(clock):
        start.setdefault("t", clock.now)
        if (clock.now - start["t"]).total_seconds() <= 1.5:  # trades in the first 1.5 s after the halt
            trade(conn)

    moving_clock(services.engine, trader)
    done = services.engine.execute(inc.id)
    assert done.state == "monitoring", done.error
    verify = step(services, inc, "verify_halt")
    n = verify.detail["trades_after_halt"]
    assert verify.outcome == "warning" and n >= 4
    # the last trade restarted the 3 s window: the swap waited about 1.5 + 3 s of the engine's clock
    assert 4.5 <= verify.detail["quiet_wait_seconds"] <= 5.0, verify.detail
    backup = step(services, inc, "emergency_backup")
    assert (backup.started_at - verify.started_at).total_seconds() >= 4.5
    phases = [(e.detail["phase"], e.detail["trades"]) for e in events]
    assert phases[-1] == ("quiet", n) and {p for p, _ in phases[:-1]} == {"watching"}
    counts = [c for _, c in phases[:-1]]
    assert counts == sorted(set(counts)) and counts[0] == 1  # said at the first trade, then only when it grew


def test_without_trades_the_wait_is_the_quiet_seconds(settings, db, world, conn):
    services = build_services(settings.model_copy(update={"halt_quiet_seconds": 3}), db)
    inc = approved(services)
    moving_clock(services.engine)
    assert services.engine.execute(inc.id).state == "monitoring"
    verify = step(services, inc, "verify_halt")
    assert verify.outcome == "ok" and verify.detail["trades_after_halt"] == 0
    assert 3.0 <= verify.detail["quiet_wait_seconds"] < 3.3


def test_trades_that_keep_coming_pause_the_rollback_page_and_an_approver_may_proceed(settings, db, standin, world,
                                                                                     conn):
    from bot.devtools.sandbox import Sandbox

    s = settings.model_copy(update={"slack_api_url": standin.base_url, "halt_quiet_seconds": 3,
                                    "halt_quiet_timeout_seconds": 120, "escalation_contacts": ["U0DAVE"]})
    services = build_services(s, db)
    original = assert_consistent(conn, world.models_dir, MODEL)
    with Sandbox(services, standin=standin) as box:
        reply = box.command("U0ALICE", f"start {MODEL} {target_of(services)} Sharpe collapsed --confirm")
        box.responses(reply.response_key)
        card = next(m for m in standin.messages(CHANNEL) if not m.is_reply)
        box.sender.block_action(user_id="U0BOB", action_id="rollback_approve", channel_id=CHANNEL,
                                message_ts=card.ts, message=card.as_slack())
        standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
        moving_clock(services.engine, lambda clock: trade(conn))  # a trade at every look: the halt does not hold
        box.run_worker()
        inc = services.engine.list_incidents()[0]
        assert inc.state == "halt_not_effective" and "not effective" in inc.error
        # nothing swapped, trading stays halted: the flag the platform reads says so
        assert assert_consistent(conn, world.models_dir, MODEL) == original and trading_halted(conn)
        assert step(services, inc, "verify_halt").outcome == "failed"
        # one message about the trades, kept up to date, not one per trade
        posted = [c for c in standin.calls("chat.postMessage") if "after the halt*" in c.body.get("text", "")]
        assert len(posted) == 1, [c.body["text"] for c in posted]
        live = standin.message(CHANNEL, posted[0].response["ts"])
        assert live.edited and "not effective" in live.text
        assert f"*{step(services, inc, 'verify_halt').detail['trades_after_halt']} trade(s)" in live.text
        updates = [c for c in standin.calls("chat.update") if c.body.get("ts") == live.ts]
        assert 3 < len(updates) <= 62  # kept up to date, at most every 2 s of the 120 s
        # escalation paged at once
        assert any("Escalation" in m.text and "not effective" in m.text for m in standin.messages())
        assert any("not effective" in m.text for m in standin.messages(standin.dm_channel("U0DAVE")))
        # the card offers Proceed anyway; the requester and a non-approver are refused
        card = standin.message(CHANNEL, card.ts)
        assert "rollback_proceed_anyway" in json.dumps(card.blocks)
        for user, why in (("U0ALICE", "other than the requester"), ("U0DAVE", "Only approvers")):
            box.sender.block_action(user_id=user, action_id="rollback_proceed_anyway", channel_id=CHANNEL,
                                    message_ts=card.ts, message=card.as_slack())
            standin.wait_for("response_url", lambda c, w=why: w in c.body.get("text", ""))
        # /rollback resume cannot let go of the halt under a paused swap
        reply = box.command("U0BOB", "resume")
        assert "halt_not_effective" in box.responses(reply.response_key)[0]["text"]
        assert trading_halted(conn)
        box.sender.block_action(user_id="U0CAROL", action_id="rollback_proceed_anyway", channel_id=CHANNEL,
                                message_ts=card.ts, message=card.as_slack())
        standin.wait_for("chat.postMessage", lambda c: "chose *Proceed anyway*" in c.body.get("text", ""))
        services.engine.sleep = lambda seconds: None
        box.run_worker()
        inc = services.engine.get(inc.id)
        assert inc.state == "monitoring", inc.error
        assert assert_consistent(conn, world.models_dir, MODEL) == inc.target_backup
        audit = conn.execute("SELECT actor, outcome FROM rollback_bot.audit_log WHERE action = 'proceed_anyway'"
                             " ORDER BY id").fetchall()
        assert [(a["actor"], a["outcome"]) for a in audit] == [("U0ALICE", "refused"), ("U0DAVE", "refused"),
                                                                ("U0CAROL", "ok")]


def test_abandon_ends_a_paused_rollback_with_trading_halted(settings, db, world, conn):
    from core import halt_watch

    services = build_services(settings.model_copy(update={"halt_quiet_seconds": 3, "halt_quiet_timeout_seconds": 10}), db)
    inc = approved(services)
    moving_clock(services.engine, lambda clock: trade(conn))
    assert services.engine.execute(inc.id).state == "halt_not_effective"
    assert services.engine.recover() == []  # a person decides; recovery does not run it forward
    done = halt_watch.abandon(services.engine, incident_id=inc.id, user="U0ALICE", allowed=True)
    assert done.state == "failed" and "Abandoned by U0ALICE" in done.error and trading_halted(conn)
    with pytest.raises(RollbackError):
        halt_watch.proceed_anyway(services.engine, incident_id=inc.id, approver="U0CAROL", allowed=True)


# ------------------------------------------------------------------------------------------- the trades source


def test_a_missing_trades_table_is_refused_before_any_halt(settings, db, world, conn):
    services = build_services(settings.model_copy(update={"trades_table": "fills_that_do_not_exist"}), db)
    with pytest.raises(PreflightFailed, match="fills_that_do_not_exist"):
        approved(services)
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.incidents").fetchone()["n"] == 0
    # the table goes missing between the request and the approval: refused at the pre-flight before the halt
    good = build_services(settings, db)
    inc = approved(good)
    good.engine.settings = settings.model_copy(update={"trades_table": "fills_that_do_not_exist"})
    done = good.engine.execute(inc.id)
    assert done.state == "failed" and "fills_that_do_not_exist" in done.error
    assert not trading_halted(conn) and "halt" not in [s.step for s in good.engine.steps(inc.id)]


def test_a_missing_trading_log_or_time_column_is_named(settings, db, world, conn, tmp_path):
    with db.transaction() as c:
        assert trading.trades_source_problem(c, settings) is None
        problem = trading.trades_source_problem(c, settings.model_copy(update={"trading_log": tmp_path / "no.log"}))
        assert "no.log" in problem and "TRADING_LOG" in problem
        problem = trading.trades_source_problem(c, settings.model_copy(update={"trades_time_column": "filled_at"}))
        assert "filled_at" in problem
        assert trading.trades_source_problem(c, settings.model_copy(update={"trades_table": "none"})) is None


def test_no_trade_source_must_be_said_explicitly(settings, db, world, conn):
    services = build_services(settings.model_copy(update={"trades_table": "none", "halt_quiet_seconds": 3}), db)
    inc = approved(services)
    moving_clock(services.engine)
    assert services.engine.execute(inc.id).state == "monitoring"
    verify = step(services, inc, "verify_halt")
    assert verify.detail["source"].startswith("none") and verify.detail["quiet_wait_seconds"] == 0


# ------------------------------------------------------------------------------------------- the stop command


def test_the_stop_command_gets_no_secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-must-not-leak")
    monkeypatch.setenv("DATABASE_URL", "postgresql://bot:secret@db/platform")
    monkeypatch.setenv("PGPASSWORD", "secret")
    out = tmp_path / "env"
    assert trading.run_stop_command(["/bin/sh", "-c", f"env > {out}"], 10)
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert not {"SLACK_BOT_TOKEN", "DATABASE_URL", "PGPASSWORD"} & set(env)
    assert "secret" not in out.read_text() and env["PATH"] and env["HOME"]


def _dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_stop_command_that_hangs_is_killed_with_everything_it_started(tmp_path):
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(RollbackError, match="did not finish within 1 s"):
        trading.run_stop_command(["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], 1)
    assert time.monotonic() - started < 10
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _dead(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = not _dead(pid)
    if alive:
        os.kill(pid, 9)
    assert not alive, "the stop command's child outlived the timeout"


# ------------------------------------------------------------------------------------------- the sweep


def test_clients_activated_or_added_during_a_swap_are_halted_and_a_re_enabled_one_is_said(sandbox, world, conn):
    services = sandbox.services
    before = client_settings(conn)
    inactive = conn.execute("SELECT client_id FROM clients WHERE NOT active ORDER BY client_id").fetchone()["client_id"]
    active = sorted(r["client_id"] for r in conn.execute("SELECT client_id FROM clients WHERE active"))
    seen = {}

    def meddle(label: str) -> None:
        if label == "before:restoring":  # mid-swap: a client activated, one added, one re-enabled by a person
            conn.execute("UPDATE clients SET active = true WHERE client_id = %s", (inactive,))
            conn.execute("INSERT INTO clients (client_id, name, active) VALUES ('C900', 'New Fund', true)")
            conn.execute("INSERT INTO client_settings (client_id, auto_rebalance, require_manual_approval)"
                         " VALUES ('C900', true, false)")
            conn.execute("UPDATE client_settings SET auto_rebalance = true WHERE client_id = %s", (active[0],))
        if label == "before:recording":
            seen.update(client_settings(conn))

    reply = sandbox.command("U0ALICE", f"start {MODEL} {target_of(services)} Sharpe collapsed --confirm")
    sandbox.responses(reply.response_key)
    card = next(m for m in sandbox.standin.messages(CHANNEL) if not m.is_reply)
    sandbox.sender.block_action(user_id="U0BOB", action_id="rollback_approve", channel_id=CHANNEL,
                                message_ts=card.ts, message=card.as_slack())
    sandbox.standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
    services.engine.fault = meddle
    sandbox.run_worker()
    inc = services.engine.list_incidents()[0]
    assert inc.state == "monitoring", inc.error
    # at the next step boundary both newly active clients were saved and halted
    assert seen[inactive] == (False, True) and seen["C900"] == (False, True)
    assert seen[active[0]] == (True, True)  # the person's choice is left alone
    # resume: every client the bot halted has its own settings back; the re-enabled one is as the person set it
    after = client_settings(conn)
    assert after["C900"] == (True, False) and after[inactive] == before[inactive]
    resume = [s for s in services.engine.steps(inc.id) if s.step == "resume"][-1]
    assert resume.detail["left_alone"] == [active[0]]
    sweep = [s for s in services.engine.steps(inc.id) if s.step == "halt_sweep"]
    assert sweep and sweep[0].outcome == "warning"
    replies = [m.text for m in sandbox.standin.thread(CHANNEL, card.ts)]
    assert any("re-enabled" in t and active[0] in t for t in replies), replies
    assert any("became active during the halt" in t and "C900" in t for t in replies), replies


def test_the_worker_halts_a_client_added_while_a_manual_halt_is_held(sandbox, world, conn):
    reply = sandbox.command("U0ALICE", "halt suspicious fills")
    sandbox.responses(reply.response_key)
    conn.execute("INSERT INTO clients (client_id, name, active) VALUES ('C901', 'Late Fund', true)")
    conn.execute("INSERT INTO client_settings (client_id, auto_rebalance, require_manual_approval)"
                 " VALUES ('C901', true, false)")
    sandbox.services.worker.tick()
    sandbox.settle()
    assert client_settings(conn)["C901"] == (False, True)
    halt_card = next(m for m in sandbox.standin.messages(CHANNEL) if not m.is_reply)
    assert any("C901" in m.text for m in sandbox.standin.thread(CHANNEL, halt_card.ts))
    sandbox.services.engine.resume_trading(user="U0BOB")
    assert client_settings(conn)["C901"] == (True, False) and not trading_halted(conn)
