"""`rollback-bot doctor` (core/doctor.py, core/doctor_checks.py, core/doctor_files.py, handlers/doctor.py): a good
platform passes; broken ones (a missing column, privilege, unique index, trades table, an unreadable model folder)
each get one clear line and exit 1; `/rollback doctor` for approvers; the run at `serve` start; pre-flight refuses a
rollback with the doctor's reason before anything is halted."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from slack_sdk import WebClient

from bot.devtools import demo_world, localpg
from bot.__main__ import main
from bot.devtools.slack_signing import SlackSender
from core import fixes
from core.db import migrate
from core.errors import PreflightFailed
from core.registry import ModelRegistry
from handlers.doctor import slack_checks
from tests.helpers import client_settings, production_rows, trading_halted

ROOT = Path(__file__).resolve().parents[2]
MODEL = "growth_momentum_large"


def with_search_path(url: str, schema: str, *, user: str | None = None) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if user is not None:
        netloc = f"{urllib.parse.quote(user, safe='')}@{netloc.rsplit('@', 1)[-1]}"
    query = urllib.parse.urlencode({"options": f"-csearch_path={schema}"})
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, (parts.query + "&" if parts.query else "") + query,
                                    parts.fragment))


def run_cli(monkeypatch, capsys, env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = main(["doctor", *args])
    out = capsys.readouterr().out
    return code, [line for line in out.splitlines() if line.strip()]


def problems(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("PROBLEM")]


@contextmanager
def platform_schema(database_url: str) -> Iterator[tuple[str, psycopg.Connection]]:
    """An empty platform (tables, the feature view and its unique index) in a schema of its own, and the bot's
    schema migrated."""
    migrate(database_url)
    with psycopg.connect(database_url) as conn, demo_world.isolated_schema(conn, prefix="doctor_") as schema:
        demo_world.create_platform_schema(conn)
        yield schema, conn


@pytest.fixture
def admin(database_url: str) -> Iterator[psycopg.Connection]:
    """A superuser connection to the test database (creating roles needs one)."""
    if os.environ.get("TEST_DATABASE_URL"):
        conn = psycopg.connect(os.environ["TEST_DATABASE_URL"], autocommit=True)
    else:
        dbname = urllib.parse.urlsplit(database_url).path.lstrip("/")
        conn = localpg.cluster().admin_connect(dbname)
    with conn:
        yield conn


# ------------------------------------------------------------------------------------------ a good platform


def test_a_good_platform_passes_every_check(services, standin, world, conn) -> None:
    standin.join("C0INCIDENT")  # the bot is in its channel (serve joins it at start)
    client = WebClient(token="xoxb-test", base_url=standin.base_url)
    run = services.doctor(source="test", chat=slack_checks(client, "C0INCIDENT"))
    assert run.ok, "\n".join(c.line() for c in run.problems)
    names = [c.name for c in run.checks]
    for expected in ("database", "table model_deployment_log", "privileges on model_deployment_log",
                     "table client_settings", "privileges on client_settings", "client keys",
                     "refresh of ml_training_features", "unique index of ml_training_features", "schema rollback_bot",
                     "trades source TRADES_TABLE", "MODELS_DIR", f"model {MODEL}", "Slack auth", "Slack channel"):
        assert expected in names, names
    models = {r["model_name"] for r in conn.execute("SELECT model_name FROM model_deployment_log WHERE is_production")}
    assert {f"model {m}" for m in models} <= set(names)
    assert all(c.line().startswith("ok ") for c in run.checks)
    # kept for /rollback status
    assert services.status().doctor.source == "test"


def test_cli_passes_on_a_good_platform_and_keeps_the_run(monkeypatch, capsys, settings, standin, conn) -> None:
    standin.join("C0INCIDENT")  # the bot is in its channel (serve joins it at start)
    code, lines = run_cli(monkeypatch, capsys, {
        "DATABASE_URL": settings.database_dsn(), "MODELS_DIR": str(settings.models_dir),
        "SLACK_BOT_TOKEN": "xoxb-test-token", "SLACK_API_URL": standin.base_url, "INCIDENT_CHANNEL": "C0INCIDENT",
    })
    assert code == 0, "\n".join(lines)
    assert lines[-1].startswith("rollback-bot doctor: all") and not problems(lines)
    assert any(line.startswith("ok") and "Slack channel: the bot is a member of" in line for line in lines)
    row = conn.execute("SELECT source, ok FROM rollback_bot.doctor_results ORDER BY id DESC LIMIT 1").fetchone()
    assert row == {"source": "rollback-bot doctor (CLI)", "ok": True}


# ------------------------------------------------------------------------------------------ broken platforms


BREAKAGES = {
    "missing column": ("ALTER TABLE client_settings DROP COLUMN require_manual_approval",
                       "table client_settings", "column require_manual_approval is missing"),
    "wrong type": ("ALTER TABLE model_deployment_log ALTER COLUMN is_production TYPE text",
                   "table model_deployment_log", "column is_production is text, expected boolean"),
    "missing unique index": ("DROP INDEX ml_training_features_date_ticker_key",
                             "unique index of ml_training_features", "CREATE UNIQUE INDEX CONCURRENTLY ON"),
    "missing trades table": ("DROP TABLE trades", "trades source TRADES_TABLE",
                             "TRADES_TABLE trades does not exist"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_each_broken_platform_gets_one_clear_line(breakage, monkeypatch, capsys, database_url, tmp_path) -> None:
    statement, name, words = BREAKAGES[breakage]
    (tmp_path / "models").mkdir()
    with platform_schema(database_url) as (schema, conn):
        env = {"DATABASE_URL": with_search_path(database_url, schema), "MODELS_DIR": str(tmp_path / "models")}
        code, lines = run_cli(monkeypatch, capsys, env)
        assert code == 0 and not problems(lines), "\n".join(lines)  # the same platform, unbroken, passes
        conn.execute(statement)
        conn.commit()
        code, lines = run_cli(monkeypatch, capsys, env)
    assert code == 1
    line, *rest = problems(lines)
    assert line.startswith(f"PROBLEM  {name}: ") and words in line and " — fix: " in line, line
    # the only other line a broken deployment log may bring: its models could not be checked
    assert all(r.startswith("PROBLEM  production models: not checked") for r in rest), rest
    assert lines[-1] == "rollback-bot doctor: %d problem%s in %d checks; a rollback may fail until they are fixed." % (
        1 + len(rest), "s" if rest else "", len(lines) - 1)


def test_a_missing_trading_log_is_a_problem(monkeypatch, capsys, database_url, tmp_path) -> None:
    (tmp_path / "models").mkdir()
    with platform_schema(database_url) as (schema, _):
        code, lines = run_cli(monkeypatch, capsys, {
            "DATABASE_URL": with_search_path(database_url, schema), "MODELS_DIR": str(tmp_path / "models"),
            "TRADING_LOG": str(tmp_path / "no-such.log")})
    assert code == 1
    [line] = problems(lines)
    assert line.startswith("PROBLEM  trades source TRADING_LOG: ") and "no-such.log does not exist" in line


def test_no_trades_table_said_explicitly_is_no_problem(monkeypatch, capsys, database_url, tmp_path) -> None:
    (tmp_path / "models").mkdir()
    with platform_schema(database_url) as (schema, conn):
        conn.execute("DROP TABLE trades")
        conn.commit()
        env = {"DATABASE_URL": with_search_path(database_url, schema), "MODELS_DIR": str(tmp_path / "models")}
        code, lines = run_cli(monkeypatch, capsys, env)
        assert code == 1 and "TRADES_TABLE trades does not exist" in problems(lines)[0]
        code, lines = run_cli(monkeypatch, capsys, {**env, "TRADES_TABLE": "none"})
    assert code == 0 and not problems(lines), "\n".join(lines)
    assert any(line.startswith("ok       trades source: none (TRADES_TABLE=none") for line in lines), lines


def test_a_missing_privilege_is_named_with_its_grant(monkeypatch, capsys, database_url, tmp_path, admin) -> None:
    """The bot connects as an ordinary role that may do everything but mark rows of model_deployment_log."""
    role = f"doctor_{uuid.uuid4().hex[:10]}"
    (tmp_path / "models").mkdir()
    with platform_schema(database_url) as (schema, _):
        s, r = sql.Identifier(schema), sql.Identifier(role)
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER").format(r))
        try:
            for stmt in (
                "GRANT USAGE ON SCHEMA {s} TO {r}", "GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}",
                "GRANT INSERT ON {s}.model_deployment_log TO {r}",
                "GRANT UPDATE (auto_rebalance, require_manual_approval) ON {s}.client_settings TO {r}",
                "ALTER MATERIALIZED VIEW {s}.ml_training_features OWNER TO {r}",
                "GRANT USAGE ON SCHEMA rollback_bot TO {r}",
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA rollback_bot TO {r}",
                "GRANT USAGE ON ALL SEQUENCES IN SCHEMA rollback_bot TO {r}",
            ):
                admin.execute(sql.SQL(stmt).format(s=s, r=r))
            env = {"DATABASE_URL": with_search_path(database_url, schema, user=role),
                   "MODELS_DIR": str(tmp_path / "models")}
            code, lines = run_cli(monkeypatch, capsys, env)
            assert code == 1
            assert len(problems(lines)) == 1, "\n".join(lines)
            [line] = problems(lines)
            assert line == (f"PROBLEM  privileges on model_deployment_log: the role {role} lacks UPDATE (is_production)"
                            f" on {schema}.model_deployment_log — fix: GRANT UPDATE (is_production) ON"
                            f" {schema}.model_deployment_log TO {role}")
            # the fix it names works
            admin.execute(sql.SQL("GRANT UPDATE (is_production) ON {s}.model_deployment_log TO {r}").format(s=s, r=r))
            code, lines = run_cli(monkeypatch, capsys, env)
            assert code == 0 and not problems(lines), "\n".join(lines)
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(r))
            admin.execute(sql.SQL("DROP ROLE {}").format(r))


def test_without_the_bot_schema_privileges_the_doctor_says_so(monkeypatch, capsys, database_url, tmp_path,
                                                               admin) -> None:
    role = f"doctor_{uuid.uuid4().hex[:10]}"
    (tmp_path / "models").mkdir()
    with platform_schema(database_url) as (schema, _):
        r = sql.Identifier(role)
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER").format(r))
        try:
            admin.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), r))
            code, lines = run_cli(monkeypatch, capsys, {"DATABASE_URL": with_search_path(database_url, schema, user=role),
                                                        "MODELS_DIR": str(tmp_path / "models")})
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(r))
            admin.execute(sql.SQL("DROP ROLE {}").format(r))
    assert code == 1
    found = "\n".join(problems(lines))
    assert f"PROBLEM  schema rollback_bot: the role {role} may not use the schema rollback_bot" in found
    assert f"lacks SELECT, INSERT, UPDATE (is_production) on {schema}.model_deployment_log" in found
    assert f"may not refresh {schema}.ml_training_features" in found


def test_an_unreadable_model_folder_is_found_as_the_bots_user(world, settings) -> None:
    """The bot runs as `nobody`; one production model's folder is mode 000."""
    nobody = pwd.getpwnam("nobody")
    uid, gid = nobody.pw_uid, nobody.pw_gid
    base = Path(tempfile.mkdtemp(prefix="doctor-models-"))
    models = base / "models"
    try:
        base.chmod(0o755)
        shutil.copytree(world.models_dir, models, symlinks=True)
        for path in [models, *models.rglob("*")]:
            os.lchown(path, uid, gid)
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(base),
               "DATABASE_URL": settings.database_dsn(), "MODELS_DIR": str(models)}

        def doctor_as_nobody() -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "tests.doctor_as_user", str(uid), str(gid)], env=env,
                                  cwd=ROOT, capture_output=True, text=True, timeout=300)

        good = doctor_as_nobody()
        assert good.returncode == 0, good.stdout + good.stderr
        assert f"ok       MODELS_DIR: {models} is readable and searchable by uid {uid}" in good.stdout
        (models / MODEL).chmod(0)
        bad = doctor_as_nobody()
        assert bad.returncode == 1, bad.stdout + bad.stderr
        [line] = problems(bad.stdout.splitlines())
        assert line == (f"PROBLEM  model {MODEL}: model folder {models / MODEL} is not readable, writable or searchable"
                        f" by uid {uid} (mode 000, owner uid {uid} gid {gid}) — fix: give uid {uid} read, write and"
                        f" search rights on {models / MODEL} (chown/chmod or an ACL)")
    finally:
        if (models / MODEL).exists():
            (models / MODEL).chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_a_revoked_slack_token_and_a_channel_the_bot_left(monkeypatch, capsys, settings, standin) -> None:
    env = {"DATABASE_URL": settings.database_dsn(), "MODELS_DIR": str(settings.models_dir),
           "SLACK_BOT_TOKEN": "xoxb-test-token", "SLACK_API_URL": standin.base_url, "INCIDENT_CHANNEL": "C0INCIDENT"}
    standin.leave("C0INCIDENT")
    code, lines = run_cli(monkeypatch, capsys, env)
    assert code == 1
    assert problems(lines) == ["PROBLEM  Slack channel: the bot is not a member of #c0incident (C0INCIDENT) — fix:"
                               " invite it: `/invite @rollback-bot` in that channel"]
    standin.join("C0INCIDENT")
    standin.revoke_token("invalid_auth")
    code, lines = run_cli(monkeypatch, capsys, env)
    assert code == 1
    assert problems(lines) == [
        "PROBLEM  Slack auth: auth.test failed: invalid_auth — fix: the bot token was revoked or is wrong: reinstall"
        " the app to the workspace and set SLACK_BOT_TOKEN",
        "PROBLEM  Slack channel: not checked: Slack auth failed — fix: fix Slack auth first",
    ]


