"""Issue 5: e-mail notifications through a real local SMTP server (aiosmtpd), retries, and the mailer job."""

from __future__ import annotations

import email
import threading
from email import policy

import pytest
from aiosmtpd.controller import Controller
from tenacity import wait_none

from core import incidents
from core.charts import chart_maker
from core.errors import ConfigError
from core.notify import (
    EmailNotifier,
    Mailer,
    NotificationFailed,
    fresh_report,
    milestone_of,
    notice,
    parse_smtp_url,
)
from core.outbox import email_job
from core.report import Reports

MODEL = "growth_momentum_large"


class Inbox:
    """An aiosmtpd handler that keeps what it receives and can refuse the first N messages."""

    def __init__(self, refuse: int = 0, reply: str = "421 4.3.0 Try again later") -> None:
        self.refuse = refuse
        self.reply = reply
        self.calls = 0
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.calls += 1
            if self.refuse:
                self.refuse -= 1
                return self.reply
            msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"


class PortZeroController(Controller):
    """aiosmtpd's threaded controller on a free port chosen by the OS."""

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@pytest.fixture
def smtp():
    def start(handler: Inbox) -> PortZeroController:
        c = PortZeroController(handler, hostname="127.0.0.1", port=0)
        c.start()
        started.append(c)
        return c

    started: list[PortZeroController] = []
    yield start
    for c in started:
        c.stop()


def dead_port() -> int:
    """A port where an SMTP server was listening a moment ago (connections are now refused)."""
    c = PortZeroController(Inbox(), hostname="127.0.0.1", port=0)
    c.start()
    port = c.port
    c.stop()
    return port


def notifier(port: int, **kw) -> EmailNotifier:
    return EmailNotifier(f"smtp://127.0.0.1:{port}", "rollback-bot@example.com",
                         ["risk@example.com", "cto@example.com"], wait=wait_none(), timeout=5, **kw)


def test_parse_smtp_urls_and_keep_the_password_out_of_sight():
    t = parse_smtp_url("smtp+starttls://bot%40corp:s3cr%2Ft@mail.example.com")
    assert (t.scheme, t.host, t.port, t.username, t.password) == ("smtp+starttls", "mail.example.com", 587,
                                                                  "bot@corp", "s3cr/t")
    assert parse_smtp_url("smtps://mail.example.com").port == 465
    assert parse_smtp_url("smtp://127.0.0.1:2525").port == 2525
    n = EmailNotifier("smtp://u:hunter2@127.0.0.1:1", "a@b", ["c@d"])
    assert "hunter2" not in repr(n)
    for bad in ("http://mail.example.com", "smtp://:pw@", "smtp://host:notaport"):
        with pytest.raises(ConfigError) as exc:
            parse_smtp_url(bad)
        assert "pw" not in str(exc.value)


def test_message_with_attachment_is_delivered(smtp):
    inbox = Inbox()
    server = smtp(inbox)
    report = "# Incident report INC-1\n\nRollback done. é\n".encode()
    delivery = notifier(server.port).send("INC-1 resolved", "The report is attached.\n",
                                          [("INC-1-model-20260101.md", report, "text/markdown"),
                                           ("INC-1.png", b"\x89PNG\r\n\x1a\nxx", "image/png")])
    assert delivery.attempts == 1 and delivery.refused == {}
    (sender, rcpts, msg), = inbox.messages
    assert sender == "rollback-bot@example.com" and rcpts == ["risk@example.com", "cto@example.com"]
    assert msg["Subject"] == "INC-1 resolved" and "risk@example.com" in msg["To"]
    assert msg.get_body(preferencelist=("plain",)).get_content().strip() == "The report is attached."
    files = {p.get_filename(): p for p in msg.iter_attachments()}
    assert files["INC-1-model-20260101.md"].get_content_type() == "text/markdown"
    assert files["INC-1-model-20260101.md"].get_payload(decode=True) == report
    assert files["INC-1.png"].get_payload(decode=True) == b"\x89PNG\r\n\x1a\nxx"


def test_a_transient_refusal_is_retried_and_delivered(smtp):
    inbox = Inbox(refuse=1)
    server = smtp(inbox)
    delivery = notifier(server.port).send("s", "b")
    assert inbox.calls == 2 and len(inbox.messages) == 1 and delivery.attempts == 2


def test_a_server_that_keeps_refusing_fails_after_the_attempts(smtp):
    inbox = Inbox(refuse=10)
    server = smtp(inbox)
    with pytest.raises(NotificationFailed, match="after 3 attempt"):
        notifier(server.port).send("s", "b")
    assert inbox.calls == 3 and inbox.messages == []


def test_a_permanent_refusal_is_not_retried(smtp):
    inbox = Inbox(refuse=10, reply="554 5.7.1 Rejected")
    server = smtp(inbox)
    with pytest.raises(NotificationFailed, match="554"):
        notifier(server.port, attempts=5).send("s", "b")
    assert inbox.calls == 1


def test_server_down_raises_notification_failed():
    port = dead_port()
    with pytest.raises(NotificationFailed, match=r"failed after 4 attempt\(s\): ConnectionRefusedError"):
        notifier(port, attempts=4).send("s", "b")


def test_server_down_with_password_never_shows_it(smtp):
    n = EmailNotifier("smtp://user:hunter2@127.0.0.1:1", "a@b.c", ["c@d.e"], wait=wait_none(), attempts=2)
    with pytest.raises(NotificationFailed) as exc:
        n.send("s", "b")
    assert "hunter2" not in str(exc.value) and "127.0.0.1:1" in str(exc.value)


