"""Level shifts (core/diagnostics/levels.py): a fault that moves a feature for every ticker alike is found, the
day it starts; a market-wide move in returns is not taken for one.

Each plant changes ``daily_bars`` from one day on, refreshes the feature view, and is rolled back afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from bot.devtools import demo_world as dw
from core.diagnostics import run_diagnostics
from core.registry import ModelRegistry

MODEL = "growth_momentum_large"
RETURNS = {"ret_5d", "ret_20d", "ma_gap_10d", "rsi_14"}


@pytest.fixture
def planting(world, database_url: str) -> Iterator[psycopg.Connection]:
    """A connection whose changes to the market are rolled back at the end."""
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        yield conn
        conn.rollback()


def days_before_change(world) -> list:
    days = world.trading_days
    return days[: days.index(world.regime_change_start)]


@pytest.mark.parametrize("feature, change", [
    ("hl_range", "high = low + (high - low) * 100"),   # the high-low range of every ticker in other units
    ("volume_ratio_20d", "volume = volume * 100"),     # the volume feed in hundreds
])
def test_a_units_change_for_every_ticker_is_flagged_from_its_first_day(world, planting, feature, change):
    registry = ModelRegistry(world.models_dir)
    days = days_before_change(world)
    now, start = days[-1], days[-3]
    clean = run_diagnostics(planting, registry, model=MODEL, now=now)
    assert not clean.drift.shifted and not clean.by_area("drift")
    planting.execute(f"UPDATE daily_bars SET {change} WHERE date >= %s", (start,))
    planting.execute(f"REFRESH MATERIALIZED VIEW {dw.FEATURE_VIEW}")
    for as_of, off in ((start, 1), (now, 3)):
        report = run_diagnostics(planting, registry, model=MODEL, now=as_of)
        assert [f.feature for f in report.drift.shifted] == [feature], report.summary()
        shift = report.drift.shifted[0].shift
        assert shift.first_off == start and shift.days_off == off and shift.log_scale
        assert shift.spreads > 4 and shift.z > 8
        # day-centred PSI alone would have missed it
        assert report.drift.shifted[0].level != "significant"
        message = " ".join(f.message for f in report.by_area("drift"))
        assert feature in message and "every ticker alike" in message and start.isoformat() in message
        assert "feed or units change" in report.likely_cause and feature in report.likely_cause
        assert "level shifts for every ticker: " + feature in report.to_markdown()


def test_a_market_wide_move_in_returns_is_not_taken_for_a_fault(world, planting):
    """A crash: every ticker's prices fall 7% a day for five days (the range, volume and the cross-section's
    shape unchanged). Return features move for every ticker alike, rightly: no level shift, no drift finding."""
    registry = ModelRegistry(world.models_dir)
    days = days_before_change(world)
    start = days[-12]
    crash = days[days.index(start):]
    for i, day in enumerate(crash):
        factor = 0.93 ** min(i + 1, 5)
        planting.execute("UPDATE daily_bars SET open = open * %(f)s, high = high * %(f)s, low = low * %(f)s,"
                         " close = close * %(f)s WHERE date = %(d)s", {"f": factor, "d": day})
    planting.execute(f"REFRESH MATERIALIZED VIEW {dw.FEATURE_VIEW}")
    for as_of in (crash[2], crash[6], crash[-1]):
        report = run_diagnostics(planting, registry, model=MODEL, now=as_of)
        drift = {f.feature: f for f in report.drift.features}
        ret5 = drift["ret_5d"].shift
        assert not ret5.judged and "moves with the market" in ret5.why
        assert not report.drift.shifted, report.summary()
        assert not [f for f in report.drift.significant if f.feature in RETURNS]
        assert not report.by_area("drift")
        assert "feed or units" not in report.likely_cause
    # the raw levels did move a lot: the crash is there, and the regime check sees it
    assert drift["ret_20d"].psi_raw > 1.0 and report.regime.verdict == "regime change"


def test_the_regime_change_is_not_a_level_shift(world, conn):
    """The test world's regime change doubles volatility: hl_range and vol_20d rise for every ticker, by less
    than a units change would."""
    report = run_diagnostics(conn, ModelRegistry(world.models_dir), model=MODEL)
    assert report.regime.verdict == "regime change"
    assert not report.drift.shifted
    vol = next(f for f in report.drift.features if f.feature == "vol_20d").shift
    assert vol.judged and 1.0 < vol.spreads < 4
    assert "regime change" in report.likely_cause
