"""The bot on a platform somebody else built (tests/platforms.py): each client-id type, the platform's own
columns, checks and triggers, and the bot as a role holding only the README's grants.

Everything runs as a person would run it: signed Slack requests to the real app over HTTP, the app's Slack
client talking to the stand-in, the bot's database connections logged in as the least-privilege role.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from bot.devtools.sandbox import Sandbox
from core import fixes
from core.db import Database, migrate
from core.errors import ConfigError
from bot.compose import build_services
from core.settings import Settings
from tests.helpers import files_equal
from tests.platforms import KEY_TYPES, PlatformWorld, with_login
from tests.e2e.test_slack_diagnostics import press_quick_fix
from tests.e2e.test_slack_flow import CHANNEL, approve_and_run, card_message, click

MODEL = "growth_momentum_large"


def bot_settings(pw: PlatformWorld, tmp_path: Path, standin, **extra) -> Settings:
    return Settings(
        _env_file=None,
        database_url=pw.bot_url,
        models_dir=pw.copy_models(tmp_path / "models"),
        incidents_dir=tmp_path / "incidents",
        slack_bot_token="xoxb-test-token-0123456789",
        slack_signing_secret="test-signing-secret-abcdef",
        slack_api_url=standin.base_url,
        incident_channel=CHANNEL,
        operators=["U0ALICE", "U0BOB", "U0CAROL"],
        approvers=["U0BOB", "U0CAROL"],
        monitor_minutes=30,
        watchdog_every_minutes=extra.pop("watchdog_every_minutes", 0),
        **extra,
    )


@pytest.fixture
def box(request, platforms, standin, tmp_path):
    """(PlatformWorld, Sandbox) for the key type in ``request.param``, the bot logged in as its own role."""
    pw = platforms.world(request.param)
    db = Database(pw.bot_url, max_size=6).open()
    try:
        with Sandbox(build_services(bot_settings(pw, tmp_path, standin), db), standin=standin) as sandbox:
            yield pw, sandbox
    finally:
        db.close()


def canonical(client_id) -> str:
    """The text PostgreSQL gives a key (``client_id::text``): what the bot saves."""
    return str(client_id)


def replies(sandbox, ts: str) -> list[str]:
    return [m.text for m in sandbox.standin.thread(CHANNEL, ts)]


@pytest.mark.parametrize("box", KEY_TYPES, indirect=True)
def test_whole_rollback_through_slack_restores_each_clients_own_settings(box):
    pw, sandbox = box
    check = pw.connect()
    before = pw.settings_rows(check)
    clients_before = check.execute("SELECT * FROM clients ORDER BY client_id").fetchall()
    trades_before = check.execute("SELECT count(*) AS n FROM trades").fetchone()["n"]
    expected = {c.client_id: c.settings for c in pw.clients if c.settings is not None}
    assert {k: (r["auto_rebalance"], r["require_manual_approval"]) for k, r in before.items()} == expected
    halted_clients = [c for c in pw.clients if c.active and c.settings is not None]

    target = sandbox.services.registry.recommend(MODEL).backup.name
    reply = sandbox.command("U0ALICE", f"start {MODEL} {target} IC negative since the regime change --confirm")
    sandbox.responses(reply.response_key)
    card = card_message(sandbox)
    assert "Pre-flight passed" in json.dumps(card.blocks)
    approve_and_run(sandbox, card)

    inc = sandbox.services.engine.list_incidents()[0]
    assert inc.state == "monitoring", inc.error
    thread = replies(sandbox, card.ts)
    for needle in ("Automated trading halted", "No trade after the halt", "Emergency backup", "restored atomically",
                   "model_deployment_log", "Verified", "Trading resumed"):
        assert any(needle in t for t in thread), (needle, thread)
    assert any(f"Trading resumed: {len(halted_clients)} clients" in t for t in thread), thread

    # Each client's own settings came back exactly; the platform's other columns are untouched.
    after = pw.settings_rows(check)
    assert after.keys() == before.keys()
    halted_ids = {c.client_id for c in halted_clients}
    for cid, row in after.items():
        old = before[cid]
        for col in ("auto_rebalance", "require_manual_approval", "max_position_pct", "risk_profile"):
            assert row[col] == old[col], (cid, col, old[col], row[col])
        if cid in halted_ids:  # halted, then restored: the platform's trigger saw two updates by the bot's role
            assert row["revision"] == old["revision"] + 2 and row["updated_by"] == pw.bot_role, (cid, row)
        else:  # inactive: never touched
            assert row == old, (cid, old, row)
    history = {}
    for r in check.execute("SELECT * FROM client_settings_history ORDER BY id"):
        assert r["changed_by"] == pw.bot_role
        history.setdefault(r["client_id"], []).append((r["auto_rebalance"], r["require_manual_approval"]))
    assert history == {c.client_id: [(False, True), c.settings] for c in halted_clients}
    saved = {r["client_id"]: (r["auto_rebalance"], r["require_manual_approval"], r["restored"])
             for r in check.execute("SELECT * FROM rollback_bot.saved_client_settings")}
    assert saved == {canonical(c.client_id): (*c.settings, True) for c in halted_clients}
    assert check.execute("SELECT * FROM clients ORDER BY client_id").fetchall() == clients_before
    assert check.execute("SELECT count(*) AS n FROM trades").fetchone()["n"] == trades_before
    assert not check.execute("SELECT halted FROM rollback_bot.trading_state").fetchone()["halted"]

    # The deployment log: one production row, the bot's, with the platform's defaults filled in by the platform.
    rows = check.execute("SELECT * FROM model_deployment_log WHERE model_name = %s AND is_production",
                         (MODEL,)).fetchall()
    assert len(rows) == 1
    new = rows[0]
    assert (new["version"], new["is_rollback"], new["environment"], new["recorded_by"]) == (
        target, True, "production", pw.bot_role)
    audit = check.execute("SELECT op, version, is_production, by_role FROM deployment_audit ORDER BY id").fetchall()
    assert [(a["op"], a["is_production"]) for a in audit] == [("UPDATE", False), ("INSERT", True)]
    assert {a["by_role"] for a in audit} == {pw.bot_role}
    check.close()


@pytest.fixture
def stale_view(platforms):
    """A new trading day in the bigint platform's daily_bars, written by its owner; the view not refreshed."""
    pw = platforms.world("bigint")
    with pw.connect(pw.owner_url) as owner:
        last = owner.execute("SELECT max(date) AS d FROM daily_bars").fetchone()["d"]
        new_day = last + timedelta(days=3 if last.weekday() == 4 else 1)
        owner.execute("INSERT INTO daily_bars (date, ticker, open, high, low, close, volume) SELECT %s, ticker,"
                      " close, high, low, close * 1.001, volume FROM daily_bars WHERE date = %s", (new_day, last))
    try:
        yield new_day
    finally:
        with pw.connect() as admin:
            admin.execute("DELETE FROM daily_bars WHERE date = %s", (new_day,))
            admin.execute("REFRESH MATERIALIZED VIEW ml_training_features")


