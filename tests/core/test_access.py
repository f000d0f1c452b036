"""core.auth and core.access: fail closed on who may act. Operators default to approvers only; heavy commands are
for operators, approvers and stakeholders, rate-limited per person in PostgreSQL; decisions have a lane of their
own; watchdog proposals are taken over by a person; root cause and report belong to the incident's people.

Slack is the stand-in, reached by signed requests; PostgreSQL is real."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import timedelta

import psycopg
import pytest

from bot.devtools.slack_signing import SenderResponse, SlackSender
from core import access
from core.auth import Authorizer
from core.errors import NotAuthorized, RateLimited
from bot.compose import build_services
from tests.helpers import Clock, shown_modal, trading_halted

MODEL = "growth_momentum_large"
CHANNEL = "C0INCIDENT"


def target_of(services):
    return services.registry.recommend(MODEL).backup.name


def answer(box, reply) -> str:
    return box.responses(reply.response_key, timeout=20)[0].get("text", "")


def card_of(box):
    return next(m for m in box.standin.messages(CHANNEL) if not m.is_reply)


def click(box, user, action_id, message):
    return box.sender.block_action(user_id=user, action_id=action_id, channel_id=CHANNEL, message_ts=message.ts,
                                   message=message.as_slack())


# ------------------------------------------------------------------------------------------- operators


def test_without_operators_only_approvers_operate(settings, db, standin, world, conn):
    from bot.devtools.sandbox import Sandbox

    auth = Authorizer(operators=[], approvers=["U0BOB"])
    assert not auth.is_operator("U0DAVE") and auth.is_operator("U0BOB") and not auth.is_operator("")
    s = settings.model_copy(update={"slack_api_url": standin.base_url, "operators": []})
    with Sandbox(build_services(s, db), standin=standin) as box:
        assert "Only operators" in answer(box, box.command("U0DAVE", "halt rogue"))
        assert "Only operators" in answer(box, box.command("U0DAVE", f"start {MODEL} {target_of(box.services)} x --confirm"))
        assert not trading_halted(conn)
        answer(box, box.command("U0BOB", "halt an approver may"))
        assert trading_halted(conn)


# ------------------------------------------------------------------------------------------- heavy commands


def test_heavy_commands_are_for_operators_approvers_and_stakeholders(settings, db, standin, world, conn):
    from bot.devtools.sandbox import Sandbox

    s = settings.model_copy(update={"slack_api_url": standin.base_url, "stakeholders": ["U0ERIN"]})
    with Sandbox(build_services(s, db), standin=standin) as box:
        for text in (f"diagnose {MODEL}", f"backups {MODEL}", f"status {MODEL}"):
            assert "operators, approvers and stakeholders" in answer(box, box.command("U0DAVE", text)), text
        assert "Backups" in json.dumps(box.responses(box.command("U0ERIN", f"backups {MODEL}").response_key)[0])
        assert "Production models" in answer(box, box.command("U0DAVE", "status"))  # the light status stays open
    refused = conn.execute("SELECT count(*) AS n FROM rollback_bot.audit_log WHERE actor = 'U0DAVE'"
                           " AND outcome = 'refused'").fetchone()["n"]
    assert refused == 3


def test_heavy_commands_are_rate_limited_per_person_across_processes(settings, db, world, conn):
    s = settings.model_copy(update={"heavy_commands_per_minute": 3})
    one, two = build_services(s, db), build_services(s, db)  # two bot processes sharing the database
    clock = Clock(one.engine.clock())
    one.engine.clock = two.engine.clock = clock
    for services in (one, two, one):
        services.heavy_command(user="U0ALICE", command="diagnose", allowed=True)
    with pytest.raises(RateLimited, match="try again in"):
        two.heavy_command(user="U0ALICE", command="backups", allowed=True)
    one.heavy_command(user="U0BOB", command="diagnose", allowed=True)  # per person
    clock.advance(seconds=61)
    two.heavy_command(user="U0ALICE", command="diagnose", allowed=True)


def test_concurrent_heavy_commands_take_no_more_than_the_limit(settings, db, world, conn):
    s = settings.model_copy(update={"heavy_commands_per_minute": 5})
    services = [build_services(s, db) for _ in range(4)]
    results: list[bool] = []

    def run(svc):
        for _ in range(5):
            try:
                svc.heavy_command(user="U0ALICE", command="diagnose", allowed=True)
                results.append(True)
            except RateLimited:
                results.append(False)

    threads = [threading.Thread(target=run, args=(svc,)) for svc in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 5 and len(results) == 20


# ------------------------------------------------------------------------------------------- the decisions lane


class Capture(SlackSender):
    """Builds signed Slack requests without sending them (they are handed to the work process's loop)."""

    def __init__(self) -> None:
        super().__init__("http://unused.invalid/", "unused")
        self.sent: list[tuple[str, dict[str, str]]] = []

    def raw(self, body, headers=None) -> SenderResponse:
        self.sent.append((body if isinstance(body, str) else body.decode(), dict(headers or {})))
        return SenderResponse(200, "", {})


def _blocking_diagnostics(database_url: str) -> psycopg.Connection:
    """Every `/rollback diagnose` waits on this lock (it reads daily_bars) until the connection commits."""
    lock = psycopg.connect(database_url)
    lock.execute("LOCK TABLE daily_bars IN ACCESS EXCLUSIVE MODE")
    return lock


def _wait_for_blocked(conn, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        blocked = conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
                               " AND wait_event_type = 'Lock'").fetchone()["n"]
        if blocked >= n:
            return
        assert time.monotonic() < deadline, f"only {blocked} diagnostics blocked"
        time.sleep(0.05)


def _wait_for_state(engine, incident_id: int, state: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine.get(incident_id).state == state:
            return True
        time.sleep(0.05)
    return False


def test_twenty_diagnose_commands_in_flight_do_not_delay_approve_in_the_work_process(settings, db, standin, world,
                                                                                      conn, database_url):
    """The work process's loop (bot/workproc.serve_stdin, as `rollback-bot work` runs it) with the real app."""
    from bot.app import build_app
    from bot.workproc import serve_stdin

    s = settings.model_copy(update={"slack_api_url": standin.base_url, "slack_signing_secret": None,
                                    "heavy_commands_per_minute": 100})
    services = build_services(s, db)
    app = build_app(s, services)
    standin.join(CHANNEL)  # `serve` joined the incident channel before it started the work process
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target_of(services), reason="Sharpe collapsed",
                                              requested_by="U0ALICE")
    inc = app.progress.post_card(inc)
    card = standin.message(CHANNEL, inc.message_ts)
    capture = Capture()
    for i in range(20):
        capture.slash_command(text=f"diagnose {MODEL}", user_id="U0ALICE", channel_id="C0OPS",
                              response_url=standin.response_url(f"diag-{i}"))
    capture.block_action(user_id="U0BOB", action_id="rollback_approve", channel_id=CHANNEL, message_ts=card.ts,
                         message=card.as_slack())
    lines = [json.dumps({"work": "dispatch", "body": body, "headers": headers}) + "\n" for body, headers in capture.sent]
    read_fd, write_fd = os.pipe()
    lock = _blocking_diagnostics(database_url)
    loop = threading.Thread(target=serve_stdin, args=(app.deps, app.client, os.fdopen(read_fd, "rb")),
                            kwargs={"app": app}, daemon=True)
    loop.start()
    writer = os.fdopen(write_fd, "w")
    try:
        writer.writelines(lines[:20])
        writer.flush()
        _wait_for_blocked(conn, 4)  # the work pool is full of diagnostics waiting on the lock
        writer.write(lines[20])
        writer.flush()
        assert _wait_for_state(services.engine, inc.id, "approved", timeout=15), "Approve waited behind diagnose"
    finally:
        lock.commit()
        lock.close()
        writer.close()
        loop.join(120)
        app.progress.flush(10)
        app.progress.close()
    assert not loop.is_alive()
    assert len(standin.calls("response_url")) == 20  # every diagnose was answered in the end


def test_twenty_diagnose_commands_in_flight_do_not_delay_approve_in_one_process(settings, db, standin, world,
                                                                                conn, database_url):
    """The same in a process serving Slack itself (Sandbox: Bolt behind aiohttp, work on the app's pool)."""
    from bot.devtools.sandbox import Sandbox

    s = settings.model_copy(update={"slack_api_url": standin.base_url, "heavy_commands_per_minute": 100})
    with Sandbox(build_services(s, db), standin=standin) as box:
        answer(box, box.command("U0ALICE", f"start {MODEL} {target_of(box.services)} Sharpe collapsed --confirm"))
        card = card_of(box)
        lock = _blocking_diagnostics(database_url)
        try:
            for _ in range(20):
                assert box.command("U0ALICE", f"diagnose {MODEL}").status == 200
            _wait_for_blocked(conn, 4)
            click(box, "U0BOB", "rollback_approve", card)
            inc = box.services.engine.list_incidents()[0]
            assert _wait_for_state(box.services.engine, inc.id, "approved", timeout=15), "Approve waited"
        finally:
            lock.commit()
            lock.close()


# ------------------------------------------------------------------------------------------- watchdog proposals


def test_a_watchdog_proposal_needs_a_person_to_take_it_over_then_another_approver(services, world, conn):
    engine = services.engine
    inc, _ = engine.request_rollback(model=MODEL, backup=target_of(services), reason="watchdog: IC fell",
                                     requested_by="rollback-bot watchdog", source="watchdog")
    with pytest.raises(NotAuthorized, match="Take over"):
        engine.approve(incident_id=inc.id, approver="U0BOB")
    with pytest.raises(NotAuthorized, match="operators"):
        access.take_over(engine, incident_id=inc.id, user="U0DAVE", allowed=False)
    taken = access.take_over(engine, incident_id=inc.id, user="U0CAROL", allowed=True)
    assert taken.requested_by == "U0CAROL" and taken.plan["taken_over"]["from"] == "rollback-bot watchdog"
    with pytest.raises(Exception, match="already taken over"):
        access.take_over(engine, incident_id=inc.id, user="U0ALICE", allowed=True)
    with pytest.raises(NotAuthorized, match="own request"):
        engine.approve(incident_id=inc.id, approver="U0CAROL")
    assert engine.approve(incident_id=inc.id, approver="U0BOB").state == "approved"
    actions = [(r["actor"], r["action"], r["outcome"]) for r in conn.execute(
        "SELECT actor, action, outcome FROM rollback_bot.audit_log ORDER BY id")]
    assert ("U0CAROL", "take_over", "ok") in actions and ("U0BOB", "approve", "refused") in actions


def test_take_over_from_the_card(sandbox, world, conn):
    engine = sandbox.services.engine
    inc, _ = engine.request_rollback(model=MODEL, backup=target_of(sandbox.services), reason="watchdog: IC fell",
                                     requested_by="rollback-bot watchdog", source="watchdog", channel=CHANNEL)
    sandbox.app.progress.post_card(inc)
    sandbox.settle()
    card = card_of(sandbox)
    ids = json.dumps(card.blocks)
    assert "rollback_take_over" in ids and "rollback_approve" not in ids
    click(sandbox, "U0ALICE", "rollback_take_over", card)
    sandbox.standin.wait_for("chat.update", lambda c: "taken over by" in json.dumps(c.body.get("blocks")))
    card = sandbox.standin.message(CHANNEL, card.ts)
    assert "rollback_approve" in json.dumps(card.blocks)
    click(sandbox, "U0BOB", "rollback_approve", card)
    sandbox.standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
    assert engine.get(inc.id).approved_by == "U0BOB" and engine.get(inc.id).requested_by == "U0ALICE"


# ------------------------------------------------------------------------------------------- the incident's people


def test_root_cause_and_report_belong_to_the_incidents_people_and_approvers(sandbox, world, conn, tmp_path):
    answer(sandbox, sandbox.command("U0ALICE", f"start {MODEL} {target_of(sandbox.services)} Sharpe collapsed --confirm"))
    card = card_of(sandbox)
    click(sandbox, "U0BOB", "rollback_approve", card)
    sandbox.standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
    sandbox.run_worker()
    final = sandbox.standin.message(CHANNEL, card.ts)
    # an outsider: no form (the loading view says why), no root cause, no report
    click(sandbox, "U0DAVE", "add_root_cause", final)
    assert "root cause" in json.dumps(shown_modal(sandbox.standin, "notice_modal"))
    assert not [c for c in sandbox.standin.calls() if c.method in ("views.open", "views.update") and c.ok
                and c.response["view"]["callback_id"] == "root_cause_modal"]
    meta = json.dumps({"incident": 1})
    r = sandbox.sender.view_submission(user_id="U0DAVE", callback_id="root_cause_modal", private_metadata=meta,
                                       state_values={"root_cause_block": {"text": "I was not there."}})
    assert "requester and approver" in r.body
    assert "requester and approver" in answer(sandbox, sandbox.command("U0DAVE", "report INC-1"))
    assert sandbox.services.engine.get(1).root_cause is None
    # the requester (not an approver) and an approver who was not involved may
    r = sandbox.sender.view_submission(user_id="U0ALICE", callback_id="root_cause_modal", private_metadata=meta,
                                       state_values={"root_cause_block": {"text": "Momentum reversal."}})
    assert r.status == 200 and not r.body
    assert "posted again" in answer(sandbox, sandbox.command("U0CAROL", "report INC-1"))
    assert sandbox.services.engine.get(1).root_cause == "Momentum reversal."
    refused = conn.execute("SELECT action FROM rollback_bot.audit_log WHERE actor = 'U0DAVE' AND outcome = 'refused'"
                           " ORDER BY id").fetchall()
    assert [r["action"] for r in refused] == ["root_cause", "root_cause", "report"]


def test_clock_is_used_for_the_window(settings, db, world):
    """The rate limit's minute is the engine's clock (tests move it; nobody waits)."""
    services = build_services(settings.model_copy(update={"heavy_commands_per_minute": 1}), db)
    clock = Clock(services.engine.clock())
    services.engine.clock = clock
    services.heavy_command(user="U0ALICE", command="diagnose", allowed=True)
    clock.advance(seconds=59)
    with pytest.raises(RateLimited, match="in 1 s"):
        services.heavy_command(user="U0ALICE", command="diagnose", allowed=True)
    clock.advance(seconds=1, microseconds=1)
    services.heavy_command(user="U0ALICE", command="diagnose", allowed=True)
    assert timedelta(minutes=1) == access.HEAVY_WINDOW
