"""Issue 13's counterexample of the property test (overlapping rollbacks), as deterministic tests.

`make stress` found, on the text world: a rollback of model V to backup T fails verification and its revert
fails on model.json every time (revert_failed: V's model.json is T's cut short, as the test's damage leaves
it); two approvers resume on those files anyway. Later a rollback B of V to the same T runs whole in the middle
of another model's rollback A, its restored file is damaged the same way, verification fails ("the model file
in place is not the approved backup (checksum differs)"), and its revert is set up to fail on model.json.
B ended ``failed``, not ``revert_failed`` as the property test expected.

Not an engine race: the model.json B's damage leaves is byte for byte the one in place before B, so the revert
had nothing to copy back (its failing copy was never reached) and rightly succeeded. The tests below show the
engine is safe there (the files before B are back, the deployment log is put back, trading stays halted and
``/rollback resume`` keeps refusing the damaged files; A finishes untouched), and that the property test's
expectation, fixed in tests/property_machine.py, holds for the counterexample's exact steps.
"""

from __future__ import annotations

import errno
import itertools
import shutil
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row
from tenacity import wait_none

from core import incidents
from core.db import Database
from core.errors import FilesMismatch
from core.integrity import file_sums
from core.modelio import MODEL_FILE, sha256_file
from core.revert import REVERT_ATTEMPTS
from bot.compose import build_services
from core.services import Services
from core.settings import Settings
from tests.helpers import assert_consistent, production_rows, trading_halted
from tests.property_clients import EVENTS
from tests.property_machine import Ctx, build_machine
from tests.property_rules import money_rules
from tests.core.test_properties import collect_labels, reset_rows

A_MODEL, B_MODEL = "growth_momentum_large", "value_small"


def cut_short(path: Path) -> None:
    """The property test's damage (tests/property_machine.damage_file)."""
    path.write_bytes(path.read_bytes()[:-50])


def good_targets(world) -> list[str]:
    info = world.models[B_MODEL]
    return [b.name for b in info.backups if b.defect is None]


def rollback(engine, model: str, backup: str, hook=None) -> incidents.Incident:
    inc, _ = engine.request_rollback(model=model, backup=backup, reason="overlap regression", requested_by="U0ALICE")
    engine.approve(incident_id=inc.id, approver="U0BOB")
    engine.fault = hook or (lambda _: None)
    try:
        return engine.execute(inc.id)
    finally:
        engine.fault = lambda _: None


def failing_revert_hook(folder: Path, calls: list[str]):
    """Damage the restored model.json; every attempt to copy model.json back fails."""
    def hook(label: str) -> None:
        if label == "after:restoring":
            cut_short(folder / MODEL_FILE)
        if label == "revert:model.json":
            calls.append(label)
            raise OSError(errno.EIO, "Input/output error (overlap regression)")
    return hook


@pytest.mark.parametrize("which", ["production", "other"])
def test_overlapping_rollback_whose_revert_has_nothing_to_copy_back_is_safe(services, world, conn, which):
    engine = services.engine
    engine.revert_wait = wait_none()
    folder = world.models_dir / B_MODEL
    production = world.models[B_MODEL].production_version
    # the counterexample's target was V's production version; any good backup builds the same case
    target = production if which == "production" else next(b for b in good_targets(world) if b != production)

    # 1. V to T: verification fails, the revert of model.json keeps failing -> revert_failed, mixed files.
    calls: list[str] = []
    first = rollback(engine, B_MODEL, target, failing_revert_hook(folder, calls))
    assert first.state == incidents.REVERT_FAILED, (first.state, first.error)
    assert calls == ["revert:model.json"] * REVERT_ATTEMPTS
    damaged = file_sums(folder)
    assert damaged[MODEL_FILE] != file_sums(folder / production)[MODEL_FILE]
    with pytest.raises(FilesMismatch):
        engine.resume_trading(user="U0BOB")

    # 2. Two approvers resume on those files anyway (the override).
    request, _ = engine.request_resume_override(user="U0ALICE")
    engine.approve_resume_override(incident_id=request.id, approver="U0BOB")
    assert not trading_halted(conn)
    assert not engine.get(first.id).is_open, engine.get(first.id).state

    # 3. A (another model) is approved; at its first step B (V to T again) runs whole: verification fails, and
    #    a revert of model.json would fail every time, but there is nothing to copy back.
    a_inc, _ = engine.request_rollback(model=A_MODEL, backup=world.models[A_MODEL].backups[0].name,
                                       reason="overlap regression (A)", requested_by="U0ALICE")
    engine.approve(incident_id=a_inc.id, approver="U0BOB")
    got: dict = {}
    b_calls: list[str] = []

    def a_hook(label: str) -> None:
        if label == "after:approved" and "b" not in got:
            got["before"] = file_sums(folder)
            got["b"] = rollback(engine, B_MODEL, target, failing_revert_hook(folder, b_calls))
            got["after"] = file_sums(folder)
            got["halted"] = trading_halted(conn)
            engine.fault = a_hook

    engine.fault = a_hook
    try:
        a_done = engine.execute(a_inc.id)
    finally:
        engine.fault = lambda _: None

    b_done = got["b"]
    assert b_done.state == incidents.FAILED, (b_done.state, b_done.error)
    assert "checksum differs" in b_done.error, b_done.error
    assert b_calls == [], "the model.json in place was already B's damaged bytes: nothing to copy back"
    revert = next(s for s in engine.steps(b_done.id) if s.step == "revert")
    assert revert.outcome == "ok" and MODEL_FILE not in revert.detail["restored_files"], revert.detail
    # the files back are the damaged ones from before B, not production's version: the message claims no version
    assert revert.detail["files"][MODEL_FILE] == f"the original (as before {b_done.ref}; production row {production})"
    # the files before B are back, byte for byte, and the deployment log names V's production version again
    assert got["before"] == damaged and got["after"] == damaged
    assert [r["version"] for r in production_rows(conn, B_MODEL)] == [production]
    assert got["halted"], "trading runs after B failed"

    # A, overlapped, finished as usual and is consistent; B's failure keeps trading halted after A's resume.
    assert a_done.state == incidents.MONITORING, (a_done.state, a_done.error)
    assert_consistent(conn, world.models_dir, A_MODEL)
    assert trading_halted(conn), "trading resumed on V's unverified, damaged model.json"
    # ... and `/rollback resume` keeps refusing V's files: only a new two-approver override may resume on them.
    with pytest.raises(FilesMismatch):
        engine.resume_trading(user="U0BOB")
    assert trading_halted(conn) and file_sums(folder) == damaged


