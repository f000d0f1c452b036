"""Issue 8, item 2: faults. Each must leave a consistent, resumable state and a clear message.

* PostgreSQL restarted (or down for a while) in the middle of a rollback: on a private cluster of this
  module's own (restarting the shared one would cut other sessions' connections).
* The Slack API answering 429 with Retry-After and 5xx: slack_sdk's retry handlers (configured in
  ``bot.app.build_client``) absorb them; the rollback completes and every message arrives. When Slack keeps
  failing, the rollback still completes and the failure is logged.
* SMTP down: the rollback completes; each e-mail's failure is journaled and reported.
* No space (a tiny tmpfs) or no permission (the engine as ``nobody``) for the emergency backup: the rollback
  stops before the production files change; trading stays halted; the error says why.
* A corrupt production model.json: a rollback away from it works; the emergency backup keeps the bad file as is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row
from tenacity import wait_none

from bot.devtools import demo_world, localpg
from core import incidents
from core.db import Database
from core.errors import DatabaseUnavailable
from core.modelio import sha256_file
from bot.compose import build_services
from core.services import Services
from core.settings import Settings
from tests.conftest import build_snapshot_world, reset_database
from tests.helpers import assert_consistent, client_settings, files_equal, production_rows, trading_halted

ROOT = Path(__file__).resolve().parents[2]
MODEL = "growth_momentum_large"
CHANNEL = "C0INCIDENT"


# ------------------------------------------------------------------------------------------ shared checks


def target_of(world) -> str:
    """The oldest backup: valid, different from production."""
    return world.models[MODEL].backups[0].name


def rollback(engine, world, reason: str = "fault test") -> incidents.Incident:
    inc, _ = engine.request_rollback(model=MODEL, backup=target_of(world), reason=reason, requested_by="U0ALICE")
    return engine.approve(incident_id=inc.id, approver="U0BOB")


def check_completed(conn, models_dir: Path, world, before: dict) -> None:
    """The rollback is done: target in place and in the log, trading resumed with the exact settings."""
    assert assert_consistent(conn, models_dir, MODEL) == target_of(world)
    assert not trading_halted(conn)
    assert client_settings(conn) == before
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.halt_holders").fetchone()["n"] == 0
    for name in world.models:
        assert len(production_rows(conn, name)) == 1, name
    leftovers = [p.name for p in (models_dir / MODEL).rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def check_untouched_and_halted(conn, models_dir: Path, world, original_sums: dict[str, str]) -> None:
    """Failed before any production change: the original files and row, trading halted, nothing half-made."""
    folder = models_dir / MODEL
    assert {f: sha256_file(folder / f) for f in original_sums} == original_sums
    assert assert_consistent(conn, models_dir, MODEL) == world.models[MODEL].production_version
    assert trading_halted(conn)
    assert [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.startswith("backup_emergency")] == []


def file_sums(folder: Path) -> dict[str, str]:
    return {f: sha256_file(folder / f) for f in ("model.json", "metadata.json")}


# ============================================================================ PostgreSQL restarted mid-way


@dataclass
class PrivatePG:
    cluster: localpg.LocalCluster
    url: str
    world: demo_world.World


@pytest.fixture(scope="module")
def private_pg(tmp_path_factory) -> Iterator[PrivatePG]:
    """A PostgreSQL cluster of this module's own, so restarting it cuts nobody else's connections."""
    root = tmp_path_factory.mktemp("faults-pg")
    cluster = localpg.ensure(databases=("rollback_bot",), root=root)
    try:
        url = cluster.url("rollback_bot")
        world = build_snapshot_world(url, tmp_path_factory.mktemp("faults-models"))
        yield PrivatePG(cluster, url, world)
    finally:
        cluster.destroy()


@dataclass
class PrivateRun:
    pg: PrivatePG
    settings: Settings
    world: demo_world.World
    before: dict

    def services(self, *, fault_hook=None, timeout: float = 3.0) -> tuple[Services, Database]:
        db = Database(self.settings.database_dsn(), max_size=4, timeout=timeout).open()
        return build_services(self.settings, db, fault_hook=fault_hook), db

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.pg.url, row_factory=dict_row, autocommit=True)


@pytest.fixture
def private_run(private_pg, tmp_path) -> Iterator[PrivateRun]:
    if not private_pg.cluster.is_running():  # a failed test may have left it stopped
        private_pg.cluster.start()
    reset_database(private_pg.url)
    models = tmp_path / "models"
    shutil.copytree(private_pg.world.models_dir, models, symlinks=True)
    world = dataclasses.replace(private_pg.world, models_dir=models)
    settings = Settings(_env_file=None, database_url=private_pg.url, models_dir=models,
                        incidents_dir=tmp_path / "incidents", monitor_minutes=30, halt_quiet_seconds=0)
    with psycopg.connect(private_pg.url, row_factory=dict_row, autocommit=True) as conn:
        before = client_settings(conn)
    yield PrivateRun(private_pg, settings, world, before)
    if not private_pg.cluster.is_running():
        private_pg.cluster.start()


def test_postgres_restarted_between_steps_the_rollback_still_completes(private_run):
    run = private_run
    restarts = []

    def hook(label: str) -> None:
        if label == "after:restoring" and not restarts:
            restarts.append(label)
            run.pg.cluster.restart()

    services, db = run.services(fault_hook=hook)
    try:
        inc = rollback(services.engine, run.world)
        try:
            done = services.engine.execute(inc.id)
        except DatabaseUnavailable as exc:  # acceptable: a clear error, and the state is resumable
            assert "PostgreSQL does not answer" in str(exc)
            done = None
    finally:
        db.close()
    assert restarts == ["after:restoring"]
    restarted, db2 = run.services()  # what a restarted bot (or the worker's periodic recovery) does
    try:
        restarted.engine.recover()
        final = restarted.engine.get(inc.id)
    finally:
        db2.close()
    assert final.state == "monitoring", (final.state, final.error, done)
    with run.connect() as conn:
        check_completed(conn, run.world.models_dir, run.world, run.before)


def test_postgres_down_during_a_step_leaves_a_resumable_state_and_the_worker_finishes_it(private_run):
    """The database stops half-way through the restore (files partly replaced); the job fails with a clear
    error and stays queued; once PostgreSQL is back and the job's lease has run out, the worker finishes."""
    run = private_run
    stopped = []

    def hook(label: str) -> None:
        if label == "restored:metadata.json" and not stopped:
            stopped.append(label)
            run.pg.cluster.stop("fast")

    services, db = run.services(fault_hook=hook, timeout=2.0)
    try:
        inc = rollback(services.engine, run.world)
        with pytest.raises(DatabaseUnavailable, match="PostgreSQL does not answer"):
            services.worker.run_due()
    finally:
        db.close()
    assert stopped
    run.pg.cluster.start()
    with run.connect() as conn:
        row = conn.execute("SELECT state, error FROM rollback_bot.incidents WHERE id = %s", (inc.id,)).fetchone()
        assert row["state"] == "restoring" and trading_halted(conn)  # nothing lost, nothing pretended
        restore = conn.execute("SELECT outcome FROM rollback_bot.steps WHERE incident_id = %s AND step = 'restore'",
                               (inc.id,)).fetchall()
        assert [r["outcome"] for r in restore] == ["running"]
        job = conn.execute("SELECT * FROM rollback_bot.jobs WHERE kind = 'execute'").fetchone()
        assert job["done_at"] is None and job["locked_until"] is not None, job
    # a restarted bot: its worker claims the job once the dead process's lease has run out
    restarted, db2 = run.services()
    try:
        restarted.worker.run_due()
        assert restarted.engine.get(inc.id).state == "restoring"  # still leased to the process that died
        restarted.engine.clock = lambda: incidents.utcnow() + timedelta(seconds=restarted.worker.lease.total_seconds() + 60)
        assert restarted.worker.run_due() >= 1
        final = restarted.engine.get(inc.id)
    finally:
        db2.close()
    assert final.state == "monitoring", (final.state, final.error)
    with run.connect() as conn:
        check_completed(conn, run.world.models_dir, run.world, run.before)
        outcomes = [r["outcome"] for r in conn.execute(
            "SELECT outcome FROM rollback_bot.steps WHERE incident_id = %s AND step = 'restore' ORDER BY id",
            (inc.id,))]
        assert outcomes == ["running", "ok"]


