"""Database checks of `rollback-bot doctor` (see core.doctor): the platform's tables, columns, types and
privileges, the feature view's refresh, the bot's own schema, and the trades table.

Nothing here changes anything, and nothing raises for a broken platform: every finding is a ``Check`` whose
``fix`` says what to do. Privileges are those of the connecting role (``current_user``). The file checks are in
``core.doctor_files``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from core.doctor import Check
from core.doctor_files import trades_log_checks
from core.trading import has_trades_table
from core.platform import FEATURE_VIEW

TEXT = frozenset({"text", "character varying", "character", "bpchar"})
KEY = frozenset({"integer", "bigint", "smallint", "text", "character varying", "uuid"})
BOOL = frozenset({"boolean"})
DATE = frozenset({"date"})
TIME = frozenset({"timestamp with time zone", "timestamp without time zone"})
NUMBER = frozenset({"double precision", "real", "numeric"})
BOT_SCHEMA = "rollback_bot"


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: dict[str, frozenset[str]]
    select: bool = True
    insert: bool = False                # on every listed column
    update: tuple[str, ...] = ()        # UPDATE on these columns
    kinds: str = "rpvmf"                # pg_class.relkind values that will do
    rollback: bool = True


PLATFORM_TABLES = (
    TableSpec("model_deployment_log", {
        "model_name": TEXT, "version": TEXT, "deployed_at": TIME, "deployed_by": TEXT, "deployment_reason": TEXT,
        "is_production": BOOL, "is_rollback": BOOL, "spearman_ic": NUMBER, "sharpe_ratio": NUMBER,
    }, insert=True, update=("is_production",), kinds="rp"),
    TableSpec("clients", {"client_id": KEY, "active": BOOL}),
    TableSpec("client_settings", {"client_id": KEY, "auto_rebalance": BOOL, "require_manual_approval": BOOL},
              update=("auto_rebalance", "require_manual_approval"), kinds="rp"),
    TableSpec("daily_bars", {"date": DATE, "ticker": TEXT}, rollback=False),
    TableSpec(FEATURE_VIEW, {"date": DATE, "ticker": TEXT, "return_1d": NUMBER}),
)
KIND_NAMES = {"r": "a table", "p": "a partitioned table", "v": "a view", "m": "a materialized view",
              "f": "a foreign table", "S": "a sequence", "i": "an index", "c": "a composite type"}


@dataclass
class Relation:
    name: str                         # as configured
    oid: int | None = None
    qualified: str = ""               # schema.name
    kind: str = ""
    owner: str = ""
    populated: bool = True
    select: bool = False              # SELECT on the whole relation
    columns: dict[str, str] = field(default_factory=dict)                           # column -> (base) type
    column_privileges: dict[str, dict[str, bool]] = field(default_factory=dict)     # column -> privilege -> held


# One static statement (prepared after a few runs): a rollback's pre-flight runs it right before the halt.
_RELATIONS = (
    "WITH r AS (SELECT name, to_regclass(name) AS oid FROM unnest(%s::text[]) AS name)"
    " SELECT r.name, r.oid::bigint AS oid, current_user::text AS role,"
    " quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS qualified, c.relkind::text AS kind,"
    " pg_get_userbyid(c.relowner)::text AS owner, c.relispopulated AS populated,"
    " coalesce(has_table_privilege(r.oid, 'SELECT'), false) AS t_select, a.attname::text AS col,"
    " format_type(coalesce(nullif(t.typbasetype, 0), a.atttypid), NULL) AS type,"
    " coalesce(has_column_privilege(r.oid, a.attnum, 'SELECT'), false) AS c_select,"
    " coalesce(has_column_privilege(r.oid, a.attnum, 'INSERT'), false) AS c_insert,"
    " coalesce(has_column_privilege(r.oid, a.attnum, 'UPDATE'), false) AS c_update"
    " FROM r LEFT JOIN pg_class c ON c.oid = r.oid LEFT JOIN pg_namespace n ON n.oid = c.relnamespace"
    " LEFT JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped"
    " LEFT JOIN pg_type t ON t.oid = a.atttypid"
)


def _relations(conn: psycopg.Connection, names: Sequence[str]) -> tuple[dict[str, Relation], str]:
    """The relations ``names`` resolve to through the search_path, with their columns' (base) types and the
    connecting role's privileges on them; and that role."""
    out = {n: Relation(n) for n in names}
    role = ""
    for row in conn.execute(_RELATIONS, (list(dict.fromkeys(names)),)).fetchall():
        role = row["role"]
        rel = out[row["name"]]
        if row["oid"] is None or row["kind"] is None:
            continue
        rel.oid, rel.qualified, rel.kind, rel.owner = row["oid"], row["qualified"], row["kind"], row["owner"]
        rel.populated, rel.select = bool(row["populated"]), bool(row["t_select"])
        if row["col"] is not None:
            rel.columns[row["col"]] = row["type"]
            rel.column_privileges[row["col"]] = {"SELECT": row["c_select"], "INSERT": row["c_insert"],
                                                 "UPDATE": row["c_update"]}
    return out, role


