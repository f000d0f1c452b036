"""Realized returns: the one query that pairs feature rows with the return their prediction is judged on.

A feature row of ``ml_training_features`` dated D is labelled with the same ticker's ``return_1d`` on the next
date of the view (the next trading day): the label the models are trained on, and the only return column the
platform promises (``daily_bars`` need not have prices). A row whose next-day row is missing or has a NULL
``return_1d`` is not realized (yet) and is left out. Monitoring, the evidence card, the charts, the watchdog and
the diagnostics all read it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from core.platform import FEATURE_VIEW

__all__ = ["LabelledRows", "labelled_rows"]


@dataclass(frozen=True)
class LabelledRows:
    """Feature rows with their realized label (the ticker's ``return_1d`` on the next trading day)."""

    dates: np.ndarray      # datetime64[D]
    tickers: list[str]
    X: np.ndarray          # float64, columns in the requested feature order (NULL -> NaN)
    realized: np.ndarray   # float64

    def __len__(self) -> int:
        return len(self.tickers)


def labelled_rows(conn: psycopg.Connection, features: list[str], *, since: date | None = None,
                  last_days: int | None = None, as_of: date | None = None) -> LabelledRows:
    """Realized rows, sorted by (date, ticker): feature dates whose next trading day is in the view, on or after
    ``since`` and/or the ``last_days`` newest such dates. With ``as_of`` the view is read as it stood that day:
    nothing dated after it (neither a feature row nor a label) is used."""
    query = sql.SQL(
        """
        WITH days AS (
            SELECT date, lead(date) OVER (ORDER BY date) AS next_date
            FROM (SELECT DISTINCT date FROM {view} WHERE %(as_of)s::date IS NULL OR date <= %(as_of)s::date) x
        ), chosen AS (
            SELECT date, next_date FROM days
            WHERE next_date IS NOT NULL AND (%(since)s::date IS NULL OR date >= %(since)s::date)
            ORDER BY date DESC LIMIT %(limit)s
        )
        SELECT f.date, f.ticker, n.return_1d{sep}{cols}
        FROM chosen c
        JOIN {view} f ON f.date = c.date
        JOIN {view} n ON n.ticker = f.ticker AND n.date = c.next_date
        WHERE n.return_1d IS NOT NULL
        ORDER BY f.date, f.ticker
        """
    ).format(
        view=sql.Identifier(FEATURE_VIEW),
        sep=sql.SQL(", ") if features else sql.SQL(""),
        cols=sql.SQL(", ").join(sql.SQL("f.") + sql.Identifier(c) for c in features),
    )
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(query, {"since": since, "limit": last_days, "as_of": as_of}).fetchall()
    n = len(rows)
    if n == 0:
        return LabelledRows(np.empty(0, dtype="datetime64[D]"), [], np.empty((0, len(features))), np.empty(0))
    return LabelledRows(
        dates=np.array([r[0] for r in rows], dtype="datetime64[D]"),
        tickers=[r[1] for r in rows],
        X=np.array([[np.nan if v is None else v for v in r[3:]] for r in rows], dtype=np.float64).reshape(
            n, len(features)),
        realized=np.array([r[2] for r in rows], dtype=np.float64),
    )
