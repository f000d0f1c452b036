"""Trading platforms built by somebody else, for tests.

The demo world (bot/devtools/demo_world.py) is the platform as the bot's own authors would build it: text client ids,
no extra columns, no triggers, created by the role the tests connect as. A real platform is none of that. Each
world here is built the way a platform team would build it, and the bot then connects as a stranger:

* **A separate owner role** (``<prefix>_owner``) owns the world's database and creates every table with its own
  DDL: ``client_id`` of the given key type (``integer``, ``bigint``, ``text`` or ``uuid``), columns the bot does
  not know (NOT NULL, with defaults), a CHECK on ``client_settings``, a serial id on ``model_deployment_log`` with
  a partial unique index (one production row per model), and triggers: on ``client_settings`` (BEFORE UPDATE
  stamps ``updated_at``/``updated_by``/``revision`` and forbids changing the key; AFTER UPDATE writes a history
  row through a SECURITY DEFINER function) and on ``model_deployment_log`` (BEFORE INSERT OR UPDATE keeps the
  log append-only except ``is_production``; AFTER writes an audit row). Nobody but the owner may use the
  database or its ``public`` schema unless granted (``REVOKE ALL ... FROM PUBLIC``).
* **The bot's role** (``<prefix>_bot``: LOGIN, NOSUPERUSER, NOCREATEDB, NOCREATEROLE) gets exactly the
  statements of README.md's "Platform requirements" section, read from the README and run as written (names
  substituted), and nothing else: what the README leaves out, the tests find missing.
* Clients with varied settings: each key type's odd values (the largest ``integer`` and ``bigint``, a bigint
  beyond 2**53, text keys that differ only in case or look like numbers, uuids), inactive clients, NULL settings,
  a client without a settings row.

The market and the trained models come from ``demo_world.build_world`` (built as the owner in a scratch schema,
then ``daily_bars`` and the feature view are moved into ``public`` and the rest is dropped); clients, settings,
trades and the deployment log are this module's own.

Roles are cluster-wide: their names carry the test session's pid and a random tag, and ``Platforms.close``
drops the worlds' databases and the roles. Each world lives in its own database, so other tests never see it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import urllib.parse
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from bot.devtools import demo_world
from core.db import migrate
from tests.conftest import BOT_TABLES

KEY_TYPES = ("integer", "bigint", "text", "uuid")
README = Path(__file__).resolve().parents[1] / "README.md"
SEED = 7
# Platform tables a test may change (children after parents); restored from a snapshot by ``reset``.
MUTABLE = ("clients", "client_settings", "model_deployment_log", "trades")

# Ten clients per key type. Settings: (auto_rebalance, require_manual_approval); None: no client_settings row.
# The platform's CHECK forbids (true, true).
PROFILES: list[tuple[bool, tuple[bool | None, bool | None] | None]] = [
    (True, (True, False)),     # what a halt must switch off
    (True, (False, True)),     # already manual
    (True, (False, False)),
    (True, (None, None)),      # nothing set
    (True, (True, None)),
    (True, (None, True)),
    (False, (True, False)),    # inactive: a halt leaves it alone
    (False, (None, True)),
    (True, None),              # active, no settings row
    (True, (True, False)),
]
CLIENT_IDS: dict[str, list[Any]] = {
    "integer": [2147483647, -2147483648, 0, 7, 42, 1000, 815, 99, 12, 1],
    "bigint": [9007199254740993, 9223372036854775807, -9223372036854775808, 5000000000, 0, -1, 4294967296,
               9007199254740992, 17, 42],
    "text": ["acme", "ACME", "00042", "42", "O'Brien & Co", "Zürich Größe", " padded ", "C-001", "1e3",
             "a\\b"],
    "uuid": [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), *(uuid.uuid5(uuid.NAMESPACE_URL, f"client/{i}")
                                                            for i in range(8))],
}
CLIENT_ID_DDL = {
    "integer": "integer",
    "bigint": "bigint",
    "text": "text CHECK (client_id <> '')",
    "uuid": "uuid DEFAULT gen_random_uuid()",
}


@dataclass(frozen=True)
class Client:
    client_id: Any                 # the platform's value: int, str or uuid.UUID
    name: str
    active: bool
    settings: tuple[bool | None, bool | None] | None
    max_position_pct: Decimal | None  # None: the column's default


def clients_for(key_type: str) -> list[Client]:
    out = []
    for i, (cid, (active, settings)) in enumerate(zip(CLIENT_IDS[key_type], PROFILES, strict=True)):
        out.append(Client(cid, f"Client {i + 1} ({key_type})", active, settings,
                          None if i % 3 == 0 else Decimal(f"{2 + i}.25")))
    return out


def audit_trigger(table: str, events: str, insert: str) -> list[str]:
    """The platform's audit of ``table``: after each of ``events`` on a row, ``insert`` runs as the owner
    (``table_audit()``, SECURITY DEFINER, so that writers need no right on the audit table)."""
    return [
        f"""CREATE FUNCTION {table}_audit() RETURNS trigger LANGUAGE plpgsql
            SECURITY DEFINER SET search_path = public, pg_temp AS $$
        BEGIN
            {insert};
            RETURN NULL;
        END $$""",
        f"""CREATE TRIGGER {table}_audit AFTER {events} ON {table}
            FOR EACH ROW EXECUTE FUNCTION {table}_audit()""",
    ]


def platform_ddl(key_type: str) -> list[str]:
    """The owner's DDL: the platform's tables as its own team made them."""
    kt, plain = CLIENT_ID_DDL[key_type], key_type
    return [
        f"""CREATE TABLE clients (
            client_id    {kt} PRIMARY KEY,
            name         text NOT NULL,
            active       boolean NOT NULL DEFAULT true,
            region       text NOT NULL DEFAULT 'EMEA',
            onboarded_at timestamptz NOT NULL DEFAULT now())""",
        f"""CREATE TABLE client_settings (
            client_id               {plain} PRIMARY KEY REFERENCES clients (client_id),
            auto_rebalance          boolean DEFAULT true,
            require_manual_approval boolean DEFAULT false,
            max_position_pct        numeric(5,2) NOT NULL DEFAULT 5.00
                                    CHECK (max_position_pct > 0 AND max_position_pct <= 100),
            risk_profile            text NOT NULL DEFAULT 'balanced',
            updated_at              timestamptz NOT NULL DEFAULT now(),
            updated_by              name NOT NULL DEFAULT session_user,
            revision                integer NOT NULL DEFAULT 1,
            CONSTRAINT client_settings_no_manual_gate_on_auto
                CHECK (NOT (auto_rebalance AND require_manual_approval)))""",
        f"""CREATE TABLE client_settings_history (
            id                      bigserial PRIMARY KEY,
            client_id               {plain} NOT NULL,
            changed_at              timestamptz NOT NULL DEFAULT clock_timestamp(),
            changed_by              name NOT NULL DEFAULT session_user,
            auto_rebalance          boolean,
            require_manual_approval boolean,
            revision                integer NOT NULL)""",
        """CREATE FUNCTION client_settings_touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.client_id IS DISTINCT FROM OLD.client_id THEN
                RAISE EXCEPTION 'client_settings.client_id never changes';
            END IF;
            NEW.updated_at := clock_timestamp();
            NEW.updated_by := session_user;
            NEW.revision := OLD.revision + 1;
            RETURN NEW;
        END $$""",
        """CREATE TRIGGER client_settings_touch BEFORE UPDATE ON client_settings
            FOR EACH ROW EXECUTE FUNCTION client_settings_touch()""",
        *audit_trigger("client_settings", "UPDATE", """INSERT INTO client_settings_history
                (client_id, auto_rebalance, require_manual_approval, revision)
            VALUES (NEW.client_id, NEW.auto_rebalance, NEW.require_manual_approval, NEW.revision)"""),
        """CREATE TABLE model_deployment_log (
            id                bigserial PRIMARY KEY,
            model_name        text NOT NULL,
            version           text NOT NULL,
            deployed_at       timestamptz NOT NULL,
            deployed_by       text,
            deployment_reason text,
            is_production     boolean NOT NULL DEFAULT false,
            is_rollback       boolean NOT NULL DEFAULT false,
            spearman_ic       double precision,
            sharpe_ratio      double precision,
            environment       text NOT NULL DEFAULT 'production',
            recorded_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
            recorded_by       name NOT NULL DEFAULT session_user)""",
        """CREATE UNIQUE INDEX model_deployment_log_one_production ON model_deployment_log (model_name)
            WHERE is_production""",
        """CREATE TABLE deployment_audit (
            id            bigserial PRIMARY KEY,
            at            timestamptz NOT NULL DEFAULT clock_timestamp(),
            by_role       name NOT NULL DEFAULT session_user,
            op            text NOT NULL,
            model_name    text NOT NULL,
            version       text NOT NULL,
            is_production boolean NOT NULL)""",
        """CREATE FUNCTION model_deployment_log_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' AND (NEW.model_name, NEW.version, NEW.deployed_at, NEW.is_rollback)
                    IS DISTINCT FROM (OLD.model_name, OLD.version, OLD.deployed_at, OLD.is_rollback) THEN
                RAISE EXCEPTION 'model_deployment_log is append-only: only is_production may change';
            END IF;
            IF NEW.model_name = '' OR NEW.version = '' THEN
                RAISE EXCEPTION 'model_deployment_log needs a model_name and a version';
            END IF;
            NEW.recorded_at := clock_timestamp();
            RETURN NEW;
        END $$""",
        """CREATE TRIGGER model_deployment_log_guard BEFORE INSERT OR UPDATE ON model_deployment_log
            FOR EACH ROW EXECUTE FUNCTION model_deployment_log_guard()""",
        *audit_trigger("model_deployment_log", "INSERT OR UPDATE", """INSERT INTO deployment_audit
                (op, model_name, version, is_production)
            VALUES (TG_OP, NEW.model_name, NEW.version, NEW.is_production)"""),
        f"""CREATE TABLE trades (
            trade_id    bigserial PRIMARY KEY,
            client_id   {plain} NOT NULL REFERENCES clients (client_id),
            ticker      text NOT NULL,
            side        text NOT NULL CHECK (side IN ('buy', 'sell')),
            quantity    double precision NOT NULL,
            price       double precision NOT NULL,
            executed_at timestamptz NOT NULL,
            venue       text NOT NULL DEFAULT 'XNYS')""",
        "CREATE INDEX trades_executed_at ON trades (executed_at)",
        # Nobody but the owner runs the platform's functions unless granted (triggers fire regardless).
        "REVOKE EXECUTE ON FUNCTION client_settings_touch(), client_settings_audit(), model_deployment_log_guard(),"
        " model_deployment_log_audit() FROM PUBLIC",
        "ALTER TABLE daily_bars ADD COLUMN vendor text NOT NULL DEFAULT 'synthetic-feed'",
    ]


# --------------------------------------------------------------------------------------------- the README's SQL


def readme_sql_blocks(readme: Path = README) -> list[str]:
    """The ```sql blocks of README.md's "Platform requirements" section, in order, comments removed."""
    text = readme.read_text(encoding="utf-8")
    match = re.search(r"^## Platform requirements\n(.*?)(?=^## )", text, re.S | re.M)
    if match is None:
        raise AssertionError("README.md has no '## Platform requirements' section")
    blocks = re.findall(r"```sql\n(.*?)```", match.group(1), re.S)
    return [re.sub(r"--[^\n]*", "", b) for b in blocks]


def substitute(block: str, *, database: str, bot: str, features: str, owner: str, password: str) -> str:
    """The README's names (database ``trading``, roles ``rollback_bot``, ``ml_features_owner``,
    ``platform_owner``) replaced by this session's. The schema ``rollback_bot`` keeps its name."""
    ident = lambda name: sql.Identifier(name).as_string(None)  # noqa: E731
    out = block.replace("'choose-a-password'", sql.Literal(password).as_string(None))
    out = re.sub(r"\bDATABASE\s+trading\b", f"DATABASE {ident(database)}", out)
    out = re.sub(r"\bml_features_owner\b", ident(features), out)
    out = re.sub(r"\bplatform_owner\b", ident(owner), out)
    return re.sub(r"(?<!SCHEMA )(?<![\w.])rollback_bot(?![\w.])", ident(bot), out)


# --------------------------------------------------------------------------------------------- URLs


def admin_url() -> str:
    """A superuser (or CREATEROLE + CREATEDB) URL of the test cluster: ``TEST_ADMIN_DATABASE_URL``, else
    ``TEST_DATABASE_URL``, else the project's local cluster's superuser."""
    url = os.environ.get("TEST_ADMIN_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    from bot.devtools import localpg

    cluster = localpg.cluster()
    if cluster.port is None:
        raise RuntimeError("the local PostgreSQL cluster is not running (the database_url fixture starts it)")
    return cluster.superuser_url()


def with_login(url: str, *, user: str | None = None, password: str | None = None, dbname: str | None = None) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    user = user if user is not None else urllib.parse.unquote(parts.username or "")
    if password is None and user == urllib.parse.unquote(parts.username or ""):
        password = urllib.parse.unquote(parts.password) if parts.password else None
    auth = urllib.parse.quote(user, safe="")
    if password:
        auth += ":" + urllib.parse.quote(password, safe="")
    path = "/" + urllib.parse.quote(dbname, safe="") if dbname is not None else parts.path
    return urllib.parse.urlunsplit((parts.scheme, f"{auth}@{host}", path, parts.query, parts.fragment))


# --------------------------------------------------------------------------------------------- worlds


@dataclass
class PlatformWorld:
    key_type: str
    dbname: str
    admin_url: str       # a superuser in the world's database: set-up, reset and checks only
    owner_url: str       # the platform's owner
    bot_url: str         # the bot's least-privilege role
    bot_role: str
    features_role: str
    owner_role: str
    models_dir: Path     # the template; tests work on a copy (copy_models)
    world: demo_world.World
    clients: list[Client]

    def connect(self, url: str | None = None, **kw) -> psycopg.Connection:
        return psycopg.connect(url or self.admin_url, row_factory=dict_row, autocommit=True, **kw)

    def copy_models(self, dest: Path) -> Path:
        shutil.copytree(self.models_dir, dest, symlinks=True)
        return dest

    def reset(self, conn: psycopg.Connection | None = None) -> None:
        """Back to the world as built: the bot's rows gone, the platform's mutable tables from the snapshot."""
        own = conn is None
        conn = conn or self.connect()
        try:
            with conn.transaction():
                conn.execute("DELETE FROM rollback_bot." + "; DELETE FROM rollback_bot.".join(BOT_TABLES))
                for table in MUTABLE[::-1]:
                    conn.execute(f"DELETE FROM public.{table}")
                for table in MUTABLE:
                    conn.execute(f"INSERT INTO public.{table} SELECT * FROM test_snapshot.{table}")
                conn.execute("DELETE FROM client_settings_history; DELETE FROM deployment_audit")
        finally:
            if own:
                conn.close()

    def settings_rows(self, conn: psycopg.Connection) -> dict[Any, dict]:
        """Every client_settings row, whole, by the platform's client id."""
        return {r["client_id"]: r for r in conn.execute("SELECT * FROM client_settings")}


class Platforms:
    """This session's roles and one world per key type, built on first use; ``close`` drops them all."""

    def __init__(self, admin: str, root: Path) -> None:
        self.admin = admin
        self.root = root
        self.prefix = f"rbp_{os.getpid()}_{secrets.token_hex(3)}"
        self.owner = f"{self.prefix}_owner"
        self.bot = f"{self.prefix}_bot"
        self.features = f"{self.prefix}_features"
        self.password = secrets.token_urlsafe(12)
        self.worlds: dict[str, PlatformWorld] = {}
        self._databases: list[str] = []  # every database created, built or not: dropped by close()
        self._roles_made = False

    def __enter__(self) -> Platforms:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _names(self, database: str) -> dict[str, str]:
        return {"database": database, "bot": self.bot, "features": self.features, "owner": self.owner,
                "password": self.password}

    def _admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(with_login(self.admin, dbname=dbname), row_factory=dict_row, autocommit=True)

    def _make_roles(self) -> None:
        if self._roles_made:
            return
        blocks = readme_sql_blocks()
        with self._admin() as a:
            a.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.Identifier(self.owner), sql.Literal(self.password)))
            self._roles_made = True
            a.execute(substitute(blocks[0], **self._names("postgres")))
            row = a.execute("SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, rolbypassrls FROM pg_roles"
                            " WHERE rolname = %s", (self.bot,)).fetchone()
        if row is None or dict(row) != {"rolsuper": False, "rolcreatedb": False, "rolcreaterole": False,
                                        "rolcanlogin": True, "rolbypassrls": False}:
            raise AssertionError(f"the README's first block must create the bot's login role, an ordinary one: {row}")

    def world(self, key_type: str) -> PlatformWorld:
        """The world of ``key_type``, reset to how it was built."""
        if key_type not in KEY_TYPES:
            raise ValueError(key_type)
        pw = self.worlds.get(key_type)
        if pw is None:
            pw = self.worlds[key_type] = self._build(key_type)
        pw.reset()
        return pw

    def _build(self, key_type: str) -> PlatformWorld:
        self._make_roles()
        dbname = f"{self.prefix}_{key_type}"
        with self._admin() as a:
            a.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), sql.Identifier(self.owner)))
            self._databases.append(dbname)
            a.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(dbname)))
        with self._admin(dbname) as a:
            # PostgreSQL 15's public schema belongs to the database's owner; nobody else may use it unless granted.
            a.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        owner_url = with_login(self.admin, user=self.owner, password=self.password, dbname=dbname)
        models = self.root / key_type / "models"
        clients = clients_for(key_type)
        with psycopg.connect(owner_url, row_factory=dict_row) as o:
            generated = _generate_market_and_models(o, models)
            for stmt in platform_ddl(key_type):
                o.execute(stmt)
            _insert_platform_rows(o, clients, key_type)
            o.execute("DROP SCHEMA generator CASCADE")
            o.commit()
        blocks = readme_sql_blocks()
        with self._admin(dbname) as a:
            a.execute(substitute(blocks[1], **self._names(dbname)))
        bot_url = with_login(self.admin, user=self.bot, password=self.password, dbname=dbname)
        migrate(bot_url)
        with psycopg.connect(bot_url, autocommit=True) as b:
            for block in blocks[2:]:
                b.execute(substitute(block, **self._names(dbname)))
        with self._admin(dbname) as a:
            a.execute("CREATE SCHEMA test_snapshot")
            for table in MUTABLE:
                a.execute(f"CREATE TABLE test_snapshot.{table} AS SELECT * FROM public.{table}")
        return PlatformWorld(
            key_type=key_type, dbname=dbname, admin_url=with_login(self.admin, dbname=dbname), owner_url=owner_url,
            bot_url=bot_url, bot_role=self.bot, features_role=self.features, owner_role=self.owner,
            models_dir=models, world=generated, clients=clients,
        )

    def close(self) -> None:
        with self._admin() as a:
            for name in self._databases:
                a.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            self._databases.clear()
            self.worlds.clear()
            if self._roles_made:
                for role in (self.bot, self.features, self.owner):
                    a.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
                self._roles_made = False


def _generate_market_and_models(o: psycopg.Connection, models: Path) -> demo_world.World:
    """demo_world's market and trained models, built in a scratch schema; ``daily_bars`` and the feature view
    (with its unique index) then move to ``public``. The scratch schema is dropped by the caller."""
    o.execute("CREATE SCHEMA generator")
    o.execute("SELECT set_config('search_path', 'generator', false)")
    generated = demo_world.build_world(o, models, size="test", seed=SEED)
    o.execute("SELECT set_config('search_path', 'public', false)")
    o.execute("ALTER TABLE generator.daily_bars SET SCHEMA public")
    o.execute(f"ALTER MATERIALIZED VIEW generator.{demo_world.FEATURE_VIEW} SET SCHEMA public")
    return generated


def _insert_platform_rows(o: psycopg.Connection, clients: list[Client], key_type: str) -> None:
    for c in clients:
        if c.max_position_pct is None:
            o.execute("INSERT INTO clients (client_id, name, active) VALUES (%s, %s, %s)",
                      (c.client_id, c.name, c.active))
        else:
            o.execute("INSERT INTO clients (client_id, name, active, region) VALUES (%s, %s, %s, 'APAC')",
                      (c.client_id, c.name, c.active))
        if c.settings is None:
            continue
        if c.max_position_pct is None:
            o.execute("INSERT INTO client_settings (client_id, auto_rebalance, require_manual_approval)"
                      " VALUES (%s, %s, %s)", (c.client_id, *c.settings))
        else:
            o.execute("INSERT INTO client_settings (client_id, auto_rebalance, require_manual_approval,"
                      " max_position_pct, risk_profile) VALUES (%s, %s, %s, %s, 'aggressive')",
                      (c.client_id, *c.settings, c.max_position_pct))
    # the generator's trades, each given to one of this world's active clients
    active = [c for c in clients if c.active]
    rows = o.execute("SELECT client_id, ticker, side, quantity, price, executed_at FROM generator.trades"
                     " ORDER BY executed_at").fetchall()
    for r in rows:
        owner = active[int(r["client_id"].lstrip("C")) % len(active)]
        o.execute("INSERT INTO trades (client_id, ticker, side, quantity, price, executed_at)"
                  " VALUES (%s, %s, %s, %s, %s, %s)",
                  (owner.client_id, r["ticker"], r["side"], r["quantity"], r["price"], r["executed_at"]))
    o.execute("INSERT INTO model_deployment_log (model_name, version, deployed_at, deployed_by, deployment_reason,"
              " is_production, is_rollback, spearman_ic, sharpe_ratio)"
              " SELECT model_name, version, deployed_at, deployed_by, deployment_reason, is_production, is_rollback,"
              " spearman_ic, sharpe_ratio FROM generator.model_deployment_log ORDER BY deployed_at")
    if key_type == "uuid":  # a client the platform keyed itself (the column's default)
        o.execute("INSERT INTO clients (name, active) VALUES ('Defaulted Key Ltd', true)")