def _missing_relation(name: str) -> str:
    return f"{name} does not exist in the connection's search_path (or the role may not use its schema)"


def _ident(name: str) -> str:
    return name if name.replace("_", "a").isalnum() and name == name.lower() else '"' + name.replace('"', '""') + '"'


def _held(rel: Relation, privilege: str, columns: Sequence[str]) -> bool:
    """``privilege`` on every one of ``columns`` (on the whole relation when there are none)."""
    if not columns:
        return rel.select if privilege == "SELECT" else False
    return all(rel.column_privileges.get(c, {}).get(privilege, False) for c in columns)


# ------------------------------------------------------------------------------------------ database


def database_checks(conn: psycopg.Connection, settings: Any = None, *, for_rollback: bool = False) -> list[Check]:
    """Tables, columns, types and privileges of the platform; the feature view's refresh; the bot's schema; with
    ``settings``, the trades source. ``for_rollback``: only what a rollback needs (its pre-flight)."""
    specs = [s for s in PLATFORM_TABLES if s.rollback or not for_rollback]
    table = settings is not None and has_trades_table(settings.trades_table)
    names = [s.name for s in specs] + ([settings.trades_table] if table else [])
    rels, role = _relations(conn, names)
    checks: list[Check] = [_table_check(spec, rels[spec.name]) for spec in specs]
    checks += [_privilege_check(spec, rels[spec.name], role) for spec in specs if rels[spec.name].oid is not None]
    checks += _client_key_check(rels)
    if not for_rollback:
        checks += _refresh_checks(conn, rels[FEATURE_VIEW], role)
    checks.append(bot_schema_check(conn, role))
    if table:
        checks.append(_trades_table_check(rels[settings.trades_table], settings.trades_time_column, role))
    elif settings is not None and settings.trading_log is None:
        checks.append(Check("trades source", True, "none (TRADES_TABLE=none, no TRADING_LOG): said explicitly; the"
                            " halt is then not checked against executed trades", area="trades", rollback=True))
    if settings is not None:
        checks += trades_log_checks(settings)
    return checks


def _table_check(spec: TableSpec, rel: Relation) -> Check:
    name = f"table {spec.name}"
    if rel.oid is None:
        return Check(name, False, _missing_relation(spec.name),
                     "create it, or put its schema on the bot role's search_path and grant USAGE on that schema",
                     rollback=spec.rollback)
    problems = []
    if rel.kind not in spec.kinds:
        problems.append(f"{rel.qualified} is {KIND_NAMES.get(rel.kind, rel.kind)}, expected "
                        + " or ".join(KIND_NAMES[k] for k in spec.kinds[:2]))
    columns = rel.columns
    for col, types in spec.columns.items():
        if col not in columns:
            problems.append(f"column {col} is missing")
        elif columns[col] not in types:
            problems.append(f"column {col} is {columns[col]}, expected {' or '.join(sorted(types))}")
    if rel.kind == "m" and not rel.populated:
        problems.append("the materialized view was never populated (created WITH NO DATA)")
    if problems:
        fix = "give the platform's table the columns the runbook uses (the bot never alters the platform's tables)"
        if rel.kind == "m" and not rel.populated:
            fix = f"REFRESH MATERIALIZED VIEW {rel.qualified} once (as its owner)"
        return Check(name, False, f"{rel.qualified}: " + "; ".join(problems), fix, rollback=spec.rollback)
    keys = "" if "client_id" not in spec.columns else f"; client_id is {columns['client_id']}"
    return Check(name, True, f"{rel.qualified} has the {len(spec.columns)} columns the bot uses, of fitting types{keys}",
                 rollback=spec.rollback)


