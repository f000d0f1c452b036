"""When the rollback does not fix it (core.aftercare): needs attention, the follow-up rollback that supersedes,
acceptance with a reason, and escalation that counts from the first report and keeps firing."""

from __future__ import annotations

import psycopg
import pytest

from core import aftercare, incidents
from core.errors import Conflict, InvalidTransition, NotAuthorized, RollbackError
from core.escalation import Escalator, age_escalation
from core.report import render_report
from bot.compose import build_services
from tests.helpers import Clock, assert_consistent
from tests.core.test_escalation import Pager

MODEL = "growth_momentum_large"


@pytest.fixture
def clock():
    return Clock(incidents.utcnow().replace(microsecond=0))


def rollback(services, backup=None, user="U0ALICE"):
    backup = backup or services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=backup, reason="r", requested_by=user)
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    return services.engine.execute(inc.id)


def another_backup(services, *exclude):
    usable = [b.name for b in services.start_form(model=MODEL).backups]
    return next(b for b in usable if b not in exclude and not b.startswith("backup_emergency"))


def failing(services, clock, minutes=40):
    """A rollback whose monitoring found trouble."""
    inc = rollback(services)
    clock.at(minutes=minutes)
    return aftercare.raise_attention(services.engine, inc.id, ["the restored model's IC is -0.200"],
                                     source="monitoring after the resume")


def test_a_follow_up_rollback_is_allowed_and_supersedes_the_incident_when_approved(settings, db, world, clock, conn):
    services = build_services(settings, db, clock=clock)
    old = failing(services, clock)
    assert old.state == "needs_attention" and old.is_open
    assert services.engine.open_incident_for(MODEL) is None, "it does not block a follow-up"
    other = another_backup(services, old.target_backup)

    first, _ = services.engine.request_rollback(model=MODEL, backup=other, reason="again", requested_by="U0ALICE")
    assert first.plan["follows"] == {"id": old.id, "ref": old.ref, "first_reported_at": old.created_at.isoformat()}
    with pytest.raises(Conflict, match=f"already has an open rollback, {first.ref}"):
        services.engine.request_rollback(model=MODEL, backup=other, reason="twice", requested_by="U0CAROL")
    services.engine.deny(incident_id=first.id, user="U0CAROL", note="not that one")
    assert services.engine.get(old.id).state == "needs_attention", "a denied follow-up leaves it open"

    clock.at(minutes=50)
    follow, _ = services.engine.request_rollback(model=MODEL, backup=other, reason="again", requested_by="U0ALICE")
    approved = services.engine.approve(incident_id=follow.id, approver="U0BOB")
    closed = services.engine.get(old.id)
    assert closed.state == "superseded" and not closed.is_open and closed.resolved_at == clock()
    assert closed.plan["superseded_by"] == {"id": follow.id, "ref": follow.ref, "backup": other}
    step = next(s for s in services.engine.steps(old.id) if s.step == "superseded")
    assert step.actor == "U0BOB" and step.detail == {"by": follow.ref, "backup": other}
    audit = conn.execute("SELECT actor, outcome, detail FROM rollback_bot.audit_log WHERE action = 'supersede'"
                         ).fetchall()
    assert [(a["actor"], a["outcome"], a["detail"]["by"]) for a in audit] == [("U0BOB", "ok", follow.ref)]
    assert approved.state == "approved"
    assert services.engine.execute(follow.id).state == "monitoring"
    assert assert_consistent(conn, world.models_dir, MODEL) == other

    assert aftercare.first_reported_at(services.engine.get(follow.id)) == old.created_at
    md = render_report(incident=closed, steps=services.engine.steps(old.id), diagnostics_summary=None, now=clock())
    assert "| State | superseded |" in md and f"Followed up by {follow.ref} (rollback to {other})" in md
    md = render_report(incident=services.engine.get(follow.id), steps=services.engine.steps(follow.id),
                       diagnostics_summary=None, now=clock())
    assert f"| Follows | {old.ref}, which this rollback follows up" in md
    # the watch of the old incident has nothing left to say: the model is the follow-up's now
    assert aftercare.raise_attention(services.engine, old.id, ["x"], source="test") is None


def test_the_database_keeps_one_open_rollback_and_one_needing_attention_per_model(settings, db, world, clock, conn):
    services = build_services(settings, db, clock=clock)
    old = failing(services, clock)
    follow, _ = services.engine.request_rollback(model=MODEL, backup=another_backup(services, old.target_backup),
                                                 reason="again", requested_by="U0ALICE")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("UPDATE rollback_bot.incidents SET state = 'needs_attention' WHERE id = %s", (follow.id,))
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO rollback_bot.incidents (kind, model_name, state, requested_by)"
                     " VALUES ('rollback', %s, 'requested', 'x')", (MODEL,))


