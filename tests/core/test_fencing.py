"""Timeouts and fencing (issue 13, item 8): every step's transaction has a lock_timeout and a statement_timeout,
and the executor re-checks its lock (a fencing token) right before each file operation."""

from __future__ import annotations

import threading

import psycopg
import pytest
from psycopg.rows import dict_row

from core.errors import DatabaseUnavailable
from core.fencing import Fence, LostLock
from core.modelio import sha256_file
from bot.compose import build_services
from tests.helpers import assert_consistent, trading_halted

MODEL = "growth_momentum_large"


def oldest(world) -> str:
    return world.models[MODEL].backups[0].name


def approved(engine, world):
    inc, _ = engine.request_rollback(model=MODEL, backup=oldest(world), reason="r", requested_by="U0ALICE")
    engine.approve(incident_id=inc.id, approver="U0BOB")
    return inc


def run_in_thread(fn):
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def test_a_step_waiting_on_a_lock_stops_at_its_lock_timeout(settings, db, world, database_url, conn):
    """Somebody holds a lock on client_settings: the halt step gives up after STEP_LOCK_TIMEOUT_SECONDS with a
    clear error instead of hanging, nothing of it is committed, and it runs again once the lock is gone."""
    services = build_services(settings.model_copy(update={"step_lock_timeout_seconds": 0.3}), db)
    inc = approved(services.engine, world)
    blocker = psycopg.connect(database_url)
    try:
        blocker.execute("LOCK TABLE client_settings IN SHARE MODE")  # held until rollback: UPDATEs must wait
        thread, out = run_in_thread(lambda: services.engine.execute(inc.id))
        thread.join(20)
        stuck = thread.is_alive()
    finally:
        blocker.rollback()
        blocker.close()
    thread.join(60)
    assert not stuck, "the halt step waited on the lock without a timeout"
    assert isinstance(out.get("error"), DatabaseUnavailable), out
    assert "lock timeout" in str(out["error"]) and "lock_timeout" in str(out["error"])
    assert services.engine.get(inc.id).state == "halting" and not trading_halted(conn)
    assert services.engine.execute(inc.id).state == "monitoring"


def test_a_step_statement_stops_at_its_statement_timeout(settings, db, world, conn):
    """A platform trigger makes the halt's UPDATE slow: the step stops at STEP_STATEMENT_TIMEOUT_SECONDS."""
    conn.execute("CREATE FUNCTION public.slow_settings() RETURNS trigger LANGUAGE plpgsql AS"
                 " $$ BEGIN PERFORM pg_sleep(5); RETURN NULL; END $$")
    conn.execute("CREATE TRIGGER slow_settings AFTER UPDATE ON client_settings FOR EACH STATEMENT"
                 " EXECUTE FUNCTION public.slow_settings()")
    try:
        services = build_services(settings.model_copy(update={"step_statement_timeout_seconds": 0.5}), db)
        inc = approved(services.engine, world)
        with pytest.raises(DatabaseUnavailable, match="statement timeout"):
            services.engine.execute(inc.id)
        assert services.engine.get(inc.id).state == "halting" and not trading_halted(conn)
    finally:
        conn.execute("DROP TRIGGER slow_settings ON client_settings")
        conn.execute("DROP FUNCTION public.slow_settings()")


def test_an_executor_that_lost_its_lock_touches_no_file(settings, db, world, conn):
    """The session holding the rollback's lock is cut right before the restore: the executor must not copy a
    file (another process may hold the lock now); recovery then finishes the rollback."""
    folder = world.models_dir / MODEL
    before = {f: sha256_file(folder / f) for f in ("model.json", "metadata.json")}

    def cut_the_lock_session(label: str) -> None:
        if label == "before:restoring":
            key = services.engine.lock_key(inc.id)
            n = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_locks WHERE locktype = 'advisory'"
                " AND ((classid::bigint << 32) | objid::bigint) = %s", (key,)).fetchone()["n"]
            assert n == 1

    services = build_services(settings, db, fault_hook=cut_the_lock_session)
    inc = approved(services.engine, world)
    with pytest.raises(DatabaseUnavailable) as stopped:
        services.engine.execute(inc.id)
    assert {f: sha256_file(folder / f) for f in before} == before, "a process without the lock changed the files"
    assert isinstance(stopped.value, LostLock) and "without touching any file" in str(stopped.value)
    assert services.engine.get(inc.id).state == "restoring" and trading_halted(conn)
    recovered = build_services(settings, db).engine.recover()
    assert [i.state for i in recovered] == ["monitoring"]
    assert assert_consistent(conn, world.models_dir, MODEL) == oldest(world)


def test_a_newer_fencing_token_fences_the_older_holder_off(database_url, services, world):
    inc = approved(services.engine, world)
    key = services.engine.lock_key(inc.id)
    with psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as a, \
            psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as b:
        assert a.execute("SELECT pg_try_advisory_lock(%s) AS ok", (key,)).fetchone()["ok"]
        first = Fence.take(a, key=key, incident_id=inc.id, owner="first")
        first.check("a copy")  # holds the lock, token current
        a.execute("SELECT pg_advisory_unlock(%s)", (key,))
        with pytest.raises(LostLock, match="lock was released"):
            first.check("a copy")
        assert b.execute("SELECT pg_try_advisory_lock(%s) AS ok", (key,)).fetchone()["ok"]
        second = Fence.take(b, key=key, incident_id=inc.id, owner="second")
        assert second.token == first.token + 1
        second.check("a copy")
        assert a.execute("SELECT pg_try_advisory_lock(%s) AS ok", (key,)).fetchone()["ok"] is False
        with pytest.raises(LostLock):
            first.check("a copy")
