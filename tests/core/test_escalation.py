"""Issue 5: escalation timers persisted in PostgreSQL, driven by a controlled clock (no sleeps)."""

from __future__ import annotations

import dataclasses
import threading
from datetime import timedelta

import pytest

from core import incidents
from core.escalation import Escalator, age_escalation, check_target, immediate_reasons
from bot.compose import build_services
from core.services import Services
from tests.helpers import Clock, corrupt_after_restore

MODEL = "growth_momentum_large"


@pytest.fixture
def clock():
    c = Clock(incidents.utcnow().replace(microsecond=0))
    return c


class Pager:
    """Records who would have been paged (the Slack layer's part)."""

    def __init__(self, fail: int = 0):
        self.pages: list[tuple[int, str]] = []
        self.breaches: list = []
        self.fail = fail
        self.lock = threading.Lock()

    def page(self, incident, reason):
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise RuntimeError("Slack is down")
            self.pages.append((incident.id, reason))

    def breach(self, incident, breach):
        with self.lock:
            self.breaches.append((incident.id, breach.target, breach.message))


def bot(settings, db, clock, pager, *, minutes=120, threshold=None) -> Services:
    """One bot process: its own Services (engine, worker) and escalator, on the shared database."""
    settings = settings.model_copy(update={"escalate_after_minutes": minutes, "loss_escalation_threshold": threshold})
    services = build_services(settings, db, clock=clock)  # the timers are queued with each state (core.outbox)
    Escalator(services.engine, escalate_after_minutes=minutes, loss_threshold=threshold).register(
        services.worker, pager.page, pager.breach)
    return services


def kept_halted_rollback(services, **kw):
    """A rollback that stays open (verified, trading kept halted) with every runbook target met."""
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE",
                                              keep_halted=True, **kw)
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    done = services.engine.execute(inc.id)
    assert done.state == "verified"
    return done


def test_an_open_incident_pages_after_the_threshold_and_again_each_interval_while_open(settings, db, world, clock):
    pager = Pager()
    services = bot(settings, db, clock, pager)
    inc = kept_halted_rollback(services)
    clock.at(minutes=119, seconds=59)
    services.worker.run_due()
    assert pager.pages == [] and pager.breaches == []
    clock.at(minutes=120)
    services.worker.run_due()
    services.worker.run_due()
    assert pager.pages == [(inc.id, f"INC-{inc.id} is still open after 2 h 00 min (state verified)")]
    clock.at(minutes=239)
    services.worker.run_due()
    assert len(pager.pages) == 1, "once per interval"
    clock.at(minutes=400)  # the bot was down from T+4h: one page on its return, not one per missed round
    services.worker.run_due()
    services.worker.run_due()
    assert pager.pages[1:] == [(inc.id, f"INC-{inc.id} is still open after 6 h 40 min (state verified)")]
    clock.at(minutes=480)
    services.worker.run_due()
    assert len(pager.pages) == 3 and "after 8 h 00 min" in pager.pages[2][1]
    steps = [s for s in services.engine.steps(inc.id) if s.step == "escalate"]
    assert len(steps) == 3 and all("still open" in s.detail["reason"] for s in steps)
    with db.transaction() as conn:
        audit = conn.execute("SELECT * FROM rollback_bot.audit_log WHERE action = 'escalate' AND detail ? 'key'"
                             " ORDER BY id").fetchall()
    assert [(a["outcome"], a["incident_id"], a["detail"]["key"]) for a in audit] == [
        ("ok", inc.id, "age"), ("ok", inc.id, "age:2"), ("ok", inc.id, "age:4")]  # round 3 fell in the gap
    assert [b[1] for b in pager.breaches] == ["root_cause"], "T+2h passed without a root cause"
    services.engine.resume_trading(user="U0BOB")
    services.engine.resolve(incident_id=inc.id)
    clock.at(minutes=700)
    services.worker.run_due()
    assert len(pager.pages) == 3, "a closed incident is not paged"


def test_a_closed_incident_is_not_paged(settings, db, world, clock):
    pager = Pager()
    services = bot(settings, db, clock, pager, minutes=30)
    inc = kept_halted_rollback(services)
    services.engine.resume_trading(user="U0BOB")  # → monitoring
    clock.at(minutes=29)
    services.worker.run_due()
    services.engine.resolve(incident_id=inc.id)  # closed before the 30 minutes are up
    clock.at(minutes=31)
    services.worker.run_due()
    assert pager.pages == []


def test_the_timer_survives_a_restart(settings, db, world, clock):
    first = Pager()
    services = bot(settings, db, clock, first)
    inc = kept_halted_rollback(services)
    del services  # the process is gone; its timers are rows in the database
    second = Pager()
    restarted = bot(settings, db, clock, second)
    clock.at(minutes=121)
    restarted.worker.run_due()
    assert [p[0] for p in second.pages] == [inc.id] and first.pages == []


def test_two_bot_processes_page_once(settings, db, world, clock):
    pagers = [Pager(), Pager()]
    bots = [bot(settings, db, clock, p) for p in pagers]
    inc = kept_halted_rollback(bots[0])
    clock.at(minutes=125)
    barrier = threading.Barrier(2)

    def run(services):
        barrier.wait()
        services.worker.run_due()

    threads = [threading.Thread(target=run, args=(b,)) for b in bots]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(len(p.pages) for p in pagers) == [0, 1]
    # The job runs again (its worker died after paging and the lease ran out): nobody is paged twice.
    with db.transaction() as conn:
        conn.execute("UPDATE rollback_bot.jobs SET done_at = NULL, locked_until = NULL WHERE kind = 'escalate_age'")
    for b in bots:
        b.worker.run_due()
    assert sum(len(p.pages) for p in pagers) == 1
    assert [s.step for s in bots[1].engine.steps(inc.id)].count("escalate") == 1


