"""core/followups.py against the real PostgreSQL: which follow-ups an incident gets, created once (and by the
sweep when the event was lost), what assigning and completing need, the report's sections and checklist items
9 and 10. The Slack side is tests/e2e/test_slack_followups.py."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from core import incidents
from core.errors import Conflict, InvalidTransition, NotAuthorized
from core.followups import UnknownFollowUp, plan_for
from core.report import add_root_cause, checklist, render_report
from tests.helpers import Clock

MODEL = "growth_momentum_large"


@pytest.fixture
def clock(services):
    c = Clock(incidents.utcnow().replace(microsecond=0) + timedelta(minutes=15))
    services.engine.clock = c
    return c


class Told:
    """A fake of the Slack side: records what it was asked to show."""

    def __init__(self) -> None:
        self.boards: list[int] = []
        self.reminders: list[tuple[int, str, str | None]] = []

    def board(self, incident) -> None:
        self.boards.append(incident.id)

    def remind(self, incident, item) -> None:
        self.reminders.append((incident.id, item.kind, item.owner))


@pytest.fixture
def told(services):
    t = Told()
    services.followups.register(services.worker, on_board=t.board, on_reminder=t.remind)
    return t


def rollback(services):
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="Sharpe collapsed",
                                              requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    return services.engine.execute(inc.id)


def test_what_an_incident_gets_and_when_it_is_due(services, world, clock):
    inc = rollback(services)
    plan = {kind: due - inc.created_at for kind, _, due in plan_for(inc)}
    assert plan == {"root_cause": timedelta(hours=2), "monitoring": timedelta(hours=24),
                    "retrain": timedelta(days=3), "checklist": timedelta(days=7), "prevention": timedelta(days=7)}
    failed = dataclasses.replace(inc, state="failed")
    assert "monitoring" not in {kind for kind, _, _ in plan_for(failed)}
    titles = {kind: title for kind, title, _ in plan_for(inc)}
    assert MODEL in titles["root_cause"] and inc.target_backup in titles["monitoring"]


def test_queued_with_the_state_change_and_created_once(settings, db, world, conn):
    from bot.compose import build_services

    # a process that cannot tell anybody (the break-glass CLI): the job is queued in the state change's transaction
    cli = build_services(settings, db)
    cli.engine.clock = Clock(incidents.utcnow().replace(microsecond=0) + timedelta(minutes=15))
    inc = rollback(cli)
    assert inc.state == "monitoring"
    queued = conn.execute("SELECT done_at FROM rollback_bot.jobs WHERE dedupe_key = %s",
                          (f"followups:{inc.id}",)).fetchall()
    assert len(queued) == 1 and queued[0]["done_at"] is None and not cli.followups.items(inc.id)
    assert cli.worker.run_due() >= 0 and not cli.followups.items(inc.id)  # nobody here handles it
    # a bot process that can (serve's work process) creates them and shows them, once
    served = build_services(settings, db)
    served.engine.clock = cli.engine.clock
    t = Told()
    served.followups.register(served.worker, on_board=t.board, on_reminder=t.remind)
    served.worker.run_due()
    items = served.followups.items(inc.id)
    assert [i.kind for i in items] == ["root_cause", "monitoring", "retrain", "checklist", "prevention"]
    assert t.boards == [inc.id]
    assert served.followups.create(inc.id) == items  # idempotent: nothing new, no second journal entry
    assert len([s for s in served.engine.steps(inc.id) if s.step == "followups"]) == 1
    due_jobs = conn.execute("SELECT count(*) AS n FROM rollback_bot.jobs WHERE kind = 'followup_due'"
                            " AND incident_id = %s AND done_at IS NULL", (inc.id,)).fetchone()["n"]
    assert due_jobs == 5
    served.engine.resolve(incident_id=inc.id)  # a later state queues nothing new
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.jobs WHERE kind = 'followups'").fetchone()["n"] == 1
    assert conn.execute("SELECT version FROM rollback_bot.schema_migrations WHERE version = 9").fetchone()


def test_assigning_and_completing_need_the_right_person_and_the_facts(services, world, clock, conn, told):
    inc = rollback(services)
    services.worker.run_due()
    f = services.followups
    by_kind = {i.kind: i for i in f.items(inc.id)}
    root, retrain, prevention = by_kind["root_cause"], by_kind["retrain"], by_kind["prevention"]

    with pytest.raises(NotAuthorized):  # not an operator, not one of the incident's people
        f.assign(followup_id=retrain.id, owner="U0DAVE", by="U0DAVE", operator=False)
    with pytest.raises(InvalidTransition):
        f.assign(followup_id=retrain.id, owner="  ", by="U0ALICE", operator=False)
    with pytest.raises(UnknownFollowUp):
        f.assign(followup_id=99999, owner="U0DAVE", by="U0ALICE", operator=True)
    assert f.get(retrain.id).owner is None
    # the requester is one of the incident's people even without being an operator
    item = f.assign(followup_id=retrain.id, owner="U0DAVE", by="U0ALICE", operator=False)
    assert item.owner == "U0DAVE" and item.assigned_by == "U0ALICE" and item.assigned_at == clock.now
    with pytest.raises(Conflict):
        f.assign(followup_id=retrain.id, owner="U0DAVE", by="U0ALICE", operator=False)
    # an owner may act on the incident's follow-ups
    clock.advance(minutes=10)
    done = f.complete(followup_id=retrain.id, by="U0DAVE", operator=False)
    assert done.state == "done" and done.completed_at == clock.now
    with pytest.raises(Conflict):
        f.complete(followup_id=retrain.id, by="U0DAVE", operator=False)
    with pytest.raises(Conflict):
        f.assign(followup_id=retrain.id, owner="U0CAROL", by="U0CAROL", operator=True)

    # checklist 9: assigning the investigation initiates the analysis; 10: a measure written
    steps = services.engine.steps(inc.id)
    assert not checklist(services.engine.get(inc.id), steps)[8].done
    with pytest.raises(InvalidTransition):
        f.complete(followup_id=root.id, by="U0CAROL", operator=True)  # no root cause recorded yet
    f.assign(followup_id=root.id, owner="U0CAROL", by="U0CAROL", operator=True)
    items = checklist(services.engine.get(inc.id), services.engine.steps(inc.id))
    assert items[8].key == "root_cause" and items[8].done and items[8].note == "investigation assigned"
    assert not items[9].done
    with pytest.raises(InvalidTransition):
        f.complete(followup_id=prevention.id, by="U0CAROL", operator=True)
    with pytest.raises(InvalidTransition):
        f.add_prevention(incident_id=inc.id, text=" \n ", by="U0CAROL", operator=True)
    with pytest.raises(NotAuthorized):
        f.add_prevention(incident_id=inc.id, text="x", by="U0ERIN", operator=False)
    f.add_prevention(incident_id=inc.id, text="Page on live IC below half of metadata.", by="U0CAROL", operator=True)
    assert f.complete(followup_id=prevention.id, by="U0CAROL", operator=True).state == "done"
    with services.db.transaction() as c:
        add_root_cause(c, incident_id=inc.id, text="The price feed changed units.", by="U0CAROL", at=clock())
    assert f.complete(followup_id=root.id, by="U0CAROL", operator=True).state == "done"
    items = checklist(services.engine.get(inc.id), services.engine.steps(inc.id))
    assert items[8].done and items[8].note == "root cause recorded"
    assert items[9].done and items[9].note == "1 measure(s) in the Prevention section"
    refused = conn.execute("SELECT action, count(*) AS n FROM rollback_bot.audit_log WHERE outcome = 'refused'"
                           " GROUP BY action ORDER BY action").fetchall()
    assert {r["action"]: r["n"] for r in refused} == {"followup_assign": 3, "followup_done": 3, "prevention": 2}

    # the report: Prevention and Follow-ups sections
    md = render_report(incident=services.engine.get(inc.id), steps=services.engine.steps(inc.id),
                       diagnostics_summary=None, now=clock.advance(hours=25, minutes=40), followups=f.items(inc.id),
                       prevention=f.prevention(inc.id))
    assert "## Prevention\n\n- Page on live IC below half of metadata. (U0CAROL," in md
    table = md[md.index("## Follow-ups\n"):md.index("## Prevention and next steps")]
    assert "| Enhanced monitoring of" in table and "| unassigned |" in table and "overdue by 1 h 50 min" in table
    assert table.count("done by U0CAROL") == 2 and "done by U0DAVE" in table


def test_a_report_without_follow_ups_says_so(services, world, clock):
    inc = services.engine.halt_trading(user="U0ALICE", reason="suspicious fills")
    md = render_report(incident=inc, steps=services.engine.steps(inc.id), diagnostics_summary=None, now=clock())
    assert "## Follow-ups\n\nNone.\n" in md
    assert "## Prevention\n\nNo prevention measure written yet" in md
    assert "- [ ] 10. Prevention measures identified (none written into the Prevention section yet)" in md


def test_a_follow_up_owner_is_one_of_the_incidents_people(services, world, clock, told):
    inc = rollback(services)
    services.worker.run_due()
    root = next(i for i in services.followups.items(inc.id) if i.kind == "root_cause")
    with pytest.raises(NotAuthorized):  # neither an approver nor one of the incident's people
        services.set_root_cause(incident_id=inc.id, text="units changed", user="U0DAVE", is_approver=False)
    services.followups.assign(followup_id=root.id, owner="U0DAVE", by="U0BOB", operator=True)
    assert services.followups.owns(incident_id=inc.id, user="U0DAVE")
    services.set_root_cause(incident_id=inc.id, text="The price feed changed units.", user="U0DAVE",
                            is_approver=False)
    assert services.followups.complete(followup_id=root.id, by="U0DAVE", operator=False).state == "done"
    assert services.engine.get(inc.id).root_cause == "The price feed changed units."