@pytest.mark.parametrize("box", ["bigint"], indirect=True)
def test_status_backups_diagnostics_and_the_refresh_fix_as_the_least_privilege_role(box, stale_view):
    pw, sandbox = box
    reply = sandbox.command("U0ALICE", "status")
    status = json.dumps(sandbox.responses(reply.response_key)[0])
    assert MODEL in status and "value_small" in status
    reply = sandbox.command("U0ALICE", f"backups {MODEL}")
    backups = json.dumps(sandbox.responses(reply.response_key)[0], ensure_ascii=False)
    assert "backup_" in backups and "Recommended target" in backups

    reply = sandbox.command("U0ALICE", f"diagnose {MODEL}")
    body = sandbox.responses(reply.response_key, timeout=60)[0]
    text = json.dumps(body["blocks"])
    assert "Likely cause" in text and "stale" in text, text
    # the system-wide checks, as far as an ordinary role can read them
    assert "*System* (all models): database " in text and " connections, " in text, text
    assert "could not be checked" not in text and "return_1d IS NULL: 0 row(s)" in text, text
    press_quick_fix(sandbox, body, "Refresh feature view")
    card = card_message(sandbox)
    approve_and_run(sandbox, card)
    sandbox.standin.wait_for("chat.postMessage", lambda c: "Fix done" in c.body.get("text", ""))
    with pw.connect() as check:
        assert check.execute("SELECT max(date) AS d FROM ml_training_features").fetchone()["d"] == stale_view
        owner = check.execute("SELECT pg_get_userbyid(relowner) AS o FROM pg_class WHERE oid ="
                              " 'ml_training_features'::regclass").fetchone()["o"]
        assert owner == pw.features_role  # the bot refreshed it as a member of the view's owner, owning nothing


