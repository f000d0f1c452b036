"""The generated platform world (bot.devtools.demo_world) and the metrics (core.metrics).

Needs PostgreSQL: the URL comes from the session's ``database_url`` fixture (the tests FAIL, not skip, without it).
Every database test runs in its own freshly created schema (dropped afterwards).
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import psycopg
import pytest
import xgboost
from psycopg.rows import dict_row

from bot.devtools import demo_world as dw
from core import metrics as M

END = date(2026, 9, 30)  # a Wednesday; fixed so that dates are reproducible


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def conn(database_url):
    url = database_url
    try:
        # dict_row and autocommit=False like the bot's pool: the world must not depend on either.
        c = psycopg.connect(url, row_factory=dict_row, autocommit=False, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"the test database does not answer: {exc}")
    with c:
        with dw.isolated_schema(c, prefix="t_dw_"):
            yield c


@pytest.fixture
def world(conn, tmp_path):
    return dw.build_world(conn, tmp_path / "models", size="test", seed=0, end_date=END)


def _q(conn, query, params=()):
    return conn.execute(query, params).fetchall()


def _schema(conn) -> str:
    schema = _q(conn, "SELECT current_schema() AS s")[0]["s"]
    assert schema.startswith("t_dw_")
    return schema


def _post_change(world, booster, features, conn):
    lo, hi = world.post_change_window
    d, _, X, y = dw.load_features(conn, start=lo, end=hi, features=features, require_label=True)
    return M.evaluate(d, booster.predict(xgboost.DMatrix(X, feature_names=features)), y)


# --------------------------------------------------------------------------------------------- the world


def test_world_builds(world, conn):
    assert world.build_seconds < 5.0
    assert set(world.models) == {"growth_momentum_large", "value_small"}
    assert [len(m.backups) for m in world.models.values()] == [4, 3]
    assert world.features == dw.FEATURES and 5 <= len(world.features) <= 8
    assert len(world.trading_days) == 200 and all(d.weekday() < 5 for d in world.trading_days)
    assert world.end_date == END
    assert world.start_date < world.era_boundary < world.regime_change_start < world.end_date

    schema = _schema(conn)
    for obj in ("model_deployment_log", "clients", "client_settings", "daily_bars", "trades", "ml_training_features"):
        assert _q(conn, "SELECT to_regclass(%s) AS r", (f"{schema}.{obj}",))[0]["r"] is not None, obj
    # the log has no id column (platform contract)
    cols = [r["column_name"] for r in _q(
        conn, "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
        "AND table_name = 'model_deployment_log' ORDER BY ordinal_position", (schema,))]
    assert cols == ["model_name", "version", "deployed_at", "deployed_by", "deployment_reason",
                    "is_production", "is_rollback", "spearman_ic", "sharpe_ratio"]

    assert _q(conn, "SELECT count(*) AS n FROM daily_bars")[0]["n"] == 40 * 200
    assert _q(conn, "SELECT count(*) AS n FROM ml_training_features")[0]["n"] == 40 * (200 - dw.WARMUP_ROWS)
    nulls = _q(conn, "SELECT count(*) AS n FROM ml_training_features WHERE "
               + " OR ".join(f"{f} IS NULL" for f in dw.FEATURES + ["return_1d"]))[0]["n"]
    assert nulls == 0

    clients = _q(conn, "SELECT c.client_id, c.active, s.auto_rebalance, s.require_manual_approval "
                 "FROM clients c JOIN client_settings s USING (client_id) ORDER BY 1")
    assert len(clients) == 8 == len(world.clients)
    kinds = {(r["active"], r["auto_rebalance"], r["require_manual_approval"]) for r in clients}
    assert (True, True, False) in kinds and (True, False, True) in kinds and any(not k[0] for k in kinds)
    trades = _q(conn, "SELECT count(*) AS n, max(executed_at) AS last FROM trades")[0]
    assert trades["n"] == world.trade_count > 0
    assert trades["last"] < datetime.now(timezone.utc)
    assert _q(conn, "SELECT count(*) AS n FROM trades t LEFT JOIN clients c USING (client_id) "
              "WHERE c.active IS NOT TRUE")[0]["n"] == 0


def test_production_rows_and_files(world, conn):
    rows = _q(conn, "SELECT model_name, version, deployed_at, is_rollback, spearman_ic, sharpe_ratio "
              "FROM model_deployment_log WHERE is_production")
    assert sorted(r["model_name"] for r in rows) == sorted(world.models)  # exactly one per model
    for r in rows:
        model = world.models[r["model_name"]]
        assert r["version"] == model.production_version == model.backups[-1].name
        assert r["deployed_at"] < datetime.combine(world.regime_change_start, datetime.min.time(), timezone.utc)
        backup_dir = model.path / r["version"]
        assert backup_dir.is_dir()
        for name in ("model.json", "metadata.json"):
            assert (model.path / name).read_bytes() == (backup_dir / name).read_bytes()
        meta = json.loads((model.path / "metadata.json").read_text())
        assert r["spearman_ic"] == meta["performance"]["spearman_ic"]
        assert r["sharpe_ratio"] == meta["performance"]["sharpe_ratio"]
        assert r["is_rollback"] is False
    history = _q(conn, "SELECT model_name, version, is_production FROM model_deployment_log ORDER BY deployed_at")
    assert len(history) == sum(len(m.backups) for m in world.models.values())
    for m in world.models.values():
        backups = sorted(p.name for p in m.path.glob("backup_*"))
        assert backups == [b.name for b in m.backups]
        assert [h["version"] for h in history if h["model_name"] == m.name] == backups  # deployed in order


def test_metadata_metrics_equal_recomputation(world, conn):
    for model in world.models.values():
        for b in model.backups:
            meta = json.loads((b.path / "metadata.json").read_text())
            assert date.fromisoformat(meta["training_date"]) == b.training_date
            assert b.name == f"backup_{meta['training_date']}" == meta["model_version"]
            feats = meta["features"]
            assert set(feats) <= set(dw.FEATURES)
            booster = xgboost.Booster(model_file=str(b.path / "model.json"))
            assert booster.feature_names == feats
            assert booster.num_boosted_rounds() == meta["n_trees"]
            # holdout after training, and before the regime change
            assert meta["train_start"] <= meta["train_end"] < meta["holdout_start"] <= meta["holdout_end"]
            assert meta["holdout_end"] < meta["training_date"] < world.regime_change_start.isoformat()
            d, _, X, y = dw.load_features(conn, start=date.fromisoformat(meta["holdout_start"]),
                                          end=date.fromisoformat(meta["holdout_end"]),
                                          features=feats, require_label=True)
            perf = M.evaluate(d, booster.predict(xgboost.DMatrix(X, feature_names=feats)), y)
            assert perf.spearman_ic == pytest.approx(meta["performance"]["spearman_ic"], abs=1e-9)
            assert perf.sharpe_ratio == pytest.approx(meta["performance"]["sharpe_ratio"], abs=1e-9)
            assert perf.days == meta["holdout_days"] == b.holdout.days
            assert math.isfinite(perf.spearman_ic) and math.isfinite(perf.sharpe_ratio)


def test_regime_change_breaks_production_but_not_every_backup(world, conn):
    for model in world.models.values():
        prod = model.production
        booster = xgboost.Booster(model_file=str(model.path / "model.json"))
        post = _post_change(world, booster, prod.features, conn)
        assert post.spearman_ic == pytest.approx(prod.post_change.spearman_ic, abs=1e-9)
        assert prod.holdout.spearman_ic > 0.2 and prod.holdout.sharpe_ratio > 5
        assert post.spearman_ic < 0 and post.sharpe_ratio < 0
        assert post.spearman_ic < prod.holdout.spearman_ic - 0.2

        best = model.best_post_change
        assert best.name != prod.name
        bb = xgboost.Booster(model_file=str(best.path / "model.json"))
        best_post = _post_change(world, bb, best.features, conn)
        assert best_post.spearman_ic > 0.1 and best_post.sharpe_ratio > 2
        assert best_post.spearman_ic > post.spearman_ic + 0.15
        assert best.training_date < world.era_boundary  # the momentum-era backup


def test_view_unique_index_and_concurrent_refresh(world, conn):
    idx = _q(conn, "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'ml_training_features'",
             (_schema(conn),))
    assert any("UNIQUE" in r["indexdef"] and "(date, ticker)" in r["indexdef"] for r in idx)
    before = _q(conn, "SELECT count(*) AS n, sum(ret_5d) AS s FROM ml_training_features")[0]
    conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY ml_training_features")
    conn.commit()
    after = _q(conn, "SELECT count(*) AS n, sum(ret_5d) AS s FROM ml_training_features")[0]
    assert after["n"] == before["n"] and after["s"] == pytest.approx(before["s"])
    # new bars show up after a refresh: the view is computed from daily_bars
    conn.execute("DELETE FROM daily_bars WHERE date = %s", (world.end_date,))
    conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY ml_training_features")
    conn.commit()
    assert _q(conn, "SELECT max(date) AS d FROM ml_training_features")[0]["d"] == world.trading_days[-2]


def test_features_match_bars(world, conn):
    """The view's columns are what their names say, computed from past bars only."""
    t = "T0007"
    bars = _q(conn, "SELECT date, high, low, close, volume FROM daily_bars WHERE ticker = %s ORDER BY date", (t,))
    close = np.array([b["close"] for b in bars])
    vol = np.array([b["volume"] for b in bars], dtype=float)
    feats = _q(conn, "SELECT * FROM ml_training_features WHERE ticker = %s ORDER BY date", (t,))
    assert feats[0]["date"] == bars[dw.WARMUP_ROWS]["date"]
    for k in (dw.WARMUP_ROWS, 57, len(bars) - 1):
        f = feats[k - dw.WARMUP_ROWS]
        r = close[1 : k + 1] / close[:k] - 1
        assert f["return_1d"] == pytest.approx(close[k] / close[k - 1] - 1)
        assert f["ret_5d"] == pytest.approx(close[k] / close[k - 5] - 1)
        assert f["ret_20d"] == pytest.approx(close[k] / close[k - 20] - 1)
        assert f["vol_20d"] == pytest.approx(np.std(r[-20:], ddof=1))
        assert f["volume_ratio_20d"] == pytest.approx(vol[k] / vol[k - 20 : k].mean())
        assert f["hl_range"] == pytest.approx((bars[k]["high"] - bars[k]["low"]) / close[k])
        assert f["ma_gap_10d"] == pytest.approx(close[k] / close[k - 9 : k + 1].mean() - 1)
        assert f["rsi_14"] == pytest.approx(np.clip(r[-14:], 0, None).sum() / np.abs(r[-14:]).sum())

    # load_features: the label is the next trading day's return_1d of the same ticker
    d, tk, X, y = dw.load_features(conn, start=world.trading_days[57], end=world.trading_days[58],
                                   features=["ret_5d", "hl_range"])
    i = int(np.flatnonzero(tk == t)[0])
    assert d[i] == np.datetime64(world.trading_days[57])
    assert y[i] == pytest.approx(close[58] / close[57] - 1)
    assert X[i, 0] == pytest.approx(close[57] / close[52] - 1)
    d, tk, X, y = dw.load_features(conn, start=world.end_date, features=["ret_5d"])
    assert len(d) == 40 and np.isnan(y).all()  # the last day has no label yet
    assert len(dw.load_features(conn, start=world.end_date, features=["ret_5d"], require_label=True)[0]) == 0
    with pytest.raises(ValueError, match="sentiment"):
        dw.load_features(conn, features=["ret_5d", "sentiment"])


