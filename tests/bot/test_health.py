"""`rollback-bot serve` checks what it depends on (bot/health.py): the bot token at start and periodically
(Slack's auth.test), the database and the work process at /healthz; Socket Mode serves /healthz and /metrics
on HEALTH_PORT. Real processes, as in test_serve."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request

from tests.bot.test_serve import free_port, serve, wait_healthy  # noqa: F401 - serve is a fixture


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def test_a_refused_token_stops_serve_at_start_with_one_clear_line(serve, standin, settings):
    standin.revoke_token("invalid_auth")
    _, proc = serve.with_process(wait=False)
    assert proc.wait(timeout=60) == 2
    stderr = proc.stderr.read().decode()
    last = stderr.strip().splitlines()[-1]
    assert "SLACK_BOT_TOKEN was refused by Slack's auth.test (invalid_auth)" in last, stderr[-2000:]
    assert "Traceback" not in stderr and settings.slack_bot_token.get_secret_value() not in stderr
    assert [c.method for c in standin.calls()] == ["auth.test"]  # nothing else was tried


def test_healthz_turns_503_naming_a_token_revoked_while_serving(serve, standin):
    url = serve(SLACK_AUTH_CHECK_SECONDS="0.3")
    status, body = get(url + "/healthz")
    assert status == 200 and json.loads(body)["slack"] == "up"
    standin.revoke_token()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, body = get(url + "/healthz")
        if status != 200:
            break
        time.sleep(0.1)
    assert status == 503
    health = json.loads(body)
    assert health["ok"] is False and health["slack"] == "token_revoked" and health["database"] == "up"


def test_socket_mode_serves_healthz_and_metrics_on_health_port(serve, standin):
    from tests.bot.test_socket_mode import APP_TOKEN, FakeSocketModeServer

    socket_server = FakeSocketModeServer().start()
    standin.socket_mode_url = socket_server.url
    health_port = free_port()
    try:
        _, proc = serve.with_process(wait=False, SLACK_APP_TOKEN=APP_TOKEN, HEALTH_PORT=str(health_port))
        base = f"http://127.0.0.1:{health_port}"
        wait_healthy(base, proc, timeout=60)
        socket_server.wait_connected(timeout=30)
        status, body = get(base + "/healthz")
        health = json.loads(body)
        assert status == 200 and health["slack"] == "up" and health["database"] == "up"
        assert health["work_process"] == "up"
        status, body = get(base + "/metrics")
        assert status == 200 and b"rollback_bot_rollbacks_total" in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # stops cleanly, as in HTTP mode
    finally:
        socket_server.stop()


def test_metrics_addr_is_host_and_port():
    import pytest

    from core.errors import ConfigError
    from core.settings import Settings, load_settings

    for bad in ("9100", "localhost:", ":9100", "host:port", "127.0.0.1:70000"):
        with pytest.raises(ConfigError, match="METRICS_ADDR"):
            load_settings(_env_file=None, metrics_addr=bad)
    assert Settings(_env_file=None, metrics_addr="127.0.0.1:9100").metrics_bind() == ("127.0.0.1", 9100)
    assert Settings(_env_file=None, metrics_addr="[::1]:9100").metrics_bind() == ("::1", 9100)
    assert Settings(_env_file=None).metrics_bind() is None
