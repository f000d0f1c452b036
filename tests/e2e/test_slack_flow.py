"""Issue 4: everything a person does in Slack during an incident, over signed HTTP against the stand-in."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

from core import incidents
from tests.helpers import assert_consistent, checks_ticked, client_settings, shown_modal, trading_halted

MODEL = "growth_momentum_large"
CHANNEL = "C0INCIDENT"


def target(sandbox):
    return sandbox.services.registry.recommend(MODEL).backup.name


def request(sandbox, user="U0ALICE", reason="Sharpe collapsed after the regime change"):
    reply = sandbox.command(user, f"start {MODEL} {target(sandbox)} {reason} --confirm")
    assert reply.status == 200
    sandbox.responses(reply.response_key)
    card = next(m for m in sandbox.standin.messages(CHANNEL) if m.thread_ts is None or m.thread_ts == m.ts)
    return card


def card_message(sandbox):
    msgs = [m for m in sandbox.standin.messages(CHANNEL) if not m.is_reply]
    assert len(msgs) == 1, [m.text for m in msgs]
    return sandbox.standin.message(CHANNEL, msgs[0].ts)


def click(sandbox, user, action_id, card, **kw):
    return sandbox.sender.block_action(user_id=user, action_id=action_id, channel_id=CHANNEL, message_ts=card.ts,
                                       message=card.as_slack(), **kw)


def approve_and_run(sandbox, card, *, runs: int = 1) -> None:
    """Bob approves the request on ``card``; the worker runs ``runs`` times."""
    click(sandbox, "U0BOB", "rollback_approve", card)
    sandbox.standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
    for _ in range(runs):
        sandbox.run_worker()


def ephemeral_texts(sandbox, user):
    return [e.text for e in sandbox.standin.ephemerals(user)]


def test_request_approve_rollback_resume(sandbox, world, conn):
    before = client_settings(conn)
    chosen = target(sandbox)
    card = request(sandbox)
    text = json.dumps(card.blocks)
    assert "Approve" in text and "Deny" in text and "Pre-flight passed" in text and "Current" in text
    approve = next(e for b in card.blocks if b["type"] == "actions" for e in b["elements"] if e["text"]["text"] == "Approve")
    assert "confirm" in approve
    r = click(sandbox, "U0BOB", "rollback_approve", card)
    assert r.status == 200
    sandbox.standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
    assert sandbox.run_worker() >= 1
    inc = sandbox.services.engine.list_incidents()[0]
    assert inc.state == "monitoring"
    final = card_message(sandbox)
    final_text = json.dumps(final.blocks)
    for label in ("Automated trading halted", "Emergency backup taken", "Backup restored", "Model verified",
                  "Trading resumed"):
        assert label in final_text
    assert final_text.count(":white_check_mark:") >= 9
    for target_minutes in (2, 5, 7, 10):
        assert f"target T+{target_minutes}m" in final_text
    assert "T+" in final_text and "rollback_approve" not in final_text  # buttons gone
    replies = [m.text for m in sandbox.standin.thread(CHANNEL, final.ts)]
    for needle in ("Automated trading halted", "No trade after the halt", "Emergency backup", "restored atomically",
                   "model_deployment_log", "Verified", "Trading resumed"):
        assert any(needle in t for t in replies), (needle, replies)
    assert client_settings(conn) == before and not trading_halted(conn)
    assert assert_consistent(conn, world.models_dir, MODEL) == chosen


def test_self_approval_non_approver_and_expiry_are_refused(sandbox, world, conn):
    card = request(sandbox)
    click(sandbox, "U0ALICE", "rollback_approve", card)
    sandbox.standin.wait_for("response_url", lambda c: "own request" in c.body.get("text", ""))
    click(sandbox, "U0DAVE", "rollback_approve", card)
    sandbox.standin.wait_for("response_url", lambda c: "Only approvers" in c.body.get("text", ""))
    inc = sandbox.services.engine.list_incidents()[0]
    assert inc.state == "requested" and not trading_halted(conn)
    refused = conn.execute("SELECT actor FROM rollback_bot.audit_log WHERE outcome = 'refused' ORDER BY id").fetchall()
    assert [r["actor"] for r in refused] == ["U0ALICE", "U0DAVE"]
    sandbox.services.engine.clock = lambda: incidents.utcnow() + timedelta(minutes=20)
    click(sandbox, "U0BOB", "rollback_approve", card)
    sandbox.standin.wait_for("response_url", lambda c: "expired" in c.body.get("text", ""))
    assert sandbox.services.engine.get(inc.id).state == "cancelled"
    sandbox.run_worker()
    assert not trading_halted(conn)
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.jobs WHERE kind = 'execute'").fetchone()["n"] == 0


def test_ten_concurrent_approvals_give_one_execution(sandbox, world, conn):
    card = request(sandbox)
    results = []
    threads = [threading.Thread(target=lambda u=u: results.append(click(sandbox, u, "rollback_approve", card).status))
               for u in ["U0BOB", "U0CAROL"] * 5]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 10
    sandbox.standin.wait_for("response_url", lambda c: "already approved" in c.body.get("text", ""), count=9)
    rows = conn.execute("SELECT count(*) AS n FROM rollback_bot.steps WHERE step = 'approved'").fetchone()
    assert rows["n"] == 1
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.jobs WHERE kind = 'execute'").fetchone()["n"] == 1
    sandbox.run_worker()
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.steps WHERE step = 'halt'").fetchone()["n"] == 1


def test_retried_command_deliveries_give_one_request(sandbox, world, conn):
    url = sandbox.standin.response_url("retry", channel="C0OPS", user="U0ALICE")
    trigger = "13345224609.738474920.8088930838d88f008e0"
    for n in (None, 1, 2):
        r = sandbox.sender.slash_command(text=f"start {MODEL} {target(sandbox)} retried --confirm", user_id="U0ALICE",
                                         channel_id="C0OPS", response_url=url, trigger_id=trigger, retry_num=n,
                                         retry_reason="http_timeout" if n else None)
        assert r.status == 200
    sandbox.standin.wait_for("response_url", lambda c: c.body.get("key") == "retry")
    sandbox.settle()
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.incidents").fetchone()["n"] == 1
    assert len([m for m in sandbox.standin.messages(CHANNEL) if not m.is_reply]) == 1


def test_second_request_for_the_same_model_points_to_the_open_one(sandbox, world, conn):
    request(sandbox)
    reply = sandbox.command("U0CAROL", f"start {MODEL} {target(sandbox)} again")
    body = sandbox.responses(reply.response_key)[0]
    assert "already has an open rollback, INC-1" in body["text"]
    assert len([m for m in sandbox.standin.messages(CHANNEL) if not m.is_reply]) == 1


def test_deny_asks_for_a_reason_and_records_who(sandbox, world, conn):
    card = request(sandbox)
    click(sandbox, "U0CAROL", "rollback_deny", card)
    [loading] = sandbox.standin.wait_for("views.open")
    assert loading.ok and loading.response["view"]["callback_id"] == "loading_modal"
    view = shown_modal(sandbox.standin, "rollback_deny_modal")
    assert view["id"] == loading.response["view"]["id"] and view["title"]["text"] == "Deny the rollback"
    assert "restore" in json.dumps(view["blocks"])  # what approving would have done, in words
    meta = view["private_metadata"]
    r = sandbox.sender.view_submission(user_id="U0CAROL", callback_id="rollback_deny_modal",
                                       state_values={"deny_reason_block": {"reason": ""}}, private_metadata=meta)
    assert r.status == 200 and r.json()["response_action"] == "errors"
    r = sandbox.sender.view_submission(user_id="U0CAROL", callback_id="rollback_deny_modal",
                                       state_values={"deny_reason_block": {"reason": "backup is older than the bug"}},
                                       private_metadata=meta)
    assert r.status == 200 and not r.body
    sandbox.settle()
    inc = sandbox.services.engine.list_incidents()[0]
    assert inc.state == "denied" and inc.decided_by == "U0CAROL"
    assert "Denied by" in json.dumps([m.text for m in sandbox.standin.thread(CHANNEL, card.ts)])
    assert "denied" in json.dumps(card_message(sandbox).blocks)


def test_start_without_arguments_opens_the_modal_and_validates(sandbox, world, conn):
    reply = sandbox.command("U0ALICE", "start")
    [loading] = sandbox.standin.wait_for("views.open")
    assert loading.ok and loading.response["view"]["callback_id"] == "loading_modal"
    view = shown_modal(sandbox.standin, "rollback_start_modal")
    assert view["id"] == loading.response["view"]["id"]
    # choosing a model fills in its backup menu, the recommended one pre-selected and offered first
    sandbox.sender.block_action(user_id="U0ALICE", action_id="start_model_select", view=view,
                                action_type="external_select",
                                action={"selected_option": {"text": {"type": "plain_text", "text": MODEL}, "value": MODEL}})
    upd = sandbox.standin.wait_for("views.update", lambda c: "backup_block" in json.dumps(c.body), count=1)[0]
    assert upd.ok, upd.response
    updated = sandbox.standin.view(view["id"])
    backup_block = next(b for b in updated["blocks"] if b.get("block_id") == "backup_block")
    assert backup_block["element"]["initial_option"]["value"] == target(sandbox)
    r = sandbox.sender.block_suggestion(user_id="U0ALICE", action_id="backup", value="", view={**updated, "id": "V1"})
    first = r.json()["options"][0]
    assert first["text"]["text"].startswith("★") and first["value"] == target(sandbox)
    sel = lambda v: {"type": "static_select", "selected_option": {"value": v}}  # noqa: E731
    values = {"model_block": {"start_model_select": sel(MODEL)}, "backup_block": {"backup": sel(target(sandbox))},
              "reason_block": {"reason": ""}, "severity_block": {"severity": sel("high")},
              "loss_block": {"loss": "-5"}}
    r = sandbox.sender.view_submission(user_id="U0ALICE", callback_id="rollback_start_modal", state_values=values,
                                       private_metadata=updated["private_metadata"])
    errors = r.json()["errors"]
    assert set(errors) == {"reason_block", "loss_block", "checks_block"}
    values.update(checks_ticked())
    values["reason_block"] = {"reason": "IC negative for 5 days"}
    values["loss_block"] = {"loss": "250000"}
    r = sandbox.sender.view_submission(user_id="U0ALICE", callback_id="rollback_start_modal", state_values=values,
                                       private_metadata=updated["private_metadata"])
    assert r.status == 200 and not r.body
    # the answer goes to the command's response_url (C0OPS, where the bot is not a member, refuses ephemerals)
    [answer] = sandbox.responses(reply.response_key)
    assert "INC-1" in answer["text"] and answer.get("response_type") == "ephemeral"
    inc = sandbox.services.engine.list_incidents()[0]
    assert inc.estimated_loss == 250000 and inc.reason == "IC negative for 5 days"


def test_halt_and_resume_commands(sandbox, world, conn):
    before = client_settings(conn)
    reply = sandbox.command("U0DAVE", "halt fat finger")
    assert "Only operators" in sandbox.responses(reply.response_key)[0]["text"]
    assert not trading_halted(conn)
    reply = sandbox.command("U0ALICE", "halt suspicious fills")
    sandbox.responses(reply.response_key)
    assert trading_halted(conn)
    reply = sandbox.command("U0ALICE", "resume")
    assert "Only approvers" in sandbox.responses(reply.response_key)[0]["text"]
    assert trading_halted(conn)
    reply = sandbox.command("U0BOB", "resume")
    sandbox.responses(reply.response_key)
    assert not trading_halted(conn) and client_settings(conn) == before
    sandbox.standin.wait_for("chat.postMessage", lambda c: "resumed automated trading" in c.body.get("text", ""))


def test_incidents_list_and_app_home(sandbox, world, conn):
    request(sandbox)
    reply = sandbox.command("U0ALICE", "incidents")
    assert "INC-1" in json.dumps(sandbox.responses(reply.response_key)[0]["blocks"])
    r = sandbox.sender.app_home_opened("U0CAROL")
    assert r.status == 200
    sandbox.standin.wait_for("views.publish")
    home = sandbox.standin.home_view("U0CAROL")
    text = json.dumps(home)
    assert MODEL in text and "INC-1" in text
    # an incident change re-publishes the home of recent viewers
    sandbox.standin.clear()
    card = card_message(sandbox)
    click(sandbox, "U0BOB", "rollback_approve", card)
    sandbox.standin.wait_for("views.publish", lambda c: "approved" in json.dumps(c.body))


def test_user_groups_are_resolved(settings, db, standin, world, conn):
    from bot.devtools.sandbox import Sandbox
    from bot.compose import build_services

    standin.usergroups["S0APPROVERS"] = ["U0DAVE"]
    s = settings.model_copy(update={"slack_api_url": standin.base_url, "approvers": ["S0APPROVERS"]})
    with Sandbox(build_services(s, db), standin=standin) as box:
        card = request(box)
        click(box, "U0DAVE", "rollback_approve", card)
        standin.wait_for("usergroups.users.list")
        standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
        assert box.services.engine.list_incidents()[0].approved_by == "U0DAVE"


def test_start_with_a_model_but_no_backup_opens_the_form_prefilled(sandbox, world, conn):
    sandbox.command("U0ALICE", f"start {MODEL} IC negative since Monday")
    view = shown_modal(sandbox.standin, "rollback_start_modal")
    blocks = {b.get("block_id"): b for b in view["blocks"]}
    assert blocks["model_block"]["element"]["initial_option"]["value"] == MODEL
    recommended = blocks["backup_block"]["element"]["initial_option"]
    assert recommended["value"] == target(sandbox) and recommended["text"]["text"].startswith("★")
    assert blocks["reason_block"]["element"]["initial_value"] == "IC negative since Monday"
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.incidents").fetchone()["n"] == 0