def _privilege_check(spec: TableSpec, rel: Relation, role: str) -> Check:
    """SELECT (the feature view: on all of it, since models choose their feature columns), INSERT, UPDATE (col)."""
    cols = [c for c in spec.columns if c in rel.columns]
    wanted: list[tuple[str, str | None, bool]] = []  # (privilege, column, held)
    if spec.select:
        wanted.append(("SELECT", None, rel.select or (spec.name != FEATURE_VIEW and _held(rel, "SELECT", cols))))
    if spec.insert:
        wanted.append(("INSERT", None, _held(rel, "INSERT", cols)))
    wanted += [("UPDATE", c, _held(rel, "UPDATE", [c])) for c in spec.update if c in cols]
    missing = [(p, c) for p, c, held in wanted if not held]
    name = f"privileges on {spec.name}"
    if missing:
        text = _privilege_text(missing)
        return Check(name, False, f"the role {role} lacks {text} on {rel.qualified}",
                     f"GRANT {text} ON {rel.qualified} TO {_ident(role)}", rollback=spec.rollback)
    return Check(name, True, f"{role} may {_privilege_text([(p, c) for p, c, _ in wanted])}", rollback=spec.rollback)


def _privilege_text(privileges: Sequence[tuple[str, str | None]]) -> str:
    table = [p for p, c in privileges if c is None]
    columns = [c for p, c in privileges if c is not None]
    return ", ".join(table + ([f"UPDATE ({', '.join(columns)})"] if columns else []))


def _client_key_check(rels: dict[str, Relation]) -> list[Check]:
    """clients.client_id and client_settings.client_id are joined by the halt: they must compare."""
    a, b = (rels["clients"].columns or {}).get("client_id"), (rels["client_settings"].columns or {}).get("client_id")
    if a is None or b is None:
        return []

    def family(t: str) -> str:
        return "number" if t in ("integer", "bigint", "smallint") else "text" if t in TEXT else t

    if family(a) != family(b):
        return [Check("client keys", False, f"clients.client_id is {a} but client_settings.client_id is {b}:"
                      " the halt joins them", "give both the same type", rollback=True)]
    return [Check("client keys", True, f"clients.client_id ({a}) joins client_settings.client_id ({b})",
                  rollback=True)]


def _refresh_checks(conn: psycopg.Connection, rel: Relation, role: str) -> list[Check]:
    """Refreshing the feature view (the *Refresh feature view* quick fix) needs its owner's rights (MAINTAIN on
    PostgreSQL 17+) and, to refresh without locking readers out, a unique index without a WHERE clause."""
    if rel.oid is None:
        return []
    if rel.kind != "m":
        return [Check(f"refresh of {FEATURE_VIEW}", True,
                      f"{rel.qualified} is {KIND_NAMES.get(rel.kind, rel.kind)}: there is nothing to refresh")]
    row = conn.execute(
        "SELECT pg_has_role(current_user, c.relowner, 'USAGE') AS owner,"
        " current_setting('server_version_num')::int AS version,"
        " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid"
        "         AND i.indpred IS NULL AND i.indexprs IS NULL) AS unique_index"
        " FROM pg_class c WHERE c.oid = %s::oid", (rel.oid,),
    ).fetchone()
    may = bool(row["owner"])
    if not may and row["version"] >= 170000:
        may = bool(conn.execute("SELECT has_table_privilege(%s::oid, 'MAINTAIN') AS m", (rel.oid,)).fetchone()["m"])
    grant = (f"GRANT MAINTAIN ON {rel.qualified} TO {_ident(role)}" if row["version"] >= 170000
             else f"ALTER MATERIALIZED VIEW {rel.qualified} OWNER TO {_ident(role)} (or GRANT {_ident(rel.owner)}"
                  f" TO {_ident(role)})")
    checks = [
        Check(f"refresh of {FEATURE_VIEW}", True, f"{role} may refresh {rel.qualified}") if may else
        Check(f"refresh of {FEATURE_VIEW}", False,
              f"the role {role} may not refresh {rel.qualified} (owned by {rel.owner}), so the *Refresh feature view*"
              " quick fix cannot run", grant),
    ]
    if row["unique_index"]:
        checks.append(Check(f"unique index of {FEATURE_VIEW}", True,
                            f"{rel.qualified} has a unique index without a WHERE clause (REFRESH … CONCURRENTLY works)"))
    else:
        checks.append(Check(
            f"unique index of {FEATURE_VIEW}", False,
            f"{rel.qualified} has no unique index without a WHERE clause on plain columns, so it cannot be refreshed"
            " concurrently (only with the refresh that locks readers out)",
            f"CREATE UNIQUE INDEX CONCURRENTLY ON {rel.qualified} (date, ticker)"))
    return checks