def test_plants_and_determinism(conn):
    def bars_digest():
        return _q(conn, "SELECT md5(string_agg(concat_ws(',', date, ticker, close, volume, high), ';' "
                  "ORDER BY date, ticker)) AS h FROM daily_bars")[0]["h"]

    market = dw.generate_market(conn, tickers=20, days=80, end_date=END, regime_change_days=10, seed=3,
                                missing_day=-5, null_feature="volume_ratio_20d")
    counts = {r["date"]: r["n"] for r in _q(conn, "SELECT date, count(*) AS n FROM ml_training_features GROUP BY 1")}
    missing = market.trading_days[-5]
    assert market.missing_day == missing and len(market.missing_day_tickers) == 5
    assert counts[missing] == 15
    assert all(n == 20 for d, n in counts.items() if d != missing)
    nulls = _q(conn, "SELECT date, ticker FROM ml_training_features WHERE volume_ratio_20d IS NULL ORDER BY ticker")
    assert {r["date"] for r in nulls} == {market.trading_days[-1]}
    assert [r["ticker"] for r in nulls] == market.null_feature_tickers and len(nulls) == 5
    assert _q(conn, "SELECT count(*) AS n FROM ml_training_features WHERE hl_range IS NULL")[0]["n"] == 0
    digest = bars_digest()

    # same seed, same market (generate_market replaces the bars)
    dw.generate_market(conn, tickers=20, days=80, end_date=END, regime_change_days=10, seed=3,
                       missing_day=-5, null_feature="volume_ratio_20d")
    assert bars_digest() == digest
    dw.generate_market(conn, tickers=20, days=80, end_date=END, regime_change_days=10, seed=4)
    assert bars_digest() != digest

    m = dw.generate_market(conn, tickers=20, days=80, end_date=END, regime_change_days=10, seed=3,
                           null_feature=("hl_range", market.trading_days[40]))
    rows = _q(conn, "SELECT date FROM ml_training_features WHERE hl_range IS NULL")
    assert len(rows) == 5 and {r["date"] for r in rows} == {market.trading_days[40]} and m.missing_day is None
    assert _q(conn, "SELECT count(*) AS n FROM ml_training_features WHERE volume_ratio_20d IS NULL")[0]["n"] == 0
    with pytest.raises(ValueError):
        dw.generate_market(conn, tickers=20, days=80, end_date=END, regime_change_days=10, seed=3,
                           null_feature="ret_5d")
    conn.rollback()