def test_postgres_restart_drops_the_executor_lock_and_a_second_process_takes_over_safely(private_run):
    """A restart ends the session holding the rollback's advisory lock. Another bot process may then recover
    the same rollback while the first is still running: every step still happens once."""
    run = private_run
    other_results = []

    def hook(label: str) -> None:
        if label == "after:restoring" and not other_results:
            run.pg.cluster.restart()
            other, db2 = run.services()
            try:
                other_results.extend(other.engine.recover())
            finally:
                db2.close()

    services, db = run.services(fault_hook=hook)
    try:
        inc = rollback(services.engine, run.world)
        with contextlib.suppress(DatabaseUnavailable):
            services.engine.execute(inc.id)
        final = services.engine.get(inc.id)
    finally:
        db.close()
    assert [i.state for i in other_results] == ["monitoring"]
    assert final.state == "monitoring"
    with run.connect() as conn:
        check_completed(conn, run.world.models_dir, run.world, run.before)
        ours = conn.execute("SELECT count(*) AS n FROM model_deployment_log WHERE model_name = %s AND is_rollback",
                            (MODEL,)).fetchone()["n"]
        assert ours == 1
        ok_steps = [r["step"] for r in conn.execute(
            "SELECT step FROM rollback_bot.steps WHERE incident_id = %s AND outcome = 'ok' ORDER BY id", (inc.id,))]
        for step in ("halt", "emergency_backup", "restore", "record", "verify", "resume"):
            assert ok_steps.count(step) == 1, (step, ok_steps)