@functools.lru_cache(maxsize=1)
def _migration_versions() -> tuple[int, ...]:
    from core.db import _migration_files

    return tuple(v for v, _, _ in _migration_files())


_BOT_SCHEMA = (
    "SELECT n.oid IS NOT NULL AS present, coalesce(has_schema_privilege(n.oid, 'USAGE'), false) AS usage,"
    " EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid AND c.relname = 'schema_migrations')"
    " AS migrations,"
    " ARRAY(SELECT c.relname::text FROM pg_class c WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'v', 'S')"
    "   AND NOT CASE c.relkind WHEN 'S' THEN has_sequence_privilege(c.oid, 'USAGE')"
    "   WHEN 'v' THEN has_table_privilege(c.oid, 'SELECT')"
    "   ELSE has_table_privilege(c.oid, 'SELECT') AND has_table_privilege(c.oid, 'INSERT')"
    "    AND has_table_privilege(c.oid, 'UPDATE') AND has_table_privilege(c.oid, 'DELETE') END"
    "   ORDER BY 1) AS lacking"
    " FROM (SELECT to_regnamespace(%s) AS oid) n"
)


def bot_schema_check(conn: psycopg.Connection, role: str) -> Check:
    """The bot's own schema: present, usable, migrated, and its tables readable and writable by the role."""
    name = f"schema {BOT_SCHEMA}"
    migrate = "run `rollback-bot db migrate` as the schema's owner"
    row = conn.execute(_BOT_SCHEMA, (BOT_SCHEMA,)).fetchone()
    if not row["present"]:
        return Check(name, False, f"the bot's schema {BOT_SCHEMA} does not exist", migrate, rollback=True)
    if not row["usage"]:
        return Check(name, False, f"the role {role} may not use the schema {BOT_SCHEMA}",
                     f"GRANT USAGE ON SCHEMA {BOT_SCHEMA} TO {_ident(role)}", rollback=True)
    if row["lacking"]:
        names = ", ".join(row["lacking"][:8])
        return Check(name, False, f"the role {role} may not read and write {names} in {BOT_SCHEMA}",
                     f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {BOT_SCHEMA} TO {_ident(role)};"
                     f" GRANT USAGE ON ALL SEQUENCES IN SCHEMA {BOT_SCHEMA} TO {_ident(role)}", rollback=True)
    done = set()
    if row["migrations"]:
        done = {r["version"] for r in conn.execute(f"SELECT version FROM {BOT_SCHEMA}.schema_migrations")}
    pending = [v for v in _migration_versions() if v not in done]
    if pending:
        return Check(name, False, f"migrations {', '.join(f'{v:03d}' for v in pending)} are not applied", migrate,
                     rollback=True)
    return Check(name, True, f"{BOT_SCHEMA} is migrated and {role} may read and write it", rollback=True)


# ------------------------------------------------------------------------------------------ trades source


def _trades_table_check(rel: Relation, column: str, role: str) -> Check:
    """The table the halt is verified against: TRADES_TABLE, its TRADES_TIME_COLUMN a timestamp, readable."""
    name = "trades source TRADES_TABLE"
    if rel.oid is None:
        return Check(name, False, f"TRADES_TABLE {_missing_relation(rel.name)}, so no trade after a halt can be"
                     " seen", "set TRADES_TABLE (and TRADES_TIME_COLUMN) to the platform's table of executed"
                     " trades, or grant USAGE on its schema", area="trades", rollback=True)
    problems, fixes = [], []
    kind = rel.columns.get(column)
    if kind is None or kind not in TIME:
        problems.append(f"it has no column {column} (TRADES_TIME_COLUMN)" if kind is None
                        else f"its column {column} is {kind}, not a timestamp")
        fixes.append("set TRADES_TIME_COLUMN to the column holding each trade's execution time")
    elif not (rel.select or _held(rel, "SELECT", [column])):
        problems.append(f"the role {role} may not read it")
        fixes.append(f"GRANT SELECT ON {rel.qualified} TO {_ident(role)}")
    if problems:
        return Check(name, False, f"{rel.qualified}: " + "; ".join(problems), "; ".join(fixes), area="trades",
                     rollback=True)
    return Check(name, True, f"{rel.qualified} is readable, trades timed by {column} ({kind})", area="trades",
                 rollback=True)
