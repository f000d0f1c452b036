"""Issue 5: daily IC and rolling Sharpe charts (matplotlib, Agg canvas) from the platform's data."""

from __future__ import annotations

import io
import math
from datetime import date, timedelta

import numpy as np
import pytest

from bot.devtools.demo_world import load_features
from core.charts import (
    PNG_SIGNATURE,
    ModelSeries,
    build_figure,
    incident_chart,
    model_chart,
    model_series,
    performance_chart,
    rolling_sharpe,
)
from core.metrics import daily_ic, sharpe_ratio
from core.modelio import MODEL_FILE, load_booster, predict

MODEL = "growth_momentum_large"


def decode(png: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return imread(io.BytesIO(png), format="png")


def test_model_series_matches_an_independent_computation(conn, world, services):
    series = model_series(conn, services.registry, MODEL, None, days=30)
    info = world.models[MODEL]
    dates, _, X, y = load_features(conn, features=info.features, require_label=True)
    last = np.unique(dates)[-30:]
    keep = np.isin(dates, last)
    preds = predict(load_booster(info.path / MODEL_FILE), info.features, X[keep])
    expected = daily_ic(dates[keep], preds, y[keep])
    assert len(series.daily_ic) == 30 and len(series.daily_returns) == 30
    assert [d for d, _ in series.daily_ic] == [d for d, _ in expected]
    assert [v for _, v in series.daily_ic] == pytest.approx([v for _, v in expected])
    assert series.daily_ic[-1][0] == world.trading_days[-2], "the newest date with a realized label"


def test_rolling_sharpe():
    days = [date(2026, 1, 1) + timedelta(days=i) for i in range(12)]
    returns = [(d, 0.01 * ((i * 7) % 5 - 2)) for i, d in enumerate(days)]
    out = rolling_sharpe(returns, 10)
    assert [d for d, _ in out] == days[9:]
    assert out[0][1] == pytest.approx(sharpe_ratio([v for _, v in returns[:10]]))
    assert math.isnan(rolling_sharpe([(d, 0.01) for d in days], 10)[0][1]), "a constant series has no Sharpe"


def test_chart_is_a_png_with_both_models(conn, world, services):
    prod = model_series(conn, services.registry, MODEL, None, label="production (failing)")
    backup = world.models[MODEL].backups[0].name
    old = model_series(conn, services.registry, MODEL, backup, label=f"{backup} (restored)")
    fig = build_figure(title="t", series=[prod, old], rolling_window=10)
    top, bottom = fig.axes
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["production (failing)", f"{backup} (restored)"]
    assert [len(line.get_xdata()) for line in top.get_lines()[:2]] == [30, 30]
    assert [len(line.get_xdata()) for line in bottom.get_lines()[:2]] == [21, 21]
    assert list(top.get_lines()[1].get_ydata()) == pytest.approx([v for _, v in old.daily_ic])

    png = performance_chart(title="t", series={"a": prod, "b": old})
    assert png.startswith(PNG_SIGNATURE)
    image = decode(png)
    assert image.shape[:2] == (600, 900) and float(image[..., :3].std()) > 0.05, "something is drawn"


def test_empty_series_still_render():
    png = performance_chart(title="no data", series=[ModelSeries("x", [], [])])
    assert decode(png).shape[:2] == (600, 900)


def test_incident_chart_shows_the_failing_model_beside_the_restored_one(conn, world, services):
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    failing_before = model_series(conn, services.registry, MODEL, None)
    restored = model_series(conn, services.registry, MODEL, target)
    assert failing_before.daily_ic != restored.daily_ic
    before = incident_chart(conn, services.registry, inc)
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    done = services.engine.execute(inc.id)
    after = incident_chart(conn, services.registry, done)
    assert before.startswith(PNG_SIGNATURE) and after == before, "the same two models before and after the swap"
    # after the swap, the failing model is the emergency backup
    assert model_series(conn, services.registry, MODEL, done.emergency_backup).daily_ic == failing_before.daily_ic
    assert incident_chart(conn, services.registry, services.engine.halt_trading(user="U0ALICE", reason="x")) is None
    status = model_chart(conn, services.registry, MODEL, compare_with=done.emergency_backup)
    assert decode(status).shape[:2] == (600, 900)
