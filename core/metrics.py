"""Model-quality metrics of the trading platform (pure numpy; no Slack, no database).

These are the numbers the platform writes into a model's ``metadata.json`` under
``performance`` and the numbers the bot recomputes for diagnostics and monitoring.

Conventions
-----------
* ``pred`` is a model's score for (date, ticker) computed from features known at the
  close of ``date``; ``realized`` is the return the ticker then realised over the NEXT
  trading day (the label).  All three arrays (``dates``, ``pred``, ``realized``) are
  aligned element-wise, one element per (date, ticker).
* Pairs where ``pred`` or ``realized`` is not finite (NaN / ±inf) are ignored.
* Every function returns ``float('nan')`` (never raises, never returns ±inf) when a
  number is undefined: too few points, constant input, zero dispersion.
* ``dates`` may be anything hashable and orderable that numpy can sort:
  ``datetime.date`` objects, ``numpy.datetime64`` values, ISO strings.  Dates in the
  results are returned as Python objects (``numpy.datetime64[D]`` -> ``datetime.date``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = [
    "Performance",
    "rankdata",
    "spearman_ic",
    "daily_ic",
    "long_short_returns",
    "sharpe_ratio",
    "evaluate",
]

NAN = float("nan")


@dataclass(frozen=True)
class Performance:
    """Out-of-sample quality of a model over a window of days.

    spearman_ic   mean over days of the daily Spearman IC (days with an undefined IC skipped)
    sharpe_ratio  annualised Sharpe ratio of the daily long-short returns (``sharpe_ratio``)
    days          number of days that had a defined (finite) daily IC
    """

    spearman_ic: float
    sharpe_ratio: float
    days: int

    def as_dict(self) -> dict[str, float]:
        """The ``performance`` block of ``metadata.json``."""
        return {"spearman_ic": self.spearman_ic, "sharpe_ratio": self.sharpe_ratio}


def _as_float_array(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _py(value: Any) -> Any:
    """numpy scalar -> Python object (datetime64[D] -> datetime.date)."""
    return value.item() if isinstance(value, np.generic) else value


def rankdata(x: Any) -> np.ndarray:
    """1-based ranks of ``x``, ties receiving the average of the ranks they span.

    For a group of ``c`` equal values occupying sorted positions ``s+1 .. s+c`` the rank
    is ``s + (c + 1) / 2``.  (Same as ``scipy.stats.rankdata(x, method='average')``.)
    """
    a = _as_float_array(x)
    if a.size == 0:
        return np.empty(0, dtype=np.float64)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)  # last 1-based position of each group
    average = ends - (counts - 1) / 2.0
    return average[inverse.reshape(-1)]


def spearman_ic(pred: Any, realized: Any) -> float:
    """Spearman rank correlation between predictions and realised returns.

    ``IC = pearson(rank(pred), rank(realized))`` with average ranks for ties, i.e.
    ``sum((rp - mean(rp)) * (rr - mean(rr))) / sqrt(sum((rp - mean(rp))^2) * sum((rr - mean(rr))^2))``.

    Non-finite pairs are dropped first.  Returns NaN with fewer than 3 pairs or when
    either side is constant (zero rank dispersion).
    """
    p = _as_float_array(pred)
    r = _as_float_array(realized)
    if p.shape != r.shape:
        raise ValueError(f"pred and realized differ in length ({p.size} != {r.size})")
    ok = np.isfinite(p) & np.isfinite(r)
    if int(ok.sum()) < 3:
        return NAN
    rp = rankdata(p[ok])
    rr = rankdata(r[ok])
    rp -= rp.mean()
    rr -= rr.mean()
    denom = math.sqrt(float(np.dot(rp, rp)) * float(np.dot(rr, rr)))
    if denom == 0.0:
        return NAN
    ic = float(np.dot(rp, rr)) / denom
    return max(-1.0, min(1.0, ic))


def _group_by_date(dates: Any, *arrays: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted unique dates and, per date, the indices of its rows."""
    d = np.asarray(dates)
    if d.ndim != 1:
        d = d.reshape(-1)
    for a in arrays:
        if np.asarray(a).reshape(-1).shape[0] != d.shape[0]:
            raise ValueError("dates, pred and realized must have the same length")
    if d.size == 0:
        return d, []
    uniq, inverse = np.unique(d, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
    groups = [order[bounds[i] : bounds[i + 1]] for i in range(len(uniq))]
    return uniq, groups


def daily_ic(dates: Any, pred: Any, realized: Any) -> list[tuple[Any, float]]:
    """Spearman IC computed separately for each date, as ``[(date, ic), ...]`` sorted by date.

    ``ic_d = spearman_ic(pred[dates == d], realized[dates == d])``; a day whose IC is
    undefined (fewer than 3 finite pairs, constant input) is listed with NaN.
    """
    p = _as_float_array(pred)
    r = _as_float_array(realized)
    uniq, groups = _group_by_date(dates, p, r)
    return [(_py(uniq[i]), spearman_ic(p[g], r[g])) for i, g in enumerate(groups)]


def long_short_returns(
    dates: Any, pred: Any, realized: Any, quantile: float = 0.2
) -> list[tuple[Any, float]]:
    """Daily return of an equal-weight long-short portfolio built from the predictions.

    Each day, over the ``n`` tickers with finite pred and realised return, let
    ``k = max(1, floor(n * quantile))``; the portfolio is long the ``k`` highest
    predictions and short the ``k`` lowest, equal weight on each side, so
    ``ret_d = mean(realized[top k]) - mean(realized[bottom k])``
    (a dollar-neutral return on the gross long side).  Ties in ``pred`` are broken by
    input order.  A day with ``n < 2`` (or ``2k > n``) gets NaN.
    """
    if not 0.0 < quantile <= 0.5:
        raise ValueError("quantile must be in (0, 0.5]")
    p = _as_float_array(pred)
    r = _as_float_array(realized)
    uniq, groups = _group_by_date(dates, p, r)
    out: list[tuple[Any, float]] = []
    for i, g in enumerate(groups):
        pg, rg = p[g], r[g]
        ok = np.isfinite(pg) & np.isfinite(rg)
        pg, rg = pg[ok], rg[ok]
        n = pg.size
        k = max(1, int(math.floor(n * quantile + 1e-9)))
        if n < 2 or 2 * k > n:
            out.append((_py(uniq[i]), NAN))
            continue
        order = np.argsort(pg, kind="stable")
        ret = float(rg[order[-k:]].mean() - rg[order[:k]].mean())
        out.append((_py(uniq[i]), ret))
    return out


def sharpe_ratio(daily_returns: Any, periods_per_year: int = 252) -> float:
    """Annualised Sharpe ratio of a series of per-period returns (risk-free rate 0).

    ``sharpe = mean(x) / std(x, ddof=1) * sqrt(periods_per_year)`` over the finite
    elements ``x``.  Accepts a plain sequence of numbers or the ``[(date, ret), ...]``
    list of ``long_short_returns``.  NaN with fewer than 2 finite values or a constant
    series (zero standard deviation) -- never ±inf.
    """
    values: Sequence[Any] | np.ndarray = daily_returns
    if isinstance(daily_returns, (list, tuple)) and daily_returns and isinstance(daily_returns[0], tuple):
        values = [v for _, v in daily_returns]
    x = _as_float_array(values)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return NAN
    if float(np.ptp(x)) == 0.0:
        return NAN
    mean = float(x.mean())
    std = float(x.std(ddof=1))
    if not math.isfinite(std) or std <= 1e-12 * max(1.0, abs(mean)) or std == 0.0:
        return NAN
    result = mean / std * math.sqrt(periods_per_year)
    return result if math.isfinite(result) else NAN


def evaluate(dates: Any, pred: Any, realized: Any, *, quantile: float = 0.2,
             periods_per_year: int = 252) -> Performance:
    """Out-of-sample performance over a window.

    ``spearman_ic`` = mean of the finite daily ICs (``daily_ic``);
    ``sharpe_ratio`` = ``sharpe_ratio(long_short_returns(dates, pred, realized, quantile))``;
    ``days`` = number of days with a finite daily IC.  IC is NaN when no day qualifies.
    """
    ics = np.array([ic for _, ic in daily_ic(dates, pred, realized)], dtype=np.float64)
    finite = ics[np.isfinite(ics)]
    mean_ic = float(finite.mean()) if finite.size else NAN
    ls = long_short_returns(dates, pred, realized, quantile=quantile)
    sharpe = sharpe_ratio([v for _, v in ls], periods_per_year=periods_per_year)
    return Performance(spearman_ic=mean_ic, sharpe_ratio=sharpe, days=int(finite.size))
