"""Trading controls (runbook step 2 and step 6), done right.

* Halt: for every active client, save its own ``auto_rebalance`` / ``require_manual_approval`` and set
  ``false`` / ``true``, in ONE transaction with the halt record (``rollback_bot.trading_halts``, the flag the
  platform reads through ``rollback_bot.trading_state``).
* A halt has holders (an incident, or a person's manual halt). A second holder joins the active halt
  instead of saving the already-halted values over the real ones.
* Resume: a holder lets go; when the last one does, each client's saved values are written back exactly
  (never a blanket true/false). A client whose settings a person changed during the halt is left as the
  person set it, and reported: its values are not the halted ones, or its row is no longer the version the
  halt wrote (PostgreSQL's ``xmin``, kept with the saved values), which also tells a person who set exactly
  the halted values (made a client manual on purpose) from the halt itself. Without the right to read
  ``xmin`` (README, grants) only the values are compared.
* Clients that become active, or are added, while a halt is held are saved and halted too (``sweep``); a client
  a person re-enabled during the halt is reported, and left as the person set it.
* Optional stop command (an argument list, no shell, a minimal environment without the bot's secrets, with a
  timeout that kills its whole process group) instead of the runbook's ``pkill -f``.
* Verification: no trade executed after the halt time, read from a trades table or a trading log. A trades
  source that is configured but missing fails closed (``trades_source_problem``); "no trade source" is said
  explicitly with ``TRADES_TABLE=none``.

The platform's key types are the platform's: ``client_id`` may be ``integer``, ``bigint``, ``text`` or
``uuid``. The saved copy keeps each key as its canonical text (``client_id::text``, a cast that cannot fail
for any type), and every comparison casts the platform's side to text, never the saved side to the
platform's type.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from core import repository as repo
from core.errors import RollbackError
from core.process import SAFE_PATH, kill_group, run_command, scrubbed_env


@dataclass(frozen=True)
class HaltResult:
    halt_id: int
    halted_at: datetime
    joined: bool  # True: trading was already halted, this holder joined it
    clients: int


@dataclass(frozen=True)
class ResumeResult:
    resumed: bool  # False: other holders keep trading halted
    halt_id: int | None
    restored: int = 0
    left_alone: list[str] = field(default_factory=list)
    remaining_holders: list[str] = field(default_factory=list)


def active_halt(conn: psycopg.Connection) -> dict[str, Any] | None:
    return repo.active_halt(conn)


def holders(conn: psycopg.Connection, halt_id: int) -> list[str]:
    return repo.halt_holders(conn, halt_id)


def halt(conn: psycopg.Connection, *, holder: str, actor: str, reason: str) -> HaltResult:
    """Halt automated trading for ``holder``, inside the caller's transaction. Idempotent per holder."""
    # Serialise halts/resumes across processes for the rest of this transaction.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollback_bot.trading'))")
    current = active_halt(conn)
    if current is not None:
        repo.add_halt_holder(conn, current["id"], holder)
        n = repo.saved_settings_count(conn, current["id"])
        return HaltResult(current["id"], current["halted_at"], True, n)
    row = repo.insert_trading_halt(conn, by=actor, reason=reason)
    halt_id = row["id"]
    repo.add_halt_holder(conn, halt_id, holder)
    # Lock the active clients' settings rows, remember them, then halt them.
    saved = conn.execute(
        "INSERT INTO rollback_bot.saved_client_settings (halt_id, client_id, auto_rebalance, require_manual_approval) "
        "SELECT %s, s.client_id::text, s.auto_rebalance, s.require_manual_approval "
        "FROM client_settings s JOIN clients c ON c.client_id = s.client_id WHERE c.active "
        "RETURNING client_id",
        (halt_id,),
    ).fetchall()
    conn.execute(
        "UPDATE client_settings s SET auto_rebalance = false, require_manual_approval = true "
        "FROM rollback_bot.saved_client_settings v "
        "WHERE v.halt_id = %s AND v.client_id = s.client_id::text",
        (halt_id,),
    )
    _remember_versions(conn, halt_id)
    return HaltResult(halt_id, row["halted_at"], False, len(saved))


# Which version of each client_settings row the halt wrote. A later UPDATE by anybody makes a new version, even
# one that writes the same values; locking a row (FOR UPDATE) or freezing it (VACUUM) does not.
_MAY_READ_VERSIONS = "SELECT has_column_privilege('client_settings', 'xmin', 'SELECT') AS ok"