# --------------------------------------------------------------------------------------------------------------
# The counterexample's exact steps through the property test's own state machine.

COUNTEREXAMPLE = [
    ("failed_revert", dict(file="model.json", model="growth_momentum_large", pick=49, times=1)),
    ("failed_revert", dict(file="model.json", model="value_small", pick=14, times=4)),
    ("failed_revert", dict(file="model.json", model="growth_momentum_large", pick=0, times=1)),
    ("override", {}),
    ("override", {}),
    ("override", {}),
    ("failed_revert", dict(file="model.json", model="growth_momentum_large", pick=1, times=1)),
    ("interleaved", dict(b_fails="revert", first="growth_momentum_large", label="after:approved", pick=46)),
]


def test_the_counterexample_steps_hold_every_invariant(world_template, database_url, tmp_path):
    """Fails with the old expectation (``('failed', 'Verification failed: … (checksum differs)')``)."""
    db = Database(database_url, max_size=6).open()
    check = psycopg.connect(database_url, row_factory=dict_row, autocommit=True)
    try:
        settings = Settings(_env_file=None, database_url=database_url, models_dir=world_template.models_dir,
                            incidents_dir=tmp_path / "incidents", monitor_minutes=30, halt_quiet_seconds=0)
        models = sorted(world_template.models)
        source = world_template.models_dir
        initial_sha = {m: sha256_file(source / m / MODEL_FILE) for m in models}
        good_sha = {m: {sha256_file(p / MODEL_FILE) for p in (source / m).glob("backup_*/")} | {initial_sha[m]}
                    for m in models}
        counter = itertools.count()

        def fresh() -> tuple[Path, Services]:
            reset_rows(check)
            folder = tmp_path / f"example{next(counter)}"
            shutil.copytree(source, folder, symlinks=True)
            return folder, build_services(settings.model_copy(update={"models_dir": folder}), db)

        folder, services = fresh()
        labels = collect_labels(services.engine, models[0], world_template.models[models[0]].backups[0].name,
                                folder)
        ctx = Ctx(check=check, models=models, labels=labels, fresh=fresh, initial_sha=initial_sha,
                  good_sha=good_sha)
        machine = money_rules(ctx, build_machine(ctx))()
        invariants = [name for name in dir(machine) if getattr(getattr(type(machine), name, None),
                                                              "hypothesis_stateful_invariant", None) is not None]
        assert len(invariants) >= 6, invariants
        EVENTS.clear()

        def check_invariants() -> None:
            for name in invariants:
                getattr(machine, name)()

        check_invariants()
        for rule_name, args in COUNTEREXAMPLE:
            getattr(machine, rule_name)(**args)
            check_invariants()
        machine.teardown()
        # the steps still build the case (the world's backups and the pick order unchanged)
        assert EVENTS["overlapping rollbacks: the second's revert had nothing to copy back"] == 1, dict(EVENTS)
    finally:
        check.close()
        db.close()
