"""One approval path (core/approval.py) for rollback requests and quick fixes, against a real PostgreSQL: the
same rules and words, and every move checked against the incident kind's own table (core/incidents.py)."""

from __future__ import annotations

import pytest

from core import fixes, incidents
from core import repository as repo
from core.errors import Conflict, InvalidTransition, NotAuthorized

MODEL = "growth_momentum_large"


def _audit(conn, incident_id: int) -> list[tuple[str, str]]:
    return [(r["actor"], r["outcome"]) for r in conn.execute(
        "SELECT actor, outcome FROM rollback_bot.audit_log WHERE incident_id = %s AND action LIKE '%%approve'"
        " ORDER BY id", (incident_id,))]


def test_rollbacks_and_fixes_are_approved_by_the_same_rules(services, world, conn) -> None:
    engine = services.engine
    rollback, _ = engine.request_rollback(model=MODEL, backup=services.registry.recommend(MODEL).backup.name,
                                          reason="Sharpe collapsed", requested_by="U0ALICE")
    fix = fixes.request_fix(services.db, fix=fixes.REFRESH_VIEW, requested_by="U0ALICE")
    approvers = {
        rollback.id: lambda **kw: engine.approve(incident_id=rollback.id, **kw),
        fix.id: lambda **kw: fixes.approve_fix(services.db, incident_id=fix.id, enqueue_run=False, **kw),
    }
    for incident_id, approve in approvers.items():
        with pytest.raises(NotAuthorized, match="You cannot approve your own request"):
            approve(approver="U0ALICE")
        with pytest.raises(NotAuthorized, match="^Only approvers may approve"):
            approve(approver="U0DAVE", allowed=False)
        approved = approve(approver="U0BOB")
        assert approved.state == "approved" and approved.approved_by == approved.decided_by == "U0BOB"
        with pytest.raises(Conflict, match=rf"INC-{incident_id} is already approved \(by U0BOB\)"):
            approve(approver="U0CAROL")
        assert _audit(conn, incident_id) == [("U0ALICE", "refused"), ("U0DAVE", "refused"), ("U0BOB", "ok"),
                                             ("U0CAROL", "refused")]
    # the wrong kind is refused (and audited) by either door
    with pytest.raises(InvalidTransition, match="not a rollback request"):
        engine.approve(incident_id=fix.id, approver="U0BOB")
    with pytest.raises(fixes.UnknownFix, match="not a quick fix"):
        fixes.approve_fix(services.db, incident_id=rollback.id, approver="U0BOB")


def test_a_fix_moves_by_its_own_table_not_a_rollbacks(services, world, conn) -> None:
    """A fix is requested → approved → resolved | failed. Before core/approval.py its moves were checked against
    the rollback table, or not at all: a resolved fix could have been reopened as "needs attention"."""
    fix = fixes.request_fix(services.db, fix=fixes.REFRESH_VIEW, requested_by="U0ALICE")
    fixes.approve_fix(services.db, incident_id=fix.id, approver="U0BOB", enqueue_run=False)
    done = fixes.run_fix(services.db, incident_id=fix.id).incident
    assert done.state == "resolved"
    with services.db.transaction() as c, pytest.raises(InvalidTransition):
        repo.move(c, repo.get(c, fix.id, lock=True), incidents.NEEDS_ATTENTION, at=services.engine.clock(),
                  follow_ups=services.engine.write_follow_ups)
    assert services.engine.get(fix.id).state == "resolved"
    incidents.check_transition("approved", "failed", "fix")
    with pytest.raises(InvalidTransition):
        incidents.check_transition("approved", "halting", "fix")  # a fix never halts trading
    with pytest.raises(InvalidTransition):
        incidents.check_transition("requested", "approved", "no_such_kind")  # an unknown kind moves nowhere
