"""Issue 8 (observability): JSON logs carrying the incident id, secret redaction, Prometheus metrics."""

from __future__ import annotations

import io
import json
import logging
import urllib.request

from bot.observability import JsonFormatter, RedactSecrets, secret_values

MODEL = "growth_momentum_large"


def metrics_text(sandbox) -> str:
    with urllib.request.urlopen(sandbox.server.url + "/metrics", timeout=5) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        return resp.read().decode()


def sample(text: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == {k: str(v) for k, v in labels.items()}:
                return s.value
    return 0.0


def run_rollback(sandbox):
    target = sandbox.services.registry.recommend(MODEL).backup.name
    inc, _ = sandbox.services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    sandbox.services.engine.approve(incident_id=inc.id, approver="U0BOB")
    sandbox.run_worker()
    return inc


def test_metrics_count_rollbacks_and_step_durations(sandbox, world):
    assert sample(metrics_text(sandbox), "rollback_bot_rollbacks_total", outcome="rolled_back") == 0
    run_rollback(sandbox)
    text = metrics_text(sandbox)
    assert sample(text, "rollback_bot_rollbacks_total", outcome="rolled_back") == 1
    for step in ("halt", "emergency_backup", "restore", "record", "verify", "resume"):
        assert sample(text, "rollback_bot_step_duration_seconds_count", step=step) == 1, step


def test_metrics_count_slack_errors_and_retries(sandbox, world):
    reply = sandbox.command("U0ALICE", f"start {MODEL} {sandbox.services.registry.recommend(MODEL).backup.name} r --confirm")
    sandbox.responses(reply.response_key)
    sandbox.standin.fail_next("chat.postMessage", status=503)  # a thread reply: retried by slack_sdk, then sent
    sandbox.standin.fail_next("chat.update", error="message_not_found")  # a card update: an API error
    inc = sandbox.services.engine.list_incidents()[0]
    sandbox.services.engine.approve(incident_id=inc.id, approver="U0BOB")
    sandbox.run_worker()
    text = metrics_text(sandbox)
    assert sample(text, "rollback_bot_slack_api_retries_total", reason="server_error") == 1
    assert sample(text, "rollback_bot_slack_api_errors_total", method="chat.update", error="message_not_found") == 1
    assert sandbox.services.engine.get(inc.id).state == "monitoring"  # Slack trouble never stops a rollback


def test_json_logs_carry_the_incident(sandbox, world):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    try:
        def corrupt(label):
            if label == "after:restoring":
                (world.models_dir / MODEL / "model.json").write_bytes(b"{}")

        sandbox.services.engine.fault = corrupt
        inc = run_rollback(sandbox)
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    engine_lines = [entry for entry in lines if entry["logger"] == "rollback_bot.engine"]
    assert engine_lines, lines
    assert all(entry["incident"] == inc.ref for entry in engine_lines)
    assert {"ts", "level", "logger", "message"} <= set(engine_lines[0])


def test_secrets_are_redacted_from_every_record(settings):
    from pydantic import SecretStr

    s = settings.model_copy(update={"database_url": SecretStr("postgresql://bot:s3cr3t-pw@db.internal:5432/platform")})
    secrets = secret_values(s)
    assert "s3cr3t-pw" in secrets and settings.slack_bot_token.get_secret_value() in secrets
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets(secrets))
    log = logging.getLogger("test.redact")
    log.addHandler(handler)
    try:
        log.error("token %s and url %s", settings.slack_bot_token.get_secret_value(), s.database_url.get_secret_value())
        try:
            raise RuntimeError(f"connect failed for {s.database_url.get_secret_value()}")
        except RuntimeError:
            log.exception("boom")
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert "[redacted]" in out
    for secret in secrets:
        assert secret not in out
