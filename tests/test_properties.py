"""Issue 3, item 8: the engine's invariants as a Hypothesis stateful test, over a real PostgreSQL and real model
files, with injected faults.

Each example starts from a fresh copy of the world (database rows restored, model files copied) and runs a
short random program of: rollbacks to random backups (good ones, backups that fail pre-flight, a backup that
changes after approval, a restored file damaged before verification), crashes at random step boundaries (a
``BaseException`` raised from the fault hook, which no ``except Exception`` in the engine catches, like a
killed process), restarts (``recover()``, which may crash again), manual halts and resumes, two rollbacks of two
models interleaved, and time passing (monitoring ends). After every step:

* exactly one production row per model;
* unless a swap of that model is under way, the production row's version is the files on disk;
* trading is halted whenever a swap is under way, and each such rollback holds the halt;
* trading is never running on an unverified model (the file in place was the production model at the start
  or passed the engine's verification) nor while a rollback is between halt and verification;
* whenever trading runs, each client's settings equal those before the first halt.

It runs on two platforms: the demo world (text client ids, the tests' own role) and one built by somebody else
(tests/platforms.py: uuid client ids, the platform's own columns, checks and triggers, the bot connecting as a
role holding only the README's grants).
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings as hyp_settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from psycopg.rows import dict_row

from core import engine as E
from core import incidents
from core.db import Database
from core.errors import Conflict, InvalidTransition, PreflightFailed
from core.modelio import MODEL_FILE, sha256_file
from core.services import Services
from core.settings import Settings
from core.worker import Worker
from tests.conftest import BOT_TABLES, MUTABLE_PLATFORM
from tests.helpers import client_settings, files_equal, production_rows, trading_halted

EXAMPLES = 200  # the issue asks for at least 200 in CI; about 0.5 s each on 2 cores
STEPS = 8

# States between the halt and the end of verification: trading must be halted, the rollback must hold it.
HOLDING = frozenset({incidents.HALTED, incidents.BACKING_UP, incidents.RESTORING, incidents.RECORDING,
                     incidents.VERIFYING, incidents.VERIFIED, incidents.REVERTING})
# Damage to a rollback's target: None (a good backup), three kinds that pre-flight must refuse, a backup that is
# replaced after approval (the second pre-flight must refuse it), and the restored file damaged before verifying.
PREFLIGHT_DAMAGE = ("truncated_model", "bad_metadata", "renamed_feature")
DAMAGE = (None, None, None, *PREFLIGHT_DAMAGE, "changed_after_approval", "damaged_after_restore")


def reset_rows(conn: psycopg.Connection) -> None:
    """tests.conftest.reset_database with DELETE instead of TRUNCATE: the same rows, four times faster for
    tables this small (ids are not restarted; nothing here depends on them)."""
    with conn.transaction():
        for table in BOT_TABLES:
            conn.execute(f"DELETE FROM rollback_bot.{table}")
        for table in MUTABLE_PLATFORM[::-1]:
            conn.execute(f"DELETE FROM public.{table}")
        for table in MUTABLE_PLATFORM:
            conn.execute(f"INSERT INTO public.{table} SELECT * FROM test_snapshot.{table}")


@dataclass(frozen=True)
class PropertyWorld:
    engine_url: str                          # the bot's connections
    check_url: str                           # the test's own checks and resets
    reset: Callable[[psycopg.Connection], None]
    models_dir: Path
    models: dict[str, Any]                   # demo_world.ModelInfo by name


@pytest.fixture(params=["text", "uuid"])
def property_world(request) -> PropertyWorld:
    if request.param == "text":
        template, url = request.getfixturevalue("world_template"), request.getfixturevalue("database_url")
        return PropertyWorld(url, url, reset_rows, template.models_dir, template.models)
    pw = request.getfixturevalue("platforms").world(request.param)
    return PropertyWorld(pw.bot_url, pw.admin_url, pw.reset, pw.models_dir, pw.world.models)


class Crash(BaseException):
    """A simulated crash of the bot process at a fault label."""


def damage_file(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-50])


def collect_labels(engine: E.Engine, model: str, backup: str, models_dir: Path) -> list[str]:
    """Every label the engine passes to its fault hook in a rollback that fails verification and is undone,
    after a successful rollback's: together, every boundary of both paths."""
    labels: list[str] = []

    def hook(label: str) -> None:
        labels.append(label)
        if label == "after:restoring":
            damage_file(models_dir / model / MODEL_FILE)

    engine.fault = hook
    inc, _ = engine.request_rollback(model=model, backup=backup, reason="labels", requested_by="U0ALICE")
    engine.approve(incident_id=inc.id, approver="U0BOB")
    assert engine.execute(inc.id).state == incidents.FAILED
    engine.fault = E.no_fault
    assert "before:reverting" in labels and "before:resuming" not in labels
    normal = [f"{p}:{s}" for s in ("resuming",) for p in ("before", "after")]
    return sorted(set(labels) | set(normal))


