"""`rollback-bot rollback …` (bot/breakglass.py, Engine.break_glass) is accountable: the operating-system identity
is recorded beside --by, a person confirms at a terminal (or --yes; no terminal and no --yes is a refusal), and
the incident channel is told when Slack is reachable (a failure to post is reported, never fatal).

The real CLI in a subprocess, a real PostgreSQL, the Slack stand-in for the Web API; a pseudo-terminal where a
person types."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from core.registry import ModelRegistry
from tests.helpers import assert_consistent, trading_halted

ROOT = Path(__file__).resolve().parents[2]
MODEL = "growth_momentum_large"
CHANNEL = "C0INCIDENT"


def cli_env(settings, world, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env.update(PYTHONPATH=str(ROOT), DATABASE_URL=settings.database_dsn(), MODELS_DIR=str(world.models_dir),
               HALT_QUIET_SECONDS="0.2", SUDO_USER="alice")
    env.update(extra)
    return env


def rollback_args(world, *more: str) -> list[str]:
    target = ModelRegistry(world.models_dir).recommend(MODEL).backup.name
    return [sys.executable, "-m", "bot", "rollback", MODEL, "--to", target, "--reason", "Slack is down",
            "--by", "oncall-jane", "--confirm", *more]


def incidents(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM rollback_bot.incidents").fetchone()["n"]


def test_without_a_terminal_and_without_yes_it_refuses(settings, world, conn, tmp_path):
    r = subprocess.run(rollback_args(world), env=cli_env(settings, world), cwd=tmp_path, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--yes" in r.stderr and "Traceback" not in r.stderr
    assert incidents(conn) == 0 and not trading_halted(conn)
    refused = conn.execute("SELECT actor, detail FROM rollback_bot.audit_log WHERE outcome = 'refused'").fetchone()
    assert refused["actor"] == "oncall-jane" and "sudo from alice" in refused["detail"]["os_user"]


def _run_at_a_terminal(args, env, cwd, answer: str) -> tuple[int, str]:
    master, slave = os.openpty()
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 90
    answered = False
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
        if not answered and b"to go ahead" in out:
            os.write(master, answer.encode() + b"\n")
            answered = True
    os.close(master)
    return proc.wait(30), out.decode(errors="replace")


def test_a_person_at_a_terminal_confirms_by_typing_the_model_name(settings, world, conn, tmp_path):
    env = cli_env(settings, world)
    code, out = _run_at_a_terminal(rollback_args(world), env, tmp_path, "no")
    assert code == 2 and "not confirmed" in out and incidents(conn) == 0
    code, out = _run_at_a_terminal(rollback_args(world), env, tmp_path, MODEL)
    assert code == 0, out
    assert "oncall-jane (OS user" in out and "trading resumed" in out
    inc = conn.execute("SELECT * FROM rollback_bot.incidents").fetchone()
    assert "break-glass CLI, OS user" in inc["approved_by"] and "sudo from alice" in inc["approved_by"]
    assert inc["plan"]["break_glass"]["os_user"].endswith("(sudo from alice)")
    approved = conn.execute("SELECT detail FROM rollback_bot.steps WHERE step = 'approved'").fetchone()["detail"]
    assert approved["by"] == "oncall-jane" and "sudo from alice" in approved["os_user"] and approved["host"]
    audit = conn.execute("SELECT detail FROM rollback_bot.audit_log WHERE action = 'break_glass_rollback'"
                         " AND outcome = 'ok'").fetchone()["detail"]
    assert "sudo from alice" in audit["os_user"]


def test_the_incident_channel_is_told_when_slack_is_reachable(settings, world, conn, tmp_path, standin):
    standin.join(CHANNEL)  # `serve` joined it at its start; the CLI posts where the bot is a member
    env = cli_env(settings, world, SLACK_BOT_TOKEN="xoxb-break-glass-test", SLACK_API_URL=standin.base_url,
                  INCIDENT_CHANNEL=CHANNEL)
    r = subprocess.run(rollback_args(world, "--yes"), env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    alert = next(m for m in standin.messages(CHANNEL) if not m.is_reply)
    assert "Break-glass rollback" in alert.text and "oncall-jane" in alert.text and "sudo from alice" in alert.text
    outcome = standin.thread(CHANNEL, alert.ts)
    assert any("ended monitoring" in m.text for m in outcome)
    inc = conn.execute("SELECT channel, message_ts FROM rollback_bot.incidents").fetchone()
    assert inc == {"channel": CHANNEL, "message_ts": alert.ts}


def test_a_failed_alert_is_reported_and_the_rollback_goes_on(settings, world, conn, tmp_path):
    env = cli_env(settings, world, SLACK_BOT_TOKEN="xoxb-break-glass-test", SLACK_API_URL="http://127.0.0.1:9/api/",
                  INCIDENT_CHANNEL=CHANNEL)
    target = ModelRegistry(world.models_dir).recommend(MODEL).backup.name
    r = subprocess.run(rollback_args(world, "--yes"), env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    assert "could not post the break-glass alert" in r.stderr and "xoxb-break-glass-test" not in r.stderr + r.stdout
    assert assert_consistent(conn, world.models_dir, MODEL) == target
    failed = conn.execute("SELECT count(*) AS n FROM rollback_bot.audit_log WHERE action = 'break_glass_alert'"
                          " AND outcome = 'failed'").fetchone()["n"]
    assert failed == 1