def test_world_with_plants_keeps_metadata_consistent(conn, tmp_path):
    w = dw.build_world(conn, tmp_path / "m", size="test", seed=1, end_date=END,
                       missing_day=-3, null_feature="hl_range")
    assert w.market.missing_day == w.trading_days[-3]
    n = _q(conn, "SELECT count(*) AS n FROM ml_training_features WHERE date = %s", (w.trading_days[-3],))[0]["n"]
    assert n < len(w.tickers)
    assert _q(conn, "SELECT count(*) AS n FROM ml_training_features WHERE hl_range IS NULL")[0]["n"] > 0
    b = w.models["value_small"].backups[0]
    meta = json.loads((b.path / "metadata.json").read_text())
    assert meta["performance"] == b.holdout.as_dict()


def test_schema_is_idempotent_and_world_rebuilds(world, conn, tmp_path):
    dw.create_platform_schema(conn)
    dw.create_platform_schema(conn)
    again = dw.build_world(conn, world.models_dir, size="test", seed=0, end_date=END)
    assert again.production_versions == world.production_versions
    assert _q(conn, "SELECT count(*) AS n FROM model_deployment_log WHERE is_production")[0]["n"] == 2
    assert _q(conn, "SELECT count(*) AS n FROM clients")[0]["n"] == 8
    p = again.models["growth_momentum_large"].production
    assert p.holdout == world.models["growth_momentum_large"].production.holdout  # deterministic
    with pytest.raises(ValueError):
        dw.build_world(conn, tmp_path, size="huge")


