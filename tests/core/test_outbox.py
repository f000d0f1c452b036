"""Issue 15, item 1: the transactional outbox (core.outbox). A state change and the follow-up jobs it implies
(e-mail, report, escalation timers) are written in one transaction, so every process queues them, with or
without the Slack app, and a process killed right after a state commit loses none of them.

Real parts: the real CLI and a real bot process in subprocesses, a real PostgreSQL, a real SMTP server
(aiosmtpd, as in tests/core/test_notify.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from core.db import Database
from bot.compose import build_services
from core.services import Services
from core.settings import Settings
from tests.core.test_notify import Inbox, smtp  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[2]
MODEL = "growth_momentum_large"
STAKEHOLDERS = "risk@example.test,cto@example.test"
RESUMED_MILESTONES = ["halted", "opened", "resumed", "rolled_back"]


def email_journal(conn, incident_id: int) -> list[str]:
    """The e-mail milestones journaled as sent, one entry per sending."""
    return sorted(r["detail"]["milestone"] for r in conn.execute(
        "SELECT detail FROM rollback_bot.steps WHERE incident_id = %s AND step = 'notify'"
        " AND detail->>'channel' = 'email' AND outcome = 'ok'", (incident_id,)))


def milestones_of(inbox: Inbox) -> list[str]:
    return sorted(msg["Subject"] for _, _, msg in inbox.messages)


def the_rollback(conn) -> dict:
    rows = conn.execute("SELECT * FROM rollback_bot.incidents WHERE kind = 'rollback'").fetchall()
    assert len(rows) == 1, rows
    return rows[0]


def test_the_break_glass_cli_rollback_sends_the_stakeholder_email(settings, world, conn, smtp, tmp_path):  # noqa: F811
    inbox = Inbox()
    server = smtp(inbox)
    target = world.models[MODEL].backups[0].name
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env.update(PYTHONPATH=str(ROOT), DATABASE_URL=settings.database_dsn(), MODELS_DIR=str(world.models_dir),
               INCIDENTS_DIR=str(tmp_path / "incidents"), HALT_QUIET_SECONDS="0.2", SUDO_USER="alice",
               SMTP_URL=f"smtp://127.0.0.1:{server.port}", STAKEHOLDER_EMAILS=STAKEHOLDERS)
    r = subprocess.run([sys.executable, "-m", "bot", "rollback", MODEL, "--to", target, "--reason", "Slack is down",
                        "--by", "oncall-jane", "--yes", "--confirm"],
                       env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    inc = the_rollback(conn)
    assert inc["state"] == "monitoring"
    # Every milestone's e-mail went out from the CLI itself (no Slack app, no `serve`), once, to each stakeholder.
    assert email_journal(conn, inc["id"]) == RESUMED_MILESTONES
    assert len(inbox.messages) == len(RESUMED_MILESTONES)
    assert all(sorted(rcpt) == sorted(STAKEHOLDERS.split(",")) for _, rcpt, _ in inbox.messages)
    assert any("trading resumed on" in subject for subject in milestones_of(inbox)), milestones_of(inbox)
    # The report was written; the escalation timers wait in the queue for `serve`, and the CLI says so.
    assert list((tmp_path / "incidents").rglob("*.md")), "no incident report was written"
    queued = {r["dedupe_key"] for r in conn.execute(
        "SELECT dedupe_key FROM rollback_bot.jobs WHERE incident_id = %s AND done_at IS NULL", (inc["id"],))}
    assert f"escalate-age:{inc['id']}" in queued
    assert "stay queued for `rollback-bot serve`" in r.stdout


def _kill_child_at(settings, world, label: str, smtp_url: str, *, mode: str = "run") -> None:
    app = f"outbox_child_{uuid.uuid4().hex[:12]}"
    url = settings.database_dsn()
    env = {**os.environ, "SMTP_URL": smtp_url, "STAKEHOLDER_EMAILS": STAKEHOLDERS}
    argv = [sys.executable, "-m", "tests.crash_child", "--db", f"{url}{'&' if '?' in url else '?'}application_name={app}",
            "--models", str(world.models_dir), "--incidents", str(settings.incidents_dir), "--model", MODEL,
            "--backup", world.models[MODEL].backups[0].name, "--kill-at", label, "--mode", mode]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {label} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    deadline = time.monotonic() + 20
    with psycopg.connect(url, autocommit=True) as c:
        while c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the killed child's database sessions did not go away"
            time.sleep(0.01)


def _restarted(settings, smtp_url: str) -> tuple[Services, Database, list]:
    """Another bot process (no Slack app): its services, database pool, and the report writes it makes."""
    s = Settings(_env_file=None, database_url=settings.database_url, models_dir=settings.models_dir,
                 incidents_dir=settings.incidents_dir, monitor_minutes=30, halt_quiet_seconds=0,
                 smtp_url=smtp_url, stakeholder_emails=STAKEHOLDERS)
    db = Database(s.database_dsn(), max_size=4).open()
    services = build_services(s, db)
    writes: list = []
    services.engine.subscribe(lambda e: writes.append(e.incident.state) if e.kind == "step" and e.step == "report"
                              else None)
    return services, db, writes


@pytest.mark.parametrize("label", ["after:halting", "publish:halt", "after:resuming"])
def test_a_process_killed_right_after_a_state_commit_loses_no_follow_up(settings, world, conn, smtp, label):  # noqa: F811
    inbox = Inbox()
    smtp_url = f"smtp://127.0.0.1:{smtp(inbox).port}"
    _kill_child_at(settings, world, label, smtp_url)
    inc = the_rollback(conn)
    assert inbox.messages == []  # the killed process sent nothing: its follow-ups are all still queued
    queued = {r["dedupe_key"] for r in conn.execute(
        "SELECT dedupe_key FROM rollback_bot.jobs WHERE incident_id = %s", (inc["id"],))}
    assert {f"notify-email:{inc['id']}:opened", f"notify-email:{inc['id']}:halted", f"escalate-age:{inc['id']}"} <= queued

    # Two other processes, one after the other: recovery finishes the rollback, their workers run what is due.
    writes: list = []
    for _ in range(2):
        services, db, seen = _restarted(settings, smtp_url)
        try:
            services.engine.recover()
            services.worker.run_due()
            services.worker.run_due()
        finally:
            db.close()
        writes += seen
    inc = the_rollback(conn)
    assert inc["state"] == "monitoring"
    # Every follow-up delivered exactly once: each milestone's e-mail, and the report of the monitoring state.
    assert email_journal(conn, inc["id"]) == RESUMED_MILESTONES
    assert len(inbox.messages) == len(RESUMED_MILESTONES)
    assert writes == ["monitoring"]
    jobs = conn.execute("SELECT dedupe_key, done_at FROM rollback_bot.jobs WHERE incident_id = %s AND kind = 'report'",
                        (inc["id"],)).fetchall()
    assert len(jobs) == 1 and jobs[0]["done_at"] is not None
    # Runbook step 8: the diagnostics queued with the halt's state (core.outbox.diagnose_job) ran once, though the
    # halting process died before any listener could hear of the halt.
    diagnosed = conn.execute("SELECT count(*) AS n FROM rollback_bot.steps WHERE incident_id = %s"
                             " AND step = 'diagnostics'", (inc["id"],)).fetchone()["n"]
    assert diagnosed == 1 and "diagnostics" in inc["plan"]
