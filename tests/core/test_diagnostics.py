"""Root-cause diagnostics (core/diagnostics.py) on generated worlds with planted problems.

The shared test world (fixture ``world``) carries the generator's regime change in its last 30 days; the
days before it are clean. A second world, built once for this module in its own schema, adds the other
plants: a missing day (~25% of the tickers' bars dropped), NULLs in one feature on one day, and a drifted
feature (a wider high-low range for every ticker over the 30 days before the regime change).
"""

from __future__ import annotations

import json
import math
import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg.rows import dict_row

from bot.devtools import demo_world as dw
from core import metrics
from core.diagnostics import (
    DiagnosticsConfig,
    check_data_quality,
    check_regime,
    psi,
    run_diagnostics,
    scan_log,
)
from core.errors import InvalidName, UnknownModel
from core.registry import ModelRegistry

MODEL = "growth_momentum_large"
DRIFT_FEATURE = "hl_range"
NULL_FEATURE = "volume_ratio_20d"


def _day_before_change(world) -> object:
    days = world.trading_days
    return days[days.index(world.regime_change_start) - 1]


@pytest.fixture(scope="module")
def planted(database_url: str, tmp_path_factory: pytest.TempPathFactory):
    """A world with every plant, in a schema of its own: (connection, world, drift window)."""
    models = tmp_path_factory.mktemp("planted-models")
    with psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as conn:
        with dw.isolated_schema(conn, prefix="t_diag_"):
            world = dw.build_world(conn, models, size="test", seed=3, missing_day=-3,
                                   null_feature=(NULL_FEATURE, -2))
            days = world.trading_days
            pre = days.index(world.regime_change_start) - 1
            lo, hi = days[pre - 29], days[pre]
            # the drift plant: the feed's highs move up (a wider range) for every ticker, on 30 pre-change days
            conn.execute("UPDATE daily_bars SET high = low + (high - low) * 2.5 WHERE date BETWEEN %s AND %s",
                         (lo, hi))
            conn.execute(f"REFRESH MATERIALIZED VIEW {dw.FEATURE_VIEW}")
            yield conn, world, (lo, hi)


# --------------------------------------------------------------------------------------------- clean data


