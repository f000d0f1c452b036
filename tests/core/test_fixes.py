"""Quick fixes (core/fixes.py) against a real PostgreSQL: the feature view refresh and the corrupt-model restore."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.parse
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from bot.devtools import demo_world as dw
from core import fixes
from core.db import Database
from core.diagnostics import check_data_quality
from core.errors import Conflict, InvalidTransition, NotAuthorized, PreflightFailed
from core.modelio import load_booster
from core.registry import ModelRegistry
from tests.helpers import assert_consistent, files_equal, trading_halted

MODEL = "value_small"
END = date(2026, 9, 30)


@pytest.fixture
def market(database_url: str):
    """A small market of its own schema: (autocommit connection, Market, schema name)."""
    with psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as conn:
        with dw.isolated_schema(conn, prefix="t_fix_") as schema:
            m = dw.generate_market(conn, tickers=8, days=70, end_date=END, regime_change_days=5, seed=1)
            yield conn, m, schema


def _add_day(conn: psycopg.Connection, m: dw.Market) -> date:
    """A new trading day in daily_bars (the view is not refreshed): the feature view is now stale."""
    last = m.trading_days[-1]
    new = last + timedelta(days=3 if last.weekday() == 4 else 1)
    conn.execute(
        "INSERT INTO daily_bars (date, ticker, open, high, low, close, volume)"
        " SELECT %s, ticker, close, high * 1.01, low, close * 1.002, volume FROM daily_bars WHERE date = %s",
        (new, last),
    )
    return new


def _schema_db(database_url: str, schema: str) -> Database:
    """A pool whose connections find the platform tables in ``schema`` (the bot's own stay in rollback_bot)."""
    options = urllib.parse.quote(f"-csearch_path={schema}")
    sep = "&" if "?" in database_url else "?"
    return Database(f"{database_url}{sep}options={options}", max_size=2).open()


# --------------------------------------------------------------------------------------------- the refresh


def test_refresh_makes_a_stale_view_current(market) -> None:
    conn, m, _ = market
    new = _add_day(conn, m)
    stale, findings = check_data_quality(conn)
    assert stale.stale and stale.stale_days == 1 and stale.view_latest == m.trading_days[-1]
    assert any("stale" in f.message for f in findings)
    result = fixes.refresh_feature_view(conn)
    assert result.ok and result.concurrently, result.message
    assert result.detail == {"view_latest_before": m.trading_days[-1].isoformat(),
                             "view_latest_after": new.isoformat(), "bars_latest": new.isoformat()}
    assert new.isoformat() in result.message
    fresh, findings = check_data_quality(conn)
    assert not fresh.stale and not [f for f in findings if "stale" in f.message]


def test_concurrent_refresh_does_not_wait_for_readers_but_a_blocking_one_does(market, database_url: str) -> None:
    conn, m, schema = market
    _add_day(conn, m)
    with psycopg.connect(database_url, autocommit=False) as reader:
        reader.execute("SELECT set_config('search_path', %s, false)", (schema,))
        reader.execute(f"SELECT count(*) FROM {dw.FEATURE_VIEW}").fetchone()  # holds ACCESS SHARE until commit
        conn.execute("SET lock_timeout = '300ms'")
        try:
            blocking = fixes.refresh_feature_view(conn, concurrently=False)
            assert not blocking.ok and "busy" in blocking.message
            concurrent = fixes.refresh_feature_view(conn)
            assert concurrent.ok, concurrent.message
        finally:
            conn.execute("RESET lock_timeout")
        reader.rollback()


def test_without_a_unique_index_the_refresh_says_why(market) -> None:
    conn, m, _ = market
    conn.execute("DROP INDEX ml_training_features_date_ticker_key")
    _add_day(conn, m)
    result = fixes.refresh_feature_view(conn)
    assert not result.ok and result.concurrently
    assert "cannot be refreshed concurrently" in result.message and "unique index" in result.message
    assert "locks readers" in result.message
    assert check_data_quality(conn)[0].stale  # nothing changed
    blocking = fixes.refresh_feature_view(conn, concurrently=False)
    assert blocking.ok and not blocking.concurrently and "blocking readers" in blocking.message
    assert not check_data_quality(conn)[0].stale


def test_a_never_populated_view_needs_the_blocking_refresh(market) -> None:
    conn, _, _ = market
    conn.execute(f"REFRESH MATERIALIZED VIEW {dw.FEATURE_VIEW} WITH NO DATA")
    result = fixes.refresh_feature_view(conn)
    assert not result.ok and "never been populated" in result.message
    assert fixes.refresh_feature_view(conn, concurrently=False).ok
    assert fixes.refresh_feature_view(conn).ok


def test_a_missing_view_is_reported(database_url: str) -> None:
    with psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as conn:
        with dw.isolated_schema(conn, prefix="t_fix_empty_"):
            result = fixes.refresh_feature_view(conn)
    assert not result.ok and "is not a materialized view" in result.message


# --------------------------------------------------------------------------------------------- fix incidents


def _steps(conn, incident_id: int) -> list[tuple[str, str, str]]:
    return [(r["step"], r["actor"], r["outcome"]) for r in conn.execute(
        "SELECT step, actor, outcome FROM rollback_bot.steps WHERE incident_id = %s ORDER BY id", (incident_id,))]


def test_refresh_fix_is_requested_approved_by_another_person_and_run_once(services, world, conn) -> None:
    db, worker = services.db, services.worker
    fixes.register(worker)
    inc = fixes.request_fix(db, fix=fixes.REFRESH_VIEW, requested_by="U0ALICE", reason="view looks stale")
    assert inc.kind == "fix" and inc.state == "requested" and inc.plan["fix"] == fixes.REFRESH_VIEW
    with pytest.raises(Conflict, match=f"INC-{inc.id}"):
        fixes.request_fix(db, fix=fixes.REFRESH_VIEW, requested_by="U0CAROL")
    assert worker.run_due() == 0  # nothing runs before approval
    with pytest.raises(InvalidTransition):
        fixes.run_fix(db, incident_id=inc.id)
    with pytest.raises(NotAuthorized, match="own request"):
        fixes.approve_fix(db, incident_id=inc.id, approver="U0ALICE")
    with pytest.raises(NotAuthorized):
        fixes.approve_fix(db, incident_id=inc.id, approver="U0DAVE", allowed=False)
    approved = fixes.approve_fix(db, incident_id=inc.id, approver="U0BOB")
    assert approved.state == "approved" and approved.approved_by == "U0BOB"
    with pytest.raises(Conflict, match="already approved"):
        fixes.approve_fix(db, incident_id=inc.id, approver="U0CAROL")
    assert worker.run_due() == 1  # the queued fix job
    done = fixes.get_fix(db, inc.id)
    assert done.state == "resolved" and done.resolved_at is not None and done.error is None
    assert done.plan["result"]["ok"] is True
    again = fixes.run_fix(db, incident_id=inc.id)
    assert again.result is None and again.incident.state == "resolved"
    assert _steps(conn, inc.id) == [("requested", "U0ALICE", "ok"), ("approved", "U0BOB", "ok"),
                                    (fixes.REFRESH_VIEW, "rollback-bot", "ok")]
    audit = [(r["actor"], r["action"], r["outcome"]) for r in conn.execute(
        "SELECT actor, action, outcome FROM rollback_bot.audit_log WHERE incident_id = %s ORDER BY id", (inc.id,))]
    assert audit == [("U0ALICE", "fix_request", "ok"), ("U0ALICE", "fix_approve", "refused"),
                     ("U0DAVE", "fix_approve", "refused"), ("U0BOB", "fix_approve", "ok"),
                     ("U0CAROL", "fix_approve", "refused"), ("rollback-bot", "fix_run", "ok")]
    # closed: a new request may be made
    assert fixes.request_fix(db, fix=fixes.REFRESH_VIEW, requested_by="U0CAROL").state == "requested"


def test_only_one_of_two_simultaneous_approvals_wins(services, world) -> None:
    db = services.db
    inc = fixes.request_fix(db, fix=fixes.REFRESH_VIEW, requested_by="U0ALICE")
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def approve(who: str) -> None:
        barrier.wait()
        try:
            fixes.approve_fix(db, incident_id=inc.id, approver=who, enqueue_run=False)
            outcomes[who] = "ok"
        except Conflict:
            outcomes[who] = "conflict"

    threads = [threading.Thread(target=approve, args=(who,)) for who in ("U0BOB", "U0CAROL")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes.values()) == ["conflict", "ok"]
    winner = next(w for w, o in outcomes.items() if o == "ok")
    assert fixes.get_fix(db, inc.id).approved_by == winner


def test_deny_and_withdraw(services, world) -> None:
    db = services.db
    inc = fixes.request_fix(db, fix=fixes.REFRESH_VIEW, requested_by="U0ALICE")
    denied = fixes.deny_fix(db, incident_id=inc.id, user="U0BOB", note="not now")
    assert denied.state == "denied" and denied.decision_note == "not now"
    with pytest.raises(Conflict):
        fixes.approve_fix(db, incident_id=inc.id, approver="U0CAROL")
    with pytest.raises(InvalidTransition):
        fixes.run_fix(db, incident_id=inc.id)
    second = fixes.request_fix(db, fix=fixes.REFRESH_VIEW, requested_by="U0ALICE")
    assert fixes.deny_fix(db, incident_id=second.id, user="U0ALICE", allowed=False).state == "cancelled"
    third = fixes.request_fix(db, fix=fixes.REFRESH_VIEW, requested_by="U0ALICE")
    with pytest.raises(NotAuthorized):
        fixes.deny_fix(db, incident_id=third.id, user="U0DAVE", allowed=False)


def test_a_fix_that_cannot_run_fails_with_the_reason(database_url: str, market, services) -> None:
    conn, m, schema = market
    conn.execute("DROP INDEX ml_training_features_date_ticker_key")
    db = _schema_db(database_url, schema)
    try:
        inc = fixes.request_fix(db, fix=fixes.REFRESH_VIEW, requested_by="U0ALICE")
        fixes.approve_fix(db, incident_id=inc.id, approver="U0BOB")
        outcome = fixes.run_fix(db, incident_id=inc.id)
        assert not outcome.result.ok and outcome.incident.state == "failed"
        assert "unique index" in outcome.incident.error
        assert _steps(conn, inc.id)[-1] == (fixes.REFRESH_VIEW, "rollback-bot", "failed")
        # the blocking refresh is a fix of its own, approved on its own
        blocking = fixes.request_fix(db, fix=fixes.REFRESH_VIEW_BLOCKING, requested_by="U0ALICE")
        fixes.approve_fix(db, incident_id=blocking.id, approver="U0CAROL")
        assert fixes.run_fix(db, incident_id=blocking.id).incident.state == "resolved"
    finally:
        db.close()


def test_fix_functions_refuse_other_incidents(services, world) -> None:
    with pytest.raises(fixes.UnknownFix):
        fixes.request_fix(services.db, fix="drop_everything", requested_by="U0ALICE")
    halt = services.engine.halt_trading(user="U0ALICE", reason="test")
    with pytest.raises(fixes.UnknownFix):
        fixes.approve_fix(services.db, incident_id=halt.id, approver="U0BOB")


# --------------------------------------------------------------------------------------------- model restore


def _corrupt(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_no_restore_is_proposed_for_a_model_that_loads(services, world, conn) -> None:
    assert fixes.propose_model_restore(services.registry, conn, model=MODEL) is None


def test_restore_of_a_corrupt_model_goes_through_an_approved_rollback(services, world, conn) -> None:
    folder = world.models_dir / MODEL
    version = assert_consistent(conn, world.models_dir, MODEL)
    _corrupt(folder / "model.json")
    proposal = fixes.propose_model_restore(services.registry, conn, model=MODEL, engine=services.engine)
    assert proposal is not None and proposal.possible
    assert proposal.backup == version and proposal.same_version and proposal.production_version == version
    assert "does not load" in proposal.problem
    assert proposal.preflight is not None and "model.json loads with xgboost" in proposal.checks
    # the same answer without an engine: the same pre-flight, run on the caller's connection (without settings,
    # no trades source to check)
    local = fixes.propose_model_restore(ModelRegistry(world.models_dir), conn, model=MODEL)
    assert local.backup == version and local.preflight is not None
    assert local.checks == [c for c in proposal.checks if "trade" not in c]
    assert local.preflight.sha256 == proposal.preflight.sha256

    inc, report = fixes.request_restore(services.engine, proposal, "U0ALICE")
    assert inc.kind == "rollback" and inc.state == "requested" and inc.target_backup == version
    assert "does not load" in inc.reason and report.backup == version
    assert not trading_halted(conn)  # nothing happens before a second person approves
    with pytest.raises(Conflict):
        fixes.request_restore(services.engine, proposal, "U0CAROL")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    done = services.engine.execute(inc.id)
    assert done.state == "monitoring", done.error
    assert files_equal(folder, folder / version)
    load_booster(folder / "model.json")
    assert fixes.propose_model_restore(services.registry, conn, model=MODEL) is None


def test_restore_skips_backups_that_fail_preflight_and_emergency_backups(services, world, conn) -> None:
    folder = world.models_dir / MODEL
    info = world.models[MODEL]
    version = info.production_version
    _corrupt(folder / "model.json")
    _corrupt(folder / version / "model.json")  # the same version's backup is damaged too
    older = [b.name for b in info.backups if b.name != version]  # oldest first
    # an emergency backup with a newer training date must not be preferred over a regular backup
    emergency = folder / "backup_emergency_2030-01-01_00-00-00"
    shutil.copytree(folder / older[0], emergency)
    meta = json.loads((emergency / "metadata.json").read_text())
    meta["training_date"] = "2030-01-01"
    (emergency / "metadata.json").write_text(json.dumps(meta))
    proposal = fixes.propose_model_restore(services.registry, conn, model=MODEL, engine=services.engine)
    assert proposal.backup == older[-1] and not proposal.same_version
    assert list(proposal.rejected) == [version] and "does not load" in proposal.rejected[version]


def test_without_any_good_backup_the_restore_is_refused(services, world, conn) -> None:
    folder = world.models_dir / MODEL
    _corrupt(folder / "model.json")
    for b in world.models[MODEL].backups:  # (b.path is the session template's copy: never touch it)
        _corrupt(folder / b.name / "model.json")
    proposal = fixes.propose_model_restore(services.registry, conn, model=MODEL)
    assert proposal is not None and not proposal.possible
    assert set(proposal.rejected) == {b.name for b in world.models[MODEL].backups}
    with pytest.raises(PreflightFailed, match="No backup"):
        fixes.request_restore(services.engine, proposal, "U0ALICE")