def test_write_model_dir_and_train_model(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = X[:, 0] * 0.5 + rng.normal(scale=0.1, size=300)
    y[:10] = np.nan
    b = dw.train_model(X, y, ["a", "b", "c"], n_trees=10, max_depth=2, seed=0)
    assert b.feature_names == ["a", "b", "c"]
    meta = {"training_date": "2026-01-02", "performance": {"spearman_ic": 0.1, "sharpe_ratio": 1.0},
            "features": ["a", "b", "c"]}
    dw.write_model_dir(tmp_path / "x" / "backup_2026-01-02", b, meta)
    loaded = xgboost.Booster(model_file=str(tmp_path / "x" / "backup_2026-01-02" / "model.json"))
    assert loaded.feature_names == ["a", "b", "c"]
    assert json.loads((tmp_path / "x" / "backup_2026-01-02" / "metadata.json").read_text()) == meta
    with pytest.raises(ValueError):
        dw.write_model_dir(tmp_path / "y", b, {**meta, "features": ["a", "b", "d"]})


# --------------------------------------------------------------------------------------------- metrics


def test_rankdata_average_ties():
    assert M.rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert M.rankdata([3, 1, 2]).tolist() == [3.0, 1.0, 2.0]
    assert M.rankdata([5, 5, 5]).tolist() == [2.0, 2.0, 2.0]
    assert M.rankdata([]).size == 0


def test_spearman_known_values():
    assert M.spearman_ic([1, 2, 3, 4, 5], [10, 20, 30, 40, 50]) == pytest.approx(1.0)
    assert M.spearman_ic([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) -> 0.8207826816681233 (ties in y)
    assert M.spearman_ic([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233, abs=1e-12)
    # ties on both sides: ranks [1, 2.5, 2.5, 4] vs [1, 3, 2, 4] -> 4.5 / sqrt(4.5 * 5)
    assert M.spearman_ic([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    # no ties: 1 - 6*sum(d^2)/(n(n^2-1)) with d = [-2, 0, 2, 0, 0] -> 0.6
    assert M.spearman_ic([1, 2, 3, 4, 5], [3, 2, 1, 4, 5]) == pytest.approx(1 - 6 * 8 / 120)
    # monotone transforms do not matter
    x = np.random.default_rng(1).normal(size=50)
    y = x + np.random.default_rng(2).normal(size=50)
    assert M.spearman_ic(x, y) == pytest.approx(M.spearman_ic(np.exp(x), y ** 3))


def test_spearman_undefined_cases():
    assert math.isnan(M.spearman_ic([1, 2], [1, 2]))
    assert math.isnan(M.spearman_ic([1, 1, 1, 1], [1, 2, 3, 4]))
    assert math.isnan(M.spearman_ic([1, 2, 3, 4], [7, 7, 7, 7]))
    assert math.isnan(M.spearman_ic([], []))
    # non-finite pairs are dropped
    assert M.spearman_ic([1, 2, np.nan, 3, 4], [1, 2, 9, 3, np.inf]) == pytest.approx(1.0)
    assert math.isnan(M.spearman_ic([1, np.nan, 3], [1, 2, 3]))
    with pytest.raises(ValueError):
        M.spearman_ic([1, 2, 3], [1, 2])


def test_daily_ic_and_long_short():
    dates = np.array(["2026-01-02"] * 5 + ["2026-01-05"] * 5 + ["2026-01-01"] * 2, dtype="datetime64[D]")
    pred = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]
    real = [0.01, 0.02, 0.03, 0.04, 0.05, 0.05, 0.04, 0.03, 0.02, 0.01, 0.0, 0.1]
    ics = M.daily_ic(dates, pred, real)
    assert [d for d, _ in ics] == [date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 5)]
    assert math.isnan(ics[0][1]) and ics[1][1] == pytest.approx(1.0) and ics[2][1] == pytest.approx(-1.0)

    ls = dict(M.long_short_returns(dates, pred, real, quantile=0.2))
    assert ls[date(2026, 1, 2)] == pytest.approx(0.05 - 0.01)  # k = 1 of 5
    assert ls[date(2026, 1, 5)] == pytest.approx(0.01 - 0.05)
    assert ls[date(2026, 1, 1)] == pytest.approx(0.1 - 0.0)  # n = 2, k = 1
    ls = dict(M.long_short_returns(dates, pred, real, quantile=0.4))  # k = 2 of 5
    assert ls[date(2026, 1, 2)] == pytest.approx((0.05 + 0.04) / 2 - (0.01 + 0.02) / 2)
    # python dates in, python dates out; a single-name day gives NaN
    out = M.long_short_returns([date(2026, 1, 2)], [1.0], [0.1])
    assert out[0][0] == date(2026, 1, 2) and math.isnan(out[0][1])
    with pytest.raises(ValueError):
        M.long_short_returns(dates, pred, real, quantile=0.7)


def test_sharpe_ratio():
    assert M.sharpe_ratio([0.01, 0.02, 0.03]) == pytest.approx(0.02 / 0.01 * math.sqrt(252))
    assert M.sharpe_ratio([0.01, 0.02, 0.03], periods_per_year=12) == pytest.approx(2 * math.sqrt(12))
    assert M.sharpe_ratio([(date(2026, 1, 1), 0.01), (date(2026, 1, 2), 0.03)]) == pytest.approx(
        0.02 / np.std([0.01, 0.03], ddof=1) * math.sqrt(252))
    for constant in ([0.1] * 10, [0.0] * 5, [1e-3] * 7):
        assert math.isnan(M.sharpe_ratio(constant))  # zero volatility: NaN, never inf
    assert math.isnan(M.sharpe_ratio([0.1]))
    assert math.isnan(M.sharpe_ratio([]))
    assert M.sharpe_ratio([0.01, np.nan, 0.03, np.inf]) == pytest.approx(M.sharpe_ratio([0.01, 0.03]))
    assert M.sharpe_ratio([-0.01, -0.02, -0.03]) < 0


def test_evaluate():
    rng = np.random.default_rng(5)
    dates = np.repeat(np.arange(np.datetime64("2026-01-01"), np.datetime64("2026-01-21")), 30)
    signal = rng.normal(size=dates.size)
    realized = 0.3 * signal + rng.normal(size=dates.size)
    perf = M.evaluate(dates, signal, realized)
    assert isinstance(perf, M.Performance) and perf.days == 20
    assert perf.spearman_ic == pytest.approx(np.mean([ic for _, ic in M.daily_ic(dates, signal, realized)]))
    assert perf.sharpe_ratio == pytest.approx(M.sharpe_ratio(M.long_short_returns(dates, signal, realized)))
    assert 0.1 < perf.spearman_ic < 0.5 and perf.sharpe_ratio > 0
    bad = M.evaluate(dates, -signal, realized)
    assert bad.spearman_ic == pytest.approx(-perf.spearman_ic)
    with pytest.raises(AttributeError):
        perf.days = 3  # frozen
    empty = M.evaluate([], [], [])
    assert empty.days == 0 and math.isnan(empty.spearman_ic) and math.isnan(empty.sharpe_ratio)


def test_held_back_day_is_released_into_bars_and_view(conn):
    market = dw.generate_market(conn, tickers=12, days=80, end_date=END, regime_change_days=10, seed=3, held_back=1)
    last_written = _q(conn, "SELECT max(date) AS d FROM daily_bars")[0]["d"]
    assert market.pending and market.pending[0][0] > last_written
    same = dw.generate_market(conn, tickers=12, days=80, end_date=last_written, regime_change_days=10, seed=3)
    assert np.allclose(same.close, market.close)  # holding a day back changes nothing already written
    market = dw.generate_market(conn, tickers=12, days=80, end_date=END, regime_change_days=10, seed=3, held_back=1)
    day = dw.release_day(conn, market)
    assert day == _q(conn, "SELECT max(date) AS d FROM daily_bars")[0]["d"]
    assert day == _q(conn, "SELECT max(date) AS d FROM ml_training_features")[0]["d"]
    assert _q(conn, "SELECT count(*) AS n FROM daily_bars WHERE date = %s", (day,))[0]["n"] == 12
    assert dw.release_day(conn, market) is None


# --------------------------------------------------------------------------------------------- the demo's world

# What a desk sees: a daily Spearman IC of 0.01-0.08 and an annualised long-short Sharpe of 0.5-3 on a holdout
# (a year of days, here). Over a 20- or 30-day window the same strategy shows a wider spread: one standard error
# of an annualised 20-day Sharpe is sqrt(252 / 20) ~ 3.5, so live figures may reach 3 plus about that.
DESK_IC, DESK_SHARPE = (0.01, 0.08), (0.5, 3.0)
LIVE_IC, LIVE_SHARPE = 0.08, 6.0


@pytest.fixture(scope="module")
def demo(database_url, tmp_path_factory):
    """The demo's world (size "demo", seed 0, one day held back, as ``rollback-bot demo`` builds it)."""
    models = tmp_path_factory.mktemp("demo-models")
    with psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as conn:
        with dw.isolated_schema(conn, prefix="t_dw_demo_"):
            yield conn, dw.build_world(conn, models, size="demo", seed=0, held_back=1)


def _live(conn, registry, backup, days: int):
    from core.monitoring import labelled_rows
    from core.performance import evaluate_booster

    return evaluate_booster(registry.booster(backup.path), backup.features,
                            labelled_rows(conn, backup.features, last_days=days))


def test_demo_world_metadata_metrics_are_a_desks(demo) -> None:
    conn, world = demo
    assert len(world.tickers) >= 200 and len(world.models) == 3
    for model in world.models.values():
        for b in model.backups:
            perf = json.loads((b.path / "metadata.json").read_text())["performance"]
            assert DESK_IC[0] <= perf["spearman_ic"] <= DESK_IC[1], (model.name, b.name, perf)
            assert DESK_SHARPE[0] <= perf["sharpe_ratio"] <= DESK_SHARPE[1], (model.name, b.name, perf)
            assert b.holdout.days >= 250  # a year out of sample, not a few weeks
    for row in _q(conn, "SELECT model_name, spearman_ic, sharpe_ratio FROM model_deployment_log"):
        assert DESK_IC[0] <= row["spearman_ic"] <= DESK_IC[1] and DESK_SHARPE[0] <= row["sharpe_ratio"] <= DESK_SHARPE[1]


def test_demo_world_live_figures_are_a_desks_and_tell_the_incident(demo) -> None:
    """Production fails after the change, the oldest backup works and is recommended, metadata alone misleads."""
    from core.diagnostics import run_diagnostics
    from core.platform import feature_columns
    from core.registry import LIVE_RULE, ModelRegistry
    from core.settings import Settings

    conn, world = demo
    defaults = Settings(_env_file=None)
    registry = ModelRegistry(world.models_dir)
    features = feature_columns(conn)
    for name, model in world.models.items():
        prod, oldest = model.production, model.backups[0]
        live = {b.name: _live(conn, registry, b, 20) for b in model.backups if b.defect is None}
        for backup, perf in live.items():
            assert perf.days == 20
            assert abs(perf.spearman_ic) <= LIVE_IC and abs(perf.sharpe_ratio) <= LIVE_SHARPE, (name, backup, perf)
        # production's live IC is negative, below what the watchdog tolerates by default; the oldest is above it
        assert live[prod.name].spearman_ic < 0 and live[prod.name].sharpe_ratio < defaults.watchdog_sharpe_threshold
        assert live[oldest.name].spearman_ic > defaults.watchdog_ic_threshold
        assert live[oldest.name].sharpe_ratio > defaults.watchdog_sharpe_threshold
        assert oldest.training_date < world.era_boundary
        rec = registry.recommend(name, available_features=features,
                                 live_score=lambda b: _live(conn, registry, b, 20))
        assert rec.rule == LIVE_RULE and rec.backup.name == oldest.name
        # the metadata, measured before the change, point elsewhere: at a reversal-era backup or a defective one
        others = [b for b in model.backups if b.name != prod.name]
        assert max(others, key=lambda b: b.holdout.sharpe_ratio).name != oldest.name
        # /rollback diagnose: 30 days, in a desk's range, and the model degraded by a regime change
        report = run_diagnostics(conn, registry, model=name, days=30)
        perf = report.performance
        assert abs(perf.mean_ic) <= LIVE_IC and abs(perf.sharpe) <= LIVE_SHARPE, (name, perf)
        assert perf.verdict == "degraded" and perf.mean_ic < 0 and perf.sharpe < 0
        assert report.regime.verdict == "regime change"
    # the demo's model: its bot picks a reversal-era backup when it knows only the metadata
    assert registry.recommend("growth_momentum_large", available_features=features).backup.name != \
        world.models["growth_momentum_large"].backups[0].name
    defective = world.models["mean_reversion_mid"].backups[2]
    assert defective.defect == "features_mismatch" and "vol_ratio_20d" in defective.features


def test_demo_world_held_back_day_confirms_the_restored_model(demo) -> None:
    """The day the demo releases during monitoring: the restored (oldest) backup is right on it, modestly."""
    from core.monitoring import labelled_rows

    conn, world = demo
    oldest = world.models["growth_momentum_large"].backups[0]
    day = dw.release_day(conn, world.market)
    assert day is not None and day > world.end_date
    rows = labelled_rows(conn, oldest.features, last_days=1)  # what monitoring evaluates after the resume
    booster = xgboost.Booster(model_file=str(oldest.path / "model.json"))
    perf = M.evaluate(rows.dates, booster.predict(xgboost.DMatrix(rows.X, feature_names=oldest.features)),
                      rows.realized)
    assert perf.days == 1 and len(rows) == len(world.tickers)
    assert 0 < perf.spearman_ic <= 0.3  # above MONITOR_MIN_IC (0.0); one day's IC is noisy, not 0.9


def test_the_world_is_built_in_modules_and_demo_world_still_names_them_all() -> None:
    from bot.devtools import demo_market, demo_models, demo_platform

    assert sorted(dw.__all__) == sorted([
        "FEATURES", "FEATURE_VIEW", "WARMUP_ROWS", "BackupInfo", "ClientInfo", "Market", "MarketStyle", "ModelInfo",
        "World", "build_world", "create_platform_schema", "describe", "generate_market", "isolated_schema",
        "load_features", "release_day", "train_model", "trading_days_ending", "write_model_dir"])
    for module in (demo_platform, demo_market, demo_models):
        for name in module.__all__:
            if name in dw.__all__:
                assert getattr(dw, name) is getattr(module, name), name
    for name in ("demo_world", "demo_platform", "demo_market", "demo_models"):
        path = f"bot/devtools/{name}.py"
        lines = (Path(__file__).resolve().parents[2] / path).read_text(encoding="utf-8").count("\n")
        assert lines <= 430, f"{path} has {lines} lines"