def test_without_the_view_owners_role_the_refresh_refuses_and_changes_nothing(platforms, stale_view):
    pw = platforms.world("bigint")
    membership = sql.SQL("{} {} {} {}")
    with pw.connect() as admin:
        admin.execute(membership.format(sql.SQL("REVOKE"), sql.Identifier(pw.features_role), sql.SQL("FROM"),
                                        sql.Identifier(pw.bot_role)))
        try:
            with pw.connect(pw.bot_url) as bot:
                result = fixes.refresh_feature_view(bot)
            assert not result.ok and "only its owner may refresh it" in result.message, result.message
            assert admin.execute("SELECT max(date) AS d FROM ml_training_features").fetchone()["d"] < stale_view
        finally:
            admin.execute(membership.format(sql.SQL("GRANT"), sql.Identifier(pw.features_role), sql.SQL("TO"),
                                            sql.Identifier(pw.bot_role)))


@pytest.mark.parametrize("box", ["uuid"], indirect=True)
def test_watchdog_and_manual_halt_resume_as_the_least_privilege_role(box, platforms, standin, tmp_path):
    pw, sandbox = box
    check = pw.connect()
    before = pw.settings_rows(check)
    reply = sandbox.command("U0ALICE", "halt suspicious fills")
    sandbox.responses(reply.response_key)
    halted = pw.settings_rows(check)
    for c in pw.clients:
        if c.settings is not None and c.active:
            assert (halted[c.client_id]["auto_rebalance"], halted[c.client_id]["require_manual_approval"]) == (
                False, True)
    # the platform reads the halt flag (the README's grant to its owner)
    with pw.connect(pw.owner_url) as owner:
        assert owner.execute("SELECT halted FROM rollback_bot.trading_state").fetchone()["halted"]
    reply = sandbox.command("U0BOB", "resume")
    sandbox.responses(reply.response_key)
    assert pw.settings_rows(check).keys() == before.keys()
    assert {k: (r["auto_rebalance"], r["require_manual_approval"]) for k, r in pw.settings_rows(check).items()} == {
        k: (r["auto_rebalance"], r["require_manual_approval"]) for k, r in before.items()}

    services = sandbox.services
    s = services.settings.model_copy(update={"watchdog_every_minutes": 60, "watchdog_ic_threshold": 0.02,
                                             "watchdog_sharpe_threshold": 1.0})
    with Sandbox(build_services(s, services.db), standin=standin) as watch:
        watch.run_worker()
        posted = [m for m in standin.messages(CHANNEL) if not m.is_reply and "watchdog" in json.dumps(m.blocks)]
        assert posted, [m.text for m in standin.messages(CHANNEL)]
    check.close()


