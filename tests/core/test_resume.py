"""core.resume: `/rollback resume` under the trading lock, and never on production files that do not match their
production row unless two different approvers override (issue 13, items 1 and 2)."""

from __future__ import annotations

import shutil

import pytest

from core import engine as E
from core.errors import FilesMismatch, NotAuthorized
from bot.compose import build_services
from tests.helpers import assert_consistent, client_settings, corrupt_after_restore, trading_halted

MODEL = "growth_momentum_large"


class Paused(BaseException):
    """The executor of a rollback stops here (as if it were still running in another process)."""


def other_model(world) -> str:
    return next(m for m in sorted(world.models) if m != MODEL)


def oldest(world, model: str) -> str:
    return world.models[model].backups[0].name


def holders(conn) -> set[str]:
    return {r["holder"] for r in conn.execute(
        "SELECT h.holder FROM rollback_bot.halt_holders h JOIN rollback_bot.trading_halts t ON t.id = h.halt_id"
        " WHERE t.resumed_at IS NULL")}


def test_a_rollback_approved_while_resume_runs_keeps_trading_halted(settings, db, world, conn):
    """Issue 13.1: `/rollback resume` resumes a kept-halted rollback; in that very moment a rollback of another
    model is approved and its executor (another process) halts and starts swapping files. The resume must not
    drop that rollback's holder: trading stays halted until its swap is done and verified."""
    before = client_settings(conn)
    first = build_services(settings, db).engine         # the process running /rollback resume
    second = build_services(settings, db).engine        # another bot process, executing the new rollback
    other = other_model(world)
    kept, _ = first.request_rollback(model=other, backup=oldest(world, other), reason="keep halted",
                                     requested_by="U0ALICE", keep_halted=True)
    first.approve(incident_id=kept.id, approver="U0BOB")
    assert first.execute(kept.id).state == "verified"
    new, _ = first.request_rollback(model=MODEL, backup=oldest(world, MODEL), reason="second", requested_by="U0ALICE")
    seen: dict = {}

    def pause_mid_swap(label: str) -> None:
        if label == "before:restoring":
            raise Paused(label)

    def approve_meanwhile(label: str) -> None:
        if label == "before:resuming" and "state" not in seen:  # resume is under way, between its check and release
            second.approve(incident_id=new.id, approver="U0CAROL")
            second.fault = pause_mid_swap
            with pytest.raises(Paused):
                second.execute(new.id)
            seen["state"] = second.get(new.id).state

    first.fault = approve_meanwhile
    first.resume_trading(user="U0BOB")
    first.fault = E.no_fault
    assert seen == {"state": "restoring"}
    assert first.get(kept.id).state == "monitoring"
    assert trading_halted(conn), "trading resumed while a rollback was swapping files"
    assert holders(conn) == {f"incident:{new.id}"}
    second.fault = E.no_fault
    assert second.execute(new.id).state == "monitoring"
    assert not trading_halted(conn) and client_settings(conn) == before


def test_resume_never_drops_the_holder_of_an_open_rollback(services, world, conn):
    """A holder whose rollback is not closed survives `/rollback resume`; a manual halt's does not."""
    engine = services.engine
    inc, _ = engine.request_rollback(model=MODEL, backup=oldest(world, MODEL), reason="r", requested_by="U0ALICE",
                                     keep_halted=True)
    engine.approve(incident_id=inc.id, approver="U0BOB")

    def pause_before_resuming(label: str) -> None:
        if label == "before:resuming":
            raise Paused(label)

    engine.fault = pause_before_resuming
    assert engine.execute(inc.id).state == "verified"
    engine.halt_trading(user="U0CAROL", reason="manual")
    with pytest.raises(Paused):  # the kept-halted rollback resumes through its own step, which "dies" here
        engine.resume_trading(user="U0BOB")
    assert engine.get(inc.id).state == "resuming"
    assert holders(conn) == {f"incident:{inc.id}"}, "only the open rollback holds the halt now"
    assert trading_halted(conn)
    engine.fault = E.no_fault
    result = engine.resume_trading(user="U0BOB")  # finishes the interrupted resume step
    assert result.resumed and not trading_halted(conn) and engine.get(inc.id).state == "monitoring"


def failed_revert(services, world, *, lose: str = "metadata.json"):
    """A rollback whose verification fails and whose revert cannot put ``lose`` back (its emergency copy is
    gone): the issue's mixed files."""
    engine = services.engine
    corrupt = corrupt_after_restore(world.models_dir / MODEL)

    def hook(label: str) -> None:
        corrupt(label)
        if label == "before:reverting":
            emergency = engine.get(inc.id).emergency_backup
            (world.models_dir / MODEL / emergency / lose).unlink()

    inc, _ = engine.request_rollback(model=MODEL, backup=oldest(world, MODEL), reason="r", requested_by="U0ALICE")
    engine.approve(incident_id=inc.id, approver="U0BOB")
    engine.fault = hook
    try:
        return engine.execute(inc.id)
    finally:
        engine.fault = E.no_fault


