"""What was approved is what runs (issue 13, item 7): both files pinned at request time and checked before the
halt, at the restore and at verification; an approved rollback that did not start in time is cancelled; quick
fix requests expire like rollback requests."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from core import fixes, incidents
from core.errors import InvalidTransition, VerificationFailed
from core.modelio import sha256_file
from bot.compose import build_services
from tests.helpers import Clock, assert_consistent, trading_halted

MODEL = "growth_momentum_large"


def oldest(world) -> str:
    return world.models[MODEL].backups[0].name


def edit_metadata(path, **changes) -> None:
    meta = json.loads(path.read_text())
    meta["performance"].update(changes)
    path.write_text(json.dumps(meta))


def request(engine, world, **kw):
    inc, _ = engine.request_rollback(model=MODEL, backup=oldest(world), reason="r", requested_by="U0ALICE", **kw)
    return inc


def test_both_files_are_pinned_at_request_time(services, world):
    inc = request(services.engine, world)
    folder = world.models_dir / MODEL / oldest(world)
    assert inc.plan["pinned"] == {"model.json": sha256_file(folder / "model.json"),
                                  "metadata.json": sha256_file(folder / "metadata.json")}


def test_metadata_changed_after_approval_is_refused_before_the_halt(services, world, conn):
    inc = request(services.engine, world)
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    edit_metadata(world.models_dir / MODEL / oldest(world) / "metadata.json", sharpe_ratio=9.9)  # same features
    done = services.engine.execute(inc.id)
    assert done.state == "failed" and "metadata.json changed on disk" in done.error, (done.state, done.error)
    assert not trading_halted(conn), "nothing changed: refused before the halt"
    assert assert_consistent(conn, world.models_dir, MODEL) == world.models[MODEL].production_version


def test_metadata_changed_during_the_halt_is_not_restored(settings, db, world, conn):
    backup_meta = world.models_dir / MODEL / oldest(world) / "metadata.json"

    def change_it(label: str) -> None:
        if label == "before:restoring":
            edit_metadata(backup_meta, spearman_ic=0.5)

    services = build_services(settings, db, fault_hook=change_it)
    inc = request(services.engine, world)
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    done = services.engine.execute(inc.id)
    assert done.state == "failed" and "changed on disk after approval: metadata.json" in done.error, done.error
    assert assert_consistent(conn, world.models_dir, MODEL) == world.models[MODEL].production_version
    assert trading_halted(conn)


def test_verification_checks_the_pinned_metadata_in_place(settings, db, world, conn):
    folder = world.models_dir / MODEL

    def change_both(label: str) -> None:  # in place and in the backup alike: only the pin can tell
        if label == "after:restoring":
            for path in (folder / "metadata.json", folder / oldest(world) / "metadata.json"):
                edit_metadata(path, sharpe_ratio=7.5)

    services = build_services(settings, db, fault_hook=change_both)
    inc = request(services.engine, world)
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    done = services.engine.execute(inc.id)
    assert done.state == "failed", (done.state, done.error)
    assert "metadata.json in place is not the one approved" in done.error
    assert trading_halted(conn)


def test_verification_repeats_the_feature_order_check(services, world, conn):
    engine = services.engine
    inc = request(engine, world)
    engine.approve(incident_id=inc.id, approver="U0BOB")
    assert engine.execute(inc.id).state == "monitoring"
    path = world.models_dir / MODEL / "metadata.json"
    meta = json.loads(path.read_text())
    meta["features"][0], meta["features"][1] = meta["features"][1], meta["features"][0]
    path.write_text(json.dumps(meta))
    plan = {**engine.get(inc.id).plan}  # as if exactly this file had been approved
    plan["pinned"] = {**plan["pinned"], "metadata.json": sha256_file(path)}
    plan["preflight"] = {**plan["preflight"], "features": meta["features"]}
    conn.execute("UPDATE rollback_bot.incidents SET plan = %s::jsonb WHERE id = %s", (json.dumps(plan), inc.id))
    with pytest.raises(VerificationFailed, match="order"):
        engine.verify_in_place(engine.get(inc.id))


def test_an_approved_rollback_that_did_not_start_in_time_is_cancelled(services, world, conn):
    engine = services.engine
    clock = Clock(incidents.utcnow())
    engine.clock = clock
    inc = request(engine, world)
    engine.approve(incident_id=inc.id, approver="U0BOB")
    clock.advance(minutes=services.settings.approved_start_timeout_minutes + 1)
    done = engine.execute(inc.id)
    assert done.state == "cancelled" and "not started within" in done.decision_note
    assert not trading_halted(conn)
    assert assert_consistent(conn, world.models_dir, MODEL) == world.models[MODEL].production_version
    # the worker's sweep cancels one that nobody picked up, so it never runs hours later
    other = next(m for m in sorted(world.models) if m != MODEL)
    late, _ = engine.request_rollback(model=other, backup=world.models[other].backups[0].name, reason="r",
                                      requested_by="U0ALICE")
    engine.approve(incident_id=late.id, approver="U0BOB")
    clock.advance(minutes=services.settings.approved_start_timeout_minutes + 1)
    assert late.id in [i.id for i in engine.expire_requests()]
    assert engine.get(late.id).state == "cancelled"
    assert engine.execute(late.id).state == "cancelled" and not trading_halted(conn)


def test_quick_fix_requests_expire_like_rollback_requests(services, world, conn):
    clock = Clock(incidents.utcnow())
    services.engine.clock = clock
    fix = services.request_fix(fix=fixes.REFRESH_VIEW, requested_by="U0ALICE")
    assert fix.expires_at == clock.now + timedelta(minutes=services.settings.approval_timeout_minutes)
    clock.advance(minutes=services.settings.approval_timeout_minutes + 1)
    with pytest.raises(InvalidTransition, match="expired"):
        services.approve_fix(incident_id=fix.id, approver="U0BOB", allowed=True)
    assert fixes.get_fix(services.db, fix.id).state == "cancelled"
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.jobs WHERE kind = 'fix'").fetchone()["n"] == 0
    again = services.request_fix(fix=fixes.REFRESH_VIEW, requested_by="U0ALICE")
    clock.advance(minutes=services.settings.approval_timeout_minutes + 1)
    assert again.id in [i.id for i in services.engine.expire_requests()]
    assert fixes.get_fix(services.db, again.id).state == "cancelled"
