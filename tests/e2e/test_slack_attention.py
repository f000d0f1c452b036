"""When the rollback does not fix it, in Slack over signed requests: the 24-hour watch's one thread message,
the incident needing attention with its next actions on the card (another backup, halt, accept with a reason),
and the follow-up rollback that supersedes it. The engine's clock is moved; nothing sleeps."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from bot.devtools.sandbox import Sandbox
from core import aftercare, incidents
from bot.compose import build_services
from tests.helpers import Clock, assert_consistent, checks_ticked, shown_modal, trading_halted
from tests.e2e.test_slack_flow import CHANNEL, MODEL, approve_and_run, click, request


@pytest.fixture
def clock():  # a minute ahead: jobs the app queues "now" (the database's clock) are due at once
    return Clock(incidents.utcnow().replace(microsecond=0) + timedelta(minutes=1))


def box(settings, db, standin, clock, **extra) -> Sandbox:
    s = settings.model_copy(update={"slack_api_url": standin.base_url, "escalation_contacts": ["U0ERIN"], **extra})
    standin.add_user("U0ERIN", name="erin")
    return Sandbox(build_services(s, db, clock=clock), standin=standin)


def rolled_back(b: Sandbox):
    approve_and_run(b, request(b), runs=3)
    inc = b.services.engine.list_incidents()[0]
    assert inc.state == "monitoring"
    return inc


def card_of(b: Sandbox, inc):
    return b.standin.message(CHANNEL, inc.message_ts)


def buttons(message) -> dict[str, dict]:
    return {e["action_id"]: e for blk in message.blocks if blk["type"] == "actions" for e in blk["elements"]}


def opened_view(b: Sandbox, n: int = 1) -> dict:
    """The n-th form shown: it opens as a loading view at once and is filled in with views.update."""
    calls = b.standin.wait_for("views.update", lambda c: c.ok and c.response["view"]["callback_id"] not in (
        "loading_modal", "notice_modal"), count=n)
    return calls[n - 1].response["view"]


def watch_posts(b: Sandbox, inc):
    return [c for c in b.standin.calls("chat.postMessage")
            if c.body.get("thread_ts") == inc.message_ts and "Enhanced monitoring of" in c.body.get("text", "")]


def test_the_watch_updates_one_message_and_trouble_needs_attention_until_an_approver_accepts(
        settings, db, standin, world, clock, tmp_path, conn):
    api_log = tmp_path / "api.log"
    api_log.write_text("ERROR from yesterday\n")
    with box(settings, db, standin, clock, api_log=api_log) as b:
        inc = rolled_back(b)
        clock.at(minutes=30)
        b.run_worker()
        b.run_worker()
        (posted,) = watch_posts(b, inc)
        ts = b.standin.wait_for("chat.postMessage", lambda c: c.body is posted.body)[0].response["ts"]
        assert "1 of 48 check(s) done, every 30 min" in b.standin.message(CHANNEL, ts).text
        assert b.services.engine.get(inc.id).state == "resolved", "30 clean minutes after the resume"
        card = json.dumps(card_of(b, inc).blocks, ensure_ascii=False)
        assert ":white_check_mark: Monitoring confirms stability — T+30m00s (target T+30m)" in card

        with api_log.open("a") as fh:
            fh.write("13:02 ERROR order gateway timed out\n")
        clock.at(minutes=60)
        b.run_worker()
        b.run_worker()
        assert len(watch_posts(b, inc)) == 1, "one message, updated in place"
        updates = [c for c in b.standin.calls("chat.update") if c.body.get("ts") == ts]
        assert updates and "2 of 48 check(s) done" in b.standin.message(CHANNEL, ts).text
        assert "#2 " in b.standin.message(CHANNEL, ts).text and "order gateway timed out" in \
            b.standin.message(CHANNEL, ts).text
        now = b.services.engine.get(inc.id)
        assert now.state == "needs_attention" and now.is_open
        thread = [m.text for m in b.standin.thread(CHANNEL, inc.message_ts)]
        assert any("needs attention" in t and "did not resolve the issue" in t for t in thread)
        assert any("<@U0ERIN>" in t and "Escalation" in t and "does not resolve the issue" in t for t in thread)
        card = card_of(b, inc)
        assert {"attention_rollback_again", "attention_halt", "attention_accept", "add_root_cause"} <= set(
            buttons(card))

        click(b, "U0ALICE", "attention_accept", card)  # an operator, not an approver: told in the loading view
        assert "Only approvers may accept" in json.dumps(shown_modal(b.standin, "notice_modal"))
        click(b, "U0BOB", "attention_accept", card)
        view = opened_view(b)
        assert view["callback_id"] == "accept_modal"
        r = b.sender.view_submission(user_id="U0BOB", callback_id="accept_modal", private_metadata=view[
            "private_metadata"], state_values={"accept_reason_block": {"reason": "  "}})
        assert r.json()["errors"] == {"accept_reason_block": "Say why it is acceptable."}
        assert b.services.engine.get(inc.id).state == "needs_attention"
        r = b.sender.view_submission(user_id="U0BOB", callback_id="accept_modal", private_metadata=view[
            "private_metadata"], state_values={"accept_reason_block": {"reason": "Gateway restarted; fills fine."}})
        assert r.status == 200 and not r.body
        b.settle()
        done = b.services.engine.get(inc.id)
        assert done.state == "resolved" and done.plan["accepted"]["reason"] == "Gateway restarted; fills fine."
        card = card_of(b, inc)
        assert "Accepted by <@U0BOB>: Gateway restarted; fills fine." in json.dumps(card.blocks)
        assert "attention_accept" not in buttons(card)
        audit = conn.execute("SELECT actor, outcome FROM rollback_bot.audit_log WHERE action = 'accept' ORDER BY id")
        assert [(a["actor"], a["outcome"]) for a in audit] == [("U0ALICE", "refused"), ("U0BOB", "ok")]


def test_another_backup_from_the_card_opens_the_form_and_its_approval_supersedes_the_incident(
        settings, db, standin, world, clock, conn):
    with box(settings, db, standin, clock) as b:
        old = rolled_back(b)
        clock.at(minutes=20)
        aftercare.raise_attention(b.services.engine, old.id, ["the restored model's IC is -0.150"], source="test")
        b.settle()
        click(b, "U0ALICE", "attention_rollback_again", card_of(b, old))
        view = opened_view(b)
        assert view["callback_id"] == "rollback_start_modal"
        model_block = next(blk for blk in view["blocks"] if blk.get("block_id") == "model_block")
        assert model_block["element"]["initial_option"]["value"] == MODEL
        reason = next(blk for blk in view["blocks"] if blk.get("block_id") == "reason_block")
        assert reason["element"]["initial_value"].startswith(f"Follow-up of {old.ref}")
        other = next(x.name for x in b.services.start_form(model=MODEL).backups
                     if x.name != old.target_backup and not x.name.startswith("backup_emergency"))
        sel = lambda v: {"type": "static_select", "selected_option": {"value": v}}  # noqa: E731
        r = b.sender.view_submission(user_id="U0ALICE", callback_id="rollback_start_modal", state_values={
            "model_block": {"start_model_select": sel(MODEL)}, "backup_block": {"backup": sel(other)},
            "reason_block": {"reason": "IC still negative"}, "severity_block": {"severity": sel("high")},
            **checks_ticked()},
            private_metadata=view["private_metadata"])
        assert r.status == 200 and not r.body, r.body
        b.standin.wait_for("response_url", lambda c: "INC-2" in c.body.get("text", ""))  # the click's URL
        follow = b.services.engine.get(2)
        assert follow.plan["follows"]["id"] == old.id
        new_card = card_of(b, follow)
        assert f"Follows up {old.ref}" in json.dumps(new_card.blocks)
        click(b, "U0CAROL", "rollback_approve", new_card)
        b.standin.wait_for("chat.postMessage", lambda c: "Superseded by INC-2" in c.body.get("text", ""))
        b.settle()
        assert b.services.engine.get(old.id).state == "superseded"
        assert "Superseded by INC-2" in json.dumps(card_of(b, old).blocks)
        for _ in range(3):
            b.run_worker()
        assert b.services.engine.get(follow.id).state == "monitoring"
        assert assert_consistent(conn, world.models_dir, MODEL) == other


def test_halt_from_the_card_is_for_operators(settings, db, standin, world, clock, conn):
    with box(settings, db, standin, clock) as b:
        inc = rolled_back(b)
        aftercare.raise_attention(b.services.engine, inc.id, ["3 trade(s) executed while trading is halted"],
                                  source="test")
        b.settle()
        card = card_of(b, inc)
        assert "confirm" in buttons(card)["attention_halt"]
        click(b, "U0DAVE", "attention_halt", card)
        b.standin.wait_for("response_url", lambda c: "Only operators may halt" in c.body["text"])
        assert not trading_halted(conn)
        click(b, "U0ALICE", "attention_halt", card)
        b.standin.wait_for("chat.postMessage", lambda c: "halted automated trading (INC-2)" in c.body.get("text", "")
                           and c.body.get("thread_ts") == inc.message_ts)
        assert trading_halted(conn)
        halt = b.services.engine.get(2)
        assert halt.kind == "halt" and f"{inc.ref} needs attention" in halt.reason
        assert b.services.engine.get(inc.id).state == "needs_attention", "halting does not close it"