# ------------------------------------------------------------------------------------------ in Slack


def test_rollback_doctor_in_slack_is_for_approvers(sandbox, standin, conn) -> None:
    reply = sandbox.command("U0BOB", "doctor")
    assert reply.status == 200
    [body] = sandbox.responses(reply.response_key, timeout=60)
    assert body["text"].startswith("rollback-bot doctor: all ") and body["response_type"] == "ephemeral"
    shown = str(body["blocks"])
    assert "Slack channel: the bot is a member of" in shown and f"model {MODEL}" in shown
    standin.leave("C0INCIDENT")
    reply = sandbox.command("U0CAROL", "doctor")
    [body] = sandbox.responses(reply.response_key, timeout=60)
    assert body["text"].startswith("rollback-bot doctor: 1 problem in ")
    assert "the bot is not a member of" in str(body["blocks"])
    runs = conn.execute("SELECT count(*) AS n FROM rollback_bot.doctor_results").fetchone()["n"]
    assert runs == 2
    # an operator who is not an approver is refused, audited, and nothing runs
    reply = sandbox.command("U0ALICE", "doctor")
    [body] = sandbox.responses(reply.response_key, timeout=30)
    assert "Only approvers may run the platform check (APPROVERS)." in body["text"]
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.doctor_results").fetchone()["n"] == runs
    refused = conn.execute("SELECT actor, outcome FROM rollback_bot.audit_log WHERE action = 'doctor'").fetchall()
    assert refused == [{"actor": "U0ALICE", "outcome": "refused"}]
    # /rollback status shows the latest run's problem
    reply = sandbox.command("U0ALICE", "status")
    [body] = sandbox.responses(reply.response_key, timeout=30)
    assert "Platform check: 1 problem" in str(body["blocks"]) and "the bot is not a member of" in str(body["blocks"])


