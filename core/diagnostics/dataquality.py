"""Data quality of the platform's inputs (not specific to a model version): tickers per day in ``daily_bars``,
weekdays without bars, NULLs per feature column and in ``return_1d`` (the runbook's data-quality query),
and a stale feature view."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import psycopg
from psycopg import sql

from core.diagnostics.common import (
    WARNING,
    DiagnosticsConfig,
    Finding,
    bar_dates,
    day_text,
    rows,
    view_dates,
)
from core.platform import FEATURE_VIEW, feature_columns, view_columns

RETURN_COLUMN = "return_1d"


@dataclass(frozen=True)
class DayCount:
    day: date
    tickers: int
    trailing_median: float | None
    flagged: bool


@dataclass(frozen=True)
class ReturnNulls:
    """The runbook's query, per feature date: rows of the view and those whose ``return_1d IS NULL``."""

    day: date
    rows: int
    nulls: int


@dataclass(frozen=True)
class DataQualitySection:
    ticker_counts: list[DayCount] = field(default_factory=list)
    missing_weekdays: list[date] = field(default_factory=list)
    null_counts: dict[str, int] = field(default_factory=dict)
    null_worst_day: dict[str, tuple[date, int]] = field(default_factory=dict)
    window: tuple[date, date] | None = None
    view_latest: date | None = None
    bars_latest: date | None = None
    stale_days: int = 0             # trading days in daily_bars after the view's latest date
    return_nulls: list[ReturnNulls] = field(default_factory=list)  # the last count_days feature dates
    return_column: bool = True      # the view has a return_1d column
    error: str | None = None

    @property
    def stale(self) -> bool:
        return self.bars_latest is not None and (self.view_latest is None or self.view_latest < self.bars_latest)

    @property
    def flagged_days(self) -> list[DayCount]:
        return [c for c in self.ticker_counts if c.flagged]

    @property
    def return_null_total(self) -> int:
        return sum(r.nulls for r in self.return_nulls)


def _ticker_counts(conn: psycopg.Connection, as_of: date | None,
                   config: DiagnosticsConfig) -> tuple[list[DayCount], list[Finding]]:
    """The last ``count_days`` trading days, each against the median of the days before it."""
    counts = rows(
        conn,
        "SELECT date, count(*) FROM daily_bars WHERE (%(a)s::date IS NULL OR date <= %(a)s::date) AND date >= "
        "(SELECT min(date) FROM (SELECT DISTINCT date FROM daily_bars"
        " WHERE (%(a)s::date IS NULL OR date <= %(a)s::date)"
        " ORDER BY date DESC LIMIT %(n)s) x) GROUP BY date ORDER BY date",
        {"a": as_of, "n": config.count_days + config.trailing_days},
    )
    out: list[DayCount] = []
    findings: list[Finding] = []
    for i in range(max(0, len(counts) - config.count_days), len(counts)):
        day, n = counts[i]
        prev = [c for _, c in counts[max(0, i - config.trailing_days):i]]
        median = float(np.median(prev)) if len(prev) >= 3 else None
        flagged = median is not None and n < (1 - config.ticker_drop) * median
        out.append(DayCount(day, int(n), median, flagged))
        if flagged:
            findings.append(Finding(WARNING, "data_quality",
                                    f"{day.isoformat()}: {n} tickers in daily_bars, {1 - n / median:.0%} below the"
                                    f" trailing median of {median:g}"))
    return out, findings


def _missing_weekdays(day_counts: list[DayCount]) -> tuple[list[date], list[Finding]]:
    missing: list[date] = []
    if day_counts:
        present = {c.day for c in day_counts}
        day = day_counts[0].day
        while day < day_counts[-1].day:
            if day.weekday() < 5 and day not in present:
                missing.append(day)
            day += timedelta(days=1)
    return missing, [Finding(WARNING, "data_quality",
                             f"{m.isoformat()} (a weekday) has no bars at all in daily_bars (a holiday?)")
                     for m in missing]


