"""`/rollback resume` over signed HTTP when production files do not match: refused with the files named, and an
*Override* that a second, different approver must press (issue 13, item 2)."""

from __future__ import annotations

import json

from tenacity import wait_none

from core.incidents import Incident
from tests.helpers import corrupt_after_restore, trading_halted
from tests.core.test_resume import OVERRIDE_TRAIL, resume_audit

MODEL = "growth_momentum_large"
CHANNEL = "C0INCIDENT"


def mixed_files(sandbox, world) -> Incident:
    """A rollback whose revert could not put the original metadata.json back (revert_failed)."""
    engine = sandbox.services.engine
    engine.revert_wait = wait_none()
    corrupt = corrupt_after_restore(world.models_dir / MODEL)
    inc, _ = engine.request_rollback(model=MODEL, backup=world.models[MODEL].backups[0].name, reason="r",
                                     requested_by="U0ALICE")
    engine.approve(incident_id=inc.id, approver="U0BOB")

    def hook(label: str) -> None:
        corrupt(label)
        if label == "before:reverting":
            (world.models_dir / MODEL / engine.get(inc.id).emergency_backup / "metadata.json").unlink()

    engine.fault = hook
    done = engine.execute(inc.id)
    engine.fault = lambda label: None
    assert done.state == "revert_failed", done.error
    return done


def test_resume_on_mixed_files_needs_a_second_approver_to_override(sandbox, world, conn):
    failed = mixed_files(sandbox, world)
    reply = sandbox.command("U0BOB", "resume")
    text = sandbox.responses(reply.response_key)[0]["text"]
    assert "Trading was not resumed" in text and "metadata.json is the" in text and "Override" in text, text
    assert trading_halted(conn), "one approver alone cannot resume on mixed files"
    call = sandbox.standin.wait_for("chat.postMessage", lambda c: "(override)" in c.body.get("text", ""))[0]
    card = sandbox.standin.message(CHANNEL, call.response["ts"])
    blocks = json.dumps(card.blocks)
    assert "Override" in blocks and "metadata.json" in blocks

    def press(user):
        return sandbox.sender.block_action(user_id=user, action_id="resume_override", channel_id=CHANNEL,
                                           message_ts=card.ts, message=card.as_slack())

    assert press("U0BOB").status == 200  # the one who asked
    # the refusal itself (the command's own answer also names "a second, different approver": waiting for that
    # would let the next click race this one's audit row)
    sandbox.standin.wait_for("response_url", lambda c: "You asked for this override" in c.body.get("text", ""))
    assert trading_halted(conn)
    assert press("U0DAVE").status == 200  # not an approver
    sandbox.standin.wait_for("response_url", lambda c: "Only approvers" in c.body.get("text", ""))
    assert trading_halted(conn)
    assert press("U0CAROL").status == 200
    sandbox.standin.wait_for("chat.postMessage", lambda c: "confirmed" in c.body.get("text", "")
                             and "<@U0BOB>" in c.body.get("text", ""))
    assert not trading_halted(conn)
    sandbox.settle()
    assert sandbox.services.engine.get(failed.id).state == "failed"
    assert [(r["actor"], r["action"], r["outcome"]) for r in resume_audit(conn)] == OVERRIDE_TRAIL
