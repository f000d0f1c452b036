"""A generated trading-platform "world" for tests and the demo.

It builds, in whatever schema the connection's ``search_path`` selects (nothing is
schema-qualified), the platform's tables::

    model_deployment_log  clients  client_settings  daily_bars  trades
    ml_training_features  (MATERIALIZED VIEW over daily_bars, UNIQUE index on (date, ticker))

a synthetic market, and real XGBoost models under ``MODELS_DIR/{strategy}_{marketcap}/`` with
``backup_YYYY-MM-DD/`` folders whose ``metadata.json`` carries their TRUE out-of-sample metrics.

The synthetic market
--------------------
Trading days are weekdays.  Every ticker ``i`` has a beta, a volatility and a volume level.  The
return realised on day ``t`` is::

    r[t,i] = beta_i * m[t] + s * ((c_mom(t) + n * x[t]) * z(ret_5d[t-1,i])
                                  + (c_vol(t) + n * y[t]) * z(log volume_ratio_20d[t-1,i]))
             + sigma_i * v(t) * eps[t,i]

where ``z`` is a cross-sectional z-score (clipped to +-3), ``ret_5d`` and ``volume_ratio_20d`` are
exactly the view's columns of the previous day, ``m`` is a market factor (vol 0.9%/day),
``sigma_i`` ~ 1.5%/day and ``s = 1.5% * signal_strength``.  So the features predict the next day's
return.  ``x`` and ``y`` are standard normal draws, one per day: each factor's payoff is noisy from
day to day (``n = payoff_noise``), as real factor returns are.  That noise, common to every ticker
on a day, is what makes a desk's numbers modest: without it, 200 tickers' idiosyncratic noise
averages out and a long-short portfolio earns an annualised Sharpe of 20-40.  ``MarketStyle`` holds
these parameters.  Three regimes, by the day the return is realised (``c_mom``, ``c_vol``, ``v``):

====================  =========================================  ===================  ==================
era                   days                                       size "test"          size "demo"
====================  =========================================  ===================  ==================
momentum (old)        first ~40% (demo ~46%) of the history      +0.30  +0.20  1.0    +0.18  +0.10  1.0
reversal              the rest of the pre-change history         -0.40  +0.20  1.0    -0.22  +0.10  1.0
REGIME CHANGE         the last ``regime_change_days`` days       +0.40  +0.15  2.0    +0.60   0.00  2.0
====================  =========================================  ===================  ==================

(market volatility is also doubled after the change).  A model trained on recent pre-change data
learns "short-term reversal" and looks good on its holdout, then fails after the change (negative
IC) when momentum returns with doubled volatility; the oldest backup, trained in the momentum era,
keeps working after the change.  Ranking backups by their metadata metrics alone does NOT find it:
those metrics are true but were measured before the change, and the backups trained in the
reversal era look best there.  Evaluate the backups on the post-change days.

Size "test" (40 tickers, no payoff noise, ``signal_strength`` 1) is deliberately strong: holdout IC
~0.3, Sharpe 5-40, so that every property above shows in 40 tickers and a few weeks of data, for
any seed.  Size "demo" looks like a real desk: 200 tickers over ~4 years, one-year holdouts,
``signal_strength`` 0.25 and ``payoff_noise`` 1.5, so holdout ICs are 0.02-0.05 and long-short
Sharpe ratios 1.5-3 (annualised with sqrt(252)).  At that signal-to-noise a 20-day window is a
noisy estimate (one standard error of an annualised 20-day Sharpe is sqrt(252/20) ~ 3.5), so
which backup looks best over the last weeks is partly luck.  The demo's world (seed 0, payoff
stream 81) was chosen to tell the typical incident: production's 20-day IC and Sharpe negative,
the oldest backup the best over those days, every figure in a desk's range
(``tests/test_demo_world.py`` holds it); other seeds may not.

Models (``build_world``)
------------------------
Each model has 3-4 backups trained on rolling windows (oldest first); the newest backup is the
production model (its two files are copied byte-for-byte to the model root) and the
``model_deployment_log`` lists one deployment per backup, exactly one ``is_production`` row per
model whose ``version`` is the production backup's folder name.  Each backup's ``metadata.json``
records its training and holdout windows; its ``performance`` is ``core.metrics.evaluate`` of the
model on its holdout (feature dates ``holdout_start .. holdout_end``, labels = next trading day's
``return_1d``, as returned by ``load_features``).

Deliberate defect (size "demo" only): ``mean_reversion_mid``'s third backup was trained when
``volume_ratio_20d`` was still called ``vol_ratio_20d``; its metadata (and the booster's
feature_names) list that name, which the view does not provide (``BackupInfo.defect ==
"features_mismatch"``, ``post_change`` is None).  Its metrics are true (computed on the same numbers
under the old name) and look good (with seed 0 it has the best metadata Sharpe among that model's
non-production backups), so a bot that does not check features against the view would pick it.

Plants for diagnostics: ``missing_day`` drops the bars of ~25% of the tickers on one trading day,
``null_feature`` NULLs a feature (``volume_ratio_20d`` via NULL volume, ``hl_range`` via NULL high)
for ~25% of the tickers on one day.

Every public function commits its work (``conn.commit()``; harmless in autocommit mode) and uses
its own tuple-row cursors, so connections with any row factory work.  ``generate_market`` and
``build_world`` REPLACE the world's data (bars, clients, settings, trades, deployment log, and the
folders of the models they write); they are generators for test and demo databases only.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from core.metrics import Performance, evaluate

__all__ = [
    "FEATURES",
    "FEATURE_VIEW",
    "WARMUP_ROWS",
    "BackupInfo",
    "ClientInfo",
    "Market",
    "MarketStyle",
    "ModelInfo",
    "World",
    "build_world",
    "describe",
    "create_platform_schema",
    "generate_market",
    "isolated_schema",
    "load_features",
    "train_model",
    "trading_days_ending",
    "write_model_dir",
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


# --------------------------------------------------------------------------------------------- market


@dataclass
class Market:
    """What ``generate_market`` produced."""

    trading_days: list[date]
    tickers: list[str]
    regime_change_start: date        # first day whose realised return follows the new regime
    era_boundary: date               # first day whose realised return follows the "reversal" era
    missing_day: date | None = None  # the planted missing day, if any
    missing_day_tickers: list[str] = field(default_factory=list)
    null_feature: tuple[str, date] | None = None
    null_feature_tickers: list[str] = field(default_factory=list)
    close: np.ndarray = field(default=None, repr=False)  # (days, tickers) closes, as generated
    rows: int = 0                    # rows written to daily_bars
    # Days simulated but not yet written ("the market has not closed yet"): (day, rows), released in order by
    # ``release_day`` (the demo shows monitoring against realized returns as new data arrives).
    pending: list[tuple[date, list[tuple]]] = field(default_factory=list, repr=False)

    @property
    def first_feature_day(self) -> date:
        return self.trading_days[WARMUP_ROWS]

    def index(self, day: date) -> int:
        return self.trading_days.index(day)


def trading_days_ending(end_date: date, days: int) -> list[date]:
    """The ``days`` weekdays ending with the last weekday on or before ``end_date``, oldest first."""
    out: list[date] = []
    d = end_date
    while len(out) < days:
        if d.weekday() < 5:
            out.append(d)
        d -= timedelta(days=1)
    return out[::-1]


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    if not np.isfinite(sd) or sd == 0:
        return np.zeros_like(x)
    return np.clip((x - x.mean()) / sd, -3.0, 3.0)


_SIGNAL_UNIT = 0.015


def _era_boundary_index(days: int, regime_change_days: int, era_fraction: float = 0.4) -> int:
    change = days - regime_change_days
    return WARMUP_ROWS + int(round(era_fraction * (change - 2 - WARMUP_ROWS)))


#: (c_mom, c_vol, volatility multiplier) of the three eras: momentum (old), reversal, after the change.
_REGIMES = ((0.30, 0.20, 1.0), (-0.40, 0.20, 1.0), (0.40, 0.15, 2.0))


@dataclass(frozen=True)
class MarketStyle:
    """How the synthetic market behaves (see the module docstring).  The defaults are size "test"'s market."""

    signal_strength: float = 1.0  # scales the predictable part of the returns (s = 1.5% * signal_strength)
    payoff_noise: float = 0.0     # daily volatility of each factor's payoff, in units of its coefficient c
    payoff_stream: int = 5        # which random stream draws that noise (with the seed)
    regimes: tuple[tuple[float, float, float], ...] = _REGIMES  # (c_mom, c_vol, vol multiplier) per era
    era_fraction: float = 0.4     # where the reversal era starts, as a fraction of the pre-change history


