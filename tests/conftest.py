"""Shared fixtures: a real PostgreSQL (one database for the run, each test isolated inside it), real XGBoost
models trained once on generated data and copied per test, and the real app served over HTTP against the
Slack stand-in.

PostgreSQL comes from ``TEST_DATABASE_URL`` when given, else from the project's private local cluster
(bot/devtools/localpg.py), which is started if needed. If neither works the run FAILS: nothing here skips.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from bot.devtools import demo_world, localpg
from core.db import Database, migrate
from core.settings import Settings

# Hypothesis settings profiles (tests/core/test_properties.py): "ci" by default (`make test`), "stress" with
# `--hypothesis-profile=stress` (`make stress`). No example database (each test runs in a temporary directory):
# a counterexample is printed with its steps and a @reproduce_failure blob instead.
# "ci" is derandomized, so a CI run is repeatable; "stress" explores new examples every run.
hypothesis_settings.register_profile(
    "ci", max_examples=200, stateful_step_count=8, deadline=None, database=None, print_blob=True,
    derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
hypothesis_settings.register_profile("stress", hypothesis_settings.get_profile("ci"), max_examples=2000,
                                     derandomize=False)
hypothesis_settings.register_profile("dev", hypothesis_settings.get_profile("ci"), max_examples=20)  # a quick look
hypothesis_settings.load_profile("ci")

TEST_DB = "rollback_bot_test"
# Platform tables a test may change; restored from a snapshot before each test.
MUTABLE_PLATFORM = ("model_deployment_log", "clients", "client_settings", "trades")
BOT_TABLES = (
    "loss_estimates", "pages", "page_log",  # before the incidents they refer to (tests/core/test_properties.py deletes)
    "steps", "audit_log", "halt_holders", "saved_client_settings", "trading_halts", "jobs", "deliveries",
    "followups", "followup_boards", "prevention_measures", "incidents",
    "home_viewers", "doctor_results", "executor_fences", "command_uses",
)


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    """How many examples each run of the property test ran (tests/core/test_properties.py)."""
    import sys

    for line in getattr(sys.modules.get("tests.core.test_properties"), "SUMMARY", []):
        terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A developer's environment or .env must never leak into a test."""
    for name in list(os.environ):
        if name.startswith(("SLACK_", "ROLLBACK_")) or name in {
            "DATABASE_URL", "MODELS_DIR", "INCIDENTS_DIR", "INCIDENT_CHANNEL", "OPERATORS", "APPROVERS",
            "STAKEHOLDERS", "STAKEHOLDER_EMAILS", "SMTP_URL", "ESCALATION_CONTACTS", "ESCALATE_AFTER_MINUTES",
            "LOSS_ESCALATION_THRESHOLD", "PORT", "LOG_LEVEL", "PRIMARY_CONTACTS", "EMERGENCY_CONTACTS",
            "ESCALATION_ACK_MINUTES", "PNL_QUERY",
        } or name.startswith("PAGERDUTY_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env is read


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    cluster = localpg.ensure(databases=("rollback_bot",))
    name = f"{TEST_DB}_{os.getpid()}"  # one per pytest session: parallel sessions never collide
    cluster.drop_database(name)
    url = cluster.create_database(name)
    yield url
    try:
        cluster.drop_database(name)
    except Exception:  # noqa: BLE001 - best effort; the name is unique to this run anyway
        pass


@pytest.fixture(scope="session")
def world_template(database_url: str, tmp_path_factory: pytest.TempPathFactory):
    """Build the generated platform world once: market, features view, clients, trained models."""
    return build_snapshot_world(database_url, tmp_path_factory.mktemp("models-template"))


def build_snapshot_world(url: str, models: Path):
    """The test world in the database at ``url``, the bot's schema, and a snapshot ``reset_database`` restores."""
    with psycopg.connect(url) as conn:
        # The platform lives in public. Once the bot's schema exists, "$user" (rollback_bot, the test role's
        # name) would come first in the default search_path.
        conn.execute("SET search_path = public")
        world = demo_world.build_world(conn, models, size="test", seed=7)
        conn.execute("CREATE SCHEMA IF NOT EXISTS test_snapshot")
        for table in MUTABLE_PLATFORM:
            conn.execute(f"DROP TABLE IF EXISTS test_snapshot.{table}")
            conn.execute(f"CREATE TABLE test_snapshot.{table} AS SELECT * FROM public.{table}")
        conn.commit()
    migrate(url)
    return world


def reset_database(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE " + ", ".join(f"rollback_bot.{t}" for t in BOT_TABLES) + " RESTART IDENTITY CASCADE")
        for table in MUTABLE_PLATFORM[::-1]:
            conn.execute(f"DELETE FROM public.{table}")
        for table in MUTABLE_PLATFORM:
            conn.execute(f"INSERT INTO public.{table} SELECT * FROM test_snapshot.{table}")
        conn.commit()


@pytest.fixture(scope="session")
def platforms(database_url: str, tmp_path_factory: pytest.TempPathFactory):
    """Platforms built by somebody else (tests/platforms.py): one database per client-id type, built on first use,
    a separate owner role, the bot as a least-privilege role; databases and roles dropped at the end."""
    from tests.platforms import Platforms, admin_url

    with Platforms(admin_url(), tmp_path_factory.mktemp("platforms")) as p:
        yield p


@pytest.fixture
def world(world_template, database_url: str, tmp_path: Path):
    """A fresh copy of the world for one test: database rows restored, model files copied."""
    reset_database(database_url)
    models = tmp_path / "models"
    shutil.copytree(world_template.models_dir, models, symlinks=True)
    return dataclasses.replace(world_template, models_dir=models)


@pytest.fixture
def settings(world, database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        database_url=database_url,
        models_dir=world.models_dir,
        incidents_dir=tmp_path / "incidents",
        slack_bot_token="xoxb-test-token-0123456789",
        slack_signing_secret="test-signing-secret-abcdef",
        slack_api_url="http://127.0.0.1:9/api/",
        incident_channel="C0INCIDENT",
        operators=["U0ALICE", "U0BOB", "U0CAROL"],
        approvers=["U0BOB", "U0CAROL"],
        monitor_minutes=30,
        watchdog_every_minutes=0,  # tests that want the watchdog turn it on
        halt_quiet_seconds=0,  # no real wait after each halt; tests of the quiet wait set it and move the clock
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database_dsn(), max_size=8).open()
    yield database
    database.close()


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    from psycopg.rows import dict_row

    with psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as c:
        yield c


@pytest.fixture
def services(settings: Settings, db: Database):
    from bot.compose import build_services

    return build_services(settings, db)


@pytest.fixture
def standin():
    from bot.devtools.slack_standin import SlackStandIn

    with SlackStandIn() as s:
        for uid, name in [("U0ALICE", "alice"), ("U0BOB", "bob"), ("U0CAROL", "carol"), ("U0DAVE", "dave")]:
            s.add_user(uid, name=name, real_name=name.title())
        yield s


@pytest.fixture
def sandbox(settings: Settings, db: Database, standin):
    """The real app over HTTP against the stand-in; the background worker is not started (tests drive it)."""
    from bot.devtools.sandbox import Sandbox
    from bot.compose import build_services

    services = build_services(settings.model_copy(update={"slack_api_url": standin.base_url}), db)
    with Sandbox(services, standin=standin) as box:
        yield box