def test_an_approver_accepts_with_a_written_reason(settings, db, world, clock, conn):
    services = build_services(settings, db, clock=clock)
    inc = failing(services, clock)
    with pytest.raises(NotAuthorized):
        services.accept(incident_id=inc.id, user="U0ALICE", reason="fine", allowed=False)
    with pytest.raises(RollbackError, match="written reason"):
        services.accept(incident_id=inc.id, user="U0BOB", reason=" \x00 ", allowed=True)
    assert services.engine.get(inc.id).state == "needs_attention"
    done = services.accept(incident_id=inc.id, user="U0BOB", reason="IC dip is the known earnings effect",
                           allowed=True)
    assert done.state == "resolved" and done.plan["accepted"]["by"] == "U0BOB"
    assert next(s for s in services.engine.steps(inc.id) if s.step == "accepted").detail == {
        "reason": "IC dip is the known earnings effect"}
    rows = conn.execute("SELECT actor, outcome FROM rollback_bot.audit_log WHERE action = 'accept' ORDER BY id")
    assert [(r["actor"], r["outcome"]) for r in rows] == [("U0ALICE", "refused"), ("U0BOB", "refused"), ("U0BOB", "ok")]
    with pytest.raises(InvalidTransition):
        services.accept(incident_id=inc.id, user="U0BOB", reason="again", allowed=True)
    assert aftercare.raise_attention(services.engine, inc.id, ["more"], source="test") is None, \
        "a person accepted it: later trouble is reported by the watch, it does not reopen"
    md = render_report(incident=done, steps=services.engine.steps(inc.id), diagnostics_summary=None, now=clock())
    assert "Accepted by U0BOB at" in md and "IC dip is the known earnings effect" in md


def test_needing_attention_pages_at_once_and_age_counts_from_the_first_report_until_a_person_closes(
        settings, db, world, clock):
    pager = Pager()
    services = build_services(settings, db, clock=clock)
    Escalator(services.engine, escalate_after_minutes=120).register(services.worker, pager.page, pager.breach)
    old = failing(services, clock, minutes=40)
    services.worker.run_due()
    ((who, why),) = pager.pages
    assert who == old.id and f"the rollback of {MODEL} to {old.target_backup} does not resolve the issue" in why
    assert "IC is -0.200" in why

    clock.at(minutes=110)
    follow, _ = services.engine.request_rollback(model=MODEL, backup=another_backup(services, old.target_backup),
                                                 reason="again", requested_by="U0ALICE")
    services.worker.run_due()
    assert len(pager.pages) == 1
    clock.at(minutes=120)
    services.worker.run_due()
    ages = {p[0]: p[1] for p in pager.pages[1:]}
    assert ages[old.id] == f"{old.ref} is still open after 2 h 00 min (state needs_attention)"
    assert ages[follow.id] == (f"{follow.ref} is still open after 2 h 00 min since it was first reported "
                               f"({old.ref}) (state requested)"), "the follow-up counts from the first report"
    clock.at(minutes=121)
    services.engine.approve(incident_id=follow.id, approver="U0BOB")
    services.engine.execute(follow.id)
    clock.at(minutes=125)  # the follow-up does not fix it either
    aftercare.raise_attention(services.engine, follow.id, ["2 error line(s) in api.log"], source="test")
    services.worker.run_due()
    assert [p[0] for p in pager.pages[3:]] == [follow.id] and "does not resolve" in pager.pages[3][1]
    clock.at(minutes=240)
    services.worker.run_due()
    assert [p[0] for p in pager.pages[4:]] == [follow.id], "the superseded one stops; the open one goes on"
    assert pager.pages[4][1] == (f"{follow.ref} is still open after 4 h 00 min since it was first reported "
                                 f"({old.ref}) (state needs_attention)")
    assert age_escalation(services.engine.get(follow.id), clock(), 120) == pager.pages[4][1]


def test_a_resolved_incident_reopened_late_is_paged_at_once(settings, db, world, clock):
    pager = Pager()
    services = build_services(settings, db, clock=clock)
    Escalator(services.engine, escalate_after_minutes=120).register(services.worker, pager.page, pager.breach)
    inc = rollback(services)
    clock.at(minutes=40)
    services.engine.resolve(incident_id=inc.id)
    clock.at(minutes=130)
    services.worker.run_due()
    assert pager.pages == [], "closed at T+2h: no age page"
    clock.at(minutes=300)
    aftercare.raise_attention(services.engine, inc.id, ["3 error line(s) in api.log"], source="test")
    services.worker.run_due()
    services.worker.run_due()
    texts = sorted(p[1] for p in pager.pages)
    assert texts[0] == f"{inc.ref} is still open after 5 h 00 min (state needs_attention)"
    assert len(texts) == 2 and "does not resolve the issue (3 error line(s) in api.log)" in texts[1]
    clock.at(minutes=360)
    services.worker.run_due()
    assert len(pager.pages) == 3 and "after 6 h 00 min" in pager.pages[-1][1]