def test_clean_data_raises_nothing(world, conn, tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("INFO epoch 1 loss 0.31\nINFO epoch 2 loss 0.29\nINFO saved model.json\n")
    registry = ModelRegistry(world.models_dir)
    now = _day_before_change(world)
    for model in world.models:
        run_diagnostics(conn, registry, model=model, now=now)  # warm caches (xgboost import, file cache)
        report = run_diagnostics(conn, registry, model=model, days=30, training_log=log, now=now)
        assert report.findings == [], report.summary()
        assert report.performance.verdict == "ok"
        assert report.performance.days == 30 and report.performance.mean_ic > 0.1
        assert report.performance.window[1] < now  # the last day's label lies after `now`
        dq = report.data_quality
        assert not dq.flagged_days and not dq.missing_weekdays and not dq.stale
        assert [d.tickers for d in dq.ticker_counts] == [len(world.tickers)] * 7
        assert set(dq.null_counts) == set(world.features) and not any(dq.null_counts.values())
        assert report.log_scan.status == "ok" and report.log_scan.counts == {"error": 0, "warning": 0, "nan": 0}
        assert report.drift.reference_source.startswith("the training window")
        assert report.drift.features and not report.drift.significant
        assert report.regime.verdict == "no regime change"
        assert report.likely_cause.startswith("No anomaly found")
        assert report.elapsed_seconds < 1.0


def test_after_the_regime_change_the_model_is_degraded_and_the_change_found(world, conn) -> None:
    registry = ModelRegistry(world.models_dir)
    report = run_diagnostics(conn, registry, model=MODEL)
    perf = report.performance
    assert perf.verdict == "degraded" and perf.mean_ic < 0 and perf.sharpe < 0
    assert perf.expected_ic == pytest.approx(world.models[MODEL].production.holdout.spearman_ic)
    assert [f.severity for f in report.by_area("performance")] == ["critical"]
    assert report.regime.verdict == "regime change"
    assert report.regime.recent[0] == world.regime_change_start
    assert report.regime.dispersion_ratio > 1.5
    assert "regime change" in report.likely_cause
    text = report.summary()
    assert text.splitlines()[0].startswith(f"Diagnostics of {MODEL}")
    assert "regime" in text and "Likely cause" in text
    assert "Likely cause" in report.to_markdown()


def test_performance_matches_an_independent_computation(world, conn) -> None:
    """Daily IC / Sharpe over the view's next-day labels, computed here without core.diagnostics."""
    import xgboost

    registry = ModelRegistry(world.models_dir)
    report = run_diagnostics(conn, registry, model=MODEL, days=20)
    lo, hi = report.performance.window
    features = world.models[MODEL].features
    d, _, X, y = dw.load_features(conn, start=lo, end=hi, features=features, require_label=True)
    booster = xgboost.Booster(model_file=str(world.models_dir / MODEL / "model.json"))
    expected = metrics.evaluate(d, booster.predict(xgboost.DMatrix(X, feature_names=features)), y)
    assert report.performance.days == expected.days == 20
    assert report.performance.mean_ic == pytest.approx(expected.spearman_ic, abs=1e-9)
    assert report.performance.sharpe == pytest.approx(expected.sharpe_ratio, abs=1e-9)
    assert [round(ic, 12) for _, ic in report.performance.daily_ic] == [
        round(ic, 12) for _, ic in metrics.daily_ic(d, booster.predict(xgboost.DMatrix(X, feature_names=features)), y)
    ]


# --------------------------------------------------------------------------------------------- the plants


def test_regime_change_is_found_only_after_it(planted) -> None:
    conn, world, _ = planted
    after, findings = check_regime(conn)
    assert after.verdict == "regime change" and [f.area for f in findings] == ["regime"]
    assert after.recent[0] == world.regime_change_start
    assert after.vol_ratio > 1.5 and after.dispersion_ratio > 1.5
    before, findings = check_regime(conn, as_of=_day_before_change(world))
    assert before.verdict == "no regime change" and findings == []
    assert 1 / 1.5 < before.vol_ratio < 1.5 and abs(before.t_stat) < 3


def test_missing_day_is_flagged(planted) -> None:
    conn, world, _ = planted
    section, findings = check_data_quality(conn, days=30)
    flagged = [d.day for d in section.flagged_days]
    assert flagged == [world.market.missing_day]
    day = next(d for d in section.ticker_counts if d.flagged)
    assert day.tickers == len(world.tickers) - len(world.market.missing_day_tickers)
    assert day.trailing_median == len(world.tickers)
    assert any(world.market.missing_day.isoformat() in f.message for f in findings)
    # the days before the plant are not flagged
    clean, _ = check_data_quality(conn, days=30, as_of=world.trading_days[-4])
    assert not clean.flagged_days


def test_planted_nulls_are_counted(planted) -> None:
    conn, world, _ = planted
    section, findings = check_data_quality(conn, days=30)
    name, day = world.market.null_feature
    assert name == NULL_FEATURE
    expected = {f: 0 for f in world.features}
    expected[NULL_FEATURE] = len(world.market.null_feature_tickers)
    assert section.null_counts == expected
    assert section.null_worst_day[NULL_FEATURE] == (day, len(world.market.null_feature_tickers))
    assert [f for f in findings if NULL_FEATURE in f.message]
    # outside the window, no NULLs
    earlier, _ = check_data_quality(conn, days=5, as_of=world.trading_days[-3])
    assert not any(earlier.null_counts.values())


def test_drifted_feature_is_the_most_drifted(planted) -> None:
    conn, world, (lo, hi) = planted
    registry = ModelRegistry(world.models_dir)
    report = run_diagnostics(conn, registry, model=MODEL, days=30, now=hi)
    drift = report.drift
    assert drift.recent == (lo, hi)
    assert drift.features[0].feature == DRIFT_FEATURE
    assert [f.feature for f in drift.significant] == [DRIFT_FEATURE]
    assert drift.features[0].psi_raw > 1.0 and drift.features[1].psi < 0.1
    assert [f.message for f in report.by_area("drift")] and DRIFT_FEATURE in report.by_area("drift")[0].message
    # the rest of that window is clean: no regime change, no missing day, no NULLs
    assert report.regime.verdict == "no regime change"
    assert not report.data_quality.flagged_days and not any(report.data_quality.null_counts.values())


def test_corrupt_model_file_is_reported_and_the_rest_still_runs(planted, tmp_path: Path) -> None:
    conn, world, _ = planted
    models = tmp_path / "models"
    shutil.copytree(world.models_dir, models)
    path = models / MODEL / "model.json"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated mid-write
    report = run_diagnostics(conn, ModelRegistry(models), model=MODEL)
    assert report.performance.loads is False and report.performance.verdict == "does not load"
    assert [f.severity for f in report.by_area("performance")] == ["critical"]
    assert "does not load" in report.by_area("performance")[0].message
    assert "restore" in report.likely_cause
    assert report.regime.verdict == "regime change"  # the other sections still ran
    assert report.data_quality.flagged_days
    assert report.drift.features


# --------------------------------------------------------------------------------------------- training log


def test_log_scan_counts_and_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "training.log"
    lines = [
        "2026-01-01 INFO start",
        "2026-01-01 WARNING learning rate high",
        "2026-01-01 ERROR could not read shard 3",
        "epoch 4 loss nan",
        "Traceback (most recent call last):",
        "2026-01-01 INFO nanosecond timer ok",  # 'nanosecond' is not NaN
        "UserWarning: feature vol_20d has NaN values",
        "2026-01-01 INFO done",
    ]
    log.write_text("\n".join(lines) + "\n")
    section, findings = scan_log(log)
    assert section.status == "ok" and section.lines_scanned == len(lines)
    assert section.counts == {"error": 2, "warning": 2, "nan": 2}
    assert [l.number for l in section.last_lines] == [2, 3, 4, 5, 7]
    assert section.last_lines[-1].kinds == ("warning", "nan")
    assert len(findings) == 1 and findings[0].area == "log" and "2 error" in findings[0].message

    log.write_text("INFO fine\nWARNING slow disk\n")
    section, findings = scan_log(log)
    assert section.counts == {"error": 0, "warning": 1, "nan": 0} and findings == []

    log.write_text("")
    section, findings = scan_log(log)
    assert section.status == "ok" and section.lines_scanned == 0 and findings == []

    missing, findings = scan_log(tmp_path / "nope.log")
    assert missing.status == "missing" and findings == []
    assert scan_log(None)[0].status == "not configured"


def test_log_scan_reads_only_the_tail_of_a_big_file(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_text("ERROR old failure\n" + "INFO filler line\n" * 2000 + "ERROR recent failure\n")
    section, _ = scan_log(log, config=DiagnosticsConfig(log_tail_bytes=4096))
    assert section.truncated and section.counts["error"] == 1
    assert section.last_lines[-1].text == "ERROR recent failure"


# --------------------------------------------------------------------------------------------- psi


def test_psi() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=20000), rng.normal(size=20000)
    assert psi(a, b) < 0.01
    assert psi(a, b + 1.0) > 0.25
    assert 0.01 < psi(a, b * 1.3) < psi(a, b * 2.5)
    assert psi(a, np.r_[b, [np.nan] * 100]) == pytest.approx(psi(a, b))
    assert math.isnan(psi([np.nan], b)) and math.isnan(psi(a, []))
    assert psi(np.zeros(100), np.zeros(50)) == pytest.approx(0.0)
    assert psi(np.zeros(100), np.ones(50)) > 1.0


# --------------------------------------------------------------------------------------------- robustness


def test_without_a_training_window_in_metadata_the_days_before_are_the_reference(world, conn) -> None:
    meta_path = world.models_dir / MODEL / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["train_start"], meta["train_end"]
    meta_path.write_text(json.dumps(meta))
    now = _day_before_change(world)
    report = run_diagnostics(conn, ModelRegistry(world.models_dir), model=MODEL, days=30, now=now)
    drift = report.drift
    assert drift.error is None and drift.reference_source == "the 90 trading days before the recent window"
    view_days = world.trading_days[dw.WARMUP_ROWS:]
    start = view_days.index(drift.recent[0])
    assert drift.recent == (view_days[start], now) and start == view_days.index(now) - 29
    assert drift.reference == (view_days[start - 90], view_days[start - 1])
    assert {f.feature for f in drift.features} == set(world.models[MODEL].features)
    assert all(math.isfinite(f.psi) and f.reference_rows == 90 * len(world.tickers) for f in drift.features)


def test_before_any_data_every_section_reports_instead_of_crashing(world, conn) -> None:
    now = world.start_date - timedelta(days=1)
    report = run_diagnostics(conn, ModelRegistry(world.models_dir), model=MODEL, now=now)
    assert report.performance.verdict == "insufficient data" and report.performance.days == 0
    assert report.data_quality.ticker_counts == [] and report.data_quality.bars_latest is None
    assert report.drift.error and report.regime.verdict == "insufficient data"
    assert report.summary()


def test_missing_platform_tables_are_reported_per_section(database_url: str, world, tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    log.write_text("ERROR boom\n")
    with psycopg.connect(database_url, row_factory=dict_row, autocommit=False) as conn:
        with dw.isolated_schema(conn, prefix="t_diag_empty_"):
            report = run_diagnostics(conn, ModelRegistry(world.models_dir), model=MODEL, training_log=log)
            conn.execute("SELECT 1")  # the connection is still usable
    assert report.performance.verdict == "error" and "ml_training_features" in report.performance.error
    assert report.data_quality.error and report.regime.verdict == "error"
    assert report.log_scan.counts["error"] == 1
    areas = {f.area for f in report.findings if "could not be checked" in f.message}
    assert areas == {"performance", "data_quality", "drift", "regime", "system"}


def test_bad_model_names_are_refused(world, conn) -> None:
    registry = ModelRegistry(world.models_dir)
    with pytest.raises(UnknownModel):
        run_diagnostics(conn, registry, model="no_such_model")
    with pytest.raises(InvalidName):
        run_diagnostics(conn, registry, model="../etc")


def test_a_weekday_without_any_bars_is_flagged(database_url: str) -> None:
    with psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as conn:
        with dw.isolated_schema(conn, prefix="t_diag_gap_"):
            m = dw.generate_market(conn, tickers=6, days=70, end_date=date(2026, 9, 30), regime_change_days=5, seed=2)
            gone = m.trading_days[-3]
            conn.execute("DELETE FROM daily_bars WHERE date = %s", (gone,))
            conn.execute(f"REFRESH MATERIALIZED VIEW {dw.FEATURE_VIEW}")
            section, findings = check_data_quality(conn)
    assert section.missing_weekdays == [gone] and gone not in [d.day for d in section.ticker_counts]
    assert not section.flagged_days
    assert [f for f in findings if gone.isoformat() in f.message and "no bars" in f.message]

