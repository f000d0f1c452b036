"""Feature drift of one model version's inputs: its features, against its own training window.

Population stability index per feature between the reference window (the version's ``train_start`` ..
``train_end`` from its metadata.json when present, else the ``reference_days`` (90) feature dates before the
recent window) and the last N feature dates; 10 bins at the reference's deciles;
``PSI = sum((a - e) * ln(a / e))`` with bin shares floored at 1e-4. PSI > 0.25 significant (a warning finding),
0.10-0.25 moderate (listed only). That PSI is computed on cross-sectionally centred values (each value minus
that day's median over the tickers): return-type features (ret_20d, rsi_14, ...) move together with the
market's trend, and on clean data their raw PSI between a 60-day training window and the last 30 days is often
above 1 with nothing wrong. Centring removes what every ticker shares on a day and keeps changes in spread and
shape. The raw PSI is reported too (``psi_raw``). What centring hides, a shift common to every ticker, is
judged by the level check (``core.diagnostics.levels``), day by day.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from core.diagnostics.common import WARNING, DiagnosticsConfig, Finding, rows, view_dates
from core.diagnostics.levels import LevelShift, level_shift, market_returns
from core.modelio import Metadata
from core.platform import FEATURE_VIEW, feature_columns


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    psi: float        # PSI of the cross-sectionally centred values (decides the level)
    psi_raw: float    # PSI of the raw values
    level: str        # "significant" | "moderate" | "stable" | "no data"
    reference_rows: int
    recent_rows: int
    shift: LevelShift | None = None   # the level check (a shift common to every ticker)

    @property
    def shifted(self) -> bool:
        return self.shift is not None and self.shift.shifted


@dataclass(frozen=True)
class DriftSection:
    reference: tuple[date, date] | None = None
    reference_source: str = ""
    recent: tuple[date, date] | None = None
    features: list[FeatureDrift] = field(default_factory=list)   # most drifted first
    error: str | None = None
    version: str | None = None   # whose features and training window

    @property
    def significant(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.level == "significant"]

    @property
    def shifted(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.shifted]


def psi(reference: Any, recent: Any, bins: int = 10, floor: float = 1e-4) -> float:
    """Population stability index of ``recent`` against ``reference`` (non-finite values ignored).

    Bins are cut at the reference's quantiles ``1/bins .. (bins-1)/bins`` (repeated cut points merged);
    ``PSI = sum((a_i - e_i) * ln(a_i / e_i))`` over the bins' shares ``e`` (reference) and ``a`` (recent),
    each floored at ``floor``. NaN when either side has no finite value.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(recent, dtype=np.float64)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if ref.size == 0 or cur.size == 0:
        return math.nan
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    # bins (-inf, q1], (q1, q2], ..., (q_last, inf): a value equal to a cut point goes to the lower bin
    e = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=edges.size + 1) / ref.size
    a = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=edges.size + 1) / cur.size
    e, a = np.maximum(e, floor), np.maximum(a, floor)
    return float(np.sum((a - e) * np.log(a / e)))


