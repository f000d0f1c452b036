"""core/evidence.py and its place on the request card (handlers/evidence.py): evidence before approval, over signed
Slack requests against the stand-in and the real PostgreSQL."""

from __future__ import annotations

import json
import shutil

import pytest

from core.evidence import classify
from tests.helpers import shown_modal, trading_halted
from tests.e2e.test_slack_flow import CHANNEL, MODEL, card_message, click, request

MAX_BLOCKS, MAX_TEXT = 50, 3000


def texts(blocks: list[dict]) -> list[str]:
    out = []
    for b in blocks:
        if isinstance(b.get("text"), dict):
            out.append(b["text"]["text"])
        out += [f["text"] for f in b.get("fields") or []]
        out += [e["text"] for e in b.get("elements") or [] if isinstance(e.get("text"), str)]
    return out


def within_limits(blocks: list[dict]) -> None:
    assert len(blocks) < MAX_BLOCKS
    assert all(len(t) < MAX_TEXT for t in texts(blocks))


def card_updates(sandbox, ts: str) -> list:
    return [c for c in sandbox.standin.calls("chat.update") if c.body.get("ts") == ts]


def test_evidence_appears_on_the_card_before_approval(sandbox, world, conn):
    card = request(sandbox)
    first = json.dumps(card.blocks)
    assert "*Evidence* :hourglass_flowing_sand: being computed" in first
    before = len(card_updates(sandbox, card.ts))
    assert sandbox.run_worker() >= 1  # the work process's worker: the evidence job queued with the request
    inc = sandbox.services.engine.list_incidents()[0]
    assert inc.state == "requested" and not trading_halted(conn)
    evidence = inc.plan["evidence"]
    assert evidence["state"] == "ready" and evidence["seconds"] < 10
    # the test world's production model stopped predicting while the recommended backup still does, in a market
    # whose volatility changed: the verdict says the fault is the model's, with the figures that show it
    assert evidence["verdict"] == "model-specific"
    assert evidence["current"]["ic"] < 0 < evidence["target"]["ic"] and evidence["regime_change"] is True
    assert evidence["current"]["version"] == inc.from_version and evidence["target"]["version"] == inc.target_backup
    assert evidence["data_ok"] is True
    updates = card_updates(sandbox, card.ts)
    assert len(updates) > before  # chat.update of the request message itself, no new message
    shown = card_message(sandbox)
    text = "\n".join(texts(shown.blocks))
    assert "*Evidence* :dart: *model-specific*" in text
    for needle in (f"Live IC, current `{inc.from_version}`: IC {evidence['current']['ic']:+.3f}",
                   f"Live IC, target `{inc.target_backup}`: IC {evidence['target']['ic']:+.3f}",
                   "Regime: regime change: market volatility", "Data quality: ok", "Diagnostics of the current model alone, likely cause"):
        assert needle in text, (needle, text)
    assert "being computed" not in text and "rollback_approve" in json.dumps(shown.blocks)  # still to approve
    within_limits(shown.blocks)
    steps = [(s.step, s.outcome) for s in sandbox.services.engine.steps(inc.id)]
    assert ("evidence", "ok") in steps
    # no thread reply for it: the card is the place
    assert not any("Evidence" in m.text for m in sandbox.standin.thread(CHANNEL, card.ts))


def test_a_target_that_does_no_better_in_a_changed_market_is_called_market_wide(sandbox, world, conn):
    current = conn.execute("SELECT version FROM model_deployment_log WHERE model_name = %s AND is_production",
                           (MODEL,)).fetchone()["version"]
    reply = sandbox.command("U0ALICE", f"start {MODEL} {current} IC collapsed --confirm")
    sandbox.responses(reply.response_key)
    sandbox.run_worker()
    evidence = sandbox.services.engine.list_incidents()[0].plan["evidence"]
    assert evidence["verdict"] == "market-wide", evidence
    assert evidence["current"]["ic"] == pytest.approx(evidence["target"]["ic"])
    assert "*Evidence* :globe_with_meridians: *market-wide*" in json.dumps(card_message(sandbox).blocks)


