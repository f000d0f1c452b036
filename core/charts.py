"""Performance charts: a model's daily IC and rolling Sharpe over the last days, as a PNG.

Two panels share the date axis: the daily Spearman IC of each model's predictions against the next day's
realized returns (top), and the rolling annualised Sharpe ratio of each model's daily top-20%/bottom-20%
long-short return (bottom), both from ``core.metrics``. For an incident the failing model (the emergency
backup, or production before the swap) is drawn beside the restored backup.

matplotlib is used through its object API with the Agg canvas (no pyplot, no global backend switch), so
charts can be drawn from any thread.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import psycopg

from core.incidents import Incident
from core.metrics import daily_ic, long_short_returns, sharpe_ratio
from core.modelio import MODEL_FILE, load_booster, predict, read_metadata
from core.monitoring import labelled_rows
from core.registry import ModelRegistry

__all__ = [
    "ModelSeries",
    "build_figure",
    "chart_maker",
    "incident_chart",
    "model_chart",
    "model_series",
    "performance_chart",
    "rolling_sharpe",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ModelSeries:
    """One model's daily numbers, oldest first."""

    label: str
    daily_ic: list[tuple[date, float]]
    daily_returns: list[tuple[date, float]]  # long-short return realized by each feature date's predictions


def _as_date(value: Any) -> date:
    if isinstance(value, np.datetime64):
        return value.astype("datetime64[D]").item()
    return value


def model_series(conn: psycopg.Connection, registry: ModelRegistry, model: str, version: str | None = None, *,
                 days: int = 30, label: str | None = None) -> ModelSeries:
    """Daily IC and long-short returns of one model over the ``days`` newest dates with realized labels.

    ``version`` is a backup folder name; None means the production files.
    """
    folder = registry.model_dir(model) if version in (None, "production") else registry.backup_dir(model, version)
    meta = read_metadata(folder)
    booster = load_booster(folder / MODEL_FILE, max_bytes=registry.max_model_bytes)
    data = labelled_rows(conn, list(meta.features), last_days=days)
    if len(data) == 0:
        return ModelSeries(label or version or "production", [], [])
    preds = np.asarray(predict(booster, list(meta.features), data.X), dtype=float)
    ic = [(_as_date(d), float(v)) for d, v in daily_ic(data.dates, preds, data.realized)]
    ls = [(_as_date(d), float(v)) for d, v in long_short_returns(data.dates, preds, data.realized)]
    return ModelSeries(label or version or "production", ic, ls)


def rolling_sharpe(returns: Sequence[tuple[date, float]], window: int,
                   periods_per_year: int = 252) -> list[tuple[date, float]]:
    """Annualised Sharpe of the last ``window`` returns at each date that has a full window (NaN if undefined)."""
    values = [v for _, v in returns]
    out = []
    for i in range(window - 1, len(returns)):
        out.append((returns[i][0], sharpe_ratio(values[i - window + 1: i + 1], periods_per_year=periods_per_year)))
    return out


def build_figure(*, title: str, series: Mapping[str, ModelSeries] | Sequence[ModelSeries],
                 rolling_window: int = 10) -> Any:
    """The chart as a matplotlib ``Figure`` (Agg canvas attached); ``performance_chart`` renders it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    items = list(series.values()) if isinstance(series, Mapping) else list(series)
    fig = Figure(figsize=(9, 6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    fig.suptitle(title)
    for s in items:
        if s.daily_ic:
            d, v = zip(*s.daily_ic)
            top.plot(d, [x if math.isfinite(x) else np.nan for x in v], marker=".", label=s.label)
        else:
            top.plot([], [], label=f"{s.label} (no data)")
        rs = rolling_sharpe(s.daily_returns, rolling_window)
        if rs:
            d, v = zip(*rs)
            bottom.plot(d, [x if math.isfinite(x) else np.nan for x in v], label=s.label)
        else:
            bottom.plot([], [], label=s.label)
    for ax in (top, bottom):
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.grid(True, alpha=0.3)
    top.set_ylabel("daily Spearman IC")
    bottom.set_ylabel(f"{rolling_window}-day rolling Sharpe")
    top.legend(loc="best", fontsize="small")
    bottom.legend(loc="best", fontsize="small")
    locator = AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    return fig


def performance_chart(*, title: str, series: Mapping[str, ModelSeries] | Sequence[ModelSeries],
                      rolling_window: int = 10) -> bytes:
    """The chart as PNG bytes."""
    fig = build_figure(title=title, series=series, rolling_window=rolling_window)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def model_chart(conn: psycopg.Connection, registry: ModelRegistry, model: str, *, compare_with: str | None = None,
                days: int = 30, rolling_window: int = 10) -> bytes:
    """``/rollback status MODEL``: the production model, optionally beside another version (e.g. the one it
    replaced, an emergency backup)."""
    series = [model_series(conn, registry, model, None, days=days, label=f"{model} (production)")]
    if compare_with:
        series.append(model_series(conn, registry, model, compare_with, days=days, label=compare_with))
    return performance_chart(title=f"{model}: daily IC and {rolling_window}-day rolling Sharpe, last {days} days",
                             series=series, rolling_window=rolling_window)


def incident_chart(conn: psycopg.Connection, registry: ModelRegistry, incident: Incident, *, days: int = 30,
                   rolling_window: int = 10) -> bytes | None:
    """The failing model beside the restored backup (None for an incident that is not a rollback)."""
    if incident.kind != "rollback" or not incident.model_name or not incident.target_backup:
        return None
    model = incident.model_name
    failing_version = None  # before the emergency backup exists, the production files are the failing model
    if incident.emergency_backup and (registry.model_dir(model) / incident.emergency_backup).is_dir():
        failing_version = incident.emergency_backup
    failing = model_series(conn, registry, model, failing_version, days=days,
                           label=f"{incident.from_version or 'production'} (failing)")
    restored = model_series(conn, registry, model, incident.target_backup, days=days,
                            label=f"{incident.target_backup} (restored)")
    return performance_chart(title=f"{incident.ref} {model}: daily IC and {rolling_window}-day rolling Sharpe, "
                                   f"last {days} days",
                             series=[failing, restored], rolling_window=rolling_window)


def chart_maker(db: Any, registry: ModelRegistry, *, days: int = 30,
                rolling_window: int = 10) -> Callable[[Incident], bytes | None]:
    """``incident_chart`` bound to a database pool, in the shape ``core.report.Reports(chart=...)`` takes."""

    def make(incident: Incident) -> bytes | None:
        with db.transaction() as conn:
            return incident_chart(conn, registry, incident, days=days, rolling_window=rolling_window)

    return make
