"""core/halt_now.py and its button (handlers/evidence.py): an operator halts trading on a request before approval,
over signed Slack requests against the stand-in and the real PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from core import incidents
from tests.helpers import assert_consistent, client_settings, shown_modal, trading_halted
from tests.e2e.test_slack_flow import CHANNEL, MODEL, card_message, click, ephemeral_texts, request

HALT_NOW = "rollback_halt_now"


def buttons(message) -> list[str]:
    return [e["action_id"] for b in message.blocks if b["type"] == "actions" for e in b["elements"]]


def count(conn, sql: str, *args) -> int:
    return conn.execute(sql, args).fetchone()["n"]


def press_halt_now(sandbox, user, card):
    answered = len(sandbox.standin.calls("response_url"))
    r = click(sandbox, user, HALT_NOW, card)
    assert r.status == 200
    sandbox.standin.wait_for("response_url", count=answered + 1)  # the click's answer, to that person
    sandbox.settle()


def deny(sandbox, user, card, note):
    click(sandbox, user, "rollback_deny", card)
    view = shown_modal(sandbox.standin, "rollback_deny_modal")
    r = sandbox.sender.view_submission(user_id=user, callback_id="rollback_deny_modal",
                                       state_values={"deny_reason_block": {"reason": note}},
                                       private_metadata=view["private_metadata"])
    assert r.status == 200
    sandbox.settle()


def test_halt_now_halts_before_approval_once_and_the_rollback_joins_it(sandbox, world, conn):
    before = client_settings(conn)
    card = request(sandbox)
    assert HALT_NOW in buttons(card)
    halt_button = next(e for b in card.blocks if b["type"] == "actions" for e in b["elements"]
                       if e["action_id"] == HALT_NOW)
    assert "confirm" in halt_button
    # not an operator: refused, nothing halted
    press_halt_now(sandbox, "U0DAVE", card)
    assert any("Only operators" in t for t in ephemeral_texts(sandbox, "U0DAVE"))
    assert not trading_halted(conn)
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.audit_log WHERE action = 'halt_now'"
                       " AND outcome = 'refused' AND actor = 'U0DAVE'") == 1
    # an operator: trading halts at once, the request still waits for its approver
    press_halt_now(sandbox, "U0CAROL", card)
    inc = sandbox.services.engine.list_incidents()[0]
    assert trading_halted(conn) and inc.state == "requested"
    assert count(conn, "SELECT count(*) AS n FROM client_settings s JOIN clients c USING (client_id) WHERE c.active"
                       " AND (s.auto_rebalance OR NOT s.require_manual_approval)") == 0  # every active client halted
    assert client_settings(conn) != before
    assert inc.plan["early_halt"]["by"] == "U0CAROL" and inc.halted_at is not None
    assert any("pressed *Halt now*" in m.text and "<@U0CAROL>" in m.text
               for m in sandbox.standin.thread(CHANNEL, card.ts))
    shown = card_message(sandbox)
    assert HALT_NOW not in buttons(shown) and "rollback_approve" in buttons(shown)
    assert "Trading halted before approval by <@U0CAROL>" in json.dumps(shown.blocks)
    # a second click (from the card as it was): answered with who did it, nothing more happens
    press_halt_now(sandbox, "U0ALICE", card)
    assert any("already halted" in t and "<@U0CAROL>" in t for t in ephemeral_texts(sandbox, "U0ALICE"))
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.trading_halts") == 1
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.steps WHERE step = 'halt'") == 1
    halt_id = inc.plan["early_halt"]["halt_id"]
    # approval: the rollback joins that halt, runs the runbook and resumes trading when done
    click(sandbox, "U0BOB", "rollback_approve", card)
    sandbox.standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
    sandbox.run_worker()
    inc = sandbox.services.engine.get(inc.id)
    assert inc.state == "monitoring"
    halts = [s for s in sandbox.services.engine.steps(inc.id) if s.step == "halt"]
    assert [(s.detail.get("before_approval"), s.detail["joined"], s.detail["halt_id"]) for s in halts] == [
        (True, False, halt_id), (None, True, halt_id)]
    assert halts[0].actor == "U0CAROL"
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.trading_halts") == 1
    assert not trading_halted(conn) and client_settings(conn) == before
    assert_consistent(conn, world.models_dir, MODEL)
    report = sandbox.services.reports.path(inc.id).read_text()
    assert "(Halt now, before approval)" in report and "the rollback joined that halt" in report


@pytest.mark.parametrize("how", ["denied", "expired"])
def test_a_request_not_approved_keeps_the_halt_until_an_approver_resumes(sandbox, world, conn, how):
    before = client_settings(conn)
    card = request(sandbox)
    press_halt_now(sandbox, "U0ALICE", card)  # the requester is an operator too
    inc = sandbox.services.engine.list_incidents()[0]
    # while the request is open, /rollback resume leaves its halt in place, and says so
    reply = sandbox.command("U0BOB", "resume")
    assert f"still held by {inc.ref}" in sandbox.responses(reply.response_key)[0]["text"]
    assert trading_halted(conn)
    if how == "denied":
        deny(sandbox, "U0BOB", card, "a market-wide move; the model is fine")
    else:
        sandbox.services.engine.clock = lambda: incidents.utcnow() + timedelta(minutes=20)
        sandbox.services.engine.expire_requests()
        sandbox.settle()
    inc = sandbox.services.engine.get(inc.id)
    assert inc.state == ("denied" if how == "denied" else "cancelled")
    assert trading_halted(conn), "a request that was not approved must not silently resume trading"
    thread = [m.text for m in sandbox.standin.thread(CHANNEL, card.ts)]
    assert any("Trading stays halted" in t and "/rollback resume" in t for t in thread), thread
    assert "request does not resume trading: an approver resumes it" in json.dumps(card_message(sandbox).blocks)
    # an approver resumes: every client back to its own settings
    reply = sandbox.command("U0BOB", "resume")
    sandbox.responses(reply.response_key)
    assert not trading_halted(conn) and client_settings(conn) == before


def test_halt_now_is_refused_once_the_request_is_decided(sandbox, world, conn):
    card = request(sandbox)
    deny(sandbox, "U0ALICE", card, "typo, wrong model")  # the requester withdraws it
    press_halt_now(sandbox, "U0CAROL", card)
    assert any("already cancelled" in t for t in ephemeral_texts(sandbox, "U0CAROL"))
    assert not trading_halted(conn)
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.steps WHERE step = 'halt'") == 0
