"""core.loss and core.pnl: the estimated loss as a live number. `/rollback loss`, the card's *Update loss* form and
``rollback-bot loss`` update it at any time with a history (card, thread, report); a figure over
LOSS_ESCALATION_THRESHOLD escalates at once; PNL_QUERY is polled read-only into the same history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from bot.devtools.sandbox import Sandbox
from core import incidents
from core.errors import InvalidInput
from core.loss import parse_amount
from bot.compose import build_services
from tests.helpers import Clock, shown_modal
from tests.core.test_escalation import Pager, bot
from tests.e2e.test_slack_flow import CHANNEL, MODEL, card_message, click, request

ROOT = Path(__file__).resolve().parents[2]
PNL = ("SELECT -coalesce(sum(quantity * price), 0) FROM trades WHERE ticker = 'PNL' AND executed_at >= %(start)s")


@pytest.fixture
def clock():
    return Clock(incidents.utcnow().replace(microsecond=0))


def history(conn, incident_id=1):
    return [(r["amount"], r["source"], r["recorded_by"]) for r in conn.execute(
        "SELECT * FROM rollback_bot.loss_estimates WHERE incident_id = %s ORDER BY id", (incident_id,))]


def escalations(standin):
    return [c for c in standin.calls("chat.postMessage") if "*Escalation*" in c.body.get("text", "")]


def loss_box(settings, db, standin, **extra):
    s = settings.model_copy(update={"slack_api_url": standin.base_url, "primary_contacts": ["U0ERIN"], **extra})
    return Sandbox(build_services(s, db), standin=standin)


def test_parse_amount():
    assert parse_amount("250000") == parse_amount("250,000") == parse_amount("250k") == parse_amount("$250K") == 250e3
    assert parse_amount("1.5m") == 1.5e6 and parse_amount("0") == 0 and parse_amount(" 12.25 ") == 12.25
    for bad in ("", "-5", "abc", "1,23", "nan", "inf", "1e9", "5 apples", "10" * 10):
        with pytest.raises(InvalidInput):
            parse_amount(bad)


def test_loss_command_updates_card_thread_history_and_report(settings, db, standin, world, conn, tmp_path):
    standin.add_user("U0ERIN", name="erin")
    with loss_box(settings, db, standin) as box:
        target = box.services.registry.recommend(MODEL).backup.name
        inc, _ = box.services.engine.request_rollback(model=MODEL, backup=target, reason="losing money",
                                                      requested_by="U0ALICE", estimated_loss=1000, channel=CHANNEL)
        inc = box.app.progress.post_card(inc)
        reply = box.command("U0CAROL", f"loss {inc.ref} 250k")
        assert "INC-1: the estimated loss is now 250,000 (was 1,000)." in box.responses(reply.response_key)[0]["text"]
        box.run_worker()
        assert history(conn) == [(1000, "request", "U0ALICE"), (250000, "slack", "U0CAROL")]
        assert box.services.engine.get(inc.id).estimated_loss == 250000
        replies = [m.text for m in standin.thread(CHANNEL, inc.message_ts)]
        assert any("Estimated loss updated to *250,000* (was 1,000) by <@U0CAROL> in Slack" in t for t in replies)
        card = json.dumps(card_message(box).blocks, ensure_ascii=False)
        assert "*Estimated loss:* 250,000" in card and "updated 1×" in card and "loss_update" in card
        box.responses(box.command("U0BOB", f"loss {inc.ref} 300,000.50").response_key)
        card = click(box, "U0BOB", "rollback_approve", card_message(box))
        box.standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
        for _ in range(3):
            box.run_worker()
        assert box.services.engine.get(inc.id).state == "monitoring"
        report = next((tmp_path / "incidents").glob("INC-1-*.md")).read_text()
        assert "- Estimated loss: 300,000.50 (the latest of 3 figures" in report
        table = report[report.index("### Estimated loss over time"):]
        assert "| 1,000 | given with the request | Alice (@alice) |" in table
        assert "| 250,000 | Slack | Carol (@carol) |" in table and "| 300,000.50 | Slack | Bob (@bob) |" in table
        assert "| Estimated loss updated | Carol (@carol) | ok | 1,000 → 250,000 (Slack) |" in report
        # a later figure rewrites the report that exists
        box.responses(box.command("U0BOB", f"loss {inc.ref} 420000").response_key)
        box.run_worker()
        assert "- Estimated loss: 420,000 (the latest of 4 figures" in next(
            (tmp_path / "incidents").glob("INC-1-*.md")).read_text()


def test_bad_loss_input_is_told_and_changes_nothing(settings, db, standin, world, conn):
    with loss_box(settings, db, standin) as box:
        card = request(box)
        for user, text, expected in [
            ("U0ALICE", "loss INC-1 lots", "`lots` is not an amount"),
            ("U0ALICE", "loss INC-1 -5", "is not an amount"),
            ("U0ALICE", "loss INC-1", "Usage: `/rollback loss INCIDENT AMOUNT`"),
            ("U0ALICE", "loss nonsense 5", "Usage: `/rollback loss INCIDENT AMOUNT`"),
            ("U0ALICE", "loss INC-99 5", "There is no incident INC-99."),
            ("U0DAVE", "loss INC-1 5", "Only operators may update the estimated loss"),
        ]:
            reply = box.command(user, text)
            assert expected in box.responses(reply.response_key)[0]["text"], text
        box.run_worker()
        assert history(conn) == [] and box.services.engine.get(1).estimated_loss is None
        assert conn.execute("SELECT count(*) AS n FROM rollback_bot.steps WHERE step = 'loss'").fetchone()["n"] == 0
        assert conn.execute("SELECT actor FROM rollback_bot.audit_log WHERE action = 'loss'").fetchall() == [
            {"actor": "U0DAVE"}]
        assert "Update loss" in json.dumps(card.blocks)


def test_a_figure_over_the_threshold_escalates_at_once_and_once(settings, db, standin, world, conn):
    standin.add_user("U0ERIN", name="erin")
    with loss_box(settings, db, standin, loss_escalation_threshold=100_000) as box:
        request(box)
        box.run_worker()
        box.responses(box.command("U0ALICE", "loss INC-1 50000").response_key)
        box.run_worker()
        assert escalations(standin) == []
        # over, then corrected back under before the worker ran: nobody is paged, and a later crossing still pages
        reply = box.command("U0ALICE", "loss INC-1 200000")
        assert "escalating now" in box.responses(reply.response_key)[0]["text"]
        box.responses(box.command("U0ALICE", "loss INC-1 60000").response_key)
        box.run_worker()
        assert escalations(standin) == []
        box.responses(box.command("U0BOB", "loss INC-1 150000").response_key)
        box.run_worker()
        pages = escalations(standin)
        assert len(pages) == 2 and all("estimated loss of 150,000 exceeds the escalation threshold of 100,000"
                                       in c.body["text"] for c in pages)  # a DM to Erin and the thread mention
        box.responses(box.command("U0BOB", "loss INC-1 900000").response_key)
        box.run_worker()
        assert len(escalations(standin)) == 2, "the loss pages once per incident"
        assert [a for a, _, _ in history(conn)] == [50000, 200000, 60000, 150000, 900000]


def test_update_loss_button_opens_a_form_that_validates(settings, db, standin, world, conn):
    with loss_box(settings, db, standin) as box:
        card = request(box)
        click(box, "U0BOB", "loss_update", card)
        # a loading view opens with the trigger at once (Slack's 3 s, single use), then the form fills it in
        view = shown_modal(standin, "loss_modal")
        [opened] = standin.calls("views.open")
        assert opened.ok and opened.response["view"]["callback_id"] == "loading_modal"
        assert opened.response["view"]["id"] == view["id"]
        for bad in ("", "a lot"):
            r = box.sender.view_submission(user_id="U0BOB", callback_id="loss_modal",
                                           state_values={"loss_block": {"loss": bad}},
                                           private_metadata=view["private_metadata"])
            assert r.status == 200 and r.json()["response_action"] == "errors"
            assert "not an amount" in r.json()["errors"]["loss_block"]
        r = box.sender.view_submission(user_id="U0DAVE", callback_id="loss_modal",
                                       state_values={"loss_block": {"loss": "5"}},
                                       private_metadata=view["private_metadata"])
        assert "Only operators" in r.json()["errors"]["loss_block"]
        assert history(conn) == []
        r = box.sender.view_submission(user_id="U0BOB", callback_id="loss_modal",
                                       state_values={"loss_block": {"loss": "75000"}},
                                       private_metadata=view["private_metadata"])
        assert r.status == 200 and not r.body
        box.run_worker()
        assert history(conn) == [(75000, "slack", "U0BOB")]
        assert "*Estimated loss:* 75,000" in json.dumps(card_message(box).blocks)
        # a person outside OPERATORS may not even open it: told in the loading view the click opened
        click(box, "U0DAVE", "loss_update", card)
        notice = standin.wait_for("views.update", lambda c: c.response["view"]["callback_id"] == "notice_modal")[0]
        assert "Only operators may update the estimated loss" in json.dumps(notice.body["view"])
        assert standin.ephemerals("U0DAVE") == [] and history(conn) == [(75000, "slack", "U0BOB")]


def cli(*args, env):
    """``rollback-bot ARGS`` as a real process."""
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=env["HOME"], env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_updates_the_loss_and_the_serving_bot_shows_and_escalates_it(settings, db, standin, world, conn,
                                                                        tmp_path):
    standin.add_user("U0ERIN", name="erin")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
           "DATABASE_URL": settings.database_dsn(), "MODELS_DIR": str(world.models_dir),
           "LOSS_ESCALATION_THRESHOLD": "100000"}
    with loss_box(settings, db, standin, loss_escalation_threshold=100_000) as box:
        card = request(box)
        done = cli("loss", "INC-1", "125k", "--by", "ops on call", env=env)
        assert done.returncode == 0, done.stderr
        assert "INC-1: the estimated loss is now 125,000; over LOSS_ESCALATION_THRESHOLD" in done.stdout
        box.run_worker()  # the serving process shows it and escalates
        replies = [m.text for m in standin.thread(CHANNEL, card.ts)]
        assert any("updated to *125,000* by ops on call from the command line" in t for t in replies)
        assert escalations(standin)
        for args, code, message in [(("INC-1", "abc", "--by", "x"), 1, "is not an amount"),
                                    (("INC-7", "5", "--by", "x"), 1, "There is no incident INC-7."),
                                    (("nope", "5", "--by", "x"), 2, "is not an incident"),
                                    (("INC-1", "5"), 2, "the following arguments are required: --by")]:
            done = cli("loss", *args, env=env)
            assert done.returncode == code and message in done.stderr, (args, done.stderr)
        assert history(conn) == [(125000, "cli", "ops on call")]


def add_trade(conn, at, amount):
    conn.execute("INSERT INTO trades (client_id, ticker, side, quantity, price, executed_at)"
                 " VALUES ('1', 'PNL', 'sell', 1, %s, %s)", (amount, at))


def test_pnl_query_is_polled_read_only_into_the_history(settings, db, world, conn, clock):
    pager = Pager()
    s = settings.model_copy(update={"pnl_query": PNL, "pnl_poll_minutes": 5, "loss_escalation_threshold": 10_000})
    services = bot(s, db, clock, pager, threshold=10_000)
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    add_trade(conn, clock.now - timedelta(minutes=5), 99_999)  # before the incident: not counted
    add_trade(conn, clock.now + timedelta(seconds=1), 4_000)
    clock.at(seconds=30)
    services.worker.run_due()
    assert history(conn, inc.id) == [(4000, "pnl_query", "PNL_QUERY")]
    assert conn.execute("SELECT detail FROM rollback_bot.loss_estimates").fetchone()["detail"] == {"pnl": -4000}
    clock.at(minutes=5)
    services.worker.run_due()  # the next poll: the same figure is not recorded again
    assert len(history(conn, inc.id)) == 1
    add_trade(conn, clock.now, 8_000)
    clock.at(minutes=10)
    services.worker.run_due()
    services.worker.run_due()
    assert history(conn, inc.id)[-1] == (12000, "pnl_query", "PNL_QUERY")
    assert [p[0] for p in pager.pages] == [inc.id] and "estimated loss of 12,000" in pager.pages[0][1]
    assert not [s for s in services.engine.steps(inc.id) if s.step == "loss"], "polls are not journaled"
    services.engine.deny(incident_id=inc.id, user="U0BOB", note="no")
    add_trade(conn, clock.now, 1)
    clock.at(minutes=30)
    services.worker.run_due()
    assert len(history(conn, inc.id)) == 2, "a closed incident is not polled"


@pytest.mark.parametrize("query, error", [
    ("WITH d AS (DELETE FROM trades RETURNING price) SELECT -sum(price) FROM d", "read-only transaction"),
    ("SELECT 1; DELETE FROM trades", "cannot insert multiple commands"),
    ("SELECT pg_sleep(3)", "statement timeout"),
    ("SELECT 'a lot'", "must return a number"),
    ("SELECT NULL::numeric", "(NULL)"),
    ("SELECT 1, 2", "one row of one column"),
    ("SELECT x FROM generate_series(1, 2) x", "returned 2 row(s)"),
])
def test_a_bad_pnl_query_is_reported_once_and_changes_nothing(settings, db, world, conn, clock, query, error):
    services = build_services(settings.model_copy(update={"pnl_query": query, "pnl_query_timeout_seconds": 0.2}), db,
                        clock=clock)
    warnings = []
    services.engine.subscribe(lambda e: warnings.append(e.error) if e.kind == "warning" else None)
    trades = conn.execute("SELECT count(*) AS n FROM trades").fetchone()["n"]
    inc = services.engine.halt_trading(user="U0ALICE", reason="r")
    for minutes in (1, 6, 11):
        clock.at(minutes=minutes)
        services.worker.run_due()
    assert history(conn, inc.id) == []
    failed = [s for s in services.engine.steps(inc.id) if s.step == "pnl_query"]
    assert len(failed) == 1 and failed[0].outcome == "failed" and error in failed[0].error
    assert len(warnings) == 1 and error in warnings[0]
    assert conn.execute("SELECT count(*) AS n FROM trades").fetchone()["n"] == trades
    polls = conn.execute("SELECT count(*) AS n FROM rollback_bot.jobs WHERE kind = 'loss_poll' AND done_at IS NOT NULL"
                         ).fetchone()["n"]
    assert polls == 3  # polled again at each slot