def test_a_client_made_manual_during_the_halt_stays_manual_with_the_readmes_grants(platforms, tmp_path):
    """The README's grant on client_settings' xmin is what tells a person's "manual" from the halt's; without it
    the bot still halts and resumes, comparing values only."""
    pw = platforms.world("uuid")
    db = Database(pw.bot_url, max_size=2).open()
    check = pw.connect()
    try:
        services = build_services(Settings(_env_file=None, database_url=pw.bot_url, incidents_dir=tmp_path / "incidents",
                                     models_dir=pw.copy_models(tmp_path / "models")), db)
        auto = [c.client_id for c in pw.clients if c.active and c.settings == (True, False)]
        manual = ("UPDATE client_settings SET auto_rebalance = false, require_manual_approval = true"
                  " WHERE client_id = %s")
        values = "SELECT auto_rebalance, require_manual_approval FROM client_settings WHERE client_id = %s"
        services.engine.halt_trading(user="U0ALICE", reason="suspicious fills")
        check.execute(manual, (auto[0],))
        result = services.engine.resume_trading(user="U0BOB")
        assert result.left_alone == [canonical(auto[0])]
        assert tuple(check.execute(values, (auto[0],)).fetchone().values()) == (False, True)
        assert tuple(check.execute(values, (auto[1],)).fetchone().values()) == (True, False)
        check.execute(sql.SQL("REVOKE SELECT (xmin) ON client_settings FROM {}").format(sql.Identifier(pw.bot_role)))
        try:
            services.engine.halt_trading(user="U0ALICE", reason="again")
            check.execute(manual, (auto[1],))
            result = services.engine.resume_trading(user="U0BOB")
            assert result.resumed and result.left_alone == []
            assert tuple(check.execute(values, (auto[1],)).fetchone().values()) == (True, False)  # values only
        finally:
            check.execute(sql.SQL("GRANT SELECT (xmin) ON client_settings TO {}").format(sql.Identifier(pw.bot_role)))
    finally:
        check.close()
        db.close()


def test_the_bot_role_holds_only_what_the_readme_grants(platforms):
    pw = platforms.world("integer")
    with pw.connect(pw.bot_url) as bot:
        role = bot.execute("SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles"
                           " WHERE rolname = current_user").fetchone()
        assert not any(role.values()), role
        rights = bot.execute(
            "SELECT has_database_privilege(current_database(), 'CREATE') AS db_create,"
            " has_schema_privilege('public', 'CREATE') AS public_create,"
            " has_table_privilege('clients', 'INSERT') AS clients_insert,"
            " has_column_privilege('clients', 'name', 'SELECT') AS client_names,"
            " has_column_privilege('client_settings', 'max_position_pct', 'UPDATE') AS other_settings,"
            " has_table_privilege('client_settings', 'DELETE') AS settings_delete,"
            " has_column_privilege('model_deployment_log', 'version', 'UPDATE') AS rewrite_log,"
            " has_table_privilege('model_deployment_log', 'DELETE') AS log_delete,"
            " has_column_privilege('trades', 'quantity', 'SELECT') AS trade_details,"
            " has_table_privilege('client_settings_history', 'SELECT') AS history,"
            " has_table_privilege('daily_bars', 'INSERT') AS bars_insert").fetchone()
        assert not any(rights.values()), rights
        for statement in ("SELECT name FROM clients", "CREATE TABLE public.x (i int)", "DELETE FROM client_settings",
                          "UPDATE model_deployment_log SET version = 'x'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                bot.execute(statement)
        assert migrate(pw.bot_url) == []  # idempotent with no CREATE on the database


def test_migrate_without_the_schema_and_without_create_on_the_database_says_what_to_do(platforms):
    pw = platforms.world("text")
    name = f"{pw.dbname}_noschema"
    with pw.connect(with_login(pw.admin_url, dbname="postgres")) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name),
                                                                   sql.Identifier(pw.owner_role)))
        admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
        admin.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(name),
                                                                          sql.Identifier(pw.bot_role)))
        try:
            with pytest.raises(ConfigError, match="CREATE SCHEMA rollback_bot AUTHORIZATION"):
                migrate(with_login(pw.bot_url, dbname=name))
            with pw.connect(with_login(pw.admin_url, dbname=name)) as db_admin:
                db_admin.execute(sql.SQL("CREATE SCHEMA rollback_bot AUTHORIZATION {}").format(
                    sql.Identifier(pw.bot_role)))
            assert len(migrate(with_login(pw.bot_url, dbname=name))) >= 2
            assert migrate(with_login(pw.bot_url, dbname=name)) == []
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_client_ids_of_each_type_are_the_platforms(platforms):
    """The worlds really are what they claim: the column types, and odd keys that a cast would break."""
    for key_type in KEY_TYPES:
        pw = platforms.world(key_type)
        with pw.connect() as c:
            types = {r["table_name"]: r["data_type"] for r in c.execute(
                "SELECT table_name, data_type FROM information_schema.columns WHERE table_schema = 'public'"
                " AND column_name = 'client_id' AND table_name IN ('clients', 'client_settings', 'trades')")}
            assert set(types.values()) == {"text" if key_type == "text" else key_type}, types
            ids = {r["client_id"] for r in c.execute("SELECT client_id FROM clients")}
        assert {cl.client_id for cl in pw.clients} <= ids
        if key_type == "uuid":
            assert all(isinstance(i, uuid.UUID) for i in ids)


