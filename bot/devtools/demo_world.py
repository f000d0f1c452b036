"""A generated trading-platform "world" for tests and the demo.

It builds, in whatever schema the connection's ``search_path`` selects (nothing is
schema-qualified), the platform's tables::

    model_deployment_log  clients  client_settings  daily_bars  trades
    ml_training_features  (MATERIALIZED VIEW over daily_bars, UNIQUE index on (date, ticker))

a synthetic market, and real XGBoost models under ``MODELS_DIR/{strategy}_{marketcap}/`` with
``backup_YYYY-MM-DD/`` folders whose ``metadata.json`` carries their TRUE out-of-sample metrics.

The world is built in five modules, all re-exported here: ``bot.devtools.demo_platform`` (the schema, the feature view and
reading it), ``bot.devtools.demo_market`` (the synthetic market, described in its docstring), ``bot.devtools.demo_models``
(training, model folders, and the dataclasses describing the world), ``bot.devtools.demo_sizes`` (what each size holds:
market, models and their training windows, clients) and this one (``build_world``).

Models (``build_world``)
------------------------
Each model has 3-4 backups trained on rolling windows (oldest first); the newest backup is the
production model (its two files are copied byte-for-byte to the model root) and the
``model_deployment_log`` lists one deployment per backup, exactly one ``is_production`` row per
model whose ``version`` is the production backup's folder name.  Each backup's ``metadata.json``
records its training and holdout windows; its ``performance`` is ``core.metrics.evaluate`` of the
model on its holdout (feature dates ``holdout_start .. holdout_end``, labels = next trading day's
``return_1d``, as returned by ``load_features``).

Deliberate defect (size "demo" only): ``mean_reversion_mid``'s third backup was trained when
``volume_ratio_20d`` was still called ``vol_ratio_20d``; its metadata (and the booster's
feature_names) list that name, which the view does not provide (``BackupInfo.defect ==
"features_mismatch"``, ``post_change`` is None).  Its metrics are true (computed on the same numbers
under the old name) and look good (with seed 0 it has the best metadata Sharpe among that model's
non-production backups), so a bot that does not check features against the view would pick it.

Plants for diagnostics: ``missing_day`` drops the bars of ~25% of the tickers on one trading day,
``null_feature`` NULLs a feature (``volume_ratio_20d`` via NULL volume, ``hl_range`` via NULL high)
for ~25% of the tickers on one day.

Every public function commits its work (``conn.commit()``; harmless in autocommit mode) and uses
its own tuple-row cursors, so connections with any row factory work.  ``generate_market`` and
``build_world`` REPLACE the world's data (bars, clients, settings, trades, deployment log, and the
folders of the models they write); they are generators for test and demo databases only.
"""

from __future__ import annotations

import shutil
import time
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path

import numpy as np
import psycopg
from psycopg.rows import tuple_row

from bot.devtools.demo_market import (
    Market,
    MarketStyle,
    generate_market,
    release_day,
    trading_days_ending,
)
from bot.devtools.demo_models import (
    BackupInfo,
    ClientInfo,
    ModelInfo,
    World,
    predict,
    train_model,
    write_model_dir,
    xgboost_version,
)
from bot.devtools.demo_platform import (
    FEATURE_VIEW,
    FEATURES,
    WARMUP_ROWS,
    create_platform_schema,
    isolated_schema,
    load_features,
)
from bot.devtools.demo_sizes import (
    CLIENT_KINDS, CLIENT_NAMES, DEFECTIVE, MODEL_SPECS, OLD_NAME, SIZES, training_windows,
)
from core.metrics import evaluate

__all__ = [
    "FEATURES",
    "FEATURE_VIEW",
    "WARMUP_ROWS",
    "BackupInfo",
    "ClientInfo",
    "Market",
    "MarketStyle",
    "ModelInfo",
    "World",
    "build_world",
    "describe",
    "create_platform_schema",
    "generate_market",
    "isolated_schema",
    "load_features",
    "release_day",
    "train_model",
    "trading_days_ending",
    "write_model_dir",
]

# --------------------------------------------------------------------------------------------- world


def _utc(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, dtime(hh, mm), tzinfo=timezone.utc)


def _reset_world(conn: psycopg.Connection) -> None:
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute("DELETE FROM trades")
        cur.execute("DELETE FROM client_settings")
        cur.execute("DELETE FROM clients")
        cur.execute("DELETE FROM model_deployment_log")


