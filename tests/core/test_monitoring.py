"""Issue 5: following the restored model for 30 minutes after the resume (controlled clock, real data)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from core import incidents
from core.modelio import MODEL_FILE, load_booster, predict, read_metadata
from core.platform import feature_rows
from core.report import checklist
from bot.compose import build_services
from tests.helpers import Clock

MODEL = "growth_momentum_large"


@pytest.fixture
def clock():
    return Clock(incidents.utcnow().replace(microsecond=0))


@pytest.fixture
def new_day(conn, world):
    """Append a trading day of bars whose returns are ``sign`` times the restored model's ranking, then refresh
    the feature view; removed again afterwards (daily_bars is shared by the whole test run)."""
    added = []

    def add(models_dir, sign: float):
        last = conn.execute("SELECT max(date) AS d FROM daily_bars").fetchone()["d"]
        day = last + timedelta(days=1)
        while day.weekday() >= 5:
            day += timedelta(days=1)
        folder = models_dir / MODEL
        features = list(read_metadata(folder).features)
        _, tickers, rows = feature_rows(conn, features, day=last)
        preds = np.asarray(predict(load_booster(folder / MODEL_FILE), features, rows), dtype=float)
        ranks = preds.argsort().argsort()
        ret = {t: sign * 0.02 * (r - ranks.mean()) / len(ranks) for t, r in zip(tickers, ranks)}
        for bar in conn.execute("SELECT ticker, close, volume FROM daily_bars WHERE date = %s", (last,)).fetchall():
            close = bar["close"] * (1 + ret.get(bar["ticker"], 0.0))
            conn.execute(
                "INSERT INTO daily_bars (date, ticker, open, high, low, close, volume) VALUES (%s,%s,%s,%s,%s,%s,%s)",
                (day, bar["ticker"], bar["close"], max(close, bar["close"]) * 1.002,
                 min(close, bar["close"]) * 0.998, close, bar["volume"]),
            )
        conn.execute("REFRESH MATERIALIZED VIEW ml_training_features")
        added.append(day)
        return day

    yield add
    if added:
        conn.execute("DELETE FROM daily_bars WHERE date = ANY(%s)", (added,))
        conn.execute("REFRESH MATERIALIZED VIEW ml_training_features")


class Posts:
    def __init__(self, engine):
        self.engine = engine
        self.trouble = []
        self.summaries = []

    def on_trouble(self, incident, check):
        self.trouble.append(check)

    def on_summary(self, incident, summary):
        self.summaries.append((self.engine.get(incident.id).state, summary))


def monitored_rollback(settings, db, clock, log_path, *, started=True):
    """A rollback resumed with monitoring: built and started by the services (bot/compose.py, started in the
    resume's transaction by core.outbox.aftercare_jobs) unless ``started`` is False (a rollback whose monitoring
    was never started, as by a bot before the outbox queued it)."""
    services = build_services(settings.model_copy(update={"monitor_log": log_path, "monitor_every_minutes": 5}),
                              db, clock=clock)
    monitor = services.monitor
    if not started:
        services.engine.follow_ups.remove(next(w for w in services.engine.follow_ups
                                               if w.__qualname__.startswith("aftercare_jobs")))
    posts = Posts(services.engine)
    monitor.register(services.worker, posts.on_trouble, posts.on_summary)
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    inc = services.engine.execute(inc.id)
    assert inc.state == "monitoring"
    return services, monitor, posts, services.engine.get(inc.id)


def test_trouble_is_posted_at_once_and_the_incident_needs_attention_instead_of_resolving(
        settings, db, world, clock, tmp_path, new_day):
    log = tmp_path / "trading.log"
    log.write_text("2026-01-01 ERROR an old problem, before the resume\n")
    services, monitor, posts, inc = monitored_rollback(settings, db, clock, log)
    assert inc.plan["monitor"]["logs"][str(log)][0] == log.stat().st_size

    clock.at(minutes=5)
    services.worker.run_due()
    assert posts.trouble == [], "nothing new yet"

    with log.open("a") as fh:
        fh.write("INFO all fine\nWARNING slow fill\n12:01 ERROR order router rejected 3 orders\nCRITICAL half")
    new_day(world.models_dir, sign=-1.0)  # realized returns rank opposite to the model's predictions
    clock.at(minutes=10)
    services.worker.run_due()
    (check,) = posts.trouble
    assert check.ic == pytest.approx(-1.0) and check.rows == 40 and check.days == 1
    assert check.error_lines == ["12:01 ERROR order router rejected 3 orders"], "a partial line waits"
    assert any("IC is -1.000 on 40 row(s)" in t for t in check.trouble)
    now = services.engine.get(inc.id)
    assert now.state == "needs_attention", "trouble never waits for the window's end"
    assert now.plan["attention"]["reasons"] == check.trouble and now.plan["attention"]["count"] == 1

    with log.open("a") as fh:
        fh.write(" a line\n")
    clock.at(minutes=15)
    services.worker.run_due()
    assert len(posts.trouble) == 2
    assert posts.trouble[1].error_lines == ["CRITICAL half a line"]
    assert posts.trouble[1].trouble == [
        "1 error line(s) in trading.log since the last look, first: CRITICAL half a line"]

    clock.at(minutes=29)
    services.worker.run_due()
    assert len(posts.trouble) == 2 and posts.summaries == [], "no news, no post"

    clock.at(minutes=30)
    services.worker.run_due()
    ((state, summary),) = posts.summaries
    assert state == "needs_attention"
    assert summary.error_count == 2 and summary.ic == pytest.approx(-1.0) and not summary.ok
    assert "IC -1.000" in summary.text and "2 error line(s) in trading.log" in summary.text
    done = services.engine.get(inc.id)
    assert done.state == "needs_attention", "monitoring never resolves over a live problem"
    assert done.is_open and done.resolved_at is None
    steps = services.engine.steps(inc.id)
    monitor_step = next(s for s in steps if s.step == "monitor")
    assert monitor_step.outcome == "warning" and monitor_step.detail["summary"] == summary.text
    assert checklist(done, steps)[6].done, "Logs monitored is ticked"


def test_a_good_model_and_a_quiet_log_give_no_trouble(settings, db, world, clock, tmp_path, new_day):
    log = tmp_path / "trading.log"
    log.write_text("")
    services, monitor, posts, inc = monitored_rollback(settings, db, clock, log)
    new_day(world.models_dir, sign=1.0)
    with log.open("a") as fh:
        fh.write("INFO rebalanced 7 portfolios\nerrors=0\n")
    check = monitor.check(inc, clock.at(minutes=5))
    assert check.trouble == [] and check.ic == pytest.approx(1.0) and check.error_lines == []
    clock.at(minutes=30)
    services.worker.run_due()
    assert posts.trouble == []
    ((_, summary),) = posts.summaries
    assert summary.ok and "No trouble found." in summary.text and "0 error line(s)" in summary.text
    assert next(s for s in services.engine.steps(inc.id) if s.step == "monitor").outcome == "ok"


def test_without_new_data_the_summary_says_so(settings, db, world, clock):
    services, monitor, posts, inc = monitored_rollback(settings, db, clock, None)
    clock.at(minutes=30)
    services.worker.run_due()
    ((_, summary),) = posts.summaries
    assert summary.rows == 0 and "No new market data arrived" in summary.text and "No log file configured." in \
        summary.text
    assert services.engine.get(inc.id).state == "resolved"


def test_a_swapped_production_model_is_trouble(settings, db, world, clock):
    services, monitor, posts, inc = monitored_rollback(settings, db, clock, None)
    folder = world.models_dir / MODEL
    (folder / MODEL_FILE).write_bytes((folder / inc.emergency_backup / MODEL_FILE).read_bytes())
    clock.at(minutes=5)
    services.worker.run_due()
    (check,) = posts.trouble
    assert check.trouble == [f"the production model of {MODEL} is no longer {inc.target_backup} (its checksum "
                             "changed since the rollback)"]


def test_a_missed_resume_event_still_gets_a_summary(settings, db, world, clock, tmp_path):
    log = tmp_path / "trading.log"
    log.write_text("ERROR before\n")
    services, monitor, posts, inc = monitored_rollback(settings, db, clock, log, started=False)
    assert "monitor" not in inc.plan
    clock.at(minutes=30)
    services.worker.run_due()
    ((_, summary),) = posts.summaries
    assert "was not watched during the window" in summary.text and summary.error_count == 0
    assert services.engine.get(inc.id).state == "resolved"


def test_the_resume_queues_monitoring_and_the_watch_in_its_own_transaction(settings, db, world, clock):
    """Runbook step 6 through the outbox (issue 15 item 1): a process with no monitoring and no watch registered,
    as the break-glass CLI, still leaves both started when trading resumes on the restored model: their baselines
    in the incident's plan and their first checks queued, for whichever process runs them."""
    services = build_services(settings, db, clock=clock)  # nothing registered, no listener
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    inc = services.engine.execute(inc.id)
    assert inc.state == "monitoring"
    assert {"monitor", "watch"} <= set(services.engine.get(inc.id).plan)
    with services.db.transaction() as c:
        queued = {(r["kind"], r["dedupe_key"]) for r in c.execute(
            "SELECT kind, dedupe_key FROM rollback_bot.jobs WHERE incident_id = %s AND done_at IS NULL",
            (inc.id,)).fetchall()}
    assert ("monitor_check", f"monitor-check:{inc.id}:1") in queued
    assert any(kind == "watch_check" for kind, _ in queued), queued
