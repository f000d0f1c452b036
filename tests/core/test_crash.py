"""Issue 3, item 6: crash safety. A real bot process is SIGKILLed at every step boundary of a rollback (and
half-way through every file copy); a restarted bot's ``engine.recover()`` must then leave files, database and
trading settings in agreement.

The boundaries are not listed by hand: they are collected from a normal, in-process rollback (the labels the
engine passes to its fault hook and the number of file copies), so a step added to the engine is covered
without touching this file. Each kill runs against a fresh copy of the world (database rows and model files).
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from core import engine as E
from core import incidents
from core.db import Database
from core.modelio import sha256_file
from bot.compose import build_services
from core.settings import Settings
from tests.conftest import reset_database
from tests.helpers import assert_consistent, client_settings, files_equal, production_rows, trading_halted

ROOT = Path(__file__).resolve().parents[2]
MODEL = "growth_momentum_large"
NORMAL_COPIES = 4  # two files into the emergency backup, two restored


# ------------------------------------------------------------------------------------------------ harness


@dataclass
class Run:
    """One fresh world: its database rows restored, its model files copied into ``models``."""

    url: str
    models: Path
    incidents: Path
    target: str
    original: str
    settings_before: dict
    world: object


def fresh_world(world_template, url: str, where: Path) -> Run:
    reset_database(url)
    if where.exists():
        shutil.rmtree(where)
    models = where / "models"
    shutil.copytree(world_template.models_dir, models, symlinks=True)
    world = dataclasses.replace(world_template, models_dir=models)
    with psycopg.connect(url, row_factory=dict_row, autocommit=True) as conn:
        original = assert_consistent(conn, models, MODEL)
        before = client_settings(conn)
    # The oldest backup: the one that keeps working after the regime change (any valid backup would do).
    target = world_template.models[MODEL].backups[0].name
    assert target != original
    return Run(url, models, where / "incidents", target, original, before, world)


def make_settings(run: Run) -> Settings:
    return Settings(_env_file=None, database_url=run.url, models_dir=run.models, incidents_dir=run.incidents,
                    monitor_minutes=30, halt_quiet_seconds=0)


def run_child(run: Run, kill_at: str, *, mode: str = "run", corrupt: bool = False, model: str = MODEL,
              backup: str | None = None) -> None:
    """Run tests/crash_child.py until it kills itself at ``kill_at``; wait until its sessions are gone."""
    app = f"crash_child_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in run.url else "?"
    argv = [sys.executable, "-m", "tests.crash_child", "--db", f"{run.url}{sep}application_name={app}",
            "--models", str(run.models), "--incidents", str(run.incidents), "--model", model,
            "--backup", backup or run.target, "--kill-at", kill_at, "--mode", mode]
    if corrupt:
        argv.append("--corrupt-after-restore")
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)  # reaps the child
    assert proc.returncode == -signal.SIGKILL, (
        f"the child was not killed at {kill_at!r} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )
    # PostgreSQL ends the dead process's sessions (and releases its advisory lock) once it sees the
    # sockets close; a restarted bot that came up sooner would simply find the rollback still locked.
    deadline = time.monotonic() + 20
    with psycopg.connect(run.url, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                           (app,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the killed child's database sessions did not go away"
            time.sleep(0.005)


def recover(run: Run) -> list[incidents.Incident]:
    """What a restarted bot does at start-up."""
    db = Database(make_settings(run).database_dsn(), max_size=4).open()
    try:
        return build_services(make_settings(run), db).engine.recover()
    finally:
        db.close()


def check_agreement(run: Run, *, expect: str) -> list[str]:
    """Files, database and trading settings agree after recovery; returns what is wrong (empty: all good)."""
    problems: list[str] = []
    with psycopg.connect(run.url, row_factory=dict_row, autocommit=True) as conn:
        incidents = conn.execute("SELECT * FROM rollback_bot.incidents WHERE kind = 'rollback'").fetchall()
        if len(incidents) != 1:
            return [f"expected one rollback incident, found {len(incidents)}"]
        inc = incidents[0]
        if inc["state"] != expect:
            problems.append(f"incident is {inc['state']} (error: {inc['error']}), expected {expect}")
        for name in run.world.models:
            rows = production_rows(conn, name)
            if len(rows) != 1:
                problems.append(f"{name} has {len(rows)} production rows")
                continue
            try:
                assert_consistent(conn, run.models, name)
            except AssertionError as exc:
                problems.append(f"{name}: {exc}")
        version = production_rows(conn, MODEL)[0]["version"] if production_rows(conn, MODEL) else None
        wanted = run.target if expect in ("monitoring", "resolved") else run.original
        if version != wanted:
            problems.append(f"production version is {version}, expected {wanted}")
        halted = trading_halted(conn)
        if halted != (inc["state"] == "failed"):
            problems.append(f"trading halted={halted} with the incident {inc['state']}")
        if not halted and client_settings(conn) != run.settings_before:
            problems.append("client settings differ from those before the halt")
        open_holders = conn.execute("SELECT count(*) AS n FROM rollback_bot.halt_holders").fetchone()["n"]
        if not halted and open_holders:
            problems.append(f"{open_holders} halt holder(s) left with trading resumed")
        emergency = inc["emergency_backup"]
    folder = run.models / MODEL
    leftovers = [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]
    if leftovers:
        problems.append(f"temporary files left behind: {leftovers}")
    for p in folder.iterdir():
        if p.is_dir() and not p.name.startswith("backup_"):
            problems.append(f"a folder under a non-backup name: {p.name}")
    if emergency and (folder / emergency).exists():
        if not files_equal(folder / emergency, folder / run.original):
            problems.append(f"the emergency backup {emergency} is not a complete copy of {run.original}")
    for name in ("model.json", "metadata.json"):  # no partly written file under a real name
        sums = {sha256_file(b / name) for b in folder.iterdir() if b.is_dir()}
        if sha256_file(folder / name) not in sums:
            problems.append(f"{name} in place is not a complete copy of any backup")
    return problems


def collect_boundaries(world_template, url: str, where: Path, *, corrupt: bool) -> tuple[list[str], int]:
    """The labels the engine passes to its fault hook in one whole rollback, and how many files it copies."""
    run = fresh_world(world_template, url, where)
    labels: list[str] = []
    copies = {"n": 0}
    original_copy = shutil.copyfileobj

    def counting_copy(fsrc, fdst, length=0):  # noqa: ANN001
        copies["n"] += 1
        return original_copy(fsrc, fdst, length) if length else original_copy(fsrc, fdst)

    def hook(label: str) -> None:
        if not label.startswith("publish:"):  # between a commit and its listeners: the files and rows are those of
            labels.append(label)               # the commit's own boundary; tests/core/test_outbox.py kills there
        if corrupt and label == "after:restoring":
            path = run.models / MODEL / "model.json"
            path.write_bytes(path.read_bytes()[:-50])

    shutil.copyfileobj = counting_copy  # counts, then copies for real (core.modelio copies with it)
    db = Database(make_settings(run).database_dsn(), max_size=4).open()
    try:
        engine = build_services(make_settings(run), db, fault_hook=hook).engine
        inc, _ = engine.request_rollback(model=MODEL, backup=run.target, reason="r", requested_by="U0ALICE")
        engine.approve(incident_id=inc.id, approver="U0BOB")
        done = engine.execute(inc.id)
    finally:
        db.close()
        shutil.copyfileobj = original_copy
    assert done.state == ("failed" if corrupt else "monitoring"), done.error
    assert check_agreement(run, expect=done.state) == []
    return labels, copies["n"]


def kill_everywhere(world_template, url: str, tmp_path: Path, *, corrupt: bool) -> None:
    labels, copies = collect_boundaries(world_template, url, tmp_path / "collect", corrupt=corrupt)
    assert len(labels) == len(set(labels)), f"a label repeats in one run: {labels}"
    first_copy = 1
    if corrupt:
        # Only the boundaries once the damage is done: before it, this is the successful rollback above.
        labels = labels[labels.index("after:restoring"):]
        first_copy = NORMAL_COPIES + 1
    points = labels + [f"copy:{n}" for n in range(first_copy, copies + 1)]
    expect = "failed" if corrupt else "monitoring"
    failures = {}
    for i, point in enumerate(points):
        run = fresh_world(world_template, url, tmp_path / f"kill{i}")
        run_child(run, point, corrupt=corrupt)
        recover(run)
        problems = check_agreement(run, expect=expect)
        if problems:
            failures[point] = problems
        shutil.rmtree(tmp_path / f"kill{i}")
    assert not failures, "\n".join(f"killed at {k}: {v}" for k, v in failures.items())


# ------------------------------------------------------------------------------------------------- tests


def test_boundaries_cover_every_step(world_template, database_url, tmp_path):
    """The collected labels really are every step boundary, and file copies are counted (no silent gaps)."""
    labels, copies = collect_boundaries(world_template, database_url, tmp_path / "c", corrupt=False)
    for state in ("approved", "halting", "halted", "backing_up", "restoring", "recording", "verifying", "resuming"):
        assert f"before:{state}" in labels and f"after:{state}" in labels, state
    assert {"restored:metadata.json", "restored:model.json"} <= set(labels)
    assert copies == NORMAL_COPIES


def test_kill_at_every_boundary_of_a_rollback_then_recover(world_template, database_url, tmp_path):
    """A single crash anywhere: the restarted bot finishes the rollback (trading resumed, settings exact)."""
    kill_everywhere(world_template, database_url, tmp_path, corrupt=False)


def test_kill_at_every_boundary_of_a_failing_rollback_then_recover(world_template, database_url, tmp_path):
    """Verification fails (the restored file is damaged): wherever the crash, the original model is back,
    the deployment log names it, trading stays halted and the incident is failed."""
    kill_everywhere(world_template, database_url, tmp_path, corrupt=True)


@pytest.mark.parametrize(("first", "again", "step"), [
    ("copy:1", "copy:1", "emergency_backup"),      # both times half-way through the emergency backup
    ("restored:metadata.json", "copy:1", "restore"),  # then half-way through model.json
    ("copy:3", "copy:1", "restore"),               # twice half-way through metadata.json
])
def test_killed_twice_in_the_same_step_is_still_finished(world_template, database_url, tmp_path, first, again, step):
    run = fresh_world(world_template, database_url, tmp_path / "w")
    run_child(run, first)
    run_child(run, again, mode="recover")  # the restarted bot dies again in the same step
    recover(run)
    assert check_agreement(run, expect="monitoring") == []
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        outcomes = [r["outcome"] for r in conn.execute(
            "SELECT outcome FROM rollback_bot.steps WHERE step = %s ORDER BY id", (step,))]
    assert outcomes == ["running", "running", "ok"], outcomes


@pytest.mark.parametrize(("first", "step"), [("copy:1", "emergency_backup"), ("copy:3", "restore")])
def test_a_step_killed_every_time_gives_up_and_puts_the_original_back(world_template, database_url, tmp_path,
                                                                      first, step):
    """MAX_STEP_ATTEMPTS: a step that kills the bot each time it runs is not retried for ever; the rollback is
    undone (original files and deployment row back), trading stays halted, the incident is failed."""
    run = fresh_world(world_template, database_url, tmp_path / "w")
    run_child(run, first)
    for _ in range(E.MAX_STEP_ATTEMPTS - 1):
        run_child(run, "copy:1", mode="recover")  # the first copy after a restart is the same file again
    [done] = recover(run)
    assert done.state == "failed" and f"step '{step}' was interrupted" in (done.error or ""), (done.state, done.error)
    assert check_agreement(run, expect="failed") == []


def test_one_stuck_rollback_does_not_keep_another_from_recovering(world_template, database_url, tmp_path):
    """Two bots died mid-rollback on two models. The first cannot resume (its model file was changed after
    verification, so trading must stay halted); the second must still be finished by the restart."""
    run = fresh_world(world_template, database_url, tmp_path / "w")
    other = next(m for m in world_template.models if m != MODEL)
    other_target = world_template.models[other].backups[0].name
    run_child(run, "after:verifying")  # MODEL: verified, about to resume
    shutil.copyfile(run.models / MODEL / run.original / "model.json", run.models / MODEL / "model.json")
    run_child(run, "restored:metadata.json", model=other, backup=other_target)  # other: half restored
    recovered = {inc.model_name: inc for inc in recover(run)}
    assert recovered[other].state == "monitoring", recovered[other].error
    assert recovered[MODEL].state == "resuming"
    with psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as conn:
        assert trading_halted(conn), "trading never resumes on a model that is not the verified one"
        assert production_rows(conn, other)[0]["version"] == other_target
        assert_consistent(conn, run.models, other)