def build_world(
    conn: psycopg.Connection,
    models_dir: Path,
    *,
    size: str = "test",
    seed: int = 0,
    end_date: date | None = None,
    missing_day: date | int | None = None,
    null_feature: str | tuple[str, date | int] | None = None,
    held_back: int = 0,
) -> World:
    """Build the whole platform world in the connection's schema and under ``models_dir``; commit.

    ``size="test"``: 40 tickers x 200 days (regime change: last 30), 8 clients, 2 models (4 and 3
    backups); ~0.7 s on 2 cores.
    ``size="demo"``: 200 tickers x 1040 days (regime change: last 25), 25 clients, 3 models (4, 3, 4
    backups; one defective; realistic metrics, see the module docstring); ~10 s, most of it in PostgreSQL.
    ``end_date`` defaults to today (UTC); the last trading day is the last weekday on or before it.
    ``missing_day`` / ``null_feature`` are passed to ``generate_market`` (planted before the models
    are evaluated, so metadata stays consistent with the view).
    Replaces the world tables' rows and the folders of the models it writes.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}")
    t0 = time.perf_counter()
    spec = SIZES[size]
    models_dir = Path(models_dir)
    if end_date is None:
        end_date = datetime.now(timezone.utc).date()
    create_platform_schema(conn)
    market = generate_market(
        conn,
        tickers=spec["tickers"],
        days=spec["days"],
        end_date=end_date,
        regime_change_days=spec["regime_change_days"],
        seed=seed,
        missing_day=missing_day,
        null_feature=null_feature,
        held_back=held_back,
        style=spec["style"],
    )
    days = list(market.trading_days)
    n_days = len(days)
    change = n_days - spec["regime_change_days"]

    all_dates, _, all_X, all_y = load_features(conn, features=FEATURES)
    day_idx = {np.datetime64(d, "D"): i for i, d in enumerate(days)}
    row_t = np.array([day_idx[d] for d in all_dates], dtype=np.int64)
    col = {f: j for j, f in enumerate(FEATURES)}

    def window(lo: int, hi: int, feats: list[str], label: bool = True):
        m = (row_t >= lo) & (row_t <= hi)
        if label:
            m &= np.isfinite(all_y)
        return all_dates[m], all_X[m][:, [col[f] for f in feats]], all_y[m]

    post_lo, post_hi = change, n_days - 2
    models: dict[str, ModelInfo] = {}
    windows = training_windows(n_days, spec["regime_change_days"], era_fraction=spec["style"].era_fraction,
                               **spec["windows"])
    defective = DEFECTIVE.get(size)
    log_rows = []
    for m_i, (name, n_trees, depth, subset, which) in enumerate(MODEL_SPECS[size]):
        feats = list(subset) if subset else list(FEATURES)
        mdir = models_dir / name
        if mdir.exists():
            shutil.rmtree(mdir)
        backups: list[BackupInfo] = []
        for k in which:
            ts, te, hs, he = windows[k]
            model_seed = seed * 1000 + m_i * 10 + k
            _, Xtr, ytr = window(ts, te, feats)
            defect = None
            names = feats
            if defective == (name, k):
                defect = "features_mismatch"
                names = [OLD_NAME.get(f, f) for f in feats]
            booster = train_model(Xtr, ytr, names, n_trees=n_trees, max_depth=depth, seed=model_seed,
                                  min_child_weight=spec["min_child_weight"])
            hd, Xh, yh = window(hs, he, feats)
            holdout = evaluate(hd, predict(booster, Xh, names), yh)
            post = None
            if defect is None:
                pd_, Xp, yp = window(post_lo, post_hi, feats)
                post = evaluate(pd_, predict(booster, Xp, names), yp)
            training_date = days[he + 1]
            deployed_day = days[he + 2]
            bname = f"backup_{training_date.isoformat()}"
            meta = {
                "model_name": name,
                "model_version": bname,
                "training_date": training_date.isoformat(),
                "performance": holdout.as_dict(),
                "features": names,
                "train_start": days[ts].isoformat(),
                "train_end": days[te].isoformat(),
                "holdout_start": days[hs].isoformat(),
                "holdout_end": days[he].isoformat(),
                "holdout_days": holdout.days,
                "label": "next trading day's return_1d of the same ticker",
                "evaluation": "core.metrics.evaluate: mean daily Spearman IC; Sharpe of the daily "
                "top-20%/bottom-20% equal-weight long-short return, annualised with sqrt(252)",
                "objective": "reg:squarederror",
                "n_trees": n_trees,
                "max_depth": depth,
                "learning_rate": 0.1,
                "min_child_weight": spec["min_child_weight"],
                "seed": model_seed,
                "train_rows": int(len(ytr)),
                "xgboost_version": xgboost_version(),
            }
            bdir = mdir / bname
            write_model_dir(bdir, booster, meta)
            backups.append(BackupInfo(
                name=bname, path=bdir, training_date=training_date, train_start=days[ts], train_end=days[te],
                holdout_start=days[hs], holdout_end=days[he], features=names, holdout=holdout,
                post_change=post, deployed_at=_utc(deployed_day, 6, 30 + m_i), defect=defect,
            ))
        prod = backups[-1]
        for fname in ("model.json", "metadata.json"):
            shutil.copyfile(prod.path / fname, mdir / fname)
        for j, b in enumerate(backups):
            log_rows.append((
                name, b.name, b.deployed_at, "ml-pipeline",
                "initial deployment" if j == 0 else f"scheduled retrain (holdout IC {b.holdout.spearman_ic:.3f})",
                b is prod, False, b.holdout.spearman_ic, b.holdout.sharpe_ratio,
            ))
        models[name] = ModelInfo(
            name=name, path=mdir, features=prod.features, n_trees=n_trees, max_depth=depth,
            backups=backups, production_version=prod.name,
        )

    # clients, settings, trades
    rng = np.random.default_rng([seed, 11])
    clients = []
    for i in range(spec["clients"]):
        kind = CLIENT_KINDS[i % len(CLIENT_KINDS)]
        clients.append(ClientInfo(
            client_id=f"C{i + 1:03d}",
            name=CLIENT_NAMES[i % len(CLIENT_NAMES)],
            active=kind != "inactive",
            auto_rebalance=kind != "manual",
            require_manual_approval=kind == "manual",
        ))
    now = datetime.now(timezone.utc)
    trades = []
    trade_days = days[-8:-1]
    tickers_present = market.tickers
    for c in clients:
        if not c.active:
            continue
        for _ in range(3):
            t = len(days) - 8 + int(rng.integers(0, len(trade_days)))
            day = days[t]
            ti = int(rng.integers(0, len(tickers_present)))
            at = _utc(day, 14, 30) + timedelta(minutes=int(rng.integers(0, 390)))
            if at >= now - timedelta(minutes=5):
                continue
            trades.append((c.client_id, tickers_present[ti], "buy" if rng.random() < 0.5 else "sell",
                           float(rng.integers(1, 50) * 10), round(float(market.close[t, ti]), 4), at))
    trades.sort(key=lambda r: r[5])
    with conn.cursor(row_factory=tuple_row) as cur:
        _reset_world(conn)
        cur.executemany("INSERT INTO clients (client_id, name, active) VALUES (%s, %s, %s)",
                        [(c.client_id, c.name, c.active) for c in clients])
        cur.executemany(
            "INSERT INTO client_settings (client_id, auto_rebalance, require_manual_approval, updated_at) "
            "VALUES (%s, %s, %s, %s)",
            [(c.client_id, c.auto_rebalance, c.require_manual_approval, _utc(days[0], 9)) for c in clients],
        )
        cur.executemany(
            "INSERT INTO trades (client_id, ticker, side, quantity, price, executed_at) VALUES (%s, %s, %s, %s, %s, %s)",
            trades,
        )
        cur.executemany(
            "INSERT INTO model_deployment_log (model_name, version, deployed_at, deployed_by, deployment_reason, "
            "is_production, is_rollback, spearman_ic, sharpe_ratio) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            sorted(log_rows, key=lambda r: r[2]),
        )
    conn.commit()
    return World(
        size=size,
        seed=seed,
        models_dir=models_dir,
        features=list(FEATURES),
        tickers=list(market.tickers),
        trading_days=list(days),
        start_date=days[0],
        first_feature_day=days[WARMUP_ROWS],
        end_date=days[-1],
        era_boundary=market.era_boundary,
        regime_change_start=market.regime_change_start,
        post_change_window=(days[post_lo], days[post_hi]),
        models=models,
        clients=clients,
        trade_count=len(trades),
        last_trade_at=trades[-1][5] if trades else None,
        market=market,
        build_seconds=time.perf_counter() - t0,
    )


def describe(world: World) -> str:
    """A plain-text table of the world's models and backups (holdout vs post-change metrics)."""
    lines = [
        f"world size={world.size} seed={world.seed}: {len(world.tickers)} tickers, "
        f"{world.start_date}..{world.end_date}, era boundary {world.era_boundary}, "
        f"regime change {world.regime_change_start}, {len(world.clients)} clients, {world.trade_count} trades, "
        f"built in {world.build_seconds:.1f}s",
    ]
    for m in world.models.values():
        lines.append(f"{m.name} ({len(m.features)} features)")
        for b in m.backups:
            post = (f"post-change IC {b.post_change.spearman_ic:+.3f} Sharpe {b.post_change.sharpe_ratio:+6.2f}"
                    if b.post_change else f"defect: {b.defect}")
            mark = "  <- production" if b.name == m.production_version else ""
            lines.append(f"  {b.name}  train {b.train_start}..{b.train_end}  holdout IC "
                         f"{b.holdout.spearman_ic:+.3f} Sharpe {b.holdout.sharpe_ratio:+6.2f} | {post}{mark}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bot.devtools.demo_world DSN MODELS_DIR [--size demo] [--seed N]``: build a world and describe it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bot.devtools.demo_world", description=main.__doc__)
    parser.add_argument("dsn", help="PostgreSQL URL; objects go to the first schema of its search_path")
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--end-date", type=date.fromisoformat, default=None)
    args = parser.parse_args(argv)
    with psycopg.connect(args.dsn) as conn:
        world = build_world(conn, args.models_dir, size=args.size, seed=args.seed, end_date=args.end_date)
    print(describe(world))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