# ------------------------------------------------------------------------------------------------ mailer


def run_rollback(services):
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="IC negative", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    return services.engine.execute(inc.id)


def test_milestones_are_mailed_from_the_worker_and_the_report_goes_at_the_end(services, settings, world, smtp):
    inbox = Inbox()
    server = smtp(inbox)
    reports = Reports(services.engine, settings.incidents_dir, chart=chart_maker(services.db, services.registry))
    mailer = Mailer(services.engine, notifier(server.port), attachments=fresh_report(reports))
    failures = []
    mailer.register(services.worker, on_failed=lambda *a: failures.append(a))
    services.engine.follow_ups.append(email_job)  # as core.outbox.install does with SMTP_URL set
    inc = run_rollback(services)
    assert inc.state == "monitoring"
    assert inbox.messages == [], "nothing is sent from inside the rollback"
    services.worker.run_due()
    subjects = [m["Subject"] for _, _, m in inbox.messages]
    assert subjects == [f"INC-{inc.id} opened: rollback of {MODEL} requested by U0ALICE",
                        f"INC-{inc.id}: automated trading halted for the rollback of {MODEL}",
                        f"INC-{inc.id}: {MODEL} rolled back to {inc.target_backup}",
                        f"INC-{inc.id}: trading resumed on {inc.target_backup}, monitoring under way"]
    assert all(not list(m.iter_attachments()) for _, _, m in inbox.messages)
    services.engine.resolve(incident_id=inc.id)
    services.worker.run_due()
    last = inbox.messages[-1][2]
    assert last["Subject"] == f"INC-{inc.id} resolved: rollback of {MODEL}"
    report, chart = list(last.iter_attachments())
    assert report.get_filename().startswith(f"INC-{inc.id}-{MODEL}-") and report.get_filename().endswith(".md")
    assert b"| State | resolved |" in report.get_payload(decode=True), "the report is brought up to date first"
    assert chart.get_content_type() == "image/png" and chart.get_payload(decode=True).startswith(b"\x89PNG")
    notify = [s for s in services.engine.steps(inc.id) if s.step == "notify"]
    assert [s.detail["milestone"] for s in notify] == ["opened", "halted", "rolled_back", "resumed", "resolved"]
    assert [s.step for s in services.engine.steps(inc.id)].count("report") == 1
    assert {s.outcome for s in notify} == {"ok"} and failures == []
    services.worker.run_due()
    assert len(inbox.messages) == 5, "each milestone is mailed once"


def test_a_failed_email_is_reported_and_never_fails_the_rollback(services, settings, world):
    port = dead_port()
    mailer = Mailer(services.engine, notifier(port), incidents_dir=settings.incidents_dir)
    failures = []
    mailer.register(services.worker, on_failed=lambda inc, milestone, exc: failures.append((milestone, str(exc))))
    services.engine.follow_ups.append(email_job)  # as core.outbox.install does with SMTP_URL set
    inc = run_rollback(services)
    assert inc.state == "monitoring"
    services.worker.run_due()
    assert [m for m, _ in failures] == ["opened", "halted", "rolled_back", "resumed"]
    assert all("failed after 3 attempt(s)" in text for _, text in failures)
    notify = [s for s in services.engine.steps(inc.id) if s.step == "notify"]
    assert len(notify) == 4 and {s.outcome for s in notify} == {"failed"}
    with services.db.transaction() as conn:
        jobs = conn.execute("SELECT done_at, last_error FROM rollback_bot.jobs WHERE kind = 'notify_email'").fetchall()
    assert len(jobs) == 4 and all(j["done_at"] is not None and j["last_error"] is None for j in jobs)


def test_milestones_of_engine_events(services, world):
    inc = run_rollback(services)
    seen = []
    for state in ("requested", "approved", "halting", "halted", "backing_up", "verifying", "monitoring", "failed",
                  "resolved", "denied"):
        seen.append(milestone_of(incidents.Event("state", incidents.Incident(**{**inc.__dict__, "state": state}))))
    assert seen == ["opened", None, None, "halted", None, "rolled_back", "resumed", "failed", "resolved", "closed"]
    assert milestone_of(incidents.Event("step", inc, "record")) is None
    text = notice(inc, "resolved")
    assert "The incident report is attached." in text.text and "IC negative" in text.text


@pytest.mark.parametrize("state", ["requested", "halted", "verifying", "monitoring", "failed", "revert_failed",
                                   "resolved", "cancelled", "needs_attention"])
def test_slack_and_e_mail_say_each_milestone_in_the_same_words(services, world, state):
    """One text per milestone (core.milestones.HEADLINES): Slack's stakeholder message is the e-mail's subject in
    Slack's markup."""
    import dataclasses
    import re

    from handlers.notifications import milestone_text

    inc = dataclasses.replace(run_rollback(services), state=state, error="verification failed: checksum")
    milestone = milestone_of(incidents.Event("state", inc))
    assert milestone is not None
    slack = milestone_text(inc, milestone)
    plain = re.sub(r"^:[a-z_]+: ", "", slack).replace("*", "").replace("`", "").replace("<@U0ALICE>", "U0ALICE")
    subject = notice(inc, milestone).subject
    assert plain.startswith(subject + "."), (plain, subject)
    if state == "revert_failed":
        assert "production files are mixed" in subject and "Error: verification failed" in slack
