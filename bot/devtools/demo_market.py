"""The generated platform's synthetic market: ``daily_bars`` and the feature view over it.

Part of the generated platform world (``bot.devtools.demo_world`` re-exports the public names).

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
(``tests/devtools/test_demo_world.py`` holds it); other seeds may not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np
import psycopg
from psycopg.rows import tuple_row

from bot.devtools.demo_platform import WARMUP_ROWS, create_platform_schema, refresh_view

__all__ = ["Market", "MarketStyle", "generate_market", "release_day", "trading_days_ending"]

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


def era_boundary_index(days: int, regime_change_days: int, era_fraction: float = 0.4) -> int:
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
    era = era_boundary_index(n_days, regime_change_days, style.era_fraction)
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
        era_boundary=trading_days[era_boundary_index(days, regime_change_days, style.era_fraction)],
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
    refresh_view(conn)
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
    refresh_view(conn)
    conn.commit()
    market.trading_days.append(day)
    return day