# =================================================================================== Slack 429 and 5xx


def request_card(sandbox, world):
    reply = sandbox.command("U0ALICE", f"start {MODEL} {target_of(world)} Sharpe collapsed --confirm")
    assert reply.status == 200
    body = sandbox.responses(reply.response_key, timeout=20)[0]
    assert "posted in" in body["text"], body
    return next(m for m in sandbox.standin.messages(CHANNEL) if not m.is_reply)


THREAD_NEEDLES = ("Automated trading halted", "Emergency backup", "restored atomically", "model_deployment_log",
                  "Verified", "Trading resumed")


def test_slack_429_and_5xx_are_retried_and_every_message_arrives(sandbox, world, conn):
    standin = sandbox.standin
    before = client_settings(conn)
    standin.fail_next("chat.postMessage", status=503)  # the request card itself
    card = request_card(sandbox, world)
    assert [c.status for c in standin.calls("chat.postMessage")][:2] == [503, 200]

    def hook(label: str) -> None:  # one failure per call: each is absorbed by slack_sdk's retry handlers
        if label == "before:halting":
            standin.fail_next("chat.postMessage", status=429, retry_after=0)
        elif label == "before:restoring":
            standin.fail_next("chat.update", status=502)
        elif label == "before:verifying":
            standin.fail_next("chat.postMessage", status=500)
        elif label == "before:resuming":
            standin.fail_next("chat.postMessage", status=429, retry_after=1)

    sandbox.services.engine.fault = hook
    sandbox.sender.block_action(user_id="U0BOB", action_id="rollback_approve", channel_id=CHANNEL,
                                message_ts=card.ts, message=card.as_slack())
    standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
    sandbox.run_worker()
    sandbox.settle(30)
    assert sandbox.services.engine.list_incidents()[0].state == "monitoring"
    failed = [(c.method, c.status) for c in standin.calls() if c.status != 200]
    assert sorted(failed) == sorted([("chat.postMessage", 503), ("chat.postMessage", 429), ("chat.update", 502),
                                     ("chat.postMessage", 500), ("chat.postMessage", 429)]), failed
    replies = [m.text for m in standin.thread(CHANNEL, card.ts)]
    for needle in THREAD_NEEDLES:
        assert sum(needle in t for t in replies) == 1, (needle, replies)  # arrived, and exactly once
    final = json.dumps(standin.message(CHANNEL, card.ts).blocks)
    assert "Trading resumed" in final and "rollback_approve" not in final
    check_completed(conn, world.models_dir, world, before)


def test_slack_failing_for_good_does_not_stop_the_rollback_and_is_logged(sandbox, world, conn, caplog):
    caplog.set_level(logging.WARNING)
    standin = sandbox.standin
    before = client_settings(conn)
    card = request_card(sandbox, world)
    sandbox.sender.block_action(user_id="U0BOB", action_id="rollback_approve", channel_id=CHANNEL,
                                message_ts=card.ts, message=card.as_slack())
    standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
    sandbox.settle()
    # From now on Slack refuses everything (answered at once, so the test does not wait for back-offs).
    for method in ("chat.postMessage", "chat.update", "views.publish"):
        standin.fail_next(method, error="service_unavailable", times=10_000)
    sandbox.run_worker()
    sandbox.settle(30)
    assert sandbox.services.engine.list_incidents()[0].state == "monitoring"
    check_completed(conn, world.models_dir, world, before)
    failures = [r for r in caplog.records if r.name == "rollback_bot.progress" and r.levelno >= logging.WARNING]
    assert failures, [r.getMessage() for r in caplog.records]
    assert all("Slack" in r.getMessage() for r in failures)
    assert any("service_unavailable" in (r.exc_text or "") for r in failures)