def centre_by_date(dates: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Each value minus the median of its column on the same date (rows sorted by date; NaN ignored)."""
    out = X.copy()
    if X.size == 0:
        return out
    bounds = np.flatnonzero(np.r_[True, dates[1:] != dates[:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        block = X[lo:hi]
        finite = np.isfinite(block)
        if finite.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NULL column on a day
                med = np.nanmedian(np.where(finite, block, np.nan), axis=0)
            out[lo:hi] = block - np.where(np.isfinite(med), med, 0.0)
    return out


def train_window(meta: Metadata | None) -> tuple[date, date] | None:
    extra = (meta.model_extra or {}) if meta is not None else {}
    try:
        lo, hi = date.fromisoformat(str(extra["train_start"])), date.fromisoformat(str(extra["train_end"]))
    except (KeyError, ValueError, TypeError):
        return None
    return (lo, hi) if lo <= hi else None


def _psi_level(value: float, config: DiagnosticsConfig) -> str:
    if not math.isfinite(value):
        return "no data"
    if value > config.psi_significant:
        return "significant"
    return "moderate" if value >= config.psi_moderate else "stable"


def _shift_text(f: FeatureDrift) -> str:
    s = f.shift
    assert s is not None
    factor = f", x{s.factor:.3g}" if s.log_scale and math.isfinite(s.factor) else ""
    return (f"{f.feature} since {s.first_off.isoformat() if s.first_off else '?'} ({s.days_off} day(s): median"
            f" {s.latest_median:.4g} vs {s.reference_median:.4g}{factor}, {s.spreads:.0f} spreads)")


def check_drift(
    conn: psycopg.Connection, *, features: list[str], days: int = 30, as_of: date | None = None,
    train_window: tuple[date, date] | None = None, config: DiagnosticsConfig = DiagnosticsConfig(),
    version: str | None = None,
) -> tuple[DriftSection, list[Finding]]:
    """PSI and level shift per feature between the training window (or the days before the recent window) and
    the recent days."""
    available = feature_columns(conn)
    feats = [c for c in features if c in available]
    recent = view_dates(conn, as_of, days)
    if not recent or not feats:
        return DriftSection(error="no recent rows in the feature view" if not recent else "no feature to compare",
                            version=version), []
    if train_window is not None:
        ref_lo, ref_hi = train_window
        source = "the training window (metadata.json)"
    else:
        before = view_dates(conn, as_of, config.reference_days, before=recent[0])
        if not before:
            return DriftSection(recent=(recent[0], recent[-1]), error="no feature rows before the recent window",
                                version=version), []
        ref_lo, ref_hi = before[0], before[-1]
        source = f"the {len(before)} trading days before the recent window"
    query = sql.SQL(
        "SELECT date, date BETWEEN %(rl)s AND %(rh)s, date >= %(lo)s AND date <= %(hi)s, {cols} FROM {v}"
        " WHERE (date BETWEEN %(rl)s AND %(rh)s) OR (date >= %(lo)s AND date <= %(hi)s) ORDER BY date"
    ).format(cols=sql.SQL(", ").join(sql.Identifier(c) for c in feats), v=sql.Identifier(FEATURE_VIEW))
    got = rows(conn, query, {"rl": ref_lo, "rh": ref_hi, "lo": recent[0], "hi": recent[-1]})
    if got:
        row_dates = np.array([r[0] for r in got], dtype="datetime64[D]")
        in_ref = np.array([r[1] for r in got], dtype=bool)
        in_recent = np.array([r[2] for r in got], dtype=bool)
        X = np.array([r[3:] for r in got], dtype=np.float64).reshape(len(got), len(feats))
    else:
        row_dates = np.empty(0, dtype="datetime64[D]")
        in_ref = in_recent = np.zeros(0, dtype=bool)
        X = np.empty((0, len(feats)))
    Xc = centre_by_date(row_dates, X)
    market = market_returns(conn, min(ref_lo, recent[0]), max(ref_hi, recent[-1]))
    out: list[FeatureDrift] = []
    for j, feat in enumerate(feats):
        value = psi(Xc[in_ref, j], Xc[in_recent, j], bins=config.psi_bins)
        raw = psi(X[in_ref, j], X[in_recent, j], bins=config.psi_bins)
        shift = level_shift(row_dates[in_ref], X[in_ref, j], row_dates[in_recent], X[in_recent, j], market,
                            config=config)
        out.append(FeatureDrift(feat, value, raw, _psi_level(value, config), int(np.isfinite(X[in_ref, j]).sum()),
                                int(np.isfinite(X[in_recent, j]).sum()), shift))
    out.sort(key=lambda fd: (not fd.shifted, -fd.psi if math.isfinite(fd.psi) else math.inf))
    section = DriftSection((ref_lo, ref_hi), source, (recent[0], recent[-1]), out, version=version)
    findings = []
    if section.shifted:
        listed = "; ".join(_shift_text(fd) for fd in section.shifted[:5])
        findings.append(Finding(WARNING, "drift", f"level shift for every ticker alike (a feed or units change?) against"
                                                  f" {source}: {listed}"))
    if section.significant:
        listed = ", ".join(f"{fd.feature} (PSI {fd.psi:.2f})" for fd in section.significant[:5])
        findings.append(Finding(WARNING, "drift", f"significant drift against {source}: {listed}"))
    return section, findings