# ------------------------------------------------------------------------------------------ at serve start


def test_a_failing_check_at_serve_start_is_posted_and_shown_in_status(settings, standin, world, tmp_path,
                                                                       conn) -> None:
    from tests.bot.test_serve import free_port, serve_env, wait_healthy

    port = free_port()
    env = serve_env(settings, standin, world, tmp_path, port, TRADING_LOG=str(tmp_path / "no-trading.log"))
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        [post] = standin.wait_for("chat.postMessage", lambda c: c.body.get("channel") == "C0INCIDENT", timeout=60)
        text = post.body["text"]
        assert text.startswith(":stethoscope: rollback-bot doctor at start found 1 problem in ")
        assert f"trades source TRADING_LOG: {tmp_path / 'no-trading.log'} does not exist — fix:" in text
        row = conn.execute("SELECT source, ok FROM rollback_bot.doctor_results").fetchone()
        assert row == {"source": "serve start", "ok": False}
        sender = SlackSender(url + "/slack/events", settings.slack_signing_secret.get_secret_value())
        sender.slash_command(text="status", user_id="U0ALICE", channel_id="C1",
                             response_url=standin.response_url("status", channel="C1", user="U0ALICE"))
        body = standin.wait_for("response_url", lambda c: c.body.get("key") == "status", timeout=30)[0].body
        shown = str(body["blocks"])
        assert "Platform check: 1 problem" in shown and "serve start" in shown and "trades source TRADING_LOG" in shown
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert len(standin.calls("chat.postMessage")) == 1  # once per start


