"""Issue 2: settings, registry, PostgreSQL, signed Slack requests for /rollback status and backups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from core.db import Database
from core.errors import ConfigError, DatabaseUnavailable, InvalidName, UnknownModel
from core.registry import ModelRegistry, validate_name
from core.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "bot"]


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run(CLI + list(args), env={**base, **(env or {})}, cwd=cwd, capture_output=True, text=True,
                          timeout=60)


# ------------------------------------------------------------------------------------------ settings


def test_missing_setting_stops_serve_with_one_line_naming_it(tmp_path, database_url):
    result = run_cli("serve", env={"DATABASE_URL": database_url}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "SLACK_BOT_TOKEN" in lines[0] and "Traceback" not in result.stderr


def test_malformed_setting_names_the_variable(tmp_path):
    result = run_cli("status", env={"ESCALATE_AFTER_MINUTES": "soon"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "ESCALATE_AFTER_MINUTES" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(ConfigError, match="SLACK_BOT_TOKEN"):
        load_settings(slack_bot_token="not-a-bot-token")


@pytest.mark.parametrize("name, good, bad, message", [
    ("database_url", "postgres://u@h/db", "mysql://u@h/db", "must be a postgresql:// URL"),
    ("slack_bot_token", "xoxb-1", "xoxp-1", "must be a bot token starting with xoxb-"),
    ("slack_app_token", "xapp-1", "xoxb-1", "must be an app-level token starting with xapp-"),
])
def test_secrets_are_checked_by_how_they_begin(name, good, bad, message):
    assert getattr(load_settings(**{name: good}), name).get_secret_value() == good
    with pytest.raises(ConfigError, match=f"{name.upper()}.*{message}"):
        load_settings(**{name: bad})


def test_id_lists_and_secrets(monkeypatch):
    monkeypatch.setenv("APPROVERS", "U1, U2 S3")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-very-secret")
    s = load_settings()
    assert s.approvers == ["U1", "U2", "S3"]
    assert "very-secret" not in repr(s) and "very-secret" not in str(s.model_dump())


# ------------------------------------------------------------------------------------------ registry


def test_registry_lists_models_backups_and_recommends(world):
    reg = ModelRegistry(world.models_dir)
    assert reg.list_models() == sorted(world.models)
    for name, info in world.models.items():
        backups = reg.list_backups(name)
        assert {b.name for b in backups} == {b.name for b in info.backups}
        dates = [b.training_date for b in backups]
        assert dates == sorted(dates, reverse=True)
        rec = reg.recommend(name, backups)
        assert rec.backup is not None
        assert rec.backup.name != info.production_version  # identical to production: not a target
        candidates = [b for b in backups if b.name not in rec.rejected]
        assert rec.backup.sharpe_ratio == max(b.sharpe_ratio for b in candidates)


@pytest.mark.parametrize(
    "bad",
    ["../../etc", "a/b", "a\\b", "..", "/etc/passwd", "x\x00y", ".hidden", "~root", "%2e%2e%2fetc", "é" * 3, "a" * 200],
)
def test_bad_names_are_refused(world, bad):
    reg = ModelRegistry(world.models_dir)
    with pytest.raises(InvalidName):
        validate_name(bad)
    with pytest.raises(InvalidName):
        reg.list_backups(bad)


def test_symlink_leaving_models_dir_is_refused(world, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.json").write_text("{}")
    (outside / "metadata.json").write_text("{}")
    (world.models_dir / "evil_link").symlink_to(outside)
    reg = ModelRegistry(world.models_dir)
    assert "evil_link" not in reg.list_models()
    with pytest.raises(InvalidName, match="outside MODELS_DIR"):
        reg.list_backups("evil_link")
    model = next(iter(world.models))
    (world.models_dir / model / "backup_escape").symlink_to(outside)
    names = {b.name: b for b in reg.list_backups(model)}
    assert names["backup_escape"].problems and not names["backup_escape"].usable
    with pytest.raises(InvalidName):
        reg.backup_dir(model, "backup_escape")


def test_unknown_model_and_corrupt_metadata_are_reported_per_backup(world):
    reg = ModelRegistry(world.models_dir)
    with pytest.raises(UnknownModel, match="Known models"):
        reg.list_backups("no_such_model")
    model = next(iter(world.models))
    victim = world.models[model].backups[0].name
    (world.models_dir / model / victim / "metadata.json").write_text("{not json")
    other = world.models[model].backups[1].name
    meta = json.loads((world.models_dir / model / other / "metadata.json").read_text())
    del meta["performance"]
    (world.models_dir / model / other / "metadata.json").write_text(json.dumps(meta))
    backups = {b.name: b for b in reg.list_backups(model)}
    assert "not valid JSON" in backups[victim].problems[0]
    assert "performance" in backups[other].problems[0]
    rec = reg.recommend(model)
    assert rec.backup is None or rec.backup.name not in (victim, other)


def test_corrupt_model_file_is_not_recommended(world):
    reg = ModelRegistry(world.models_dir)
    model = next(iter(world.models))
    best = reg.recommend(model).backup
    (best.path / "model.json").write_bytes(b'{"learner": broken')
    again = reg.recommend(model)
    assert again.backup is None or again.backup.name != best.name
    assert "does not load" in again.rejected[best.name]


# ------------------------------------------------------------------------------------------ database


def test_unreachable_database_is_a_clear_error():
    with pytest.raises(DatabaseUnavailable, match="PostgreSQL does not answer"):
        Database("postgresql://nobody@127.0.0.1:1/none", timeout=1).open(timeout=1)


def test_bot_connects_as_an_ordinary_role(db):
    with db.transaction() as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    assert row["rolsuper"] is False


def test_migrate_is_idempotent(database_url):
    from core.db import migrate

    assert migrate(database_url) == []
    result = run_cli("db", "migrate", env={"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


# ------------------------------------------------------------------------------------------ Slack


def test_signed_status_command_reaches_the_standin(sandbox, world):
    reply = sandbox.command("U0ALICE", "status")
    assert reply.status == 200
    body = sandbox.responses(reply.response_key)[0]
    assert body["response_type"] == "ephemeral"
    text = json.dumps(body["blocks"])
    for name, info in world.models.items():
        assert name in text and info.production_version in text
    assert len(body["blocks"]) <= 50


def test_backups_command_lists_backups_and_recommends(sandbox, world):
    model = "growth_momentum_large"
    reply = sandbox.command("U0ALICE", f"backups {model}")
    body = sandbox.responses(reply.response_key)[0]
    text = json.dumps(body["blocks"])
    assert "Recommended target" in text
    for b in world.models[model].backups:
        assert b.name in text


@pytest.mark.parametrize("bad", ["../../etc", "a/b", "..", "/etc", "x%00y"])
def test_backups_with_bad_name_gets_clear_error(sandbox, bad, world):
    before = sorted(p.name for p in world.models_dir.rglob("*"))
    reply = sandbox.command("U0ALICE", f"backups {bad}")
    body = sandbox.responses(reply.response_key)[0]
    assert "Invalid model name" in body["text"]
    assert sorted(p.name for p in world.models_dir.rglob("*")) == before


def test_help_is_answered_in_the_ack(sandbox):
    reply = sandbox.command("U0ALICE", "help")
    assert reply.status == 200 and "/rollback status" in reply.ack


def test_wrong_signature_and_stale_timestamp_get_401(sandbox):
    r = sandbox.sender.slash_command(text="status", user_id="U0ALICE", channel_id="C1",
                                     response_url="http://127.0.0.1:9/x", secret="wrong-secret")
    assert r.status == 401
    r = sandbox.sender.slash_command(text="status", user_id="U0ALICE", channel_id="C1",
                                     response_url="http://127.0.0.1:9/x", timestamp=int(time.time()) - 301)
    assert r.status == 401
    assert sandbox.standin.calls("response_url") == []


def test_healthz_reflects_the_database(sandbox):
    with urllib.request.urlopen(sandbox.server.url + "/healthz", timeout=5) as resp:
        assert resp.status == 200
    sandbox.services.db.pool.close()
    try:
        urllib.request.urlopen(sandbox.server.url + "/healthz", timeout=5)
        raise AssertionError("expected 503")
    except urllib.error.HTTPError as exc:
        assert exc.code == 503


def test_cli_status_and_backups(settings, world):
    env = {"DATABASE_URL": settings.database_dsn(), "MODELS_DIR": str(world.models_dir)}
    r = run_cli("status", env=env)
    assert r.returncode == 0, r.stderr
    for name in world.models:
        assert name in r.stdout
    r = run_cli("backups", "growth_momentum_large", env=env)
    assert r.returncode == 0 and "Recommended target" in r.stdout
    r = run_cli("backups", "../../etc", env=env)
    assert r.returncode == 1 and "Invalid model name" in r.stderr and "Traceback" not in r.stderr


def test_recommendation_prefers_live_performance(services, world):
    from core.registry import LIVE_RULE

    for name, info in world.models.items():
        report = services.backups(model=name)
        rec = report.recommendation
        assert rec.rule == LIVE_RULE
        live = {k: v for k, v in rec.live.items() if v is not None}
        assert rec.backup.name in live
        assert live[rec.backup.name].sharpe_ratio == max(p.sharpe_ratio for p in live.values())
        # the world's production model broke after the regime change; the pick did not
        chosen = info.backup(rec.backup.name)
        assert chosen.post_change.sharpe_ratio > info.production.post_change.sharpe_ratio
        assert live[rec.backup.name].sharpe_ratio > 0
