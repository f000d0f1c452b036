"""The market regime (not specific to a model version): for each day, the market return (the mean of the
tickers' close-to-close returns in ``daily_bars``) and the cross-sectional dispersion (their standard
deviation). The recent 30 trading days against the 120 before them: the market volatility ratio
``std(recent) / std(prior)``, the dispersion ratio ``mean(recent dispersion) / mean(prior dispersion)`` and
Welch's t statistic of the shift in the mean market return. Verdict ``regime change`` when either ratio is
above 1.5 or below 1/1.5, or ``|t| > 3``. Under a stable market the log of the volatility ratio has a standard
error of about ``sqrt(1/58 + 1/238) = 0.15`` (1.5 is ~2.8 of them away); the dispersion ratio, averaged over
many tickers and days, is far tighter. A doubling of volatility (market and stock-specific) is found by both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

import numpy as np
import psycopg

from core.diagnostics.common import WARNING, DiagnosticsConfig, Finding, rows as fetch


@dataclass(frozen=True)
class RegimeSection:
    test: str
    recent: tuple[date, date] | None = None
    prior: tuple[date, date] | None = None
    recent_days: int = 0
    prior_days: int = 0
    vol_recent: float = math.nan
    vol_prior: float = math.nan
    vol_ratio: float = math.nan
    dispersion_recent: float = math.nan
    dispersion_prior: float = math.nan
    dispersion_ratio: float = math.nan
    mean_recent: float = math.nan
    mean_prior: float = math.nan
    t_stat: float = math.nan
    verdict: str = "insufficient data"   # "regime change" | "no regime change" | "insufficient data" | "error"
    error: str | None = None


REGIME_TEST = (
    "daily market return = mean of the tickers' close-to-close returns in daily_bars, dispersion = their "
    "cross-sectional standard deviation; the recent {r} trading days against the {p} before: regime change when "
    "the market volatility ratio or the mean-dispersion ratio is above {v:g} or below 1/{v:g}, or when Welch's t "
    "of the mean market return's shift exceeds {t:g} in absolute value"
)


def _ratio_off(ratio: float, limit: float) -> bool:
    return math.isfinite(ratio) and (ratio > limit or ratio < 1 / limit)


def check_regime(
    conn: psycopg.Connection, *, as_of: date | None = None, config: DiagnosticsConfig = DiagnosticsConfig(),
) -> tuple[RegimeSection, list[Finding]]:
    """Volatility and dispersion ratios and the mean-shift t statistic, recent window vs the prior window."""
    r_n, p_n = config.regime_recent_days, config.regime_prior_days
    test = REGIME_TEST.format(r=r_n, p=p_n, v=config.regime_vol_ratio, t=config.regime_t_stat)
    got = fetch(
        conn,
        "WITH d AS (SELECT DISTINCT date FROM daily_bars WHERE (%(a)s::date IS NULL OR date <= %(a)s::date)"
        " ORDER BY date DESC LIMIT %(n)s),"
        " r AS (SELECT date, close / NULLIF(lag(close) OVER (PARTITION BY ticker ORDER BY date), 0) - 1 AS ret"
        " FROM daily_bars WHERE date >= (SELECT min(date) FROM d) AND (%(a)s::date IS NULL OR date <= %(a)s::date))"
        " SELECT date, avg(ret), stddev_samp(ret) FROM r WHERE ret IS NOT NULL GROUP BY date ORDER BY date",
        {"a": as_of, "n": r_n + p_n + 1},
    )
    daily = [(d, float(m), math.nan if sd is None else float(sd)) for d, m, sd in got
            if m is not None and math.isfinite(m)]
    recent, prior = daily[-r_n:], daily[:-r_n][-p_n:]
    if len(recent) < min(10, r_n) or len(prior) < min(20, p_n):
        return RegimeSection(test, recent_days=len(recent), prior_days=len(prior)), []
    x, y = np.array([r[1] for r in recent]), np.array([r[1] for r in prior])
    dx, dy = np.array([r[2] for r in recent]), np.array([r[2] for r in prior])
    dx, dy = dx[np.isfinite(dx)], dy[np.isfinite(dy)]
    disp_x = float(dx.mean()) if dx.size else math.nan
    disp_y = float(dy.mean()) if dy.size else math.nan
    disp_ratio = disp_x / disp_y if math.isfinite(disp_y) and disp_y > 0 else math.nan
    sx, sy = float(x.std(ddof=1)), float(y.std(ddof=1))
    ratio = sx / sy if sy > 0 else math.inf
    se = math.sqrt(sx * sx / x.size + sy * sy / y.size)
    t = (float(x.mean()) - float(y.mean())) / se if se > 0 else 0.0
    limit = config.regime_vol_ratio
    why = []
    if _ratio_off(ratio, limit):
        why.append(f"market volatility {ratio:.2f}x that of the prior {len(prior)} days ({sx:.2%} vs {sy:.2%} a day)")
    if _ratio_off(disp_ratio, limit):
        why.append(f"cross-sectional dispersion {disp_ratio:.2f}x ({disp_x:.2%} vs {disp_y:.2%} a day)")
    if abs(t) > config.regime_t_stat:
        why.append(f"mean market return shifted ({x.mean():+.3%} vs {y.mean():+.3%} a day, t = {t:.1f})")
    section = RegimeSection(
        test, (recent[0][0], recent[-1][0]), (prior[0][0], prior[-1][0]), len(recent), len(prior), sx, sy, ratio,
        disp_x, disp_y, disp_ratio, float(x.mean()), float(y.mean()), t,
        "regime change" if why else "no regime change",
    )
    findings = []
    if why:
        since = recent[0][0].isoformat()
        findings.append(Finding(WARNING, "regime", f"regime change since {since}: " + "; ".join(why)))
    return section, findings
