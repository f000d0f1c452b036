"""The engine's invariants as a Hypothesis stateful test, over a real PostgreSQL and real model files, with
injected faults and a person acting at any moment (issue 3 item 8, issue 13 item 10).

Each example starts from a fresh copy of the world (database rows restored, model files copied) and runs a
short random program (tests/property_machine.py, tests/property_rules.py) of: rollbacks to random backups (good
ones, backups that fail pre-flight, a backup that changes after approval, a restored file damaged before
verification), crashes at random step boundaries (a ``BaseException`` raised from the fault hook, which no
``except Exception`` in the engine catches, like a killed process), restarts (``recover()``, which may crash
again), two models' rollbacks overlapping (the second may fail, and its undoing too), reverts that fail
(retried, then ``revert_failed``), files a person puts back by hand, two approvers overriding the resume check,
trades that keep coming after the halt (``halt_not_effective``, then *Proceed anyway* or *Abandon*), a trades
source that goes missing, manual halts and resumes (also in the middle of a rollback), clients added,
activated, deactivated or changed (halted or not, also mid-rollback), the worker's pass, and time passing.
After every step:

* exactly one production row per model;
* the files on disk are the production row's version, unless a swap of that model is under way, or its revert
  failed (and then ``/rollback resume`` is refused), or two approvers resumed on exactly these files;
* trading is halted whenever a rollback is between halt and verification, its halt is not effective or its
  revert failed, and each such rollback holds the halt;
* trading never runs on an unverified model (the file in place was the production model at the start, passed
  the engine's verification, or two approvers overrode);
* every active client is halted while a halt is held (from the next sweep point on); whenever trading runs,
  every client has its own settings, or those a person set, also during a halt (tests/property_clients.py);
* no swap begins unless the trades source was read after the halt (a missing source is never "0 trades") or an
  approver chose *Proceed anyway*.

It runs on two platforms: the demo world (text client ids, the tests' own role) and one built by somebody else
(tests/platforms.py: uuid client ids, the platform's own columns, checks and triggers, the bot connecting as a
role holding only the README's grants).

How many examples: the Hypothesis settings profile (tests/conftest.py): ``ci`` (the default, ``make test``) or
``stress`` (``make stress``: ``--hypothesis-profile=stress``). The count each world ran is printed at the end of
the run, and the test fails if it is below the profile's ``max_examples``; a counterexample is printed as the
steps that break an invariant, with a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import settings as hyp_settings
from hypothesis.stateful import run_state_machine_as_test
from psycopg.rows import dict_row

from core import engine as E
from core import incidents
from core.db import Database
from core.modelio import MODEL_FILE, sha256_file
from bot.compose import build_services
from core.services import Services
from core.settings import Settings
from tests.conftest import BOT_TABLES, MUTABLE_PLATFORM
from tests.property_clients import EVENTS
from tests.property_machine import Ctx, build_machine, damage_file
from tests.property_rules import money_rules

SUMMARY: list[str] = []  # one line per world run, printed by tests/conftest.py at the end of the session


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


def test_rollback_engine_invariants(property_world: PropertyWorld, tmp_path, request):
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
                             halt_quiet_seconds=0)  # no real quiet wait after each halt (tests/core/test_halt_watch.py)
    models = sorted(world.models)
    initial_sha = {m: sha256_file(world.models_dir / m / MODEL_FILE) for m in models}
    good_sha = {m: {sha256_file(p / MODEL_FILE) for p in (world.models_dir / m).glob("backup_*/")} | {initial_sha[m]}
                for m in models}
    counter = itertools.count()

    def fresh(n: int) -> tuple[Path, Services]:
        world.reset(check)
        folder = tmp_path / f"example{n}"
        shutil.rmtree(tmp_path / f"example{n - 1}", ignore_errors=True)
        shutil.copytree(world.models_dir, folder, symlinks=True)
        return folder, build_services(base_settings.model_copy(update={"models_dir": folder}), db)

    folder, services = fresh(next(counter))
    labels = collect_labels(services.engine, models[0], world.models[models[0]].backups[0].name, folder)
    ctx = Ctx(check=check, models=models, labels=labels, fresh=lambda: fresh(next(counter)),
              initial_sha=initial_sha, good_sha=good_sha)
    profile = hyp_settings.get_current_profile_name()
    EVENTS.clear()
    started = time.monotonic()
    try:
        run_state_machine_as_test(money_rules(ctx, build_machine(ctx)), settings=hyp_settings())
    finally:
        SUMMARY.append(f"property test [{request.node.callspec.id}]: {ctx.stats.examples} examples,"
                       f" {ctx.stats.steps} steps, {time.monotonic() - started:.0f} s (Hypothesis profile {profile!r},"
                       f" max_examples {hyp_settings().max_examples})")
        if profile != "ci":  # what the examples did, to show the interleavings really happen
            SUMMARY.extend(f"    {n:6d} × {what}" for what, n in sorted(EVENTS.items()))
        check.close()
        db.close()
    assert ctx.stats.examples >= hyp_settings().max_examples, SUMMARY[-1]
