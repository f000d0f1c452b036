"""Live performance of a model on recent data: its predictions on ``ml_training_features`` against the
realised next-day returns (``core.monitoring.labelled_rows``), as daily Spearman IC and the Sharpe ratio of an
equal-weight long-short (top/bottom 20 %) portfolio (``core.metrics``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core import metrics
from core.modelio import predict
from core.monitoring import LabelledRows


def evaluate_booster(booster: Any, features: list[str], data: LabelledRows) -> metrics.Performance | None:
    """IC and long-short Sharpe of ``booster`` on ``data``; None with fewer than 5 days."""
    if len(data) == 0:
        return None
    preds = np.asarray(predict(booster, features, data.X), dtype=float)
    perf = metrics.evaluate(data.dates, preds, data.realized)
    return perf if perf.days >= 5 else None