def _remember_versions(conn: psycopg.Connection, halt_id: int, clients: list[str] | None = None) -> None:
    """Keep, with the saved values, the version (``xmin``) of each client_settings row the halt just wrote."""
    if not conn.execute(_MAY_READ_VERSIONS).fetchone()["ok"]:
        return  # values only (README: GRANT SELECT (..., xmin) ON client_settings)
    conn.execute(
        "UPDATE rollback_bot.saved_client_settings v SET halted_version = s.xmin::text FROM client_settings s "
        "WHERE v.halt_id = %s AND v.client_id = s.client_id::text AND NOT v.restored"
        + (" AND v.client_id = ANY(%s)" if clients is not None else ""),
        (halt_id, clients) if clients is not None else (halt_id,),
    )


def release(conn: psycopg.Connection, *, holder: str, actor: str, force: bool = False,
            keep: Collection[str] = ()) -> ResumeResult:
    """``holder`` lets go of the halt; the last one out restores every client's own settings exactly.
    ``force``: every holder lets go but those in ``keep`` (the holders of rollbacks that are not closed)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollback_bot.trading'))")
    current = active_halt(conn)
    if current is None:
        return ResumeResult(False, None)
    halt_id = current["id"]
    if force:
        repo.remove_halt_holders_except(conn, halt_id, keep)
    else:
        repo.remove_halt_holder(conn, halt_id, holder)
    remaining = holders(conn, halt_id)
    if remaining:
        return ResumeResult(False, halt_id, remaining_holders=remaining)
    # Clients whose settings somebody changed during the halt keep that person's choice: other values than the
    # halted ones, or (when the halt could keep it) another version of the row than the one the halt wrote.
    changed = ("s.auto_rebalance IS DISTINCT FROM false OR s.require_manual_approval IS DISTINCT FROM true"
               + (" OR s.xmin::text IS DISTINCT FROM coalesce(v.halted_version, s.xmin::text)"
                  if conn.execute(_MAY_READ_VERSIONS).fetchone()["ok"] else ""))
    left = [
        r["client_id"]
        for r in conn.execute(
            "SELECT v.client_id FROM rollback_bot.saved_client_settings v "
            "JOIN client_settings s ON s.client_id::text = v.client_id "
            f"WHERE v.halt_id = %s AND NOT v.restored AND ({changed}) ORDER BY v.client_id",
            (halt_id,),
        )
    ]
    restored = conn.execute(
        "UPDATE client_settings s SET auto_rebalance = v.auto_rebalance, "
        "require_manual_approval = v.require_manual_approval "
        "FROM rollback_bot.saved_client_settings v "
        "WHERE v.halt_id = %s AND v.client_id = s.client_id::text AND NOT v.restored "
        f"AND NOT ({changed})",
        (halt_id,),
    ).rowcount
    repo.mark_saved_settings_restored(conn, halt_id)
    repo.end_trading_halt(conn, halt_id, by=actor)
    return ResumeResult(True, halt_id, restored=restored, left_alone=left)


@dataclass(frozen=True)
class SweepResult:
    halt_id: int | None
    added: list[str] = field(default_factory=list)      # clients saved and halted by this sweep
    reenabled: list[str] = field(default_factory=list)  # halted clients a person switched back on


def sweep(conn: psycopg.Connection) -> SweepResult:
    """While a halt is held: save and halt every active client the halt does not cover yet (activated or added
    after it began), and list the halted clients a person re-enabled. In the caller's transaction."""
    if active_halt(conn) is None:
        return SweepResult(None)
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollback_bot.trading'))")
    current = active_halt(conn)
    if current is None:
        return SweepResult(None)
    halt_id = current["id"]
    added = [r["client_id"] for r in conn.execute(
        "INSERT INTO rollback_bot.saved_client_settings (halt_id, client_id, auto_rebalance, require_manual_approval) "
        "SELECT %s, s.client_id::text, s.auto_rebalance, s.require_manual_approval "
        "FROM client_settings s JOIN clients c ON c.client_id = s.client_id WHERE c.active "
        "ON CONFLICT (halt_id, client_id) DO NOTHING RETURNING client_id",
        (halt_id,),
    ).fetchall()]
    if added:
        conn.execute(
            "UPDATE client_settings s SET auto_rebalance = false, require_manual_approval = true "
            "WHERE s.client_id::text = ANY(%s)",
            (added,),
        )
        _remember_versions(conn, halt_id, added)
    reenabled = [r["client_id"] for r in conn.execute(
        "SELECT v.client_id FROM rollback_bot.saved_client_settings v "
        "JOIN client_settings s ON s.client_id::text = v.client_id "
        "WHERE v.halt_id = %s AND NOT v.restored AND "
        "(s.auto_rebalance IS DISTINCT FROM false OR s.require_manual_approval IS DISTINCT FROM true) "
        "ORDER BY v.client_id",
        (halt_id,),
    )]
    return SweepResult(halt_id, sorted(added), reenabled)