# ============================================================================================= SMTP down


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed at once: connections are refused


def test_smtp_down_the_rollback_completes_and_each_failed_email_is_journaled(services, world, conn):
    from core.notify import EmailNotifier, Mailer
    from core.outbox import email_job

    before = client_settings(conn)
    port = dead_port()
    notifier = EmailNotifier(f"smtp://bot:smtp-Pa55@127.0.0.1:{port}", "rollback-bot@example.com",
                             ["risk@example.com"], attempts=2, wait=wait_none(), timeout=2)
    failures: list[tuple[str, str]] = []
    Mailer(services.engine, notifier).register(services.worker,
                                               on_failed=lambda inc, milestone, exc: failures.append((milestone, str(exc))))
    services.engine.follow_ups.append(email_job)  # as core.outbox.install does with SMTP_URL set
    inc = rollback(services.engine, world)
    while services.worker.run_due():
        pass
    assert services.engine.get(inc.id).state == "monitoring"
    check_completed(conn, world.models_dir, world, before)
    rows = conn.execute("SELECT outcome, detail, error FROM rollback_bot.steps WHERE step = 'notify' ORDER BY id").fetchall()
    milestones = [r["detail"]["milestone"] for r in rows]
    assert {"opened", "halted", "rolled_back", "resumed"} <= set(milestones)
    assert all(r["outcome"] == "failed" for r in rows)
    for r in rows:
        assert f"127.0.0.1:{port}" in r["error"] and "after 2 attempt(s)" in r["error"], r["error"]
        assert "smtp-Pa55" not in r["error"]
    assert sorted(m for m, _ in failures) == sorted(milestones)
    # each e-mail job is done (not retried for ever by the worker)
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.jobs WHERE kind = 'notify_email' AND done_at IS NULL"
                        ).fetchone()["n"] == 0


# ================================================================= no space / no permission for the backup


@contextlib.contextmanager
def tiny_tmpfs_over(folder: Path, free_bytes: int = 8192) -> Iterator[bool]:
    """Put ``folder`` (with its contents) on a tmpfs with only ``free_bytes`` left; yields False when this
    process may not mount (not root, or no CAP_SYS_ADMIN in a container)."""
    saved = folder.with_name(folder.name + ".saved")
    folder.rename(saved)
    folder.mkdir()
    total = sum(p.stat().st_size for p in saved.rglob("*") if p.is_file())
    size_kb = (total + 1024 * 1024) // 1024  # room for the copy, the filler takes it back below
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0 if shutil.which("mount") else False
    try:
        shutil.copytree(saved, folder, dirs_exist_ok=True)
        if mounted:
            st = os.statvfs(folder)
            fill = st.f_bavail * st.f_frsize - free_bytes
            with open(folder / "filler.bin", "wb") as fh:
                fh.truncate(0)
                fh.write(b"\0" * max(fill, 0))
                fh.flush()
                os.fsync(fh.fileno())
        yield mounted
    finally:
        if mounted:
            for _ in range(20):
                if subprocess.run(["umount", str(folder)], capture_output=True).returncode == 0:
                    break
            else:
                subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
        saved.rename(folder)


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3
PR_CAPBSET_DROP = 24