def test_rollback_engine_invariants(property_world: PropertyWorld, tmp_path):
    # Crashes here are simulated in-process, never a power loss: commits need not wait for the WAL flush,
    # which makes each example several times faster. Visibility and locking are unchanged.
    def no_wal_wait(url: str) -> str:
        return f"{url}{'&' if '?' in url else '?'}options=-c%20synchronous_commit%3Doff"

    world = property_world
    database_url = no_wal_wait(world.engine_url)
    db = Database(database_url, max_size=6).open()
    check = psycopg.connect(no_wal_wait(world.check_url), row_factory=dict_row, autocommit=True)
    base_settings = Settings(_env_file=None, database_url=database_url, models_dir=world.models_dir,
                             incidents_dir=tmp_path / "incidents", monitor_minutes=30,
                             halt_quiet_seconds=0)  # no real quiet wait after each halt (tests/test_halt_watch.py)
    models = sorted(world.models)
    initial_sha = {m: sha256_file(world.models_dir / m / MODEL_FILE) for m in models}
    originals: dict = {}
    counter = itertools.count()

    def fresh(n: int) -> tuple[Path, Services]:
        world.reset(check)
        folder = tmp_path / f"example{n}"
        shutil.rmtree(tmp_path / f"example{n - 1}", ignore_errors=True)
        shutil.copytree(world.models_dir, folder, symlinks=True)
        return folder, Services(base_settings.model_copy(update={"models_dir": folder}), db)

    folder, services = fresh(next(counter))
    originals.update(client_settings(check))
    labels = collect_labels(services.engine, models[0], world.models[models[0]].backups[0].name, folder)

    class RollbackMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.models_dir, self.services = fresh(next(counter))
            self.engine = self.services.engine
            self.offset = timedelta(0)
            self.engine.clock = lambda: incidents.utcnow() + self.offset
            # The engine's own jobs only (execute, monitor_end): reports, charts and diagnostics are jobs of
            # other parts, tested on their own, and would take most of each example's time.
            self.worker = Worker(self.engine)
            self.bad: set[str] = set()
            self.n = 0

        # ---------------------------------------------------------------------------------- helpers

        def _target(self, model: str, pick: int, damage: str | None) -> str:
            folder = self.models_dir / model
            good = sorted(p.name for p in folder.iterdir()
                          if p.is_dir() and p.name.startswith("backup_") and p.name not in self.bad)
            name = good[pick % len(good)]
            if damage in PREFLIGHT_DAMAGE or damage == "changed_after_approval":
                self.n += 1
                copy = f"backup_zz_{damage}_{self.n}"
                shutil.copytree(folder / name, folder / copy)
                self.bad.add(copy)
                meta_path = folder / copy / "metadata.json"
                if damage == "truncated_model":
                    damage_file(folder / copy / MODEL_FILE)
                elif damage == "bad_metadata":
                    meta_path.write_text('{"training_date": "2026-01-01", "performance": {}')
                elif damage == "renamed_feature":
                    meta = json.loads(meta_path.read_text())
                    meta["features"][0] = "no_such_feature"
                    meta_path.write_text(json.dumps(meta))
                name = copy
            return name

        def _snapshot(self) -> tuple:
            files = {m: (sha256_file(self.models_dir / m / "model.json"),
                         sha256_file(self.models_dir / m / "metadata.json")) for m in models}
            rows = {m: [r["version"] for r in production_rows(check, m)] for m in models}
            return files, rows, trading_halted(check), client_settings(check)

        def _incidents(self, *states: str) -> list[dict]:
            return check.execute("SELECT * FROM rollback_bot.incidents WHERE kind = 'rollback' AND state = ANY(%s)",
                                 (list(states),)).fetchall()

        def _request(self, model: str, target: str, *, keep_halted: bool = False) -> incidents.Incident | None:
            """Request and approve; None when pre-flight or the one-open-rollback rule refuses (checked here)."""
            open_before = self.engine.open_incident_for(model)
            if open_before is not None and open_before.state == incidents.MONITORING:
                self.time_passes()  # the earlier rollback's monitoring window ends first
                open_before = self.engine.open_incident_for(model)
            before = self._snapshot()
            try:
                inc, _ = self.engine.request_rollback(model=model, backup=target, reason="property test",
                                                      requested_by="U0ALICE", keep_halted=keep_halted)
            except Conflict:
                assert open_before is not None, "Conflict without an open rollback"
                return None
            except PreflightFailed:
                assert target in self.bad, f"a good backup {target} failed pre-flight"
                assert self._snapshot() == before, "a refused pre-flight changed something"
                return None
            assert open_before is None, f"a second open rollback of {model}"
            assert target not in self.bad or "changed_after_approval" in target, f"{target} passed pre-flight"
            self.engine.approve(incident_id=inc.id, approver="U0BOB")
            return inc

        # ------------------------------------------------------------------------------------ rules

        @rule(model=st.sampled_from(models), pick=st.integers(0, 50), damage=st.sampled_from(DAMAGE),
              keep_halted=st.sampled_from([False, False, False, True]))
        def rollback(self, model, pick, damage, keep_halted):
            target = self._target(model, pick, damage)
            inc = self._request(model, target, keep_halted=keep_halted)
            if inc is None:
                return
            before = production_rows(check, model)[0]["version"]
            before_halted = trading_halted(check)
            self.engine.fault = E.no_fault
            if damage == "damaged_after_restore":
                def hook(label: str) -> None:
                    if label == "after:restoring":
                        damage_file(self.models_dir / model / MODEL_FILE)
                self.engine.fault = hook
            elif damage == "changed_after_approval":
                other = next(p for p in sorted((self.models_dir / model).iterdir())
                             if p.is_dir() and p.name.startswith("backup_") and p.name not in self.bad
                             and sha256_file(p / MODEL_FILE) != inc.target_sha256)
                shutil.copyfile(other / MODEL_FILE, self.models_dir / model / target / MODEL_FILE)
            try:
                done = self.engine.execute(inc.id)
            finally:
                self.engine.fault = E.no_fault
            version = production_rows(check, model)[0]["version"]
            if damage == "changed_after_approval":
                assert done.state == incidents.FAILED and "changed on disk" in done.error, (done.state, done.error)
                assert version == before and trading_halted(check) == before_halted, "nothing may change"
                shutil.rmtree(self.models_dir / model / target)
            elif damage == "damaged_after_restore":
                assert done.state == incidents.FAILED and "Verification failed" in done.error, (done.state,
                                                                                                 done.error)
                assert version == before and trading_halted(check), "original back, trading halted"
            else:
                expected = incidents.VERIFIED if keep_halted else incidents.MONITORING
                assert done.state == expected, (done.state, done.error)
                assert version == target

        @rule(model=st.sampled_from(models), pick=st.integers(0, 50), label=st.sampled_from(labels),
              damaged=st.booleans())
        def crash(self, model, pick, label, damaged):
            """A rollback whose process dies at ``label`` (left for a restart to finish or undo)."""
            inc = self._request(model, self._target(model, pick, None))
            if inc is None:
                return

            def hook(seen: str) -> None:
                if damaged and seen == "after:restoring":
                    damage_file(self.models_dir / model / MODEL_FILE)
                if seen == label:
                    raise Crash(label)

            self.engine.fault = hook
            try:
                self.engine.execute(inc.id)
            except Crash:
                pass  # the process "died"; the incident waits for a restart
            finally:
                self.engine.fault = E.no_fault

        @rule(label=st.none() | st.sampled_from(labels))
        def restart(self, label):
            """A restarted bot recovers interrupted rollbacks (and may itself die at ``label``)."""
            def hook(seen: str) -> None:
                if seen == label:
                    raise Crash(label)

            self.engine.fault = hook
            try:
                self.engine.recover()
            except Crash:
                return  # died again while recovering
            finally:
                self.engine.fault = E.no_fault
            left = self._incidents(*incidents.RUNNABLE)
            assert not left, f"recover() left {[(r['id'], r['state']) for r in left]}"

        @rule(first=st.sampled_from(models), label=st.sampled_from(labels), pick=st.integers(0, 50))
        def interleaved(self, first, label, pick):
            """Two models' rollbacks at once: the second runs whole while the first is at ``label``."""
            second = next(m for m in models if m != first)
            # Both models' earlier monitoring ends first: time passing between A's approval and its run would
            # (rightly) cancel A (APPROVED_START_TIMEOUT_MINUTES).
            if any((o := self.engine.open_incident_for(m)) is not None and o.state == incidents.MONITORING
                   for m in (first, second)):
                self.time_passes()
            a = self._request(first, self._target(first, pick, None))
            if a is None:
                return
            b = self._request(second, self._target(second, pick, None))
            seen = {}

            def hook(at: str) -> None:
                if at == label and b is not None:
                    self.engine.fault = E.no_fault
                    seen["b"] = self.engine.execute(b.id)
                    seen["a"] = self.engine.get(a.id).state
                    seen["halted"] = trading_halted(check)

            self.engine.fault = hook
            try:
                done = self.engine.execute(a.id)
            finally:
                self.engine.fault = E.no_fault
            assert done.state == incidents.MONITORING, (done.state, done.error)
            if b is not None:
                if "b" in seen:
                    # B let go of its halt; A, still between halt and resume, keeps trading halted.
                    if seen["a"] in HOLDING:
                        assert seen["halted"], f"B resumed trading while A was {seen['a']}"
                else:  # the label was not on this path (e.g. restored: when the file was already equal)
                    seen["b"] = self.engine.execute(b.id)
                assert seen["b"].state == incidents.MONITORING, (seen["b"].state, seen["b"].error)

        @rule()
        def manual_halt(self):
            self.engine.halt_trading(user="U0CAROL", reason="manual halt")
            assert trading_halted(check)

        @rule()
        def resume(self):
            busy = self._incidents(*(incidents.RUNNABLE - {incidents.RESUMING}))
            try:
                self.engine.resume_trading(user="U0BOB")
            except InvalidTransition:
                assert busy, "resume refused with no rollback under way"
                return
            assert not busy, f"resumed while {[(r['id'], r['state']) for r in busy]} were under way"
            assert not trading_halted(check)
            assert not self._incidents(incidents.VERIFIED)

        @rule()
        def time_passes(self):
            """The monitoring window ends (the worker's jobs run, with the clock moved on)."""
            self.offset += timedelta(minutes=31)
            self.worker.run_due()
            window = timedelta(minutes=self.services.settings.monitor_minutes)
            for r in self._incidents(incidents.MONITORING):  # only those that reached monitoring just now may remain
                assert r["resumed_at"] > self.engine.clock() - window, f"INC-{r['id']} still monitoring"

        # ------------------------------------------------------------------------------- invariants

        @invariant()
        def one_production_row_per_model(self):
            for m in models:
                rows = production_rows(check, m)
                assert len(rows) == 1, f"{m}: {len(rows)} production rows"

        @invariant()
        def production_row_is_the_file_on_disk(self):
            swapping = {r["model_name"] for r in self._incidents(*incidents.SWAP_STATES)}
            for m in models:
                if m in swapping:
                    continue
                version = production_rows(check, m)[0]["version"]
                assert files_equal(self.models_dir / m, self.models_dir / m / version), f"{m} is not {version}"

        @invariant()
        def trading_halted_while_a_swap_is_under_way(self):
            holding = self._incidents(*HOLDING)
            if holding:
                assert trading_halted(check), f"trading runs during {[(r['id'], r['state']) for r in holding]}"
                holders = {r["holder"] for r in check.execute(
                    "SELECT holder FROM rollback_bot.halt_holders h JOIN rollback_bot.trading_halts t"
                    " ON t.id = h.halt_id WHERE t.resumed_at IS NULL")}
                for r in holding:
                    assert f"incident:{r['id']}" in holders, f"INC-{r['id']} ({r['state']}) does not hold the halt"

        @invariant()
        def trading_never_runs_on_an_unverified_model(self):
            if trading_halted(check):
                return
            verified = {r["sha"] for r in check.execute(
                "SELECT s.detail->>'sha256' AS sha FROM rollback_bot.steps s WHERE s.step = 'verify'"
                " AND s.outcome = 'ok'")}
            for m in models:
                sha = sha256_file(self.models_dir / m / MODEL_FILE)
                assert sha == initial_sha[m] or sha in verified, f"trading runs on an unverified {m}"

        @invariant()
        def settings_after_resume_equal_those_before_halt(self):
            if not trading_halted(check):
                assert client_settings(check) == originals

    run_state_machine_as_test(
        RollbackMachine,
        settings=hyp_settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]),
    )
    check.close()
    db.close()