# --------------------------------------------------------------------------------------------- file rights


def as_documented(models: Path) -> None:
    """MODELS_DIR with the README's file rights and no more: read on files, search on folders, write only in
    each model folder (owner and group bits alike)."""
    for path in [models, *models.rglob("*")]:
        if path.is_dir():
            path.chmod(0o770 if path.parent == models else 0o550)
        else:
            path.chmod(0o440)
    models.chmod(0o550)


# Root is held to file modes like any account once it lacks the capabilities that override them.
AS_ORDINARY_ACCOUNT = (["setpriv", "--no-new-privs", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
                       if os.geteuid() == 0 else [])


def test_break_glass_rollback_with_only_the_readmes_file_rights(platforms, tmp_path):
    """The CLI as the bot's database role, held to the README's rights on MODELS_DIR: status, backups and a whole
    rollback (halt, emergency backup, restore, record, verify, resume)."""
    pw = platforms.world("integer")
    models = pw.copy_models(tmp_path / "models")
    as_documented(models)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "DATABASE_URL": pw.bot_url, "MODELS_DIR": str(models), "INCIDENTS_DIR": str(tmp_path / "incidents")}
    cli = str(Path(sys.executable).with_name("rollback-bot"))

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([*AS_ORDINARY_ACCOUNT, cli, *argv], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    try:
        probe = run("status")
        assert probe.returncode == 0 and MODEL in probe.stdout, probe.stdout + probe.stderr
        # the rights are really held: nothing may be written in MODELS_DIR itself or in a backup folder
        for folder in (models, next(p for p in (models / MODEL).iterdir() if p.is_dir())):
            denied = subprocess.run([*AS_ORDINARY_ACCOUNT, "touch", str(folder / "x")], capture_output=True)
            assert denied.returncode != 0, folder
        out = run("backups", MODEL)
        assert out.returncode == 0 and "backup_" in out.stdout, out.stdout + out.stderr
        target = pw.world.models[MODEL].backups[0].name
        check = pw.connect()
        before = {k: (r["auto_rebalance"], r["require_manual_approval"]) for k, r in pw.settings_rows(check).items()}
        out = run("rollback", MODEL, "--to", target, "--reason", "break-glass drill", "--by", "oncall", "--yes", "--confirm")
        assert out.returncode == 0 and f"is now {target}" in out.stdout, out.stdout + out.stderr
        assert [r["version"] for r in check.execute("SELECT version FROM model_deployment_log WHERE model_name = %s"
                                                    " AND is_production", (MODEL,))] == [target]
        assert files_equal(models / MODEL, models / MODEL / target)
        emergency = [p for p in (models / MODEL).iterdir() if p.name.startswith("backup_emergency_")]
        assert len(emergency) == 1 and (emergency[0] / "model.json").is_file()
        after = {k: (r["auto_rebalance"], r["require_manual_approval"]) for k, r in pw.settings_rows(check).items()}
        assert after == before
        assert not check.execute("SELECT halted FROM rollback_bot.trading_state").fetchone()["halted"]
        check.close()
    finally:
        for path in [models, *models.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