def is_halted(conn: psycopg.Connection) -> bool:
    return bool(repo.trading_state(conn)["halted"])


# The stop command runs as core.process runs every configured command (the names are kept for callers).
STOP_COMMAND_PATH = SAFE_PATH
stop_command_env = scrubbed_env
_kill_group = kill_group


def run_stop_command(argv: list[str] | None, timeout: float) -> str | None:
    """Run the configured stop command (no shell, a scrubbed environment, a session of its own). On timeout its
    whole process group is killed, so nothing it started lives on. Returns a note, or raises RollbackError."""
    if not argv:
        return None
    try:
        run = run_command(argv, timeout=timeout, tail_lines=1)
    except OSError as exc:
        raise RollbackError(f"the trading stop command could not run: {exc.strerror}") from None
    if run.timed_out:
        raise RollbackError(f"the trading stop command did not finish within {timeout:g} s (its process group"
                            " was killed)")
    if run.returncode != 0:
        tail = run.tail[-1:] or [""]
        raise RollbackError(f"the trading stop command exited with {run.returncode}: {tail[0].strip()[:200]}")
    return f"stop command exited 0 ({argv[0]})"


NO_TRADES_TABLE = "none"


def has_trades_table(table: str) -> bool:
    return table.strip().lower() != NO_TRADES_TABLE


def trades_source_problem(conn: psycopg.Connection, settings: Any) -> str | None:
    """Why the configured trades source cannot be read (None: it can, or ``TRADES_TABLE=none`` with no
    ``TRADING_LOG`` says explicitly that there is none). A missing source is never read as "0 trades"."""
    problems = []
    table, column = settings.trades_table, settings.trades_time_column
    if has_trades_table(table):
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AS found,"
            " (SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s"
            "  AND attnum > 0 AND NOT attisdropped) AS columns",
            (table, table, column),
        ).fetchone()
        if not row["found"]:
            problems.append(f"the trades table {table} does not exist (TRADES_TABLE; set TRADES_TABLE=none if the"
                            " platform has no trades table)")
        elif not row["columns"]:
            problems.append(f"the trades table {table} has no column {column} (TRADES_TIME_COLUMN)")
        elif not conn.execute("SELECT has_column_privilege(%s, %s, 'SELECT') AS ok", (table, column)).fetchone()["ok"]:
            # the count reads only the time column: a column grant is enough
            problems.append(f"the bot may not read {column} of the trades table {table} (grant SELECT)")
    log_path = settings.trading_log
    if log_path is not None:
        path = Path(log_path)
        if not path.is_file():
            problems.append(f"the trading log {path} does not exist (TRADING_LOG)")
        elif not os.access(path, os.R_OK):
            problems.append(f"the trading log {path} cannot be read (TRADING_LOG)")
    return "; ".join(problems) or None


def has_trades_source(settings: Any) -> bool:
    return has_trades_table(settings.trades_table) or settings.trading_log is not None


def trades_after(
    conn: psycopg.Connection, since: datetime, *, table: str, time_column: str, log_path: Path | None = None
) -> int:
    """Trades executed after ``since``: from the trades table, or (when configured) the trading log too."""
    parts = table.split(".")
    count = 0
    exists = has_trades_table(table) and conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL AS ok", (table,)).fetchone()["ok"]
    if exists:
        query = sql.SQL("SELECT count(*) AS n FROM {} WHERE {} > %s").format(
            sql.Identifier(*parts), sql.Identifier(time_column)
        )
        count += conn.execute(query, (since,)).fetchone()["n"]
    if log_path is not None:
        count += _log_trades_after(log_path, since)
    return count


def _log_trades_after(path: Path, since: datetime) -> int:
    """Count lines of the trading log that record an executed trade stamped after ``since``.

    A line is a trade when it contains "TRADE" or "EXECUTED" and starts with an ISO-8601 timestamp.
    """
    if not path.is_file():
        return 0
    n = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            upper = line.upper()
            if "TRADE" not in upper and "EXECUTED" not in upper:
                continue
            stamp = line.split(" ", 1)[0].strip().replace("Z", "+00:00")
            try:
                at = datetime.fromisoformat(stamp)
            except ValueError:
                continue
            if at.tzinfo is None:
                at = at.replace(tzinfo=since.tzinfo)
            if at > since:
                n += 1
    return n