# ------------------------------------------------------------------------------------------ pre-flight


def test_preflight_refuses_a_rollback_with_the_doctors_reason(settings, db, world, conn) -> None:
    from bot.compose import build_services

    broken = build_services(settings.model_copy(update={"trades_table": "no_such_trades"}), db)
    target = broken.registry.recommend(MODEL).backup.name
    before = client_settings(conn)
    with pytest.raises(PreflightFailed) as refused:
        broken.engine.request_rollback(model=MODEL, backup=target, reason="Sharpe collapsed", requested_by="U0ALICE")
    [problem] = broken.doctor(source="test").problems
    assert problem.name == "trades source TRADES_TABLE"
    assert str(refused.value) == (
        f"Pre-flight refused the rollback of {MODEL}; nothing was halted or changed. {problem.reason}."
        " (`rollback-bot doctor` checks the whole platform.)")
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.incidents").fetchone()["n"] == 0
    assert not trading_halted(conn) and client_settings(conn) == before


def test_a_platform_broken_after_approval_fails_the_rollback_before_the_halt(services, settings, world, conn,
                                                                             tmp_path) -> None:
    target = services.registry.recommend(MODEL).backup.name
    before, rows = client_settings(conn), production_rows(conn, MODEL)
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="Sharpe collapsed",
                                              requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    services.engine.settings = settings.model_copy(update={"trading_log": tmp_path / "gone.log"})
    done = services.engine.execute(inc.id)
    assert done.state == "failed"
    assert f"trades source TRADING_LOG: {tmp_path / 'gone.log'} does not exist — fix:" in done.error
    steps = services.engine.steps(inc.id)
    assert [s.step for s in steps] == ["requested", "approved", "preflight"]
    assert steps[-1].outcome == "failed" and "TRADING_LOG" in steps[-1].error
    assert not trading_halted(conn) and client_settings(conn) == before and production_rows(conn, MODEL) == rows
    assert not [p for p in (world.models_dir / MODEL).iterdir() if p.name.startswith("backup_emergency_")]


