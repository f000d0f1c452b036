"""World-building for the demo's second scenario: a trading day on which rolling back does not help.

``shock_day`` writes the next trading day's bars to ``daily_bars`` and refreshes ``ml_training_features``. The
market falls (``market_move``) and, across tickers, the day's returns run against what the given models
predicted at the previous close: each ticker's return is ``market_move - spread * z`` (plus a little noise),
where ``z`` is the cross-sectional z-score of the sum of the models' z-scored predictions. So every one of those
models, the one that was replaced as much as the backup restored in its place, has a strongly negative IC on
the new day: the cause is the market, not the model, and a rollback cannot fix it. Volume doubles and ranges
widen, as on a real shock day.

Deterministic given ``seed``. Like ``bot.devtools.demo_world``, for demo and test databases only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import psycopg
from psycopg.rows import tuple_row

from bot.devtools.demo_market import Market
from bot.devtools.demo_platform import load_features, refresh_view

__all__ = ["ShockDay", "shock_day"]


@dataclass(frozen=True)
class ShockDay:
    day: date            # the new trading day
    after: date          # the previous trading day (the models' predictions were made at its close)
    tickers: int
    market_move: float   # the return every ticker shares
    ics: dict[str, float]  # each model folder's Spearman IC on the new day's returns


def _next_weekday(day: date) -> date:
    day += timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def _rank_ic(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _predictions(conn: psycopg.Connection, folder: Path, day: date, tickers: list[str]) -> np.ndarray:
    """The model in ``folder`` (``model.json`` + ``metadata.json``) on the feature rows of ``day``, by ticker."""
    import xgboost

    features = list(json.loads((folder / "metadata.json").read_text(encoding="utf-8"))["features"])
    _, names, X, _ = load_features(conn, start=day, end=day, features=features)
    booster = xgboost.Booster(model_file=str(folder / "model.json"))
    preds = booster.predict(xgboost.DMatrix(X, feature_names=features, missing=np.nan, nthread=1))
    by_ticker = dict(zip(names.tolist(), preds.tolist(), strict=True))
    return np.array([by_ticker.get(t, np.nan) for t in tickers], dtype=np.float64)


def shock_day(conn: psycopg.Connection, market: Market, *, against: list[Path], market_move: float = -0.035,
              spread: float = 0.025, seed: int = 0) -> ShockDay:
    """Write the shock day after the last day of ``daily_bars`` (see the module docstring); ``against``: the model
    folders whose predictions the day's returns run against."""
    if not against:
        raise ValueError("shock_day needs at least one model folder to run against")
    with conn.cursor(row_factory=tuple_row) as cur:
        after = cur.execute("SELECT max(date) FROM daily_bars").fetchone()[0]
        bars = cur.execute("SELECT ticker, close, volume FROM daily_bars WHERE date = %s ORDER BY ticker",
                           (after,)).fetchall()
    tickers = [b[0] for b in bars]
    close = np.array([b[1] for b in bars], dtype=np.float64)
    volume = np.array([b[2] or 0 for b in bars], dtype=np.float64)
    score = np.zeros(len(tickers))
    for folder in against:
        p = _predictions(conn, folder, after, tickers)
        score += np.where(np.isfinite(p), _zscore(np.nan_to_num(p)), 0.0)
    rng = np.random.default_rng([seed, 2026])
    ret = market_move - spread * _zscore(score) + rng.normal(0.0, 0.004, len(tickers))
    new_close = close * (1.0 + ret)
    open_ = close * (1.0 + market_move / 3)
    high = np.maximum(open_, new_close) * (1.0 + np.abs(rng.normal(0.0, 0.006, len(tickers))))
    low = np.minimum(open_, new_close) * (1.0 - np.abs(rng.normal(0.0, 0.006, len(tickers))))
    day = _next_weekday(after)
    with conn.cursor(row_factory=tuple_row) as cur:
        with cur.copy("COPY daily_bars (date, ticker, open, high, low, close, volume) FROM STDIN") as copy:
            for i, ticker in enumerate(tickers):
                copy.write_row((day, ticker, float(open_[i]), float(high[i]), float(low[i]), float(new_close[i]),
                                int(volume[i] * 2)))
    refresh_view(conn)
    conn.commit()
    market.trading_days.append(day)
    ics = {}
    for folder in against:
        p = _predictions(conn, folder, after, tickers)
        ok = np.isfinite(p)
        ics[folder.name] = _rank_ic(p[ok], ret[ok])
    return ShockDay(day=day, after=after, tickers=len(tickers), market_move=market_move, ics=ics)
