"""`rollback-bot serve` as real processes: HTTP, /healthz, and two processes on one database behaving as one."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from bot.devtools.slack_signing import SlackSender
from tests.helpers import client_settings, trading_halted

ROOT = Path(__file__).resolve().parents[2]
MODEL = "growth_momentum_large"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("serve did not become healthy")


def serve_env(settings, standin, world, tmp_path, port: int, **extra: str) -> dict[str, str]:
    """The environment of a `rollback-bot serve` on ``port`` against the test's stand-in, database and world."""
    return {
        "PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
        "SLACK_BOT_TOKEN": settings.slack_bot_token.get_secret_value(),
        "SLACK_SIGNING_SECRET": settings.slack_signing_secret.get_secret_value(),
        "SLACK_API_URL": standin.base_url, "DATABASE_URL": settings.database_dsn(),
        "MODELS_DIR": str(world.models_dir), "INCIDENTS_DIR": str(tmp_path / "incidents"),
        "INCIDENT_CHANNEL": "C0INCIDENT", "OPERATORS": "U0ALICE,U0BOB,U0CAROL", "APPROVERS": "U0BOB,U0CAROL",
        "PORT": str(port), "WATCHDOG_EVERY_MINUTES": "0", **extra,
    }


@pytest.fixture
def serve(settings, standin, world, tmp_path):
    procs: list[subprocess.Popen] = []

    def start(**extra: str) -> str:
        return start_proc(**extra)[0]

    def start_proc(*, wait: bool = True, **extra: str) -> tuple[str, subprocess.Popen]:
        port = free_port()
        env = serve_env(settings, standin, world, tmp_path, port, **extra)
        proc = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1"], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        if wait:
            wait_healthy(url, proc)
        return url, proc

    start.with_process = start_proc  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_answers_signed_commands_and_stops_cleanly(serve, settings, standin):
    url = serve()
    sender = SlackSender(url + "/slack/events", settings.slack_signing_secret.get_secret_value())
    r = sender.slash_command(text="status", user_id="U0ALICE", channel_id="C1",
                             response_url=standin.response_url("s", channel="C1", user="U0ALICE"))
    assert r.status == 200
    body = standin.wait_for("response_url", lambda c: c.body.get("key") == "s", timeout=10)[0].body
    assert MODEL in str(body["blocks"])
    assert sender.slash_command(text="status", user_id="U0ALICE", channel_id="C1", response_url="http://x/",
                                secret="wrong").status == 401
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        assert b"rollback_bot_rollbacks" in resp.read()
    with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
        health = json.loads(resp.read())
    assert health.pop("slack_checked_at")
    assert health == {"ok": True, "database": "up", "slack": "up", "work_process": "up"}


