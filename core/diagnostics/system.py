"""System-wide problems (not specific to a model version): the database, the API log, the data pipeline.

* **database** -- what an ordinary role can read: client connections (``pg_stat_activity``) against
  ``max_connections`` (busy above ``connections_busy``, 90%), lock requests waiting (``pg_locks``; the oldest
  wait from ``waitstart``, PostgreSQL 14+; a wait over ``lock_wait_seconds``, 30 s, is a finding), and replication: on
  a standby the replay lag (``now() - pg_last_xact_replay_timestamp()``, a finding over
  ``replication_lag_seconds``), on a primary the standbys of ``pg_stat_replication`` and their replay lag when
  this role may see it (it needs ``pg_read_all_stats``; otherwise it says so).
* **API log** (``API_LOG``) -- error lines (ERROR, Exception, Traceback, FATAL, CRITICAL, ...) in its tail.
* **data pipeline** -- the latest date of ``daily_bars`` and of the feature view against the last trading day
  (the last weekday before today; a weekday holiday counts as a trading day here, so the finding says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from core.diagnostics.common import WARNING, DiagnosticsConfig, Finding, day_text, guarded, rows
from core.diagnostics.trainlog import LogScanSection, scan_lines
from core.platform import FEATURE_VIEW


@dataclass(frozen=True)
class DatabaseHealth:
    connections: int | None = None
    max_connections: int | None = None
    locks_waiting: int | None = None
    oldest_wait_seconds: float | None = None   # None: none waiting, or not known (before PostgreSQL 14)
    standby: bool | None = None
    replay_lag_seconds: float | None = None    # a standby's replay lag
    standbys: int | None = None                # a primary's standbys in pg_stat_replication
    standby_lag_seconds: float | None = None   # their largest replay lag (None: none, or not visible)
    lag_visible: bool = True
    error: str | None = None


@dataclass(frozen=True)
class PipelineFreshness:
    bars_latest: date | None = None
    view_latest: date | None = None
    last_trading_day: date | None = None
    bars_behind: int = 0      # weekdays from bars_latest (exclusive) to last_trading_day (inclusive)
    view_behind: int = 0
    error: str | None = None


@dataclass(frozen=True)
class SystemSection:
    database: DatabaseHealth = field(default_factory=DatabaseHealth)
    api_log: LogScanSection = field(default_factory=lambda: LogScanSection(None, "not configured"))
    pipeline: PipelineFreshness = field(default_factory=PipelineFreshness)


def last_trading_day(today: date) -> date:
    """The last weekday before ``today``."""
    day = today - timedelta(days=1)
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return day


def weekdays_between(after: date | None, upto: date) -> int:
    """Weekdays in (after, upto] (0 when ``after`` is None or not before ``upto``)."""
    if after is None or after >= upto:
        return 0
    n, day = 0, after + timedelta(days=1)
    while day <= upto:
        n += day.weekday() < 5
        day += timedelta(days=1)
    return n


def _seconds(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)  # type: ignore[arg-type]


def check_database(conn: psycopg.Connection, config: DiagnosticsConfig = DiagnosticsConfig()
                   ) -> tuple[DatabaseHealth, list[Finding]]:
    version = int(rows(conn, "SELECT current_setting('server_version_num')::int")[0][0])
    wait = "(SELECT min(waitstart) FROM pg_locks WHERE NOT granted)" if version >= 140000 else "NULL::timestamptz"
    (connections, max_conn, waiting, oldest, standby, replay), = rows(conn, (
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),"
        " current_setting('max_connections')::int, (SELECT count(*) FROM pg_locks WHERE NOT granted),"
        f" clock_timestamp() - {wait}, pg_is_in_recovery(),"
        " CASE WHEN pg_is_in_recovery() THEN clock_timestamp() - pg_last_xact_replay_timestamp() END"))
    standbys = lag = None
    visible = True
    if not standby:
        (standbys, lag, seen), = rows(conn, "SELECT count(*), max(replay_lag), count(*) FILTER (WHERE state IS NOT NULL)"
                                            " FROM pg_stat_replication")
        visible = seen == standbys
    health = DatabaseHealth(int(connections), int(max_conn), int(waiting), _seconds(oldest), bool(standby),
                            _seconds(replay), standbys, _seconds(lag), visible)
    findings = []
    if health.connections >= config.connections_busy * health.max_connections:
        findings.append(Finding(WARNING, "system", f"the database has {health.connections} client connections of"
                                                   f" max_connections {health.max_connections}: new ones may be refused"))
    # a lock wait is news when it lasts (before PostgreSQL 14 its age is unknown: the count is shown, no finding)
    if waiting and health.oldest_wait_seconds is not None and health.oldest_wait_seconds > config.lock_wait_seconds:
        findings.append(Finding(WARNING, "system", f"{waiting} lock request(s) waiting in the database, the oldest"
                                                   f" for {health.oldest_wait_seconds:.0f} s"))
    for what, secs in (("this standby's replay", health.replay_lag_seconds),
                       ("a standby's replay", health.standby_lag_seconds)):
        if secs is not None and secs > config.replication_lag_seconds:
            findings.append(Finding(WARNING, "system", f"replication lag: {what} is {secs:.0f} s behind"))
    return health, findings


def check_pipeline(conn: psycopg.Connection, *, expected: date, as_of: date | None = None
                   ) -> tuple[PipelineFreshness, list[Finding]]:
    bars = rows(conn, "SELECT max(date) FROM daily_bars WHERE (%(a)s::date IS NULL OR date <= %(a)s::date)",
                {"a": as_of})[0][0]
    view = rows(conn, sql.SQL("SELECT max(date) FROM {v} WHERE (%(a)s::date IS NULL OR date <= %(a)s::date)")
                .format(v=sql.Identifier(FEATURE_VIEW)), {"a": as_of})[0][0]
    p = PipelineFreshness(bars, view, expected, weekdays_between(bars, expected), weekdays_between(view, expected))
    behind = []
    if bars is None or p.bars_behind:
        behind.append(f"daily_bars ends on {day_text(bars)}" + (f" ({p.bars_behind} weekday(s) behind)" if bars else ""))
    if view is None or p.view_behind:
        behind.append(f"{FEATURE_VIEW} on {day_text(view)}" + (f" ({p.view_behind} weekday(s) behind)" if view else ""))
    if not behind:
        return p, []
    return p, [Finding(WARNING, "system", f"data pipeline: {' and '.join(behind)} the last trading day"
                                          f" {expected.isoformat()} (or that day was a market holiday)")]


def scan_api_log(path: Path | None, config: DiagnosticsConfig = DiagnosticsConfig()
                 ) -> tuple[LogScanSection, list[Finding]]:
    if path is None:
        return LogScanSection(None, "not configured"), []
    section = scan_lines(Path(path), config=config, kinds=("error",))
    if section.status != "ok":
        return section, [Finding(WARNING, "system", f"API log: {section.error}")]
    n = section.counts["error"]
    if not n:
        return section, []
    last = section.last_lines[-1].text[:160] if section.last_lines else ""
    return section, [Finding(WARNING, "system", f"API log {section.path.name}: {n} error line(s) in the last"
                                                f" {section.lines_scanned} lines; last: {last!r}")]


def check_system(conn: psycopg.Connection, *, today: date, as_of: date | None = None, api_log: Path | None = None,
                 config: DiagnosticsConfig = DiagnosticsConfig()) -> tuple[SystemSection, list[Finding]]:
    """The database, the API log and the data pipeline; each part reports its own failure."""
    # as of a past day, that day's own data is expected (when it is a weekday)
    expected = last_trading_day(as_of + timedelta(days=1) if as_of is not None else today)
    db, f1 = guarded(conn, lambda: check_database(conn, config),
                     lambda msg: (DatabaseHealth(error=msg), [Finding(WARNING, "system", f"database: could not be"
                                                                                          f" checked: {msg}")]))
    pipe, f2 = guarded(conn, lambda: check_pipeline(conn, expected=expected, as_of=as_of),
                       lambda msg: (PipelineFreshness(last_trading_day=expected, error=msg),
                                    [Finding(WARNING, "system", f"data pipeline: could not be checked: {msg}")]))
    api, f3 = scan_api_log(api_log, config)
    return SystemSection(db, api, pipe), f1 + f2 + f3