def test_evidence_that_cannot_be_computed_says_so(sandbox, world, conn):
    card = request(sandbox)
    inc = sandbox.services.engine.list_incidents()[0]
    shutil.rmtree(world.models_dir / MODEL / inc.target_backup)  # the target went away after the request
    sandbox.run_worker()
    inc = sandbox.services.engine.get(inc.id)
    assert inc.plan["evidence"]["state"] == "failed" and inc.plan["evidence"]["error"]
    text = json.dumps(card_message(sandbox).blocks)
    assert "*Evidence* :x:" in text and "Could not be computed" in text and ":dart:" not in text
    assert [(s.step, s.outcome) for s in sandbox.services.engine.steps(inc.id) if s.step == "evidence"] == [
        ("evidence", "failed")]
    assert card.ts == inc.message_ts


def test_evidence_computed_after_approval_is_not_kept(sandbox, world, conn):
    card = request(sandbox)
    click(sandbox, "U0BOB", "rollback_approve", card)
    sandbox.standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
    sandbox.run_worker()  # the evidence job runs first, finds the request approved, and keeps nothing
    inc = sandbox.services.engine.list_incidents()[0]
    assert inc.state == "monitoring" and "evidence" not in inc.plan
    evidence_steps = [s for s in sandbox.services.engine.steps(inc.id) if s.step == "evidence"]
    assert [s.outcome for s in evidence_steps] == ["skipped"] and "approved" in evidence_steps[0].detail["note"]


def test_the_report_keeps_the_checks_and_the_evidence(sandbox, world, conn):
    card = request(sandbox)
    sandbox.run_worker()
    click(sandbox, "U0CAROL", "rollback_deny", card)
    view = shown_modal(sandbox.standin, "rollback_deny_modal")
    sandbox.sender.view_submission(user_id="U0CAROL", callback_id="rollback_deny_modal",
                                   state_values={"deny_reason_block": {"reason": "market-wide, wait"}},
                                   private_metadata=view["private_metadata"])
    sandbox.settle()
    sandbox.run_worker()  # the report job of the denial
    inc = sandbox.services.engine.list_incidents()[0]
    assert inc.state == "denied"
    report = sandbox.services.reports.path(inc.id).read_text()
    section = report.split("## Before approval", 1)[1].split("\n## ", 1)[0]
    assert "Confirmed by U0ALICE via /rollback start --confirm" in section
    assert section.count("- [x] ") == 4
    assert "Verdict: model-specific." in section and "Live IC, target" in section
    assert "| Evidence before approval | rollback-bot | ok | model-specific |" in report


@pytest.mark.parametrize(("kw", "verdict"), [
    (dict(loads=False), "model-specific"),
    (dict(data_ok=False), "data problem"),
    (dict(current={"ic": -0.10}, target={"ic": 0.05}), "model-specific"),
    (dict(current={"ic": -0.10}, target={"ic": 0.05}, regime_change=True), "model-specific"),
    (dict(current={"ic": -0.10}, target={"ic": -0.095}, regime_change=True), "market-wide"),
    (dict(current={"ic": -0.10}, target={"ic": -0.02}, regime_change=True), "market-wide"),  # better, not > 0
    (dict(current={"ic": -0.10}, target={"ic": -0.095}), "inconclusive"),
    (dict(current={"ic": None}, target={"ic": 0.05}, regime_change=True), "market-wide"),
    (dict(current={"ic": None}, target={"ic": 0.05}), "inconclusive"),
])
def test_the_verdict_rule(kw, verdict):
    args = dict(loads=True, data_ok=True, data_text="feature view stale by 2 trading day(s)", regime_change=False,
                current={"ic": 0.0}, target={"ic": 0.0}) | kw
    got, why = classify(**args)
    assert got == verdict and why


def test_a_request_queues_its_evidence_in_its_own_transaction(settings, db, world):
    """The evidence job is an outbox follow-up of the request (core.outbox): a process with no engine listener at
    all, or one that dies right after the request commits, still leaves it queued for whichever worker runs it."""
    from bot.compose import build_services

    services = build_services(settings, db)
    services.engine.listeners.clear()  # no listener of any kind: only what the transaction wrote counts
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    with services.db.transaction() as c:
        keys = [r["dedupe_key"] for r in c.execute(
            "SELECT dedupe_key FROM rollback_bot.jobs WHERE incident_id = %s AND kind = 'evidence'",
            (inc.id,)).fetchall()]
    assert keys == [f"evidence:{inc.id}"]