def test_two_serve_processes_behave_as_one(serve, settings, standin, conn, world):
    before = client_settings(conn)
    urls = [serve(), serve()]
    secret = settings.slack_signing_secret.get_secret_value()
    senders = [SlackSender(u + "/slack/events", secret) for u in urls]
    from core.registry import ModelRegistry

    target = ModelRegistry(world.models_dir).recommend(MODEL).backup.name
    # the same command delivered to both processes (a retry landing on the other node): one request
    trigger = "999.888.abc"
    for i, sender in enumerate(senders):
        sender.slash_command(text=f"start {MODEL} {target} Sharpe collapsed --confirm", user_id="U0ALICE", channel_id="C1",
                             response_url=standin.response_url("start", channel="C1", user="U0ALICE"),
                             trigger_id=trigger, retry_num=i or None)
    standin.wait_for("response_url", lambda c: c.body.get("key") == "start", timeout=15)
    card = standin.wait_for("chat.postMessage", lambda c: c.body.get("channel") == "C0INCIDENT", timeout=10)[0]
    time.sleep(0.5)
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.incidents").fetchone()["n"] == 1
    ts = card.response["ts"]
    message = standin.message("C0INCIDENT", ts).as_slack()
    # approvers click on both nodes at once: one execution, run by whichever worker claims it
    results: list[int] = []
    threads = [threading.Thread(target=lambda s=s, u=u: results.append(
        s.block_action(user_id=u, action_id="rollback_approve", channel_id="C0INCIDENT", message_ts=ts,
                       message=message).status))
        for s in senders for u in ("U0BOB", "U0CAROL", "U0BOB")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 6
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = conn.execute("SELECT state FROM rollback_bot.incidents").fetchone()["state"]
        if state in ("monitoring", "failed"):
            break
        time.sleep(0.1)
    assert state == "monitoring"
    counts = conn.execute("SELECT step, count(*) AS n FROM rollback_bot.steps GROUP BY step").fetchall()
    counts = {r["step"]: r["n"] for r in counts}
    assert counts["approved"] == 1 and counts["halt"] == 1 and counts["restore"] == 1 and counts["record"] == 1
    assert not trading_halted(conn) and client_settings(conn) == before
    # The five other clicks are told who got there first; a click handled after the rollback moved on names the
    # state it found ("already halting"), so match the refusal, not one state.
    refusal = re.compile(r"INC-\d+ is already \w+ \(by (U0\w+)\)")
    refused = standin.wait_for("chat.postEphemeral", lambda c: refusal.search(c.body.get("text", "")), count=5,
                               timeout=10)
    winners = {refusal.search(c.body["text"]).group(1) for c in refused}
    assert len(winners) == 1 and winners <= {"U0BOB", "U0CAROL"}, winners


def children(pid: int, command: str = "work") -> list[int]:
    """The live child processes of ``pid`` running ``rollback-bot COMMAND`` (its work or its loading process)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z" and command.encode() in argv:
                out.append(int(entry.name))
    return out


def test_a_dead_work_process_is_started_again(serve, settings, standin):
    url, proc = serve.with_process()
    [child] = children(proc.pid)
    os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        alive = [c for c in children(proc.pid) if c != child]
        if alive:
            break
        time.sleep(0.1)
    assert alive, "the work process was not started again"
    sender = SlackSender(url + "/slack/events", settings.slack_signing_secret.get_secret_value())
    r = sender.slash_command(text="status", user_id="U0ALICE", channel_id="C1",
                             response_url=standin.response_url("after", channel="C1", user="U0ALICE"))
    assert r.status == 200
    standin.wait_for("response_url", lambda c: c.body.get("key") == "after", timeout=20)


def test_the_acking_process_delivers_no_slack_update_its_work_process_does(serve, settings, standin, conn):
    """Slack updates (cards, thread replies) cost CPU: under `serve` the Slack lane runs in the work process only,
    so the process that acks Slack never posts them."""
    url, proc = serve.with_process()
    [work] = children(proc.pid)
    sender = SlackSender(url + "/slack/events", settings.slack_signing_secret.get_secret_value())
    r = sender.slash_command(text="halt suspicious fills", user_id="U0ALICE", channel_id="C1",
                             response_url=standin.response_url("halt", channel="C1", user="U0ALICE"))
    assert r.status == 200
    standin.wait_for("chat.postMessage", lambda c: "halted" in json.dumps(c.body).lower(), timeout=30)
    deadline = time.monotonic() + 30
    while conn.execute("SELECT count(*) AS n FROM rollback_bot.jobs WHERE kind = 'slack' AND done_at IS NULL"
                       ).fetchone()["n"]:
        assert time.monotonic() < deadline, "the Slack updates were not delivered"
        time.sleep(0.1)
    claimed_by = {int(r["locked_by"].split("/")[0].rsplit(":", 1)[1]) for r in conn.execute(
        "SELECT locked_by FROM rollback_bot.jobs WHERE kind = 'slack' AND locked_by IS NOT NULL")}
    assert claimed_by == {work}, (claimed_by, proc.pid, work)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample at ``url`` (Prometheus text), by (name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_metrics_of_the_work_process_reach_serve_on_their_own_address(serve, settings, standin, conn, world):
    """Rollbacks run in the work process; serve's /metrics (multiprocess mode, on METRICS_ADDR) counts them."""
    metrics_port = free_port()
    url, proc = serve.with_process(METRICS_ADDR=f"127.0.0.1:{metrics_port}")
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with pytest.raises(urllib.error.HTTPError) as refused:  # not on the public Slack port
        urllib.request.urlopen(url + "/metrics", timeout=5)
    assert refused.value.code == 404
    before = scrape(metrics_url)
    assert total(before, "rollback_bot_rollbacks_total", outcome="rolled_back") == 0
    assert total(before, "rollback_bot_slack_api_calls_total", method="chat.update") == 0
    [child] = children(proc.pid)
    directory = Path(environ_of(child)["PROMETHEUS_MULTIPROC_DIR"])
    assert directory.is_dir() and str(proc.pid) in directory.name

    from core.registry import ModelRegistry

    target = ModelRegistry(world.models_dir).recommend(MODEL).backup.name
    sender = SlackSender(url + "/slack/events", settings.slack_signing_secret.get_secret_value())
    sender.slash_command(text=f"start {MODEL} {target} Sharpe collapsed --confirm", user_id="U0ALICE", channel_id="C1",
                         response_url=standin.response_url("start", channel="C1", user="U0ALICE"))
    card = standin.wait_for("chat.postMessage", lambda c: c.body.get("channel") == "C0INCIDENT", timeout=20)[0]
    ts = card.response["ts"]
    sender.block_action(user_id="U0BOB", action_id="rollback_approve", channel_id="C0INCIDENT", message_ts=ts,
                        message=standin.message("C0INCIDENT", ts).as_slack())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = conn.execute("SELECT state FROM rollback_bot.incidents").fetchone()
        if row and row["state"] in ("monitoring", "failed"):
            break
        time.sleep(0.1)
    assert row["state"] == "monitoring"
    standin.wait_for("chat.update", lambda c: c.body.get("ts") == ts, timeout=20)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the work process counts right after the state is committed
        after = scrape(metrics_url)
        if total(after, "rollback_bot_rollbacks_total", outcome="rolled_back") > 0:
            break
        time.sleep(0.2)
    assert total(after, "rollback_bot_rollbacks_total", outcome="rolled_back") == 1
    assert total(after, "rollback_bot_step_duration_seconds_count", step="restore") >= 1
    assert total(after, "rollback_bot_slack_api_calls_total", method="chat.update") > 0
    assert total(after, "rollback_bot_slack_api_calls_total", method="chat.postMessage") > 0

    # the work process dies and is started again: what it counted stays
    os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not [c for c in children(proc.pid) if c != child]:
        time.sleep(0.1)
    assert [c for c in children(proc.pid) if c != child], "the work process was not started again"
    assert total(scrape(metrics_url), "rollback_bot_rollbacks_total", outcome="rolled_back") == 1

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not directory.exists(), "serve left its metrics directory behind"
