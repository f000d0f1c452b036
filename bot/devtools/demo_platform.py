"""The platform's schema as the demo and the tests build it, and how the generated world reads its feature view.

Part of the generated platform world (``bot.devtools.demo_world`` re-exports these names): in whatever schema the
connection's ``search_path`` selects (nothing is schema-qualified), the tables::

    model_deployment_log  clients  client_settings  daily_bars  trades
    ml_training_features  (MATERIALIZED VIEW over daily_bars, UNIQUE index on (date, ticker))

Every function commits its work and uses its own tuple-row cursors, so connections with any row factory work.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import date

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

__all__ = [
    "FEATURES",
    "FEATURE_VIEW",
    "WARMUP_ROWS",
    "create_platform_schema",
    "isolated_schema",
    "load_features",
    "refresh_view",
]


FEATURE_VIEW = "ml_training_features"

#: The view's feature columns, in the order the models use them.
FEATURES: list[str] = [
    "ret_5d",            # close / close 5 rows earlier - 1
    "ret_20d",           # close / close 20 rows earlier - 1
    "vol_20d",           # sample stddev of return_1d over the last 20 rows (incl. today)
    "volume_ratio_20d",  # volume / mean volume of the previous 20 rows
    "hl_range",          # (high - low) / close
    "ma_gap_10d",        # close / mean close of the last 10 rows (incl. today) - 1
    "rsi_14",            # sum of gains / sum of |returns| over the last 14 rows, in [0, 1]
]

#: A ticker's first WARMUP_ROWS bars produce no view row (the 20-row windows are not full yet).
WARMUP_ROWS = 20

# --------------------------------------------------------------------------------------------- schema

_SCHEMA_SQL = [
    """
    CREATE TABLE IF NOT EXISTS model_deployment_log (
        model_name        text,
        version           text,
        deployed_at       timestamptz,
        deployed_by       text,
        deployment_reason text,
        is_production     boolean,
        is_rollback       boolean,
        spearman_ic       double precision,
        sharpe_ratio      double precision
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS clients (
        client_id text PRIMARY KEY,
        name      text,
        active    boolean
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS client_settings (
        client_id               text PRIMARY KEY REFERENCES clients (client_id),
        auto_rebalance          boolean,
        require_manual_approval boolean,
        updated_at              timestamptz
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS daily_bars (
        date   date,
        ticker text,
        open   double precision,
        high   double precision,
        low    double precision,
        close  double precision,
        volume bigint,
        PRIMARY KEY (date, ticker)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS trades (
        trade_id    bigserial,
        client_id   text,
        ticker      text,
        side        text,
        quantity    double precision,
        price       double precision,
        executed_at timestamptz
    )
    """,
    # Features from past data only (windows end at the current row).  Rows whose 20-row
    # windows are not full are left out, so a NULL in the view is always a data problem.
    f"""
    CREATE MATERIALIZED VIEW IF NOT EXISTS {FEATURE_VIEW} AS
    WITH r AS (
        SELECT date, ticker, high, low, close, volume,
               close / NULLIF(lag(close) OVER w, 0) - 1 AS return_1d,
               row_number() OVER w AS rn
        FROM daily_bars
        WINDOW w AS (PARTITION BY ticker ORDER BY date)
    ), f AS (
        SELECT date, ticker, rn, return_1d,
               close / NULLIF(lag(close, 5) OVER w, 0) - 1 AS ret_5d,
               close / NULLIF(lag(close, 20) OVER w, 0) - 1 AS ret_20d,
               stddev_samp(return_1d) OVER (w ROWS BETWEEN 19 PRECEDING AND CURRENT ROW) AS vol_20d,
               volume::double precision
                   / NULLIF(avg(volume::double precision) OVER (w ROWS BETWEEN 20 PRECEDING AND 1 PRECEDING), 0)
                   AS volume_ratio_20d,
               (high - low) / NULLIF(close, 0) AS hl_range,
               close / NULLIF(avg(close) OVER (w ROWS BETWEEN 9 PRECEDING AND CURRENT ROW), 0) - 1 AS ma_gap_10d,
               sum(greatest(return_1d, 0)) OVER (w ROWS BETWEEN 13 PRECEDING AND CURRENT ROW)
                   / NULLIF(sum(abs(return_1d)) OVER (w ROWS BETWEEN 13 PRECEDING AND CURRENT ROW), 0) AS rsi_14
        FROM r
        WINDOW w AS (PARTITION BY ticker ORDER BY date)
    )
    SELECT date, ticker,
           return_1d::double precision        AS return_1d,
           ret_5d::double precision           AS ret_5d,
           ret_20d::double precision          AS ret_20d,
           vol_20d::double precision          AS vol_20d,
           volume_ratio_20d::double precision AS volume_ratio_20d,
           hl_range::double precision         AS hl_range,
           ma_gap_10d::double precision       AS ma_gap_10d,
           rsi_14::double precision           AS rsi_14
    FROM f
    WHERE rn > {WARMUP_ROWS}
    """,
    f"CREATE UNIQUE INDEX IF NOT EXISTS ml_training_features_date_ticker_key ON {FEATURE_VIEW} (date, ticker)",
    "CREATE INDEX IF NOT EXISTS daily_bars_ticker_date ON daily_bars (ticker, date)",
    "CREATE INDEX IF NOT EXISTS trades_executed_at ON trades (executed_at)",
]


def create_platform_schema(conn: psycopg.Connection) -> None:
    """Create the platform's tables and the feature view if missing (idempotent), then commit.

    Objects go to the first schema of the connection's ``search_path``.  The view is created
    populated (empty until ``daily_bars`` has rows) so that it can be queried and refreshed
    ``CONCURRENTLY`` at once.
    """
    with conn.cursor(row_factory=tuple_row) as cur:
        for stmt in _SCHEMA_SQL:
            cur.execute(stmt)
    conn.commit()


@contextlib.contextmanager
def isolated_schema(conn: psycopg.Connection, prefix: str = "t_") -> Iterator[str]:
    """Create a uniquely named schema, point the connection's ``search_path`` at it, drop it on exit.

    For tests: ``with isolated_schema(conn) as name: build_world(conn, ...)``.
    """
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    with conn.cursor(row_factory=tuple_row) as cur:
        old = cur.execute("SELECT current_setting('search_path')").fetchone()[0]
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        cur.execute("SELECT set_config('search_path', %s, false)", (name,))
    conn.commit()
    try:
        yield name
    finally:
        if not conn.closed:
            conn.rollback()
            with conn.cursor(row_factory=tuple_row) as cur:
                cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
                cur.execute("SELECT set_config('search_path', %s, false)", (old,))
            conn.commit()


def refresh_view(conn: psycopg.Connection, *, concurrently: bool = False) -> None:
    stmt = sql.SQL("REFRESH MATERIALIZED VIEW {}{}").format(
        sql.SQL("CONCURRENTLY ") if concurrently else sql.SQL(""), sql.Identifier(FEATURE_VIEW)
    )
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(stmt)
        cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(FEATURE_VIEW)))


# --------------------------------------------------------------------------------------------- features


def _view_columns(conn: psycopg.Connection) -> list[str]:
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            (FEATURE_VIEW,),
        ).fetchall()
    return [r[0] for r in rows]


def load_features(
    conn: psycopg.Connection,
    *,
    start: date | None = None,
    end: date | None = None,
    features: list[str],
    require_label: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``ml_training_features`` for feature dates in ``[start, end]`` (both optional, inclusive).

    Returns ``(dates, tickers, X, y_next)`` sorted by (date, ticker):

    * ``dates``   ``numpy.datetime64[D]`` array, the feature date of each row;
    * ``tickers`` array of str;
    * ``X``       float64 matrix, columns in the order of ``features`` (NULL -> NaN);
    * ``y_next``  the label: the same ticker's ``return_1d`` on the NEXT trading day (the next
      date present in the view), NaN when that row does not exist (last day, missing bar).
      Labels may come from the day after ``end``.  ``require_label=True`` drops rows without one.

    Raises ``ValueError`` naming the columns the view does not provide.
    """
    features = list(features)
    available = set(_view_columns(conn))
    if not available:
        raise ValueError(f"{FEATURE_VIEW} does not exist in this schema")
    missing = [f for f in features if f not in available or f in ("date", "ticker")]
    if missing:
        raise ValueError(f"{FEATURE_VIEW} has no column(s): {', '.join(missing)}")
    cols = sql.SQL(", ").join(sql.SQL("f.") + sql.Identifier(f) for f in features) if features else sql.SQL("")
    query = sql.SQL(
        """
        WITH d AS (
            SELECT date, lead(date) OVER (ORDER BY date) AS next_date
            FROM (SELECT DISTINCT date FROM {view}) x
        )
        SELECT f.date, f.ticker, n.return_1d{sep}{cols}
        FROM {view} f
        JOIN d ON d.date = f.date
        LEFT JOIN {view} n ON n.ticker = f.ticker AND n.date = d.next_date
        WHERE (%(start)s::date IS NULL OR f.date >= %(start)s::date)
          AND (%(end)s::date IS NULL OR f.date <= %(end)s::date)
          {label}
        ORDER BY f.date, f.ticker
        """
    ).format(
        view=sql.Identifier(FEATURE_VIEW),
        sep=sql.SQL(", ") if features else sql.SQL(""),
        cols=cols,
        label=sql.SQL("AND n.return_1d IS NOT NULL") if require_label else sql.SQL(""),
    )
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(query, {"start": start, "end": end}).fetchall()
    n = len(rows)
    if n == 0:
        return (np.empty(0, dtype="datetime64[D]"), np.empty(0, dtype=str),
                np.empty((0, len(features))), np.empty(0))
    dates = np.array([r[0] for r in rows], dtype="datetime64[D]")
    tickers = np.array([r[1] for r in rows], dtype=str)
    y = np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64)
    X = np.array([r[3:] for r in rows], dtype=np.float64).reshape(n, len(features))  # None -> nan
    return dates, tickers, X, y
