"""Realized returns have one source (core.marketdata): monitoring, the watchdog and the diagnostics judge a model
on the same labels, the view's next-day ``return_1d``, read as the view stood on ``as_of``."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from bot.devtools import demo_world as dw
from core import metrics
from core.diagnostics import check_performance
from core.marketdata import labelled_rows
from core.modelio import load_booster, predict
from core.registry import ModelRegistry

MODEL = "growth_momentum_large"


def test_the_diagnostics_and_monitoring_read_the_same_realized_returns(world, conn) -> None:
    features = list(world.models[MODEL].features)
    view_days = world.trading_days[dw.WARMUP_ROWS:]
    as_of = view_days[-5]
    registry = ModelRegistry(world.models_dir)
    with conn.transaction():
        # the contract promises daily_bars only (date, ticker): no reader may need its prices
        conn.execute("ALTER TABLE daily_bars RENAME COLUMN close TO close_price")
        data = labelled_rows(conn, features, last_days=10, as_of=as_of)
        section, _ = check_performance(conn, registry, model=MODEL, days=10, as_of=as_of)
        raise psycopg.Rollback

    days = sorted(set(data.dates.astype(object)))
    assert days == view_days[-15:-5], "the ten days before as_of whose next day is on or before it"
    d, tickers, X, y = dw.load_features(conn, start=days[0], end=days[-1], features=features, require_label=True)
    assert np.array_equal(d, data.dates) and list(tickers) == data.tickers
    assert np.allclose(y, data.realized) and np.allclose(X, data.X, equal_nan=True)

    assert section.verdict != "error" and section.error is None
    assert section.days == 10 and section.window == (days[0], days[-1])
    booster = load_booster(world.models_dir / MODEL / "model.json")
    expected = metrics.evaluate(data.dates, predict(booster, features, data.X), data.realized)
    assert section.mean_ic == pytest.approx(expected.spearman_ic, abs=1e-9)
    assert section.sharpe == pytest.approx(expected.sharpe_ratio, abs=1e-9)


def test_as_of_reads_nothing_dated_after_it(world, conn) -> None:
    features = list(world.models[MODEL].features)
    view_days = world.trading_days[dw.WARMUP_ROWS:]
    as_of = view_days[-3]
    upto = labelled_rows(conn, features, as_of=as_of)
    assert upto.dates.max().astype(object) == view_days[-4], "as_of's own label is not known on as_of"
    latest = labelled_rows(conn, features, last_days=1)
    assert latest.dates.max().astype(object) == view_days[-2]
    since = labelled_rows(conn, features, since=view_days[-6], as_of=as_of)
    assert sorted(set(since.dates.astype(object))) == view_days[-6:-3]