def test_the_restore_fix_preflight_refuses_with_the_doctors_reason(services, settings, world, conn) -> None:
    (world.models_dir / MODEL / "model.json").write_text("{ not a model")
    broken = settings.model_copy(update={"trades_table": "no_such_trades"})
    proposal = fixes.propose_model_restore(services.registry, conn, model=MODEL, settings=broken)
    assert not proposal.possible and proposal.rejected
    assert all("trades source TRADES_TABLE: TRADES_TABLE no_such_trades does not exist" in why
               for why in proposal.rejected.values()), proposal.rejected
    assert fixes.propose_model_restore(services.registry, conn, model=MODEL, settings=settings).possible


def test_a_model_folder_the_bot_cannot_write_is_refused_at_preflight(world, conn, database_url, tmp_path) -> None:
    """A bot process without root's power over file modes (tests/crash_child.py) asks for a rollback of a model
    whose folder is read-only: pre-flight refuses with the doctor's line; nothing is halted or copied."""
    from tests.core.test_faults import file_sums, run_engine_child

    folder = world.models_dir / MODEL
    original = file_sums(folder)
    target = ModelRegistry(world.models_dir).recommend(MODEL).backup.name
    os.chmod(folder, 0o555)
    try:
        r = run_engine_child(database_url, world.models_dir, tmp_path / "incidents", target,
                             drop_file_powers=os.geteuid() == 0)
    finally:
        os.chmod(folder, 0o755)
    assert r.returncode != 0
    assert (f"core.errors.PreflightFailed: Pre-flight refused the rollback of {MODEL}; nothing was halted or changed."
            f" model {MODEL}: model folder {folder} is not writable by uid {os.geteuid()} (mode 555") in r.stderr, \
        r.stderr[-2000:]
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.incidents").fetchone()["n"] == 0
    assert not trading_halted(conn) and file_sums(folder) == original
    assert not [p for p in folder.iterdir() if p.name.startswith("backup_emergency_")]