def _feature_nulls(conn: psycopg.Connection, cols: list[str], recent: list[date]
                   ) -> tuple[dict[str, int], dict[str, tuple[date, int]], list[Finding]]:
    """NULLs per feature column over the recent feature dates."""
    null_counts: dict[str, int] = {c: 0 for c in cols}
    worst: dict[str, tuple[date, int]] = {}
    findings: list[Finding] = []
    if not recent or not cols:
        return null_counts, worst, findings
    query = sql.SQL(
        "SELECT date, count(*), {counts} FROM {v} WHERE date >= %s AND date <= %s GROUP BY date"
    ).format(
        counts=sql.SQL(", ").join(sql.SQL("count({})").format(sql.Identifier(c)) for c in cols),
        v=sql.Identifier(FEATURE_VIEW),
    )
    for row in rows(conn, query, (recent[0], recent[-1])):
        day, total = row[0], row[1]
        for c, nonnull in zip(cols, row[2:]):
            nulls = int(total - nonnull)
            if nulls:
                null_counts[c] += nulls
                if nulls > worst.get(c, (day, 0))[1]:
                    worst[c] = (day, nulls)
    for c in cols:
        if null_counts[c]:
            wd, wn = worst[c]
            findings.append(Finding(WARNING, "data_quality",
                                    f"{c}: {null_counts[c]} NULL(s) in {FEATURE_VIEW} over the last {len(recent)}"
                                    f" days ({wn} on {wd.isoformat()})"))
    return null_counts, worst, findings


def _return_nulls(conn: psycopg.Connection, as_of: date | None,
                  config: DiagnosticsConfig) -> tuple[list[ReturnNulls], bool, list[Finding]]:
    """The runbook's data-quality query: ``count(*) FILTER (WHERE return_1d IS NULL)`` per recent feature date."""
    if RETURN_COLUMN not in view_columns(conn):
        return [], False, [Finding(WARNING, "data_quality",
                                   f"{FEATURE_VIEW} has no {RETURN_COLUMN} column: the runbook's data-quality query"
                                   " cannot run")]
    days = view_dates(conn, as_of, config.count_days)
    if not days:
        return [], True, []
    query = sql.SQL(
        "SELECT date, count(*), count(*) FILTER (WHERE {r} IS NULL) FROM {v}"
        " WHERE date >= %s AND date <= %s GROUP BY date ORDER BY date"
    ).format(r=sql.Identifier(RETURN_COLUMN), v=sql.Identifier(FEATURE_VIEW))
    out = [ReturnNulls(day, int(n), int(nulls)) for day, n, nulls in rows(conn, query, (days[0], days[-1]))]
    total = sum(r.nulls for r in out)
    findings = []
    if total:
        worst = max(out, key=lambda r: r.nulls)
        findings.append(Finding(WARNING, "data_quality",
                                f"{RETURN_COLUMN} IS NULL in {total} row(s) of {FEATURE_VIEW} over the last {len(out)}"
                                f" days ({worst.nulls} of {worst.rows} on {worst.day.isoformat()})"))
    return out, True, findings


def check_data_quality(
    conn: psycopg.Connection, *, days: int = 30, as_of: date | None = None,
    config: DiagnosticsConfig = DiagnosticsConfig(), features: list[str] | None = None,
) -> tuple[DataQualitySection, list[Finding]]:
    """Ticker counts per day, NULLs per feature column and in return_1d, and a stale feature view."""
    day_counts, findings = _ticker_counts(conn, as_of, config)
    missing_weekdays, more = _missing_weekdays(day_counts)
    findings += more
    cols = features if features is not None else sorted(feature_columns(conn))
    recent = view_dates(conn, as_of, days)
    null_counts, worst, more = _feature_nulls(conn, cols, recent)
    findings += more
    return_nulls, has_return, more = _return_nulls(conn, as_of, config)
    findings += more
    # staleness of the materialized view
    view_latest = rows(conn, sql.SQL("SELECT max(date) FROM {v} WHERE (%(a)s::date IS NULL OR date <= %(a)s::date)")
                       .format(v=sql.Identifier(FEATURE_VIEW)), {"a": as_of})[0][0]
    bars_latest = rows(conn, "SELECT max(date) FROM daily_bars WHERE (%(a)s::date IS NULL OR date <= %(a)s::date)",
                       {"a": as_of})[0][0]
    stale_days = 0
    if bars_latest is not None and (view_latest is None or view_latest < bars_latest):
        stale_days = len(bar_dates(conn, as_of, since=(view_latest + timedelta(days=1)) if view_latest else None))
        findings.append(Finding(WARNING, "data_quality",
                                f"{FEATURE_VIEW} is stale: its latest date is {day_text(view_latest)}, {stale_days}"
                                f" trading day(s) behind daily_bars ({bars_latest.isoformat()}); refresh the feature"
                                " view"))
    section = DataQualitySection(
        ticker_counts=day_counts, missing_weekdays=missing_weekdays, null_counts=null_counts, null_worst_day=worst,
        window=(recent[0], recent[-1]) if recent else None, view_latest=view_latest, bars_latest=bars_latest,
        stale_days=stale_days, return_nulls=return_nulls, return_column=has_return,
    )
    return section, findings
