"""What every diagnostics check shares: thresholds, findings, and the reading helpers."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import date
from typing import Any, Callable, TypeVar

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from core.marketdata import labelled_rows
from core.modelio import Metadata, predict
from core.platform import FEATURE_VIEW, feature_columns

log = logging.getLogger("rollback_bot.diagnostics")

CRITICAL, WARNING = "critical", "warning"
SEVERITY_ORDER = {CRITICAL: 0, WARNING: 1}


@dataclass(frozen=True)
class DiagnosticsConfig:
    """Thresholds of the checks (see the package docstring)."""

    min_days: int = 5
    ic_ratio_floor: float = 0.5
    quantile: float = 0.2
    count_days: int = 7
    trailing_days: int = 20
    ticker_drop: float = 0.10
    log_tail_bytes: int = 8 << 20
    log_last_lines: int = 5
    reference_days: int = 90
    psi_bins: int = 10
    psi_moderate: float = 0.10
    psi_significant: float = 0.25
    level_z: float = 8.0            # a day's cross-sectional median this many robust sd from the reference's ...
    level_spread: float = 4.0       # ... and this many typical cross-sectional IQRs away: a level shift
    level_market_r2: float = 0.5    # a feature whose daily median the market's return explains this well moves with it
    level_min_reference_days: int = 20
    regime_recent_days: int = 30
    regime_prior_days: int = 120
    regime_vol_ratio: float = 1.5
    regime_t_stat: float = 3.0
    connections_busy: float = 0.9   # connections over this share of max_connections
    lock_wait_seconds: float = 30.0
    replication_lag_seconds: float = 60.0


@dataclass(frozen=True)
class Finding:
    severity: str  # "critical" | "warning"
    area: str      # "performance" | "data_quality" | "log" | "drift" | "regime" | "system"
    message: str


def day_text(day: date | None) -> str:
    return day.isoformat() if day else "n/a"


def num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


T = TypeVar("T")


def guarded(conn: psycopg.Connection, fn: Callable[[], T], on_error: Callable[[str], T]) -> T:
    """Run one section in its own transaction (or savepoint); a failure becomes the section's error."""
    try:
        with conn.transaction():
            return fn()
    except Exception as exc:  # noqa: BLE001 - a section reports its failure instead of crashing the report
        log.warning("diagnostics section failed", exc_info=True)
        text = str(exc).strip().splitlines()
        return on_error((text[0] if text else type(exc).__name__)[:300])


def rows(conn: psycopg.Connection, query: Any, params: Any = None) -> list[tuple]:
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(query, params).fetchall()


def view_dates(conn: psycopg.Connection, as_of: date | None, limit: int, *, before: date | None = None) -> list[date]:
    """The latest ``limit`` feature dates on or before ``as_of`` (and strictly before ``before``), oldest first."""
    query = sql.SQL(
        "SELECT DISTINCT date FROM {v} WHERE (%(a)s::date IS NULL OR date <= %(a)s::date)"
        " AND (%(b)s::date IS NULL OR date < %(b)s::date) ORDER BY date DESC LIMIT %(n)s"
    ).format(v=sql.Identifier(FEATURE_VIEW))
    return sorted(r[0] for r in rows(conn, query, {"a": as_of, "b": before, "n": limit}))


def bar_dates(conn: psycopg.Connection, as_of: date | None, *, since: date | None = None,
              limit: int | None = None) -> list[date]:
    query = ("SELECT DISTINCT date FROM daily_bars WHERE (%(a)s::date IS NULL OR date <= %(a)s::date)"
             " AND (%(s)s::date IS NULL OR date >= %(s)s::date) ORDER BY date DESC")
    if limit is not None:
        query += " LIMIT %(n)s"
    return sorted(r[0] for r in rows(conn, query, {"a": as_of, "s": since, "n": limit}))


def features_of(conn: psycopg.Connection, meta: Metadata | None, booster: Any = None) -> list[str]:
    if meta is not None:
        return list(meta.features)
    if booster is not None and booster.feature_names:
        return list(booster.feature_names)
    return sorted(feature_columns(conn))


def recent_predictions(
    conn: psycopg.Connection, booster: Any, features: list[str], *, days: int, as_of: date | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dates, predictions, realized)`` of ``booster`` over the last ``days`` realized feature dates up to
    ``as_of`` (``core.marketdata.labelled_rows``)."""
    data = labelled_rows(conn, features, last_days=days, as_of=as_of)
    if len(data) == 0:
        return data.dates, np.empty(0), data.realized
    return data.dates, np.asarray(predict(booster, features, data.X), dtype=np.float64), data.realized