# The audit trail of a resume on mixed files: refused, an override asked by Bob, refused to Bob (the requester) and
# to Dave (no approver), then Carol's second approval, and the resume itself.
OVERRIDE_TRAIL = [
    ("U0BOB", "resume", "refused"), ("U0BOB", "resume_override_request", "ok"),
    ("U0BOB", "resume_override", "refused"), ("U0DAVE", "resume_override", "refused"),
    ("U0CAROL", "resume_override", "ok"), ("U0CAROL", "resume", "ok")]


def resume_audit(conn) -> list[dict]:
    """The audit rows of resumes and their overrides, in order."""
    return conn.execute("SELECT actor, action, outcome, detail FROM rollback_bot.audit_log WHERE action LIKE 'resume%%'"
                        " ORDER BY id").fetchall()


def test_resume_refuses_mixed_files_until_two_different_approvers_override(settings, db, world, conn):
    from tenacity import wait_none

    services = build_services(settings, db)
    services.engine.revert_wait = wait_none()
    original = world.models[MODEL].production_version
    done = failed_revert(services, world)
    assert done.state == "revert_failed", (done.state, done.error)
    assert trading_halted(conn)
    with pytest.raises(FilesMismatch) as refused:
        services.engine.resume_trading(user="U0BOB")
    text = str(refused.value)
    assert f"metadata.json is the backup {oldest(world, MODEL)}" in text, text
    assert f"expected {original}" in text and "model.json" not in text, text
    assert trading_halted(conn), "one approver cannot resume on mixed files"
    override, new = services.engine.request_resume_override(user="U0BOB")
    assert new and override.kind == "resume" and override.state == "requested"
    again, new_again = services.engine.request_resume_override(user="U0BOB")
    assert again.id == override.id and not new_again, "the same files: the same open request"
    with pytest.raises(NotAuthorized, match="second, different approver"):
        services.engine.approve_resume_override(incident_id=override.id, approver="U0BOB")
    with pytest.raises(NotAuthorized):
        services.engine.approve_resume_override(incident_id=override.id, approver="U0DAVE", allowed=False)
    assert trading_halted(conn)
    used, result = services.engine.approve_resume_override(incident_id=override.id, approver="U0CAROL")
    assert result.resumed and not trading_halted(conn)
    assert used.state == "resolved" and used.approved_by == "U0CAROL" and used.requested_by == "U0BOB"
    closed = services.engine.get(done.id)
    assert closed.state == "failed" and "override" in closed.decision_note
    audit = resume_audit(conn)
    assert [(a["actor"], a["action"], a["outcome"]) for a in audit] == OVERRIDE_TRAIL
    assert audit[-1]["detail"]["approvers"] == ["U0BOB", "U0CAROL"]


def test_resume_after_the_files_are_put_right_needs_one_approver_and_closes_the_incident(settings, db, world, conn):
    from tenacity import wait_none

    services = build_services(settings, db)
    services.engine.revert_wait = wait_none()
    done = failed_revert(services, world, lose="model.json")
    assert done.state == "revert_failed"
    original = world.models[MODEL].production_version
    folder = world.models_dir / MODEL
    with pytest.raises(FilesMismatch, match="model.json is none of the known versions"):
        services.engine.resume_trading(user="U0BOB")
    shutil.copyfile(folder / original / "model.json", folder / "model.json")  # a person puts it right
    result = services.engine.resume_trading(user="U0BOB")
    assert result.resumed and not trading_halted(conn)
    closed = services.engine.get(done.id)
    assert closed.state == "failed" and "match the production row again" in closed.decision_note
    assert assert_consistent(conn, world.models_dir, MODEL) == original


def test_an_override_is_for_exactly_the_files_it_was_asked_for(settings, db, world, conn):
    from tenacity import wait_none

    services = build_services(settings, db)
    services.engine.revert_wait = wait_none()
    failed_revert(services, world)
    override, _ = services.engine.request_resume_override(user="U0BOB")
    other = other_model(world)
    meta = world.models_dir / other / "metadata.json"  # meanwhile another model's file changes as well
    meta.write_text(meta.read_text().replace("{", '{"note": "edited", ', 1))
    with pytest.raises(FilesMismatch, match="changed after"):
        services.engine.approve_resume_override(incident_id=override.id, approver="U0CAROL")
    assert services.engine.get(override.id).state == "cancelled"
    assert trading_halted(conn)


def test_resume_refuses_when_the_original_had_no_model_file(settings, db, world, conn):
    """Issue 13.2, the same rule when the original had no model.json: the failed rollback puts the original
    state back (no model.json), and `/rollback resume` refuses it like any mismatch."""
    services = build_services(settings, db, fault_hook=corrupt_after_restore(world.models_dir / MODEL))
    (world.models_dir / MODEL / "model.json").unlink()
    inc, _ = services.engine.request_rollback(model=MODEL, backup=oldest(world, MODEL), reason="model.json is gone",
                                              requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    done = services.engine.execute(inc.id)
    assert done.state == "failed", done.error
    assert not (world.models_dir / MODEL / "model.json").exists(), "the original had none: none is put back"
    assert "model.json removed" in done.plan["revert"]["message"]
    with pytest.raises(FilesMismatch, match="model.json is missing"):
        services.engine.resume_trading(user="U0BOB")
    assert trading_halted(conn)
