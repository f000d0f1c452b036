"""The 24-hour watch's follow-up (core.watch_followup): when the watch completes, its ``monitoring`` follow-up is
marked done by the bot (noting the watch's summary) and its owner is never reminded of it; a watch that ended
badly leaves it open and the follow-ups message says so.

Real parts: a real PostgreSQL, the real worker running the watch's checks and the follow-up jobs (creation,
reminders) on a controlled clock, real model data; the Slack side is only recorded (``Told``), and the
follow-ups message is the real Block Kit of handlers/followup_views.py."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from core import incidents
from bot.compose import build_services
from handlers.followup_views import board_blocks
from tests.core.test_followups import Told
from tests.core.test_watch import resumed_rollback, watch_settings
from tests.helpers import Clock


@pytest.fixture
def clock():
    return Clock(incidents.utcnow().replace(microsecond=0))


def bot_process(settings, db, clock, *, logs=(), followups=True):
    """One bot process with the 2-hour watch and (unless told not to) the follow-up jobs registered."""
    services = build_services(watch_settings(settings, hours=2, logs=logs), db, clock=clock)
    summaries: list[str] = []
    # started by the outbox
    services.watch.register(services.worker, lambda inc, w: None, lambda inc, summary: summaries.append(summary))
    told = Told()
    if followups:
        services.followups.register(services.worker, on_board=told.board, on_reminder=told.remind)
    return services, told, summaries


def run_until(services, clock, minutes: int) -> None:
    for m in range(30, minutes + 1, 30):
        clock.at(minutes=m)
        services.worker.run_due()


def monitoring_item(services, incident_id):
    return next(i for i in services.followups.items(incident_id) if i.kind == "monitoring")


def board_text_of(services, incident_id) -> str:
    inc = services.engine.get(incident_id)
    blocks = board_blocks(inc, services.followups.items(incident_id), services.followups.prevention(incident_id),
                          services.engine.clock())
    return json.dumps(blocks)


def test_a_completed_watch_marks_its_follow_up_done_and_nobody_is_reminded_of_it(settings, db, world, clock):
    services, told, summaries = bot_process(settings, db, clock)
    inc = resumed_rollback(services)
    clock.at(minutes=1)
    services.worker.run_due()  # the follow-ups are created with the resume
    item = monitoring_item(services, inc.id)
    assert not item.done and item.due_at == inc.created_at + timedelta(hours=24)
    boards_before = len(told.boards)

    run_until(services, clock, 120)  # the 2-hour watch's four checks, the last one at T+2 h
    (summary,) = summaries
    assert "No trouble found." in summary
    item = monitoring_item(services, inc.id)
    assert item.done and item.completed_by == "rollback-bot" and item.completed_at == clock()
    step = next(s for s in services.engine.steps(inc.id) if s.step == "followup"
                and s.detail.get("kind") == "monitoring")
    assert step.actor == "rollback-bot" and step.detail["action"] == "done" and step.detail["note"] == summary
    assert len(told.boards) > boards_before, "the follow-ups message was not shown again when the watch ended"
    shown = board_text_of(services, inc.id)
    assert "done by the bot" in shown and "The 24-hour watch completed" in shown and "No trouble found." in shown
    assert "<@rollback-bot>" not in shown

    clock.at(hours=25)  # past every follow-up's first due date but the week-long ones
    services.worker.run_due()
    reminded = {kind for _, kind, _ in told.reminders}
    assert "root_cause" in reminded, "reminders are sent at all (the root cause is overdue)"
    assert "monitoring" not in reminded, "the owner was reminded of the monitoring the bot did"


def test_a_watch_that_ended_badly_leaves_its_follow_up_open_and_says_so(settings, db, world, clock, tmp_path):
    api_log = tmp_path / "api.log"
    api_log.write_text("")
    services, told, summaries = bot_process(settings, db, clock, logs=[api_log])
    inc = resumed_rollback(services)
    clock.at(minutes=30)
    services.worker.run_due()
    with api_log.open("a") as fh:
        fh.write("12:40 ERROR upstream 502 from the broker gateway\n")
    run_until(services, clock, 120)
    (summary,) = summaries
    assert "Trouble in 1 check(s)" in summary
    assert services.engine.get(inc.id).state == "needs_attention"
    item = monitoring_item(services, inc.id)
    assert not item.done and item.completed_by is None
    assert not any(s.step == "followup" and s.detail.get("kind") == "monitoring" and s.detail.get("action") == "done"
                   for s in services.engine.steps(inc.id))
    shown = board_text_of(services, inc.id)
    assert "The 24-hour watch did not end cleanly (1 check(s) found trouble; INC-1 needs attention)" in shown
    assert "left open" in shown and "upstream 502" in shown

    clock.at(hours=25)
    services.worker.run_due()
    assert "monitoring" in {kind for _, kind, _ in told.reminders}, "an open, overdue follow-up is reminded"


def test_a_watch_that_missed_checks_leaves_its_follow_up_open(settings, db, world, clock):
    services, told, summaries = bot_process(settings, db, clock)
    inc = resumed_rollback(services)
    clock.at(minutes=1)
    services.worker.run_due()
    clock.at(minutes=125)  # no bot process ran for two hours: one late check, the three before it missed
    services.worker.run_due()
    (summary,) = summaries
    assert "1 check(s) made, 3 missed" in summary and "No trouble found." in summary
    assert not monitoring_item(services, inc.id).done
    assert "did not end cleanly (3 check(s) missed)" in board_text_of(services, inc.id)


def test_follow_ups_created_after_the_watch_completed_start_with_it_done(settings, db, world, clock):
    services, _, summaries = bot_process(settings, db, clock, followups=False)  # e.g. no Slack process ran
    inc = resumed_rollback(services)
    run_until(services, clock, 120)
    assert summaries and services.followups.items(inc.id) == []
    later, told, _ = bot_process(settings, db, clock)
    later.worker.run_due()
    item = monitoring_item(later, inc.id)
    assert item.done and item.completed_by == "rollback-bot"
    assert {i.kind for i in later.followups.items(inc.id) if not i.done} == {"root_cause", "retrain", "checklist",
                                                                            "prevention"}
