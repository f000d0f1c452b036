"""Issue 6 in Slack: /rollback diagnose, diagnostics in every incident thread, quick-fix buttons, the watchdog."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tests.helpers import assert_consistent, trading_halted
from tests.e2e.test_slack_flow import CHANNEL, MODEL, approve_and_run, card_message, click, request

ORDER_OF_CARDS = "ts"


def press_quick_fix(sandbox, body: dict, label: str) -> None:
    """Alice presses the quick-fix button ``label`` on a diagnose reply: the fix is requested in the channel."""
    button = next(e for b in body["blocks"] if b["type"] == "actions" for e in b["elements"]
                  if e["text"]["text"] == label)
    sandbox.sender.block_action(user_id="U0ALICE", action_id=button["action_id"], value=button["value"],
                                channel_id="C0OPS", message_ts="1.2")
    sandbox.standin.wait_for("response_url", lambda c: "posted in" in c.body.get("text", ""))


def cards(sandbox):
    return [m for m in sandbox.standin.messages(CHANNEL) if not m.is_reply]


def test_diagnose_command(sandbox, world):
    reply = sandbox.command("U0ALICE", f"diagnose {MODEL}")
    body = sandbox.responses(reply.response_key)[0]
    text = json.dumps(body["blocks"])
    assert "Diagnostics of" in text and "Likely cause" in text and "Regime" in text and "Drift" in text
    reply = sandbox.command("U0ALICE", "diagnose ../etc")
    assert "Invalid model name" in sandbox.responses(reply.response_key)[0]["text"]


def test_every_incident_gets_diagnostics_in_its_thread(sandbox, world, conn):
    card = request(sandbox)
    approve_and_run(sandbox, card)
    sandbox.run_worker()  # the diagnose job queued by the halt
    replies = [m.text for m in sandbox.standin.thread(CHANNEL, card.ts)]
    assert any(":stethoscope:" in t and "Likely cause" in t for t in replies), replies
    inc = sandbox.services.engine.list_incidents()[0]
    assert "Likely cause" in inc.plan["diagnostics"]["summary"]


@pytest.fixture
def stale_view(conn, world):
    last = conn.execute("SELECT max(date) AS d FROM daily_bars").fetchone()["d"]
    new_day = last + timedelta(days=3 if last.weekday() == 4 else 1)
    conn.execute("INSERT INTO daily_bars (date, ticker, open, high, low, close, volume)"
                 " SELECT %s, ticker, close, close, close, close, volume FROM daily_bars WHERE date = %s", (new_day, last))
    yield new_day
    conn.execute("DELETE FROM daily_bars WHERE date = %s", (new_day,))
    conn.execute("REFRESH MATERIALIZED VIEW ml_training_features")


def test_refresh_feature_view_quick_fix_is_approved_like_a_rollback(sandbox, world, conn, stale_view):
    reply = sandbox.command("U0ALICE", f"diagnose {MODEL}")
    body = sandbox.responses(reply.response_key)[0]
    press_quick_fix(sandbox, body, "Refresh feature view")
    card = cards(sandbox)[-1]
    assert "Quick fix" in json.dumps(card.blocks)
    confirm = next(e for b in card.blocks if b["type"] == "actions" for e in b["elements"]
                   if e["action_id"] == "rollback_approve")["confirm"]
    assert confirm["title"]["text"] == "Approve the quick fix?" and "None" not in json.dumps(confirm)
    assert "Refresh the feature view" in confirm["text"]["text"]
    click(sandbox, "U0ALICE", "rollback_approve", card)
    sandbox.standin.wait_for("response_url", lambda c: "own request" in c.body.get("text", ""))
    assert conn.execute("SELECT max(date) AS d FROM ml_training_features").fetchone()["d"] < stale_view
    approve_and_run(sandbox, card)
    assert conn.execute("SELECT max(date) AS d FROM ml_training_features").fetchone()["d"] == stale_view
    sandbox.standin.wait_for("chat.postMessage", lambda c: "Fix done" in c.body.get("text", ""))
    assert not trading_halted(conn)


def test_restore_corrupt_model_quick_fix(sandbox, world, conn):
    (world.models_dir / MODEL / "model.json").write_bytes(b'{"truncated": ')
    reply = sandbox.command("U0ALICE", f"diagnose {MODEL}")
    body = sandbox.responses(reply.response_key)[0]
    assert "does not load" in json.dumps(body["blocks"])
    press_quick_fix(sandbox, body, "Restore corrupt model file")
    card = card_message(sandbox)
    approve_and_run(sandbox, card)
    inc = sandbox.services.engine.list_incidents()[0]
    assert inc.state == "monitoring", inc.error
    assert_consistent(conn, world.models_dir, MODEL)
    sandbox.services.registry.booster(world.models_dir / MODEL)  # loads again


def test_watchdog_posts_a_prefilled_request_and_never_rolls_back_alone(settings, db, standin, world, conn):
    from bot.devtools.sandbox import Sandbox
    from bot.compose import build_services

    s = settings.model_copy(update={"slack_api_url": standin.base_url, "watchdog_every_minutes": 60,
                                    "watchdog_ic_threshold": 0.02, "watchdog_sharpe_threshold": 1.0})
    with Sandbox(build_services(s, db), standin=standin) as box:
        box.run_worker()
        posted = [m for m in standin.messages(CHANNEL) if not m.is_reply]
        assert {json.dumps(m.blocks).count("watchdog") > 0 for m in posted} == {True}
        models = {json.loads(json.dumps(m.blocks))[0]["text"]["text"].split("Rollback of ")[1] for m in posted}
        assert models == set(world.models)
        assert not trading_halted(conn)
        states = {r["state"] for r in conn.execute("SELECT state FROM rollback_bot.incidents")}
        assert states == {"requested"}
        box.run_worker()  # the same slot does not propose twice
        assert len([m for m in standin.messages(CHANNEL) if not m.is_reply]) == len(posted)
        card = next(m for m in posted if MODEL in json.dumps(m.blocks))
        assert "rollback_approve" not in json.dumps(card.blocks)  # nobody has taken the proposal over yet
        click(box, "U0ALICE", "rollback_take_over", card)  # a person becomes the requester ...
        standin.wait_for("chat.update", lambda c: "taken over by" in json.dumps(c.body.get("blocks")))
        click(box, "U0BOB", "rollback_approve", standin.message(CHANNEL, card.ts))  # ... a different one approves
        standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
        box.run_worker()
        states = {r["model_name"]: r["state"] for r in conn.execute("SELECT model_name, state FROM rollback_bot.incidents")}
        assert states[MODEL] == "monitoring"
