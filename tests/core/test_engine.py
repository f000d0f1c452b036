"""Issue 3: the rollback engine against a real PostgreSQL and real model files."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from core import engine as E
from core import incidents
from core.errors import Conflict, InvalidTransition, NotAuthorized, PreflightFailed, VerificationFailed
from core.runbook import resume as resume_step
from tests.helpers import (
    assert_consistent,
    client_settings,
    corrupt_after_restore,
    files_equal,
    production_rows,
    trading_halted,
)

MODEL = "growth_momentum_large"


def target_of(services, model=MODEL):
    return services.registry.recommend(model).backup.name


def test_full_rollback(services, world, conn):
    before = client_settings(conn)
    original = assert_consistent(conn, world.models_dir, MODEL)
    target = target_of(services)
    inc, report = services.engine.request_rollback(model=MODEL, backup=target, reason="Sharpe collapsed",
                                                   requested_by="U0ALICE")
    assert inc.state == "requested" and "model.json loads with xgboost" in report.checks
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    done = services.engine.execute(inc.id)
    assert done.state == "monitoring", done.error
    # files: the target in place; the emergency backup holds the original
    assert files_equal(world.models_dir / MODEL, world.models_dir / MODEL / target)
    emergency = world.models_dir / MODEL / done.emergency_backup
    assert done.emergency_backup.startswith("backup_emergency_") and files_equal(emergency, world.models_dir / MODEL / original)
    # deployment log: one production row, the rollback row, previous not production
    rows = production_rows(conn, MODEL)
    assert len(rows) == 1 and rows[0]["version"] == target and rows[0]["is_rollback"]
    assert "U0ALICE" in rows[0]["deployed_by"] and "U0BOB" in rows[0]["deployed_by"]
    # trading resumed with each client's own settings
    assert not trading_halted(conn)
    assert client_settings(conn) == before
    steps = [s.step for s in services.engine.steps(inc.id)]
    for step in ("requested", "approved", "preflight", "halt", "verify_halt", "emergency_backup", "restore",
                 "record", "verify", "resume"):
        assert step in steps
    assert all(s.finished_at is not None for s in services.engine.steps(inc.id))
    # the approved model was parsed while the halt, backup, restore and record ran, and verification used it
    verify = next(s for s in services.engine.steps(inc.id) if s.step == "verify")
    assert verify.detail["parsed"] == "ahead, from identical bytes"
    assert verify.detail["sha256"] == inc.target_sha256
    # monitoring ends → resolved, through the job queue
    services.engine.clock = lambda: incidents.utcnow() + timedelta(minutes=31)
    services.worker.run_due()
    assert services.engine.get(inc.id).state == "resolved"


def test_halt_saves_and_restores_each_clients_own_settings(services, world, conn):
    before = client_settings(conn)
    active = {r["client_id"] for r in conn.execute("SELECT client_id FROM clients WHERE active")}
    assert len(set(before.values())) > 1, "the world must have mixed settings"
    inc = services.engine.halt_trading(user="U0ALICE", reason="suspicious fills")
    now = client_settings(conn)
    for cid, value in now.items():
        assert value == ((False, True) if cid in active else before[cid])
    assert trading_halted(conn)
    # A person changes one client during the halt: that choice is kept
    changed = sorted(active)[0]
    conn.execute("UPDATE client_settings SET auto_rebalance = false, require_manual_approval = false WHERE client_id = %s", (changed,))
    result = services.engine.resume_trading(user="U0BOB")
    assert result.resumed and result.left_alone == [changed]
    after = client_settings(conn)
    for cid in before:
        assert after[cid] == ((False, False) if cid == changed else before[cid])
    assert services.engine.get(inc.id).state == "resolved"


def test_a_client_a_person_made_manual_during_the_halt_stays_manual(services, world, conn):
    """Found by the property test: a person sets exactly the halted values during the halt (makes a client manual
    on purpose); resume used to give it back its auto-rebalancing. The row is not the version the halt wrote."""
    auto = sorted(r["client_id"] for r in conn.execute(
        "SELECT c.client_id FROM clients c JOIN client_settings s ON s.client_id = c.client_id"
        " WHERE c.active AND s.auto_rebalance AND NOT s.require_manual_approval"))
    assert len(auto) >= 2
    before = client_settings(conn)
    services.engine.halt_trading(user="U0ALICE", reason="suspicious fills")
    conn.execute("UPDATE client_settings SET auto_rebalance = false, require_manual_approval = true"
                 " WHERE client_id = %s", (auto[0],))
    result = services.engine.resume_trading(user="U0BOB")
    assert result.resumed and result.left_alone == [auto[0]]
    after = client_settings(conn)
    assert after[auto[0]] == (False, True)
    assert {c: v for c, v in after.items() if c != auto[0]} == {c: v for c, v in before.items() if c != auto[0]}


def test_nested_halts_keep_trading_halted_until_the_last_holder(services, world, conn):
    before = client_settings(conn)
    services.engine.halt_trading(user="U0ALICE", reason="manual")
    target = target_of(services)
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    done = services.engine.execute(inc.id)
    assert done.state == "monitoring"
    assert trading_halted(conn), "the manual halt still holds"
    assert client_settings(conn) != before
    services.engine.resume_trading(user="U0BOB")
    assert not trading_halted(conn) and client_settings(conn) == before


def test_preflight_refuses_a_bad_target_and_changes_nothing(services, world, conn):
    target = target_of(services)
    (world.models_dir / MODEL / target / "model.json").write_text('{"learner": 1')
    with pytest.raises(PreflightFailed, match="does not load"):
        services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.incidents").fetchone()["n"] == 0
    assert not trading_halted(conn)


def test_preflight_refuses_feature_mismatch(services, world, conn):
    target = target_of(services)
    meta_path = world.models_dir / MODEL / target / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["features"][0] = "no_such_feature"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(PreflightFailed):
        services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    assert not trading_halted(conn)


def test_preflight_again_after_approval(services, world, conn):
    """A backup that goes bad between request and approval fails before any change."""
    target = target_of(services)
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    (world.models_dir / MODEL / target / "model.json").write_text("garbage")
    done = services.engine.execute(inc.id)
    assert done.state == "failed" and "pre-flight" in done.error
    assert not trading_halted(conn)
    assert not any(p.name.startswith("backup_emergency_") for p in (world.models_dir / MODEL).iterdir())


def test_two_person_rule_and_exactly_once(services, world):
    target = target_of(services)
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    with pytest.raises(NotAuthorized, match="own request"):
        services.engine.approve(incident_id=inc.id, approver="U0ALICE")
    with pytest.raises(NotAuthorized):
        services.engine.approve(incident_id=inc.id, approver="U0DAVE", allowed=False)
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    with pytest.raises(Conflict, match="already approved .*U0BOB"):
        services.engine.approve(incident_id=inc.id, approver="U0CAROL")
    with pytest.raises(Conflict):
        services.engine.request_rollback(model=MODEL, backup=target, reason="again", requested_by="U0CAROL")


def test_expired_request_cannot_be_approved(services, world):
    target = target_of(services)
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    services.engine.clock = lambda: incidents.utcnow() + timedelta(minutes=16)
    with pytest.raises(InvalidTransition, match="expired"):
        services.engine.approve(incident_id=inc.id, approver="U0BOB")
    assert services.engine.get(inc.id).state == "cancelled"


def test_failed_verification_puts_the_original_back_and_keeps_trading_halted(settings, db, world, conn):
    from bot.compose import build_services

    services = build_services(settings, db, fault_hook=corrupt_after_restore(world.models_dir / MODEL))
    original = assert_consistent(conn, world.models_dir, MODEL)
    target = target_of(services)
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    done = services.engine.execute(inc.id)
    assert done.state == "failed" and "Verification failed" in done.error
    assert assert_consistent(conn, world.models_dir, MODEL) == original
    assert trading_halted(conn), "trading never resumes on a model that was not verified"
    with pytest.raises(VerificationFailed, match="not verified"):
        resume_step.assert_verified(services.engine, done)


def test_verification_after_a_restart_parses_the_file_in_place(settings, db, world, conn):
    """The model parsed ahead lives only in the run that parsed it: a run that starts at verification (after a
    crash) loads and checks the file in place itself."""
    from bot.compose import build_services

    class Crash(Exception):
        pass

    def crash_before_verifying(label):
        if label == "before:verifying":
            raise Crash(label)

    services = build_services(settings, db, fault_hook=crash_before_verifying)
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target_of(services), reason="r",
                                              requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    with pytest.raises(Crash):
        services.engine.execute(inc.id)
    assert services.engine.get(inc.id).state == "verifying" and inc.id not in services.engine.executor.parsed
    services.engine.fault = E.no_fault
    done = services.engine.execute(inc.id)
    assert done.state == "monitoring", done.error
    verify = next(s for s in services.engine.steps(inc.id) if s.step == "verify" and s.outcome == "ok")
    assert verify.detail["parsed"] == "from the file in place"


def test_parsing_ahead_needs_the_approved_bytes(world, tmp_path):
    import numpy as np

    from core.modelio import load_booster, load_booster_if_identical, predict, sha256_file

    path = world.models_dir / MODEL / "model.json"
    sha = sha256_file(path)
    parsed = load_booster_if_identical(path, sha)
    meta = json.loads((world.models_dir / MODEL / "metadata.json").read_text())
    rows = np.random.default_rng(0).normal(size=(20, len(meta["features"])))
    assert np.array_equal(predict(parsed, meta["features"], rows), predict(load_booster(path), meta["features"], rows))
    assert load_booster_if_identical(path, "0" * 64) is None  # other bytes than approved: not used
    assert load_booster_if_identical(tmp_path / "missing.json", sha) is None
    broken = tmp_path / "model.json"
    broken.write_bytes(path.read_bytes()[:-50])
    assert load_booster_if_identical(broken, sha256_file(broken)) is None  # the file in place is loaded instead


def test_runbook_update_after_insert_is_not_copied(services, world, conn):
    """The new row stays production even when the backup's name equals an older row's version."""
    target = target_of(services)
    conn.execute(
        "INSERT INTO model_deployment_log (model_name, version, deployed_at, deployed_by, deployment_reason,"
        " is_production, is_rollback) VALUES (%s, %s, now() - interval '400 days', 'x', 'old', false, false)",
        (MODEL, target),
    )
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    assert services.engine.execute(inc.id).state == "monitoring"
    rows = production_rows(conn, MODEL)
    assert len(rows) == 1 and rows[0]["version"] == target and rows[0]["is_rollback"]


def test_keep_halted_waits_for_an_approver_to_resume(services, world, conn):
    target = target_of(services)
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE",
                                              keep_halted=True)
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    assert services.engine.execute(inc.id).state == "verified"
    assert trading_halted(conn)
    services.engine.resume_trading(user="U0BOB")
    assert services.engine.get(inc.id).state == "monitoring"
    assert not trading_halted(conn)


def test_resume_is_refused_while_a_swap_is_under_way(settings, db, world, conn):
    from bot.compose import build_services

    seen = {}

    def try_resume(label):
        if label == "after:restoring":
            with pytest.raises(InvalidTransition, match="under way"):
                services.engine.resume_trading(user="U0BOB")
            seen["tried"] = trading_halted(conn)

    services = build_services(settings, db, fault_hook=try_resume)
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target_of(services), reason="r", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    assert services.engine.execute(inc.id).state == "monitoring"
    assert seen == {"tried": True}


def test_halt_verification_flags_trades_after_the_halt(services, world, conn):
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target_of(services), reason="r", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")

    def rogue_trade(label):
        if label == "after:halting":
            conn.execute("INSERT INTO trades (client_id, ticker, side, quantity, price, executed_at)"
                         " VALUES ('c1', 'AAA', 'buy', 1, 1, clock_timestamp() + interval '1 second')")

    services.engine.fault = rogue_trade
    services.engine.execute(inc.id)
    halt_step = next(s for s in services.engine.steps(inc.id) if s.step == "verify_halt")
    assert halt_step.outcome == "warning" and halt_step.detail["trades_after_halt"] == 1


def test_stop_command_runs_without_a_shell(settings, db, world, tmp_path, conn):
    from bot.compose import build_services

    marker = tmp_path / "stopped"
    cmd = ["/bin/sh", "-c", f'echo "$0" > {marker}', "arg; rm -rf /"]
    services = build_services(settings.model_copy(update={"trading_stop_command": cmd}), db)
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target_of(services), reason="r", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    assert services.engine.execute(inc.id).state == "monitoring"
    assert marker.read_text().strip() == "arg; rm -rf /"


def test_failing_stop_command_fails_the_incident_with_trading_halted(settings, db, world, conn):
    from bot.compose import build_services

    services = build_services(settings.model_copy(update={"trading_stop_command": ["/bin/false"]}), db)
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target_of(services), reason="r", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    done = services.engine.execute(inc.id)
    assert done.state == "failed" and "stop command" in done.error
    assert trading_halted(conn)
    assert_consistent(conn, world.models_dir, MODEL)


def test_illegal_transitions_raise():
    with pytest.raises(InvalidTransition):
        incidents.check_transition("requested", "resuming")
    with pytest.raises(InvalidTransition):
        incidents.check_transition("failed", "approved")
    with pytest.raises(InvalidTransition):
        incidents.check_transition("verifying", "resolved")


def test_break_glass_cli(settings, world, conn):
    from tests.bot.test_skeleton import run_cli

    before = client_settings(conn)
    env = {"DATABASE_URL": settings.database_dsn(), "MODELS_DIR": str(world.models_dir)}
    from core.registry import ModelRegistry

    target = ModelRegistry(world.models_dir).recommend(MODEL).backup.name
    r = run_cli("rollback", MODEL, "--to", "../../etc", "--reason", "x", "--by", "ops", "--confirm", env=env)
    assert r.returncode == 1 and "Invalid backup name" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("rollback", MODEL, "--to", target, "--reason", "x", "--confirm", env=env)
    assert r.returncode == 2 and "--by" in r.stderr
    r = run_cli("rollback", "nope", "--to", target, "--reason", "x", "--by", "ops", "--confirm", env=env)
    assert r.returncode == 1 and "Unknown model" in r.stderr
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.incidents").fetchone()["n"] == 0
    r = run_cli("rollback", MODEL, "--to", target, "--reason", "Slack is down; Sharpe collapsed", "--by", "oncall-jane", "--yes", "--confirm",
                env=env)
    assert r.returncode == 0, r.stderr
    assert "restore" in r.stdout and "trading resumed" in r.stdout
    assert assert_consistent(conn, world.models_dir, MODEL) == target
    assert client_settings(conn) == before
    audit = conn.execute("SELECT actor, action FROM rollback_bot.audit_log WHERE outcome = 'ok' ORDER BY id").fetchall()
    assert {"actor": "oncall-jane", "action": "break_glass_rollback"} in audit
    inc = conn.execute("SELECT source, requested_by FROM rollback_bot.incidents").fetchone()
    assert inc == {"source": "cli", "requested_by": "oncall-jane"}


def test_rollback_away_from_a_missing_production_model(services, world, conn):
    """A production model.json that vanished is the emergency itself: back up what exists, restore, resume."""
    (world.models_dir / MODEL / "model.json").unlink()
    target = target_of(services)
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="model.json is gone",
                                              requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    done = services.engine.execute(inc.id)
    assert done.state == "monitoring", done.error
    emergency = world.models_dir / MODEL / done.emergency_backup
    assert sorted(p.name for p in emergency.iterdir()) == ["metadata.json"]
    assert assert_consistent(conn, world.models_dir, MODEL) == target
    backup_step = next(s for s in services.engine.steps(inc.id) if s.step == "emergency_backup")
    assert backup_step.detail["missing"] == ["model.json"]
