"""The runbook's "refresh feature view" fix: ``REFRESH MATERIALIZED VIEW [CONCURRENTLY] ml_training_features``.

``refresh_feature_view`` checks first whether the refresh can run (the view exists, the bot's role owns it, a
concurrent refresh has a usable unique index and a populated view) and says why not in plain words; it never
raises for a refresh that cannot run. The fix incident around it (request, approval, run) is ``core.fixes``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from core.platform import FEATURE_VIEW

__all__ = ["REFRESH_VIEW", "REFRESH_VIEW_BLOCKING", "FixResult", "refresh_feature_view"]

REFRESH_VIEW = "refresh_feature_view"
REFRESH_VIEW_BLOCKING = "refresh_feature_view_blocking"


@dataclass(frozen=True)
class FixResult:
    fix: str
    ok: bool
    message: str
    concurrently: bool
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)



def _view_state(conn: psycopg.Connection) -> tuple[bool, bool, bool] | None:
    """(populated, has a usable unique index, owned by the current user) of the feature view; None if absent."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            "SELECT c.relispopulated,"
            " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid"
            "         AND i.indpred IS NULL AND i.indexprs IS NULL),"
            " pg_has_role(current_user, c.relowner, 'USAGE')"
            " FROM pg_class c WHERE c.oid = to_regclass(%s) AND c.relkind = 'm'",
            (FEATURE_VIEW,),
        ).fetchone()
    return None if row is None else (bool(row[0]), bool(row[1]), bool(row[2]))


def _latest(conn: psycopg.Connection) -> tuple[date | None, date | None]:
    with conn.cursor(row_factory=tuple_row) as cur:
        view = cur.execute(sql.SQL("SELECT max(date) FROM {}").format(sql.Identifier(FEATURE_VIEW))).fetchone()[0]
        bars = cur.execute("SELECT max(date) FROM daily_bars").fetchone()[0]
    return view, bars


def refresh_feature_view(conn: psycopg.Connection, *, concurrently: bool = True) -> FixResult:
    """Refresh ``ml_training_features`` (found through the search_path) and say what changed.

    Runs in its own transaction, or a savepoint of the caller's. Never raises for a refresh that cannot run:
    the result's ``ok`` is False and its ``message`` says why and what to do instead.
    """
    fix = REFRESH_VIEW if concurrently else REFRESH_VIEW_BLOCKING
    state = _view_state(conn)
    if state is None:
        return FixResult(fix, False, f"{FEATURE_VIEW} is not a materialized view in this database's search_path.",
                         concurrently)
    populated, unique_index, owner = state
    if not owner:
        return FixResult(fix, False, f"The bot's database role does not own {FEATURE_VIEW}, and only its owner may "
                                     "refresh it; ask the platform team to refresh it or grant ownership.",
                         concurrently)
    if concurrently and not unique_index:
        return FixResult(fix, False, f"{FEATURE_VIEW} cannot be refreshed concurrently: it has no unique index"
                                     " without a WHERE clause on plain columns (e.g. on (date, ticker)). Create one,"
                                     " or use the blocking refresh, which locks readers out of the view while it"
                                     " runs.", concurrently)
    if concurrently and not populated:
        return FixResult(fix, False, f"{FEATURE_VIEW} cannot be refreshed concurrently: it has never been populated"
                                     " (created WITH NO DATA). Use the blocking refresh once, which locks readers"
                                     " out of the view while it runs.", concurrently)
    before_view, bars = (None, None) if not populated else _latest(conn)
    stmt = sql.SQL("REFRESH MATERIALIZED VIEW {}{}").format(
        sql.SQL("CONCURRENTLY ") if concurrently else sql.SQL(""), sql.Identifier(FEATURE_VIEW)
    )
    started = time.perf_counter()
    try:
        with conn.transaction():
            with conn.cursor(row_factory=tuple_row) as cur:
                cur.execute(stmt)
    except psycopg.errors.InsufficientPrivilege as exc:
        return FixResult(fix, False, f"Not allowed to refresh {FEATURE_VIEW}: {exc.diag.message_primary}.",
                         concurrently)
    except (psycopg.errors.ObjectNotInPrerequisiteState, psycopg.errors.FeatureNotSupported) as exc:
        hint = f" {exc.diag.message_hint}" if exc.diag.message_hint else ""
        return FixResult(fix, False, f"{FEATURE_VIEW} cannot be refreshed concurrently: {exc.diag.message_primary}."
                                     f"{hint} The blocking refresh would work but locks readers out of the view.",
                         concurrently)
    except psycopg.errors.LockNotAvailable as exc:
        return FixResult(fix, False, f"{FEATURE_VIEW} is busy: {exc.diag.message_primary}. Try again shortly.",
                         concurrently)
    seconds = time.perf_counter() - started
    after_view, bars = _latest(conn)
    detail = {"view_latest_before": _iso(before_view), "view_latest_after": _iso(after_view),
              "bars_latest": _iso(bars)}
    how = "concurrently" if concurrently else "(blocking readers)"
    message = f"Refreshed {FEATURE_VIEW} {how} in {seconds:.1f} s; its latest date is now {_iso(after_view)}"
    if before_view != after_view:
        message += f" (was {_iso(before_view)})"
    if bars is not None and (after_view is None or after_view < bars):
        message += f"; still behind daily_bars ({bars.isoformat()}): the view's query leaves those days out"
    return FixResult(fix, True, message + ".", concurrently, seconds, detail)


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None
