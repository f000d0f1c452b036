"""Level shifts: a fault that moves a feature for every ticker alike (a feed changing units, a corrupted price
column), which the day-centred PSI cannot see, since centring by day removes what all tickers share.

For each feature, each day's cross-sectional median and interquartile range are computed, on the log of the
values when every value is positive (so a units change is a shift of ``ln(factor)`` whatever the level), else on
the values. The reference window gives the typical median (the median of its daily medians), the day-to-day
scale of that median (1.4826 x its median absolute deviation) and the typical cross-sectional spread (the median
of its daily IQRs). A recent day is *off* when its median is more than ``level_z`` (8) day-to-day scales AND
more than ``level_spread`` (4) typical spreads away from the typical median: the whole cross-section has moved
far further than its own width, further than the median ever wanders. On the test world a units change x100 of
``hl_range`` is 6.7 spreads, of ``volume_ratio_20d`` 8.9; a doubling of volatility (a regime change) moves
``hl_range`` by 1.3 spreads and ``vol_20d`` by 2.1, and a 30% crash over five days ``vol_20d`` by 2.6. An
extreme volatility regime (``vol_20d`` up about 3.7 times) would pass for a level shift, so the likely cause
names both when the regime check also fires.

Returns move together with the market: a crash moves every ticker's ``ret_5d`` alike, rightly. So a feature
whose daily median the market's own trailing return (the mean close-to-close return of ``daily_bars``, summed
over 1, 5, 10, 14 or 20 days) explains with R^2 >= ``level_market_r2`` (0.5) over the reference window is not
judged by level (its day-centred PSI still is). A corrupted price column still shows: in ``hl_range`` and
``vol_20d``, which do not move with the market's direction.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import psycopg

from core.diagnostics.common import DiagnosticsConfig, rows

HORIZONS = (1, 5, 10, 14, 20)


@dataclass(frozen=True)
class LevelShift:
    judged: bool                 # False: moves with the market, or too little reference data (see ``why``)
    why: str                     # why it was not judged ("" when judged)
    log_scale: bool
    market_r2: float             # best R^2 of the reference's daily medians on the market's trailing return
    market_days: int | None      # the horizon of that best fit
    reference_median: float      # in the feature's own units
    latest_median: float         # the last recent day's cross-sectional median, in the feature's own units
    days_off: int = 0
    first_off: date | None = None
    z: float = math.nan          # the largest |shift| / day-to-day scale over the off days (or all recent days)
    spreads: float = math.nan    # the same shift in typical cross-sectional spreads

    @property
    def shifted(self) -> bool:
        return self.judged and self.days_off > 0

    @property
    def factor(self) -> float:
        """latest / reference median (a units change shows as x100)."""
        if self.reference_median == 0 or not math.isfinite(self.reference_median):
            return math.nan
        return self.latest_median / self.reference_median


def market_returns(conn: psycopg.Connection, lo: date, hi: date) -> dict[date, float]:
    """Each trading day's mean close-to-close return over the tickers of ``daily_bars`` (``lo`` .. ``hi``, and
    the days needed before ``lo`` for the trailing sums)."""
    got = rows(
        conn,
        "WITH r AS (SELECT date, close / NULLIF(lag(close) OVER (PARTITION BY ticker ORDER BY date), 0) - 1 AS ret"
        " FROM daily_bars WHERE date >= %(lo)s AND date <= %(hi)s)"
        " SELECT date, avg(ret) FROM r WHERE ret IS NOT NULL GROUP BY date ORDER BY date",
        {"lo": lo - timedelta(days=2 * max(HORIZONS) + 10), "hi": hi},
    )
    return {day: float(m) for day, m in got if m is not None and math.isfinite(float(m))}


def _trailing(market: dict[date, float], days: list[date], k: int) -> np.ndarray:
    keys = sorted(market)
    values = np.array([market[x] for x in keys])
    csum = np.r_[0.0, np.cumsum(values)]
    index = {x: i for i, x in enumerate(keys)}
    out = np.full(len(days), np.nan)
    for j, day in enumerate(days):
        i = index.get(day)
        if i is not None and i + 1 >= k:
            out[j] = csum[i + 1] - csum[i + 1 - k]
    return out


def _daily_stats(dates: np.ndarray, values: np.ndarray) -> tuple[list[date], np.ndarray, np.ndarray]:
    """(days, median, IQR) per date (rows sorted by date), days with fewer than 5 finite values left out."""
    days, med, iqr = [], [], []
    if values.size == 0:
        return [], np.empty(0), np.empty(0)
    bounds = np.flatnonzero(np.r_[True, dates[1:] != dates[:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        block = values[lo:hi]
        block = block[np.isfinite(block)]
        if block.size < 5:
            continue
        q1, q2, q3 = np.percentile(block, [25, 50, 75])
        days.append(dates[lo].astype(object))
        med.append(q2)
        iqr.append(q3 - q1)
    return days, np.array(med), np.array(iqr)


def _r2(y: np.ndarray, x: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 10 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return math.nan
    return float(np.corrcoef(x[ok], y[ok])[0, 1] ** 2)


def level_shift(ref_dates: np.ndarray, ref_values: np.ndarray, recent_dates: np.ndarray, recent_values: np.ndarray,
                market: dict[date, float], *, config: DiagnosticsConfig = DiagnosticsConfig()) -> LevelShift:
    """Judge one feature's recent daily medians against the reference's (see the module docstring)."""
    finite = np.r_[ref_values[np.isfinite(ref_values)], recent_values[np.isfinite(recent_values)]]
    log_scale = finite.size > 0 and bool(np.all(finite > 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t_ref = np.log(ref_values) if log_scale else ref_values
        t_recent = np.log(recent_values) if log_scale else recent_values
    back = np.exp if log_scale else (lambda v: v)
    ref_days, ref_med, ref_iqr = _daily_stats(ref_dates, t_ref)
    recent_days, recent_med, _ = _daily_stats(recent_dates, t_recent)
    if len(ref_days) < config.level_min_reference_days or not recent_days:
        return LevelShift(False, f"only {len(ref_days)} reference day(s)", log_scale, math.nan, None,
                          math.nan, float(back(recent_med[-1])) if recent_days else math.nan)
    centre = float(np.median(ref_med))
    scale = max(1.4826 * float(np.median(np.abs(ref_med - centre))), 1e-12)
    spread = float(np.median(ref_iqr))
    fits = {k: _r2(ref_med, _trailing(market, ref_days, k)) for k in HORIZONS}
    best = max((k for k in fits if math.isfinite(fits[k])), key=lambda k: fits[k], default=None)
    r2 = fits[best] if best is not None else math.nan
    base = dict(log_scale=log_scale, market_r2=r2, market_days=best, reference_median=float(back(centre)),
                latest_median=float(back(recent_med[-1])))
    if best is None:
        return LevelShift(False, "the market's return over the reference window is not in daily_bars", **base)
    if r2 >= config.level_market_r2:
        return LevelShift(False, f"moves with the market (R^2 {r2:.2f} on its {best}-day return)", **base)
    if spread <= 0:
        return LevelShift(False, "no cross-sectional spread in the reference window", **base)
    shift = np.abs(recent_med - centre)
    off = (shift > config.level_z * scale) & (shift > config.level_spread * spread)
    worst = float(shift[off].max()) if off.any() else float(shift.max())
    first = recent_days[int(np.flatnonzero(off)[0])] if off.any() else None
    return LevelShift(True, "", days_off=int(off.sum()), first_off=first, z=worst / scale, spreads=worst / spread,
                      **base)
