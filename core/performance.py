"""Live performance of a model on recent data: its predictions on ``ml_training_features`` against the
realised next-day returns (the next row's ``return_1d`` of the same ticker), as daily Spearman IC and the
Sharpe ratio of an equal-weight long-short (top/bottom 20 %) portfolio (``core.metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from core import metrics
from core.modelio import predict
from core.platform import FEATURE_VIEW


@dataclass(frozen=True)
class RecentData:
    dates: np.ndarray  # datetime64[D] per row
    X: np.ndarray
    y_next: np.ndarray
    first: date | None
    last: date | None


def recent_rows(conn: psycopg.Connection, features: list[str], *, days: int = 20) -> RecentData:
    """Rows of the last ``days`` feature dates whose next-day return is already known."""
    query = sql.SQL(
        "WITH d AS (SELECT DISTINCT date FROM {view} ORDER BY date DESC LIMIT %s), "
        "f AS (SELECT v.date, v.ticker, {cols}, lead(v.return_1d) OVER (PARTITION BY v.ticker ORDER BY v.date) AS y "
        "      FROM {view} v WHERE v.date >= (SELECT min(date) FROM d)) "
        "SELECT * FROM f WHERE y IS NOT NULL ORDER BY date, ticker"
    ).format(
        view=sql.Identifier(FEATURE_VIEW),
        cols=sql.SQL(", ").join(sql.SQL("v.") + sql.Identifier(f) for f in features),
    )
    with conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
        rows = cur.execute(query, (days + 1,)).fetchall()
    if not rows:
        empty = np.empty((0, len(features)))
        return RecentData(np.array([], dtype="datetime64[D]"), empty, np.array([]), None, None)
    dates = np.array([r[0] for r in rows], dtype="datetime64[D]")
    X = np.array([[np.nan if v is None else float(v) for v in r[2:-1]] for r in rows], dtype=float)
    y = np.array([np.nan if r[-1] is None else float(r[-1]) for r in rows], dtype=float)
    return RecentData(dates, X, y, rows[0][0], rows[-1][0])


def evaluate_booster(booster: Any, features: list[str], data: RecentData) -> metrics.Performance | None:
    """IC and long-short Sharpe of ``booster`` on ``data``; None with fewer than 5 days."""
    if len(data.y_next) == 0:
        return None
    preds = np.asarray(predict(booster, features, data.X), dtype=float)
    perf = metrics.evaluate(data.dates, preds, data.y_next)
    return perf if perf.days >= 5 else None