def _regime(t: int, era: int, change: int,
            regimes: tuple[tuple[float, float, float], ...] = _REGIMES) -> tuple[float, float, float]:
    """(c_mom, c_vol, volatility multiplier) of the return realised on day index t."""
    if t >= change:
        return regimes[2]
    if t >= era:
        return regimes[1]
    return regimes[0]


def _simulate(n_tickers: int, n_days: int, regime_change_days: int, seed: int,
              style: MarketStyle = MarketStyle()) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # The factor payoffs' noise comes from a stream of its own: a market without it (payoff_noise 0, size
    # "test") draws exactly the numbers it drew before that noise existed.
    frng = np.random.default_rng([seed, style.payoff_stream])
    unit = _SIGNAL_UNIT * style.signal_strength
    change = n_days - regime_change_days
    era = _era_boundary_index(n_days, regime_change_days, style.era_fraction)
    beta = rng.uniform(0.6, 1.4, n_tickers)
    sigma = 0.015 * rng.uniform(0.7, 1.3, n_tickers)
    base_logv = rng.uniform(math.log(2e5), math.log(2e7), n_tickers)
    close = np.empty((n_days, n_tickers))
    ret = np.zeros((n_days, n_tickers))
    open_ = np.empty((n_days, n_tickers))
    high = np.empty((n_days, n_tickers))
    low = np.empty((n_days, n_tickers))
    logv = np.empty((n_days, n_tickers))
    close[0] = np.exp(rng.uniform(math.log(10), math.log(400), n_tickers))
    open_[0] = close[0] * (1 + rng.normal(0, 0.003, n_tickers))
    logv[0] = base_logv + rng.normal(0, 0.3, n_tickers)
    for t in range(n_days):
        c_mom, c_vol, vmult = _regime(t, era, change, style.regimes)
        if t > 0:
            if t >= 6:
                ret5 = close[t - 1] / close[t - 6] - 1
            else:
                ret5 = np.zeros(n_tickers)
            if t >= 22:
                vol = np.exp(logv[t - 21 : t])  # the previous day and the 20 days before it
                vr = np.log(vol[-1] / vol[:-1].mean(axis=0))
            else:
                vr = np.zeros(n_tickers)
            market = rng.normal(0.0003, 0.009 * vmult)
            eps = rng.standard_normal(n_tickers)
            pay = frng.standard_normal(2) * style.payoff_noise
            r = (beta * market
                 + unit * ((c_mom + pay[0]) * _zscore(ret5) + (c_vol + pay[1]) * _zscore(vr))
                 + sigma * vmult * eps)
            r = np.clip(r, -0.4, 0.4)
            ret[t] = r
            close[t] = close[t - 1] * (1 + r)
            open_[t] = close[t - 1] * (1 + 0.3 * r + rng.normal(0, 0.002 * vmult, n_tickers))
            logv[t] = (base_logv + 0.6 * (logv[t - 1] - base_logv) + rng.normal(0, 0.3, n_tickers)
                       + 6.0 * np.abs(r))
        top = np.maximum(open_[t], close[t])
        bot = np.minimum(open_[t], close[t])
        wick = np.abs(rng.normal(0, 0.4, (2, n_tickers))) * sigma * vmult
        high[t] = top * (1 + wick[0])
        low[t] = bot * (1 - wick[1])
    volume = np.maximum(1, np.rint(np.exp(logv))).astype(np.int64)
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume, "ret": ret}


