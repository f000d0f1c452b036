"""The runbook's own checks in the diagnostics: ``return_1d IS NULL`` (data quality), one training log per model
(``TRAINING_LOG`` with placeholders), and system-wide problems (core/diagnostics/system.py): the database, the
API log (``API_LOG``) and the data pipeline's freshness."""

from __future__ import annotations

import threading
from datetime import timedelta

import psycopg
from psycopg.rows import dict_row

from bot.devtools import demo_world as dw
from core.diagnostics import DiagnosticsConfig, check_data_quality, check_system, training_log_path
from core.diagnostics.system import last_trading_day
from bot.compose import build_services

MODEL = "growth_momentum_large"


def test_return_1d_nulls_are_counted_per_day(world, database_url):
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        clean, findings = check_data_quality(conn)
        assert len(clean.return_nulls) == 7 and clean.return_null_total == 0 and clean.return_column
        assert [r.rows for r in clean.return_nulls] == [len(world.tickers)] * 7
        assert not [f for f in findings if "return_1d" in f.message]
        last = world.trading_days[-1]
        gone = world.tickers[:3]
        conn.execute("UPDATE daily_bars SET close = NULL WHERE date = %s AND ticker = ANY(%s)", (last, gone))
        conn.execute(f"REFRESH MATERIALIZED VIEW {dw.FEATURE_VIEW}")
        section, findings = check_data_quality(conn)
        conn.rollback()
    assert section.return_nulls[-1].day == last and section.return_nulls[-1].nulls == 3
    assert section.return_null_total == 3
    message = next(f.message for f in findings if "return_1d" in f.message)
    assert "return_1d IS NULL in 3 row(s)" in message and last.isoformat() in message


def test_one_training_log_per_model(settings, db, world, tmp_path):
    assert training_log_path("/logs/{strategy}/{marketcap}/{model}.log", "growth_momentum_large").as_posix() == \
        "/logs/growth_momentum/large/growth_momentum_large.log"
    logs = tmp_path / "train"
    logs.mkdir()
    (logs / "growth_momentum-large.log").write_text("INFO epoch 1\nERROR shard 3 unreadable\nINFO done\n")
    s = settings.model_copy(update={"training_log": logs / "{strategy}-{marketcap}.log"})
    services = build_services(s, db)
    report = services.diagnose(model=MODEL)
    assert report.log_scan.status == "ok" and report.log_scan.model == MODEL
    assert report.log_scan.counts["error"] == 1
    assert [f.message for f in report.by_area("log")][0].startswith(f"training log of {MODEL} growth_momentum-large.log")
    other = next(m for m in world.models if m != MODEL)
    report = services.diagnose(model=other)
    expected = logs / (other.rsplit("_", 1)[0] + "-" + other.rsplit("_", 1)[1] + ".log")
    assert report.log_scan.status == "missing" and report.log_scan.path == expected
    plain = f"no training log for {other}: {expected} does not exist"
    assert plain in report.summary() and plain in report.to_markdown()


def test_database_health_as_far_as_an_ordinary_role_can_read(world, conn, database_url):
    section, findings = check_system(conn, today=world.end_date + timedelta(days=1))
    db = section.database
    assert db.error is None and db.connections >= 1
    assert db.max_connections == int(conn.execute("SHOW max_connections").fetchone()["max_connections"])
    assert db.standby is False and db.standbys == 0 and db.locks_waiting == 0
    assert findings == []
    # a lock request waiting behind another session
    holder = psycopg.connect(database_url, autocommit=True)
    waiter = psycopg.connect(database_url, autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(424242)")
        blocked = threading.Thread(target=lambda: waiter.execute("SELECT pg_advisory_lock(424242)"), daemon=True)
        blocked.start()
        for _ in range(100):
            if conn.execute("SELECT count(waitstart) AS n FROM pg_locks WHERE NOT granted").fetchone()["n"]:
                break
            threading.Event().wait(0.05)
        section, findings = check_system(conn, today=world.end_date + timedelta(days=1),
                                         config=DiagnosticsConfig(lock_wait_seconds=0))
    finally:
        holder.execute("SELECT pg_advisory_unlock(424242)")
        blocked.join(10)
        holder.close()
        waiter.close()
    assert section.database.locks_waiting >= 1 and section.database.oldest_wait_seconds is not None
    assert [f for f in findings if f.area == "system" and "lock request(s) waiting" in f.message]


def test_api_log_error_lines(world, conn, tmp_path):
    api = tmp_path / "api.log"
    api.write_text("2026-11-30 10:00:01 INFO GET /positions 200\n"
                   "2026-11-30 10:00:02 ERROR upstream timeout on /orders\n"
                   "2026-11-30 10:00:03 INFO GET /positions 200\n"
                   "Traceback (most recent call last):\n")
    section, findings = check_system(conn, today=world.end_date + timedelta(days=1), api_log=api)
    assert section.api_log.status == "ok" and section.api_log.counts["error"] == 2
    assert [f for f in findings if "API log api.log: 2 error line(s)" in f.message]
    section, findings = check_system(conn, today=world.end_date + timedelta(days=1), api_log=tmp_path / "gone.log")
    assert section.api_log.status == "missing" and [f for f in findings if "gone.log does not exist" in f.message]


def test_data_pipeline_freshness_against_the_last_trading_day(world, conn):
    assert last_trading_day(world.end_date + timedelta(days=1)) == world.end_date
    fresh, findings = check_system(conn, today=world.end_date + timedelta(days=1))
    assert fresh.pipeline.bars_latest == fresh.pipeline.view_latest == world.end_date
    assert fresh.pipeline.bars_behind == 0 and findings == []
    later = world.end_date + timedelta(days=15)  # three weeks of weekdays later, no new bars
    stale, findings = check_system(conn, today=later)
    behind = stale.pipeline.bars_behind
    assert behind >= 10 and stale.pipeline.last_trading_day == last_trading_day(later)
    message = next(f.message for f in findings if "data pipeline" in f.message)
    assert f"daily_bars ends on {world.end_date.isoformat()} ({behind} weekday(s) behind)" in message
    assert "ml_training_features" in message


def test_diagnose_in_slack_shows_the_runbook_checks(sandbox, world):
    reply = sandbox.command("U0ALICE", f"diagnose {MODEL}")
    text = str(sandbox.responses(reply.response_key)[0]["blocks"])
    assert "return_1d IS NULL: 0 row(s) over the last 7 days" in text
    assert "*System* (all models): database " in text and "connections" in text and "data pipeline bars" in text
    assert "Version diagnosed: production" in text
