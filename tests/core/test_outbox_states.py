"""Issue 15, item 1: EVERY state change writes its follow-ups through the outbox (core.repository.move), not only
the runbook's steps: approve, deny, request expiry, the resume override, ... A bare worker or CLI process (no Slack
app, no listeners at all) queues the report and the e-mail of a denial or an expiry exactly once, and a process
killed right after such a commit loses none of them. A page, an acknowledgement and a loss figure rewrite the
incident report too.

Real parts: a real PostgreSQL, a real SMTP server (aiosmtpd, as in tests/core/test_notify.py), a real bot process
killed with SIGKILL (tests/crash_child.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import outbox
from core.db import Database
from core.incidents import utcnow
from bot.compose import build_services
from core.services import Services
from core.settings import Settings
from tests.core.test_notify import Inbox, smtp  # noqa: F401 - the fixture
from tests.core.test_outbox import STAKEHOLDERS, _kill_child_at, _restarted, email_journal, the_rollback

MODEL = "growth_momentum_large"
FOLLOW_UPS = ("report", "notify_email")


class Clock:
    """The real time, moved forward by ``ahead``."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def __call__(self):
        return utcnow() + self.ahead


def bare_process(settings: Settings, smtp_url: str, clock: Clock) -> tuple[Services, Database]:
    """What `rollback-bot work` or the CLI builds: services, no Slack app; and not one listener on the engine."""
    s = Settings(_env_file=None, **{**settings.model_dump(), "smtp_url": smtp_url, "stakeholder_emails": STAKEHOLDERS})
    db = Database(s.database_dsn(), max_size=4).open()
    services = build_services(s, db, clock=clock)
    services.engine.listeners.clear()
    return services, db


def report_jobs(conn, incident_id: int) -> list[dict]:
    return conn.execute("SELECT dedupe_key, done_at FROM rollback_bot.jobs WHERE incident_id = %s AND kind = 'report'"
                        " ORDER BY id", (incident_id,)).fetchall()


def report_steps(conn, incident_id: int) -> int:
    return conn.execute("SELECT count(*) AS n FROM rollback_bot.steps WHERE incident_id = %s AND step = 'report'",
                        (incident_id,)).fetchone()["n"]


@pytest.mark.parametrize("decision", ["deny", "expire"])
def test_a_bare_process_queues_the_report_and_email_of_a_denial_or_an_expiry_once(settings, world, conn, smtp,
                                                                                   decision):  # noqa: F811
    inbox = Inbox()
    clock = Clock()
    services, db = bare_process(settings, f"smtp://127.0.0.1:{smtp(inbox).port}", clock)
    try:
        engine = services.engine
        inc, _ = engine.request_rollback(model=MODEL, backup=world.models[MODEL].backups[0].name,
                                         reason="IC collapsed", requested_by="U0ALICE")
        if decision == "deny":
            done = engine.deny(incident_id=inc.id, user="U0BOB", note="not this one")
            assert done.state == "denied"
        else:
            clock.ahead += timedelta(minutes=settings.approval_timeout_minutes + 1)
            assert [i.id for i in engine.expire_requests()] == [inc.id]
            assert engine.expire_requests() == []  # the worker's next tick finds nothing more
        assert outbox.deliver(services.worker, inc.id, FOLLOW_UPS) >= 3
        assert outbox.deliver(services.worker, inc.id, FOLLOW_UPS) == 0
    finally:
        db.close()
    closed = "denied" if decision == "deny" else "cancelled"
    assert the_rollback(conn)["state"] == closed
    # The report of the closed request: queued with the state change, once, written once.
    jobs = report_jobs(conn, inc.id)
    assert [j["dedupe_key"].split(":")[2] for j in jobs] == [closed] and jobs[0]["done_at"] is not None
    assert report_steps(conn, inc.id) == 1
    assert list(settings.incidents_dir.rglob("*.md")), "no incident report was written"
    # Each milestone's e-mail, once: the request opened, and closed.
    assert email_journal(conn, inc.id) == ["closed", "opened"]
    assert len(inbox.messages) == 2


@pytest.mark.parametrize("mode,label", [("deny", "decided:denied"), ("expire", "decided:expired")])
def test_a_process_killed_right_after_a_denial_or_expiry_commit_loses_no_follow_up(settings, world, conn, smtp,
                                                                                    mode, label):  # noqa: F811
    inbox = Inbox()
    smtp_url = f"smtp://127.0.0.1:{smtp(inbox).port}"
    _kill_child_at(settings, world, label, smtp_url, mode=mode)
    inc = the_rollback(conn)
    closed = "denied" if mode == "deny" else "cancelled"
    assert inc["state"] == closed
    assert inbox.messages == []  # the killed process delivered nothing: its follow-ups are all still queued
    queued = {r["dedupe_key"] for r in conn.execute(
        "SELECT dedupe_key FROM rollback_bot.jobs WHERE incident_id = %s", (inc["id"],))}
    assert f"notify-email:{inc['id']}:closed" in queued
    assert any(k.startswith(f"report:{inc['id']}:{closed}:") for k in queued), queued

    writes: list = []
    for _ in range(2):  # two other processes, one after the other
        services, db, seen = _restarted(settings, smtp_url)
        try:
            services.worker.run_due()
        finally:
            db.close()
        writes += seen
    assert writes == [closed]
    assert email_journal(conn, inc["id"]) == ["closed", "opened"]
    assert len(inbox.messages) == 2


def test_a_page_an_acknowledgement_and_a_loss_figure_rewrite_the_report(settings, world, conn):
    """The demo's second incident: the report showed neither the page nor who acknowledged it."""
    clock = Clock()
    s = Settings(_env_file=None, **{**settings.model_dump(), "escalate_after_minutes": 60})
    db = Database(s.database_dsn(), max_size=4).open()
    try:
        services = build_services(s, db, clock=clock)
        services.engine.listeners.clear()
        paged: list = []
        services.register_aftercare(on_page=lambda inc, reason: paged.append(reason), on_breach=lambda *a: None,
                                    on_trouble=lambda *a: None, on_summary=lambda *a: None,
                                    on_email_failed=lambda *a: None)
        inc = services.engine.halt_trading(user="U0ALICE", reason="desk saw bad fills")  # a report state
        services.worker.run_due()
        path = next(settings.incidents_dir.rglob("*.md"))
        assert "Escalated" not in path.read_text()

        clock.ahead += timedelta(minutes=61)  # nobody closed it: the age escalation pages
        services.worker.run_due()
        services.worker.run_due()
        assert paged, "the age escalation did not page"
        assert "Escalated" in path.read_text(), "the page is not in the report"

        services.paging.acknowledge(incident_id=inc.id, user="U0CAROL", allowed=True)
        services.worker.run_due()
        assert "Page acknowledged" in path.read_text(), "the acknowledgement is not in the report"

        services.loss.record(incident_id=inc.id, amount=125000, by="U0CAROL", source="slack")
        services.worker.run_due()
        assert "125,000" in path.read_text(), "the loss figure is not in the report"
    finally:
        db.close()
    keys = [j["dedupe_key"] for j in report_jobs(conn, inc.id)]
    assert any(k.endswith(":acknowledge") for k in keys) and any(":paged:" in k for k in keys), keys
    assert all(j["done_at"] is not None for j in report_jobs(conn, inc.id))