def _resolve_day(days: list[date], value: date | int, what: str) -> date:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return days[int(value)]
    if isinstance(value, datetime):
        value = value.date()
    if value not in days:
        raise ValueError(f"{what} {value} is not one of the generated trading days")
    return value


def _refresh_view(conn: psycopg.Connection, *, concurrently: bool = False) -> None:
    stmt = sql.SQL("REFRESH MATERIALIZED VIEW {}{}").format(
        sql.SQL("CONCURRENTLY ") if concurrently else sql.SQL(""), sql.Identifier(FEATURE_VIEW)
    )
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(stmt)
        cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(FEATURE_VIEW)))


def generate_market(
    conn: psycopg.Connection,
    *,
    tickers: int,
    days: int,
    end_date: date,
    regime_change_days: int,
    seed: int,
    missing_day: date | int | None = None,
    null_feature: str | tuple[str, date | int] | None = None,
    signal_strength: float = 1.0,
    held_back: int = 0,
    style: MarketStyle | None = None,
) -> Market:
    """Replace ``daily_bars`` with a synthetic market and refresh ``ml_training_features``.

    ``days`` weekdays ending on the last weekday <= ``end_date``; ``tickers`` tickers named
    ``T0000``...; the last ``regime_change_days`` days are the new regime (see the module
    docstring).  Deterministic given ``seed`` (dates only shift with ``end_date``).

    Plants: ``missing_day`` (a trading day, or an index into the trading days such as ``-3``)
    drops ~25% of the tickers' bars that day.  ``null_feature`` is ``"volume_ratio_20d"`` or
    ``"hl_range"``, optionally as ``(name, day)`` (default day: the last one): ~25% of the tickers
    get a NULL in that feature that day (NULL volume / NULL high in ``daily_bars``).
    ``signal_strength`` scales the predictable part of the returns (1.0: holdout IC ~0.3 with
    depth-3 models; 0.4: ~0.13).  ``style`` sets every parameter of the market at once (its
    ``signal_strength`` then wins); size "demo" uses it for a market with realistic metrics.
    """
    if days < WARMUP_ROWS + 40:
        raise ValueError(f"days must be at least {WARMUP_ROWS + 40}")
    if not 3 <= regime_change_days <= days - WARMUP_ROWS - 30:
        raise ValueError("regime_change_days leaves too little pre-change history")
    if tickers < 5:
        raise ValueError("tickers must be at least 5")
    create_platform_schema(conn)
    # ``held_back`` more days are simulated after the written history (same regime indices, same draws for
    # the written days) and kept in ``Market.pending``; the history then ends ``held_back`` days earlier.
    all_days = trading_days_ending(end_date, days + held_back)
    trading_days = all_days[:days]
    names = [f"T{i:04d}" for i in range(tickers)]
    if style is None:
        style = MarketStyle(signal_strength=signal_strength)
    sim = _simulate(tickers, days + held_back, regime_change_days + held_back, seed, style)
    plant_rng = np.random.default_rng([seed, 7])
    n_plant = max(1, tickers // 4)

    drop: set[tuple[int, int]] = set()
    market = Market(
        trading_days=trading_days,
        tickers=names,
        regime_change_start=trading_days[days - regime_change_days],
        era_boundary=trading_days[_era_boundary_index(days, regime_change_days, style.era_fraction)],
        close=sim["close"][:days],
    )
    if missing_day is not None:
        day = _resolve_day(trading_days, missing_day, "missing_day")
        t = trading_days.index(day)
        chosen = sorted(plant_rng.choice(tickers, n_plant, replace=False).tolist())
        drop = {(t, i) for i in chosen}
        market.missing_day = day
        market.missing_day_tickers = [names[i] for i in chosen]
    null_cells: set[tuple[int, int]] = set()
    null_column = None
    if null_feature is not None:
        fname, fday = (null_feature, -1) if isinstance(null_feature, str) else null_feature
        column = {"volume_ratio_20d": "volume", "hl_range": "high"}.get(fname)
        if column is None:
            raise ValueError("null_feature must be 'volume_ratio_20d' or 'hl_range'")
        day = _resolve_day(trading_days, fday, "null_feature day")
        t = trading_days.index(day)
        if t < WARMUP_ROWS:
            raise ValueError("null_feature day must be a day with feature rows")
        pool = [i for i in range(tickers) if (t, i) not in drop]
        chosen = sorted(plant_rng.choice(pool, min(n_plant, len(pool)), replace=False).tolist())
        null_cells = {(t, i) for i in chosen}
        null_column = column
        market.null_feature = (fname, day)
        market.null_feature_tickers = [names[i] for i in chosen]

    o, h, lo, c, v = sim["open"], sim["high"], sim["low"], sim["close"], sim["volume"]
    rows = 0
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute("TRUNCATE daily_bars")
        with cur.copy("COPY daily_bars (date, ticker, open, high, low, close, volume) FROM STDIN") as copy:
            for t, day in enumerate(trading_days):
                ds = day.isoformat()
                ot, ht, lt, ct, vt = o[t].tolist(), h[t].tolist(), lo[t].tolist(), c[t].tolist(), v[t].tolist()
                for i, name in enumerate(names):
                    if drop and (t, i) in drop:
                        continue
                    hi, vol = ht[i], vt[i]
                    if null_cells and (t, i) in null_cells:
                        if null_column == "high":
                            hi = None
                        else:
                            vol = None
                    copy.write_row((ds, name, ot[i], hi, lt[i], ct[i], vol))
                    rows += 1
        cur.execute("ANALYZE daily_bars")
    _refresh_view(conn)
    conn.commit()
    market.rows = rows
    for t in range(days, days + held_back):
        market.pending.append((all_days[t], [
            (all_days[t], name, float(o[t][i]), float(h[t][i]), float(lo[t][i]), float(c[t][i]), int(v[t][i]))
            for i, name in enumerate(names)
        ]))
    return market


def release_day(conn: psycopg.Connection, market: Market) -> date | None:
    """Write the next held-back trading day to ``daily_bars`` and refresh the feature view (None: no more)."""
    if not market.pending:
        return None
    day, rows = market.pending.pop(0)
    with conn.cursor(row_factory=tuple_row) as cur:
        with cur.copy("COPY daily_bars (date, ticker, open, high, low, close, volume) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    _refresh_view(conn)
    conn.commit()
    market.trading_days.append(day)
    return day


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


# --------------------------------------------------------------------------------------------- models


def train_model(
    X: np.ndarray, y: np.ndarray, features: list[str], *, n_trees: int, max_depth: int, seed: int,
    learning_rate: float = 0.1, min_child_weight: float = 5,
) -> Any:
    """Train an XGBoost regressor (``reg:squarederror``); returns the ``xgboost.Booster``.

    One thread (``nthread=1``): a second gains little at these sizes and, on a busy 2-core machine,
    made training several times slower.

    Rows with a NaN label are dropped; NaN features are left to XGBoost's missing-value handling.
    ``booster.feature_names`` is ``features``.
    """
    import xgboost

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y)
    dtrain = xgboost.DMatrix(X[ok], label=y[ok], feature_names=list(features), missing=np.nan, nthread=1)
    params = {
        "objective": "reg:squarederror",
        "max_depth": max_depth,
        "eta": learning_rate,
        "min_child_weight": min_child_weight,
        "tree_method": "hist",
        "nthread": 1,
        "seed": seed,
        "verbosity": 0,
    }
    booster = xgboost.train(params, dtrain, num_boost_round=n_trees)
    booster.feature_names = list(features)
    return booster


def _predict(booster: Any, X: np.ndarray, features: list[str]) -> np.ndarray:
    import xgboost

    return booster.predict(xgboost.DMatrix(X, feature_names=list(features), missing=np.nan, nthread=1))


def write_model_dir(path: Path, booster: Any, metadata: dict[str, Any]) -> None:
    """Write ``path/model.json`` (``Booster.save_model``) and ``path/metadata.json``; creates ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    features = metadata.get("features")
    if features is not None and booster.feature_names is not None and list(booster.feature_names) != list(features):
        raise ValueError("metadata features differ from the booster's feature_names")
    booster.save_model(str(path / "model.json"))
    (path / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------- world


@dataclass
class BackupInfo:
    name: str                        # folder name, e.g. "backup_2026-08-01"; also the deployment log's version
    path: Path
    training_date: date
    train_start: date
    train_end: date
    holdout_start: date              # feature dates of the holdout window (labels: the next trading day)
    holdout_end: date
    features: list[str]
    holdout: Performance             # == metadata performance
    post_change: Performance | None  # feature dates >= regime_change_start; None if the view lacks its features
    deployed_at: datetime
    defect: str | None = None        # e.g. "features_mismatch" (demo only)


@dataclass
class ModelInfo:
    name: str                        # "{strategy}_{marketcap}"
    path: Path
    features: list[str]              # the production model's features
    n_trees: int
    max_depth: int
    backups: list[BackupInfo]        # oldest first; the last one is production
    production_version: str

    @property
    def production(self) -> BackupInfo:
        return next(b for b in self.backups if b.name == self.production_version)

    @property
    def best_post_change(self) -> BackupInfo:
        """The defect-free backup with the best IC after the regime change."""
        ok = [b for b in self.backups if b.defect is None and b.post_change is not None]
        return max(ok, key=lambda b: b.post_change.spearman_ic)

    def backup(self, name: str) -> BackupInfo:
        return next(b for b in self.backups if b.name == name)


@dataclass(frozen=True)
class ClientInfo:
    client_id: str
    name: str
    active: bool
    auto_rebalance: bool
    require_manual_approval: bool


@dataclass
class World:
    size: str
    seed: int
    models_dir: Path
    features: list[str]
    tickers: list[str]
    trading_days: list[date]
    start_date: date                  # first trading day in daily_bars
    first_feature_day: date           # first date in ml_training_features
    end_date: date                    # last trading day
    era_boundary: date                # first return of the "reversal" era
    regime_change_start: date         # first return of the new regime
    post_change_window: tuple[date, date]  # feature dates evaluated "after the change" (labels exist)
    models: dict[str, ModelInfo]
    clients: list[ClientInfo]
    trade_count: int
    last_trade_at: datetime | None
    market: Market = field(repr=False)
    build_seconds: float = 0.0

    @property
    def production_versions(self) -> dict[str, str]:
        return {name: m.production_version for name, m in self.models.items()}


_SIZES = {
    # tickers, days, regime_change_days, clients, the market's style, the models' windows and training
    "test": dict(tickers=40, days=200, regime_change_days=30, clients=8, style=MarketStyle(),
                 windows=dict(), min_child_weight=5),
    "demo": dict(tickers=200, days=1040, regime_change_days=25, clients=25,
                 style=MarketStyle(signal_strength=0.25, payoff_noise=1.5, payoff_stream=81, era_fraction=0.458,
                                   regimes=((0.18, 0.10, 1.0), (-0.22, 0.10, 1.0), (0.60, 0.0, 2.0))),
                 windows=dict(holdout_days=252, train_days=200, retrain_every=42),
                 min_child_weight=1000),
}

# name, n_trees, max_depth, feature subset (None: all), which rolling windows (0 oldest .. 3 newest)
_MODEL_SPECS = {
    "test": [
        ("growth_momentum_large", 40, 3, None, (0, 1, 2, 3)),
        ("value_small", 30, 3, ["ret_5d", "ret_20d", "vol_20d", "volume_ratio_20d", "ma_gap_10d"], (0, 2, 3)),
    ],
    "demo": [
        ("growth_momentum_large", 60, 3, None, (0, 1, 2, 3)),
        ("value_small", 40, 2, ["ret_5d", "ret_20d", "vol_20d", "volume_ratio_20d", "ma_gap_10d"], (0, 2, 3)),
        ("mean_reversion_mid", 50, 3, None, (0, 1, 2, 3)),
    ],
}
_DEFECTIVE = {"demo": ("mean_reversion_mid", 2)}  # (model, window) trained under an old feature name
_OLD_NAME = {"volume_ratio_20d": "vol_ratio_20d"}

_CLIENT_NAMES = [
    "Aurora Capital", "Birchwood Partners", "Cobalt Pension Fund", "Delta Family Office", "Evergreen Endowment",
    "Fjord Asset Management", "Granite Insurance", "Harbor Trust", "Ibis Advisors", "Juniper Wealth",
    "Kestrel Fund", "Lumen Foundation", "Meridian Retirement Plan", "Northwind Capital", "Orchid Holdings",
    "Pinecrest Partners", "Quartz Investments", "Redwood Sovereign Fund", "Summit Private Bank", "Tidewater LLC",
    "Umber Capital", "Vantage Pension", "Willow Endowment", "Xenon Asset Management", "Yarrow Family Trust",
]
# kinds: "auto" = active, auto_rebalance, no manual approval (what a halt must switch off);
# "manual" = active, already requires manual approval; "inactive" = not an active client.
_CLIENT_KINDS = ["auto", "auto", "manual", "auto", "inactive", "auto", "manual", "auto"]


def _windows(n_days: int, regime_change_days: int, *, era_fraction: float = 0.4,
             holdout_days: int | None = None, train_days: int | None = None,
             retrain_every: int | None = None) -> list[tuple[int, int, int, int]]:
    """Four rolling (train_start, train_end, holdout_start, holdout_end) feature-date indices.

    Window 0 lies in the momentum era (its labels end before the era boundary); window 3 ends
    two days before the regime change (its last label is the day before it); 1 and 2 are between,
    evenly spaced, or ``retrain_every`` and twice that many days before window 3.  Holdouts and
    training windows are 10% and 40% of the pre-change history unless given in days.
    """
    change = n_days - regime_change_days
    era = _era_boundary_index(n_days, regime_change_days, era_fraction)
    pre_len = (change - 2) - WARMUP_ROWS + 1
    hold = holdout_days or max(10, int(round(0.1 * pre_len)))
    train = train_days or max(30, int(round(0.4 * pre_len)))
    he0, he3 = era - 2, change - 3
    if retrain_every:
        ends = [he0, he3 - 2 * retrain_every, he3 - retrain_every, he3]
    else:
        ends = [he0, he0 + (he3 - he0) // 3, he0 + 2 * (he3 - he0) // 3, he3]
    out = []
    for he in ends:
        hs = he - hold + 1
        ts = max(WARMUP_ROWS, hs - train)
        out.append((ts, hs - 1, hs, he))
    return out


def _utc(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, dtime(hh, mm), tzinfo=timezone.utc)


def _reset_world(conn: psycopg.Connection) -> None:
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute("DELETE FROM trades")
        cur.execute("DELETE FROM client_settings")
        cur.execute("DELETE FROM clients")
        cur.execute("DELETE FROM model_deployment_log")


def build_world(
    conn: psycopg.Connection,
    models_dir: Path,
    *,
    size: str = "test",
    seed: int = 0,
    end_date: date | None = None,
    missing_day: date | int | None = None,
    null_feature: str | tuple[str, date | int] | None = None,
    held_back: int = 0,
) -> World:
    """Build the whole platform world in the connection's schema and under ``models_dir``; commit.

    ``size="test"``: 40 tickers x 200 days (regime change: last 30), 8 clients, 2 models (4 and 3
    backups); ~0.7 s on 2 cores.
    ``size="demo"``: 200 tickers x 1040 days (regime change: last 25), 25 clients, 3 models (4, 3, 4
    backups; one defective; realistic metrics, see the module docstring); ~10 s, most of it in PostgreSQL.
    ``end_date`` defaults to today (UTC); the last trading day is the last weekday on or before it.
    ``missing_day`` / ``null_feature`` are passed to ``generate_market`` (planted before the models
    are evaluated, so metadata stays consistent with the view).
    Replaces the world tables' rows and the folders of the models it writes.
    """
    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}")
    t0 = time.perf_counter()
    spec = _SIZES[size]
    models_dir = Path(models_dir)
    if end_date is None:
        end_date = datetime.now(timezone.utc).date()
    create_platform_schema(conn)
    market = generate_market(
        conn,
        tickers=spec["tickers"],
        days=spec["days"],
        end_date=end_date,
        regime_change_days=spec["regime_change_days"],
        seed=seed,
        missing_day=missing_day,
        null_feature=null_feature,
        held_back=held_back,
        style=spec["style"],
    )
    days = list(market.trading_days)
    n_days = len(days)
    change = n_days - spec["regime_change_days"]

    all_dates, _, all_X, all_y = load_features(conn, features=FEATURES)
    day_idx = {np.datetime64(d, "D"): i for i, d in enumerate(days)}
    row_t = np.array([day_idx[d] for d in all_dates], dtype=np.int64)
    col = {f: j for j, f in enumerate(FEATURES)}

    def window(lo: int, hi: int, feats: list[str], label: bool = True):
        m = (row_t >= lo) & (row_t <= hi)
        if label:
            m &= np.isfinite(all_y)
        return all_dates[m], all_X[m][:, [col[f] for f in feats]], all_y[m]

    post_lo, post_hi = change, n_days - 2
    models: dict[str, ModelInfo] = {}
    windows = _windows(n_days, spec["regime_change_days"], era_fraction=spec["style"].era_fraction,
                       **spec["windows"])
    defective = _DEFECTIVE.get(size)
    log_rows = []
    for m_i, (name, n_trees, depth, subset, which) in enumerate(_MODEL_SPECS[size]):
        feats = list(subset) if subset else list(FEATURES)
        mdir = models_dir / name
        if mdir.exists():
            shutil.rmtree(mdir)
        backups: list[BackupInfo] = []
        for k in which:
            ts, te, hs, he = windows[k]
            model_seed = seed * 1000 + m_i * 10 + k
            _, Xtr, ytr = window(ts, te, feats)
            defect = None
            names = feats
            if defective == (name, k):
                defect = "features_mismatch"
                names = [_OLD_NAME.get(f, f) for f in feats]
            booster = train_model(Xtr, ytr, names, n_trees=n_trees, max_depth=depth, seed=model_seed,
                                  min_child_weight=spec["min_child_weight"])
            hd, Xh, yh = window(hs, he, feats)
            holdout = evaluate(hd, _predict(booster, Xh, names), yh)
            post = None
            if defect is None:
                pd_, Xp, yp = window(post_lo, post_hi, feats)
                post = evaluate(pd_, _predict(booster, Xp, names), yp)
            training_date = days[he + 1]
            deployed_day = days[he + 2]
            bname = f"backup_{training_date.isoformat()}"
            meta = {
                "model_name": name,
                "model_version": bname,
                "training_date": training_date.isoformat(),
                "performance": holdout.as_dict(),
                "features": names,
                "train_start": days[ts].isoformat(),
                "train_end": days[te].isoformat(),
                "holdout_start": days[hs].isoformat(),
                "holdout_end": days[he].isoformat(),
                "holdout_days": holdout.days,
                "label": "next trading day's return_1d of the same ticker",
                "evaluation": "core.metrics.evaluate: mean daily Spearman IC; Sharpe of the daily "
                "top-20%/bottom-20% equal-weight long-short return, annualised with sqrt(252)",
                "objective": "reg:squarederror",
                "n_trees": n_trees,
                "max_depth": depth,
                "learning_rate": 0.1,
                "min_child_weight": spec["min_child_weight"],
                "seed": model_seed,
                "train_rows": int(len(ytr)),
                "xgboost_version": _xgb_version(),
            }
            bdir = mdir / bname
            write_model_dir(bdir, booster, meta)
            backups.append(BackupInfo(
                name=bname, path=bdir, training_date=training_date, train_start=days[ts], train_end=days[te],
                holdout_start=days[hs], holdout_end=days[he], features=names, holdout=holdout,
                post_change=post, deployed_at=_utc(deployed_day, 6, 30 + m_i), defect=defect,
            ))
        prod = backups[-1]
        for fname in ("model.json", "metadata.json"):
            shutil.copyfile(prod.path / fname, mdir / fname)
        for j, b in enumerate(backups):
            log_rows.append((
                name, b.name, b.deployed_at, "ml-pipeline",
                "initial deployment" if j == 0 else f"scheduled retrain (holdout IC {b.holdout.spearman_ic:.3f})",
                b is prod, False, b.holdout.spearman_ic, b.holdout.sharpe_ratio,
            ))
        models[name] = ModelInfo(
            name=name, path=mdir, features=prod.features, n_trees=n_trees, max_depth=depth,
            backups=backups, production_version=prod.name,
        )

    # clients, settings, trades
    rng = np.random.default_rng([seed, 11])
    clients = []
    for i in range(spec["clients"]):
        kind = _CLIENT_KINDS[i % len(_CLIENT_KINDS)]
        clients.append(ClientInfo(
            client_id=f"C{i + 1:03d}",
            name=_CLIENT_NAMES[i % len(_CLIENT_NAMES)],
            active=kind != "inactive",
            auto_rebalance=kind != "manual",
            require_manual_approval=kind == "manual",
        ))
    now = datetime.now(timezone.utc)
    trades = []
    trade_days = days[-8:-1]
    tickers_present = market.tickers
    for c in clients:
        if not c.active:
            continue
        for _ in range(3):
            t = len(days) - 8 + int(rng.integers(0, len(trade_days)))
            day = days[t]
            ti = int(rng.integers(0, len(tickers_present)))
            at = _utc(day, 14, 30) + timedelta(minutes=int(rng.integers(0, 390)))
            if at >= now - timedelta(minutes=5):
                continue
            trades.append((c.client_id, tickers_present[ti], "buy" if rng.random() < 0.5 else "sell",
                           float(rng.integers(1, 50) * 10), round(float(market.close[t, ti]), 4), at))
    trades.sort(key=lambda r: r[5])
    with conn.cursor(row_factory=tuple_row) as cur:
        _reset_world(conn)
        cur.executemany("INSERT INTO clients (client_id, name, active) VALUES (%s, %s, %s)",
                        [(c.client_id, c.name, c.active) for c in clients])
        cur.executemany(
            "INSERT INTO client_settings (client_id, auto_rebalance, require_manual_approval, updated_at) "
            "VALUES (%s, %s, %s, %s)",
            [(c.client_id, c.auto_rebalance, c.require_manual_approval, _utc(days[0], 9)) for c in clients],
        )
        cur.executemany(
            "INSERT INTO trades (client_id, ticker, side, quantity, price, executed_at) VALUES (%s, %s, %s, %s, %s, %s)",
            trades,
        )
        cur.executemany(
            "INSERT INTO model_deployment_log (model_name, version, deployed_at, deployed_by, deployment_reason, "
            "is_production, is_rollback, spearman_ic, sharpe_ratio) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            sorted(log_rows, key=lambda r: r[2]),
        )
    conn.commit()
    return World(
        size=size,
        seed=seed,
        models_dir=models_dir,
        features=list(FEATURES),
        tickers=list(market.tickers),
        trading_days=list(days),
        start_date=days[0],
        first_feature_day=days[WARMUP_ROWS],
        end_date=days[-1],
        era_boundary=market.era_boundary,
        regime_change_start=market.regime_change_start,
        post_change_window=(days[post_lo], days[post_hi]),
        models=models,
        clients=clients,
        trade_count=len(trades),
        last_trade_at=trades[-1][5] if trades else None,
        market=market,
        build_seconds=time.perf_counter() - t0,
    )


def _xgb_version() -> str:
    import xgboost

    return xgboost.__version__


def describe(world: World) -> str:
    """A plain-text table of the world's models and backups (holdout vs post-change metrics)."""
    lines = [
        f"world size={world.size} seed={world.seed}: {len(world.tickers)} tickers, "
        f"{world.start_date}..{world.end_date}, era boundary {world.era_boundary}, "
        f"regime change {world.regime_change_start}, {len(world.clients)} clients, {world.trade_count} trades, "
        f"built in {world.build_seconds:.1f}s",
    ]
    for m in world.models.values():
        lines.append(f"{m.name} ({len(m.features)} features)")
        for b in m.backups:
            post = (f"post-change IC {b.post_change.spearman_ic:+.3f} Sharpe {b.post_change.sharpe_ratio:+6.2f}"
                    if b.post_change else f"defect: {b.defect}")
            mark = "  <- production" if b.name == m.production_version else ""
            lines.append(f"  {b.name}  train {b.train_start}..{b.train_end}  holdout IC "
                         f"{b.holdout.spearman_ic:+.3f} Sharpe {b.holdout.sharpe_ratio:+6.2f} | {post}{mark}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bot.devtools.demo_world DSN MODELS_DIR [--size demo] [--seed N]``: build a world and describe it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bot.devtools.demo_world", description=main.__doc__)
    parser.add_argument("dsn", help="PostgreSQL URL; objects go to the first schema of its search_path")
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--size", choices=sorted(_SIZES), default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--end-date", type=date.fromisoformat, default=None)
    args = parser.parse_args(argv)
    with psycopg.connect(args.dsn) as conn:
        world = build_world(conn, args.models_dir, size=args.size, seed=args.seed, end_date=args.end_date)
    print(describe(world))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
