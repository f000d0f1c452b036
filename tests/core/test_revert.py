"""core.revert: a failed rollback's revert is retried with back-off, and when it still fails it says exactly
which file is which version, in a state of its own (revert_failed: open, trading halted, escalated)."""

from __future__ import annotations

import errno
import json

from tenacity import wait_none

from core.escalation import immediate_reasons
from bot.compose import build_services
from handlers import incident_views as iv
from tests.helpers import assert_consistent, corrupt_after_restore, trading_halted

MODEL = "growth_momentum_large"


def oldest(world) -> str:
    return world.models[MODEL].backups[0].name


def run_failing(services, world, hook):
    engine = services.engine
    engine.revert_wait = wait_none()
    corrupt = corrupt_after_restore(world.models_dir / MODEL)
    inc, _ = engine.request_rollback(model=MODEL, backup=oldest(world), reason="r", requested_by="U0ALICE")
    engine.approve(incident_id=inc.id, approver="U0BOB")

    def both(label: str) -> None:
        corrupt(label)
        hook(engine, inc, label)

    engine.fault = both
    return engine.execute(inc.id)


def test_a_failing_file_operation_is_retried_and_the_revert_completes(settings, db, world, conn):
    tries = []

    def disk_full_once(engine, inc, label):
        if label == "revert:model.json":
            tries.append(label)
            if len(tries) == 1:
                raise OSError(errno.ENOSPC, "No space left on device")

    done = run_failing(build_services(settings, db), world, disk_full_once)
    assert done.state == "failed", (done.state, done.error)
    assert tries == ["revert:model.json", "revert:model.json"]
    revert = next(s for s in build_services(settings, db).engine.steps(done.id) if s.step == "revert")
    assert revert.outcome == "ok" and revert.detail["attempts"] == 2
    assert assert_consistent(conn, world.models_dir, MODEL) == world.models[MODEL].production_version
    assert trading_halted(conn)


def test_a_revert_that_keeps_failing_says_which_file_is_which_version(settings, db, world, conn):
    """The issue's case: the target's metadata.json beside the original model.json. Not "the original model is
    in place": revert_failed, naming each file, open, trading halted, escalated, on the card and the report."""
    original = world.models[MODEL].production_version
    target = oldest(world)

    def emergency_metadata_lost(engine, inc, label):
        if label == "before:reverting":
            (world.models_dir / MODEL / engine.get(inc.id).emergency_backup / "metadata.json").unlink()

    services = build_services(settings, db)
    done = run_failing(services, world, emergency_metadata_lost)
    assert done.state == "revert_failed", (done.state, done.error)
    assert done.is_open and trading_halted(conn)
    assert f"metadata.json is the target {target}" in done.error, done.error
    assert f"model.json is the original ({original})" in done.error, done.error
    assert "original model is in place" not in done.error
    folder = world.models_dir / MODEL
    assert (folder / "metadata.json").read_bytes() == (folder / target / "metadata.json").read_bytes()
    assert (folder / "model.json").read_bytes() == (folder / original / "model.json").read_bytes()
    revert = next(s for s in services.engine.steps(done.id) if s.step == "revert")
    assert revert.outcome == "failed" and revert.detail["attempts"] == 1  # a lost source is not retried
    assert revert.detail["files"] == {"model.json": f"the original ({original})",
                                      "metadata.json": f"the target {target}"}
    # escalated at once, shown as such
    assert any("putting the original files back failed" in r for r in immediate_reasons(done, loss_threshold=None))
    card = json.dumps(iv.incident_card(done, services.engine.steps(done.id)))
    assert ":sos:" in card and "revert failed" in card and "mixed" in card
    assert "Revert failed" in iv.step_reply(done, "revert", revert.detail)
    assert "revert failed" in iv.state_reply(done)
    report = services.reports.update(done.id).read_text()
    assert "URGENT" in report and f"metadata.json is the target {target}" in report
    # the one-open-rollback rule still holds: it is open
    assert services.engine.open_incident_for(MODEL).id == done.id