def test_a_page_that_fails_is_retried(settings, db, world, clock):
    pager = Pager(fail=1)
    services = bot(settings, db, clock, pager)
    inc = kept_halted_rollback(services)
    clock.at(minutes=120)
    services.worker.run_due()
    assert pager.pages == []
    clock.at(minutes=121)  # the worker's back-off
    services.worker.run_due()
    assert [p[0] for p in pager.pages] == [inc.id]
    with db.transaction() as conn:
        outcomes = [r["outcome"] for r in conn.execute(
            "SELECT outcome FROM rollback_bot.audit_log WHERE action = 'escalate' AND detail ? 'key' ORDER BY id")]
    assert outcomes == ["failed", "ok"]  # (the T+2h root cause target is flagged beside it, audited apart)


def test_a_loss_over_the_threshold_escalates_at_once(settings, db, world, clock):
    pager = Pager()
    services = bot(settings, db, clock, pager, threshold=100_000)
    target = services.registry.recommend(MODEL).backup.name
    big, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE",
                                              estimated_loss=250_000)
    small, _ = services.engine.request_rollback(model="value_small", backup=services.registry.recommend(
        "value_small").backup.name, reason="r", requested_by="U0ALICE", estimated_loss=50_000)
    services.worker.run_due()  # no time has passed
    assert pager.pages == [(big.id, f"INC-{big.id}: the estimated loss of 250,000 exceeds the escalation threshold"
                                    " of 100,000")]
    assert small.id not in [p[0] for p in pager.pages]


def test_a_failed_rollback_escalates_at_once(settings, db, world, clock):
    pager = Pager()
    services = bot(settings, db, clock, pager)

    services.engine.fault = corrupt_after_restore(world.models_dir / MODEL)
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    assert services.engine.execute(inc.id).state == "failed"
    services.worker.run_due()
    (page,) = pager.pages
    assert page[0] == inc.id and "rollback of growth_momentum_large failed (Verification failed" in page[1]
    assert "trading stays halted" in page[1]


def test_runbook_targets_breached_once_each_and_met_ones_not_at_all(settings, db, world, clock):
    pager = Pager()
    services = bot(settings, db, clock, pager)
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    clock.at(minutes=2)
    services.worker.run_due()  # T+2: still waiting for approval → the halt target is breached, as it happens
    assert [(b[1]) for b in pager.breaches] == ["halted"]
    assert "runbook target T+2 (automated trading halted) missed: not done after 2 min 00 s (state requested)" in \
        pager.breaches[0][2]
    clock.at(minutes=3)
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    assert services.engine.execute(inc.id).state == "monitoring"  # everything else at T+3
    clock.at(minutes=11)
    services.worker.run_due()
    services.worker.run_due()
    assert [b[1] for b in pager.breaches] == ["halted"]
    assert [s.step for s in services.engine.steps(inc.id)].count("target_missed") == 1


def test_every_target_breached_when_nothing_happens(settings, db, world, clock):
    pager = Pager()
    services = bot(settings, db, clock, pager)
    inc = kept_halted_rollback(services)
    # the same incident, seen as if it had stalled before the halt: the pure decision
    stalled = dataclasses.replace(inc, state="approved", halted_at=None, keep_halted=False)
    now = clock.at(minutes=10)
    found = [check_target(stalled, [], name, now) for name in ("halted", "rolled_back", "verified", "resumed")]
    assert [b.target for b in found] == ["halted", "rolled_back", "verified", "resumed"]
    assert check_target(stalled, [], "resumed", clock.at(minutes=9)) is None, "not due yet"
    steps = services.engine.steps(inc.id)
    assert [check_target(inc, steps, n, now) for n in ("halted", "rolled_back", "verified", "resumed")] == [None] * 4


def test_pure_decisions(world, services, clock):
    inc = kept_halted_rollback(services)
    assert immediate_reasons(inc, loss_threshold=None) == []
    assert immediate_reasons(dataclasses.replace(inc, estimated_loss=10.0), loss_threshold=10.0) == []
    assert len(immediate_reasons(dataclasses.replace(inc, estimated_loss=10.5), loss_threshold=10.0)) == 1
    failed = dataclasses.replace(inc, state="failed", error="boom")
    assert "failed (boom)" in immediate_reasons(failed, loss_threshold=None)[0]
    assert age_escalation(inc, inc.created_at + timedelta(minutes=59), 60) is None
    assert "still open after 1 h 00 min" in age_escalation(inc, inc.created_at + timedelta(minutes=60), 60)
    assert age_escalation(failed, inc.created_at + timedelta(minutes=600), 60) is None


def test_a_process_without_the_escalator_still_queues_the_timers(settings, db, world, clock):
    """The timers are written with the state changes (core.outbox), not by a listener: another process's
    escalator fires them, with no sweep."""
    plain = build_services(settings, db, clock=clock)  # a process without the escalator (the CLI, a dead process)
    inc = kept_halted_rollback(plain)
    pager = Pager()
    services = bot(settings, db, clock, pager)
    clock.at(minutes=130)
    services.worker.run_due()
    assert [p[0] for p in pager.pages] == [inc.id]