def _drop_root_file_powers() -> None:
    """In a child before exec: root keeps its uid but loses the capabilities that ignore file permissions
    (as a bot running as an ordinary user would never have them)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_engine_child(url: str, models: Path, incidents: Path, backup: str, *, drop_file_powers: bool = False,
                     fsize_limit: int | None = None, read_only_at: str | None = None) -> subprocess.CompletedProcess:
    """A bot process (tests/crash_child.py, never killed) running one whole rollback."""
    def before_exec() -> None:
        if drop_file_powers:
            _drop_root_file_powers()
        if fsize_limit is not None:
            import resource

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of a signal
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": "/tmp",
           "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [sys.executable, "-m", "tests.crash_child", "--db", url, "--models", str(models), "--incidents",
            str(incidents), "--model", MODEL, "--backup", backup, "--kill-at", "never"]
    if read_only_at is not None:
        argv += ["--read-only-at", read_only_at]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=before_exec)


def test_no_space_for_the_emergency_backup_stops_before_any_production_change(sandbox, world, conn, database_url,
                                                                              tmp_path):
    folder = world.models_dir / MODEL
    original = file_sums(folder)
    with tiny_tmpfs_over(folder) as mounted:
        if mounted:
            card = request_card(sandbox, world)
            sandbox.sender.block_action(user_id="U0BOB", action_id="rollback_approve", channel_id=CHANNEL,
                                        message_ts=card.ts, message=card.as_slack())
            sandbox.standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
            sandbox.run_worker()
            inc = sandbox.services.engine.list_incidents()[0]
            expected = "No space left on device"
            replies = " ".join(m.text for m in sandbox.standin.thread(CHANNEL, card.ts))
            assert "Rollback failed" in replies and expected in replies, replies
        else:  # no mount privilege: the same shortage as a file-size limit on a bot process (EFBIG)
            r = run_engine_child(database_url, world.models_dir, tmp_path / "incidents", target_of(world),
                                 fsize_limit=20_000)
            assert r.returncode == 0, r.stderr[-2000:]
            inc = incidents.Incident(**conn.execute("SELECT * FROM rollback_bot.incidents").fetchone())
            expected = "File too large"
        assert inc.state == "failed", (inc.state, inc.error)
        assert expected in (inc.error or ""), inc.error
        (folder / "filler.bin").unlink(missing_ok=True)
        check_untouched_and_halted(conn, world.models_dir, world, original)
        steps = {s.step: s for s in sandbox.services.engine.steps(inc.id)}
        assert "restore" not in steps  # never got as far as touching production
        assert steps["revert"].outcome == "ok"


def test_no_permission_for_the_emergency_backup_stops_before_any_production_change(world, conn, database_url,
                                                                                      tmp_path):
    """The bot may read the model folder but not write in it (EACCES) from just after the approval: pre-flight
    passed (a folder read-only from the start is refused there, see test_doctor). Run as root, the child bot drops
    the capabilities that let root ignore file permissions, so the folder's mode applies to it too."""
    folder = world.models_dir / MODEL
    original = file_sums(folder)
    try:
        r = run_engine_child(database_url, world.models_dir, tmp_path / "incidents", target_of(world),
                             drop_file_powers=os.geteuid() == 0, read_only_at="after:approved")
    finally:
        os.chmod(folder, 0o755)
    assert r.returncode == 0, r.stderr[-3000:]
    inc = conn.execute("SELECT * FROM rollback_bot.incidents").fetchone()
    assert inc["state"] == "failed", (inc["state"], inc["error"])
    assert "Permission denied" in inc["error"], inc["error"]
    check_untouched_and_halted(conn, world.models_dir, world, original)
    steps = [r["step"] for r in conn.execute("SELECT step FROM rollback_bot.steps WHERE incident_id = %s",
                                             (inc["id"],))]
    assert "restore" not in steps and "revert" in steps


# ================================================================================ corrupt production model


CORRUPTIONS = {
    "garbage": lambda p: p.write_bytes(b"\x00\xffnot a model at all\x89PNG"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "wrong_json": lambda p: p.write_text(json.dumps({"learner": {"gradient_booster": None}})),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_rollback_away_from_a_corrupt_production_model_works(services, world, conn, kind):
    folder = world.models_dir / MODEL
    CORRUPTIONS[kind](folder / "model.json")
    corrupt = sha256_file(folder / "model.json")
    before = client_settings(conn)
    # the queries people run first still answer
    status = services.status()
    assert any(m.name == MODEL for m in status.models)
    assert services.backups(model=MODEL).recommendation.backup is not None
    inc = rollback(services.engine, world)
    done = services.engine.execute(inc.id)
    assert done.state == "monitoring", (done.state, done.error)
    check_completed(conn, world.models_dir, world, before)
    emergency = folder / done.emergency_backup
    assert sha256_file(emergency / "model.json") == corrupt  # kept as it was, for the post-mortem
    assert files_equal(emergency, world.models_dir / MODEL / world.models[MODEL].production_version) is False


def test_rollback_away_from_corrupt_production_metadata_works(services, world, conn):
    folder = world.models_dir / MODEL
    (folder / "metadata.json").write_text("{ this is not json")
    before = client_settings(conn)
    status = services.status()
    problems = next(m for m in status.models if m.name == MODEL).problems
    assert any("metadata.json" in p for p in problems), problems
    inc = rollback(services.engine, world)
    done = services.engine.execute(inc.id)
    assert done.state == "monitoring", (done.state, done.error)
    check_completed(conn, world.models_dir, world, before)
    assert (folder / done.emergency_backup / "metadata.json").read_text() == "{ this is not json"
