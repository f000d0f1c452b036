"""The generated platform's models: real XGBoost boosters trained on the feature view, their folders
(``model.json`` + ``metadata.json``), and what ``build_world`` tells about them and the rest of the world.

Part of the generated platform world (``bot.devtools.demo_world`` re-exports the public names).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bot.devtools.demo_market import Market
from core.metrics import Performance

__all__ = ["BackupInfo", "ClientInfo", "ModelInfo", "World", "predict", "train_model", "write_model_dir",
           "xgboost_version"]

# --------------------------------------------------------------------------------------------- models


def train_model(
    X: np.ndarray, y: np.ndarray, features: list[str], *, n_trees: int, max_depth: int, seed: int,
    learning_rate: float = 0.1, min_child_weight: float = 5,
) -> Any:
    """Train an XGBoost regressor (``reg:squarederror``); returns the ``xgboost.Booster``.

    One thread (``nthread=1``): a second gains little at these sizes and, on a busy 2-core machine,
    made training several times slower.

    Rows with a NaN label are dropped; NaN features are left to XGBoost's missing-value handling.
    ``booster.feature_names`` is ``features``.
    """
    import xgboost

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y)
    dtrain = xgboost.DMatrix(X[ok], label=y[ok], feature_names=list(features), missing=np.nan, nthread=1)
    params = {
        "objective": "reg:squarederror",
        "max_depth": max_depth,
        "eta": learning_rate,
        "min_child_weight": min_child_weight,
        "tree_method": "hist",
        "nthread": 1,
        "seed": seed,
        "verbosity": 0,
    }
    booster = xgboost.train(params, dtrain, num_boost_round=n_trees)
    booster.feature_names = list(features)
    return booster


def predict(booster: Any, X: np.ndarray, features: list[str]) -> np.ndarray:
    import xgboost

    return booster.predict(xgboost.DMatrix(X, feature_names=list(features), missing=np.nan, nthread=1))


def write_model_dir(path: Path, booster: Any, metadata: dict[str, Any]) -> None:
    """Write ``path/model.json`` (``Booster.save_model``) and ``path/metadata.json``; creates ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    features = metadata.get("features")
    if features is not None and booster.feature_names is not None and list(booster.feature_names) != list(features):
        raise ValueError("metadata features differ from the booster's feature_names")
    booster.save_model(str(path / "model.json"))
    (path / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


def xgboost_version() -> str:
    import xgboost

    return xgboost.__version__


# --------------------------------------------------------------------------------------------- what was built




@dataclass
class BackupInfo:
    name: str                        # folder name, e.g. "backup_2026-08-01"; also the deployment log's version
    path: Path
    training_date: date
    train_start: date
    train_end: date
    holdout_start: date              # feature dates of the holdout window (labels: the next trading day)
    holdout_end: date
    features: list[str]
    holdout: Performance             # == metadata performance
    post_change: Performance | None  # feature dates >= regime_change_start; None if the view lacks its features
    deployed_at: datetime
    defect: str | None = None        # e.g. "features_mismatch" (demo only)


@dataclass
class ModelInfo:
    name: str                        # "{strategy}_{marketcap}"
    path: Path
    features: list[str]              # the production model's features
    n_trees: int
    max_depth: int
    backups: list[BackupInfo]        # oldest first; the last one is production
    production_version: str

    @property
    def production(self) -> BackupInfo:
        return next(b for b in self.backups if b.name == self.production_version)

    @property
    def best_post_change(self) -> BackupInfo:
        """The defect-free backup with the best IC after the regime change."""
        ok = [b for b in self.backups if b.defect is None and b.post_change is not None]
        return max(ok, key=lambda b: b.post_change.spearman_ic)

    def backup(self, name: str) -> BackupInfo:
        return next(b for b in self.backups if b.name == name)


@dataclass(frozen=True)
class ClientInfo:
    client_id: str
    name: str
    active: bool
    auto_rebalance: bool
    require_manual_approval: bool


@dataclass
class World:
    size: str
    seed: int
    models_dir: Path
    features: list[str]
    tickers: list[str]
    trading_days: list[date]
    start_date: date                  # first trading day in daily_bars
    first_feature_day: date           # first date in ml_training_features
    end_date: date                    # last trading day
    era_boundary: date                # first return of the "reversal" era
    regime_change_start: date         # first return of the new regime
    post_change_window: tuple[date, date]  # feature dates evaluated "after the change" (labels exist)
    models: dict[str, ModelInfo]
    clients: list[ClientInfo]
    trade_count: int
    last_trade_at: datetime | None
    market: Market = field(repr=False)
    build_seconds: float = 0.0

    @property
    def production_versions(self) -> dict[str, str]:
        return {name: m.production_version for name, m in self.models.items()}
