"""Read access to the trading platform's tables (found through the connection's search_path).

Only ``client_settings`` and ``model_deployment_log`` are ever written, by ``core.trading`` and
``core.engine``; this module reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg import sql

FEATURE_VIEW = "ml_training_features"
_NON_FEATURES = {"date", "ticker", "return_1d"}


@dataclass(frozen=True)
class DeploymentRow:
    model_name: str
    version: str
    deployed_at: datetime
    deployed_by: str | None
    deployment_reason: str | None
    is_rollback: bool
    spearman_ic: float | None
    sharpe_ratio: float | None


def production_rows(conn: psycopg.Connection, model: str | None = None) -> list[DeploymentRow]:
    """Rows marked production, newest first; a model with several such rows shows them all."""
    query = (
        "SELECT model_name, version, deployed_at, deployed_by, deployment_reason, "
        "coalesce(is_rollback, false) AS is_rollback, spearman_ic, sharpe_ratio "
        "FROM model_deployment_log WHERE is_production"
    )
    params: tuple[Any, ...] = ()
    if model is not None:
        query += " AND model_name = %s"
        params = (model,)
    query += " ORDER BY model_name, deployed_at DESC"
    return [DeploymentRow(**row) for row in conn.execute(query, params)]


def view_columns(conn: psycopg.Connection, view: str = FEATURE_VIEW) -> list[str]:
    """Columns of the feature view (materialized views are not in information_schema)."""
    rows = conn.execute(
        "SELECT a.attname AS name FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (view,),
    ).fetchall()
    return [r["name"] for r in rows]


def feature_columns(conn: psycopg.Connection) -> set[str]:
    return {c for c in view_columns(conn) if c not in _NON_FEATURES}


def latest_feature_date(conn: psycopg.Connection) -> date | None:
    row = conn.execute(sql.SQL("SELECT max(date) AS d FROM {}").format(sql.Identifier(FEATURE_VIEW))).fetchone()
    return row["d"] if row else None


def feature_rows(
    conn: psycopg.Connection, features: list[str], *, day: date | None = None, limit: int = 5000
) -> tuple[date | None, list[str], list[list[float | None]]]:
    """The feature matrix of one day (default: the latest), in the model's feature order."""
    if day is None:
        day = latest_feature_date(conn)
    if day is None:
        return None, [], []
    query = sql.SQL("SELECT ticker, {cols} FROM {view} WHERE date = %s ORDER BY ticker LIMIT %s").format(
        cols=sql.SQL(", ").join(sql.Identifier(f) for f in features),
        view=sql.Identifier(FEATURE_VIEW),
    )
    tickers, rows = [], []
    with conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
        for rec in cur.execute(query, (day, limit)):
            tickers.append(rec[0])
            rows.append([None if v is None else float(v) for v in rec[1:]])
    return day, tickers, rows
