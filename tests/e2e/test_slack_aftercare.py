"""Issue 5 in Slack: the report uploaded to the thread, stakeholders told at every milestone (thread, DMs,
e-mail), escalation pages, monitoring, /rollback report and /rollback status MODEL."""

from __future__ import annotations

import json
from datetime import timedelta

from pydantic import SecretStr

from bot.devtools.sandbox import Sandbox
from core import incidents
from bot.compose import build_services
from tests.helpers import submit_shown_modal, trading_halted
from tests.core.test_notify import Inbox, smtp  # noqa: F401 - the real SMTP server fixture
from tests.e2e.test_slack_flow import CHANNEL, MODEL, approve_and_run, click, request


def box_with(settings, db, standin, **extra):
    s = settings.model_copy(update={"slack_api_url": standin.base_url, "stakeholders": ["U0DAVE", "S0RISK"],
                                    "escalation_contacts": ["U0ERIN"], **extra})
    return Sandbox(build_services(s, db), standin=standin)


def test_stakeholders_report_monitoring_and_email(settings, db, standin, world, conn, smtp, tmp_path):  # noqa: F811
    inbox = Inbox()
    server = smtp(inbox)
    standin.add_user("U0ERIN", name="erin")
    with box_with(settings, db, standin, smtp_url=SecretStr(f"smtp://127.0.0.1:{server.port}"),
                  stakeholder_emails=["risk@example.com"]) as box:
        card = request(box)
        box.run_worker()
        thread = lambda: [m.text for m in standin.thread(CHANNEL, card.ts)]  # noqa: E731
        assert any("<@U0DAVE> <!subteam^S0RISK>" in t and "opened" in t for t in thread())
        dms = [c for c in standin.calls("chat.postMessage") if str(c.body.get("channel", "")).startswith("D")]
        assert dms and "example.slack.com" in dms[0].body["text"]  # the DM carries a permalink
        approve_and_run(box, card, runs=3)
        inc = box.services.engine.list_incidents()[0]
        assert inc.state == "monitoring"
        for needle in ("automated trading halted", "rolled back to", "trading resumed on"):
            assert any(needle in t and "<@U0DAVE>" in t for t in thread()), needle
        # the report is written and uploaded to the thread with a summary
        report = next((tmp_path / "incidents").glob(f"INC-{inc.id}-*.md"))
        assert "Impact" in report.read_text() and inc.target_backup in report.read_text()
        assert "| Requested by | Alice (@alice) (via slack) |" in report.read_text()  # names, not ids
        up = standin.wait_for("files.completeUploadExternal")[0]
        assert up.body.get("thread_ts") == card.ts and "Incident report" in up.body.get("initial_comment", "")
        assert any(u.content and b"Incident report" in u.content for u in standin.uploads())
        assert any(u.content and u.content.startswith(b"\x89PNG") for u in standin.uploads())
        # 30 minutes later: the monitoring summary, then resolved, the final report and an e-mail with it
        box.services.engine.clock = lambda: incidents.utcnow() + timedelta(minutes=31)
        for _ in range(4):
            box.run_worker()
        assert box.services.engine.get(inc.id).state == "resolved"
        assert any("Logs monitored" in t for t in thread())
        assert any("resolved" in t and "<@U0DAVE>" in t for t in thread())
        final_card = json.dumps(standin.message(CHANNEL, card.ts).blocks, ensure_ascii=False)
        assert "Logs monitored —" in final_card
        subjects = [m.get("Subject") for _, _, m in inbox.messages]
        assert any("resolved" in s for s in subjects), subjects
        resolved_mail = next(m for _, _, m in inbox.messages if "resolved" in m.get("Subject"))
        names = [part.get_filename() for part in resolved_mail.iter_attachments()]
        assert any(n.endswith(".md") for n in names) and any(n.endswith(".png") for n in names)
        steps = {s.step: s.outcome for s in box.services.engine.steps(inc.id)}
        assert steps["notify"] in ("ok",) and steps["report"] == "ok" and steps["monitor"] in ("ok", "warning")


def test_failed_notifications_are_reported_and_never_stop_the_rollback(settings, db, standin, world, conn):
    with box_with(settings, db, standin) as box:
        card = request(box)
        standin.fail_next("conversations.open", error="user_not_found", times=50)
        approve_and_run(box, card, runs=3)
        assert box.services.engine.list_incidents()[0].state == "monitoring"
        texts = [m.text for m in standin.thread(CHANNEL, card.ts)]
        assert any("Some stakeholder notifications failed" in t and "user_not_found" in t for t in texts)
        failed = conn.execute("SELECT count(*) AS n FROM rollback_bot.steps WHERE step = 'notify'"
                              " AND outcome = 'failed'").fetchone()["n"]
        assert failed >= 1


def test_loss_over_threshold_pages_at_once_and_age_escalation_survives_a_restart(settings, db, standin, world, conn):
    standin.add_user("U0ERIN", name="erin")
    with box_with(settings, db, standin, loss_escalation_threshold=100_000) as box:
        target = box.services.registry.recommend(MODEL).backup.name
        reply = box.command("U0ALICE", f"start {MODEL} {target} losing money --confirm")
        box.responses(reply.response_key)
        inc = box.services.engine.list_incidents()[0]
        assert inc.estimated_loss is None
        box.run_worker()
        assert not [c for c in standin.calls("chat.postMessage") if "Escalation" in c.body.get("text", "")]
        # a loss estimate over LOSS_ESCALATION_THRESHOLD pages at once
        big, _ = box.services.engine.request_rollback(model="value_small", backup=box.services.registry.recommend(
            "value_small").backup.name, reason="big loss", requested_by="U0CAROL", estimated_loss=250_000)
        box.app.progress.post_card(big)
        box.run_worker()
        box.run_worker()
        pages = [c for c in standin.calls("chat.postMessage") if "Escalation" in c.body.get("text", "")]
        assert pages and all("INC-2" in c.body["text"] for c in pages) and "loss" in pages[0].body["text"]
        standin.clear()
    # a second process (a restart) with the clock past ESCALATE_AFTER_MINUTES pages once
    with box_with(settings, db, standin) as box2:
        box2.services.engine.clock = lambda: incidents.utcnow() + timedelta(minutes=121)
        box2.run_worker()
        box2.run_worker()
        pages = [c for c in standin.calls("chat.postMessage") if "Escalation" in c.body.get("text", "")
                 and "INC-1" in c.body.get("text", "")]
        assert len(pages) == 2  # a DM to the contact and a thread mention
        assert any(str(c.body["channel"]).startswith("D") for c in pages)
        assert any(c.body.get("thread_ts") == inc.message_ts and "<@U0ERIN>" in c.body["text"] for c in pages)
        missed = [c for c in standin.calls("chat.postMessage") if "Runbook target missed" in c.body.get("text", "")]
        assert missed  # T+2 passed without a halt
    assert not trading_halted(conn)


def test_report_and_status_model_commands(sandbox, world, conn):
    card = request(sandbox)
    approve_and_run(sandbox, card, runs=3)
    sandbox.standin.clear()
    reply = sandbox.command("U0CAROL", "report INC-1")
    body = sandbox.responses(reply.response_key)[0]
    assert "posted again" in body["text"]
    sandbox.settle()
    up = sandbox.standin.wait_for("files.completeUploadExternal")[0]
    assert "(again)" in up.body.get("initial_comment", "")
    reply = sandbox.command("U0CAROL", "report nonsense")
    assert "Usage" in sandbox.responses(reply.response_key)[0]["text"]
    reply = sandbox.command("U0CAROL", f"status {MODEL}")
    sandbox.responses(reply.response_key)
    up = sandbox.standin.wait_for("files.completeUploadExternal", lambda c: "Performance of" in
                                  c.body.get("initial_comment", ""), timeout=15)[0]
    pngs = [u for u in sandbox.standin.uploads() if u.content and u.content.startswith(b"\x89PNG")]
    assert pngs


def test_add_root_cause_updates_the_report(sandbox, world, conn, tmp_path):
    card = request(sandbox)
    approve_and_run(sandbox, card, runs=3)
    final = sandbox.standin.message(CHANNEL, card.ts)
    click(sandbox, "U0ALICE", "add_root_cause", final)
    r = submit_shown_modal(sandbox, "U0ALICE", "root_cause_modal",
                           {"root_cause_block": {"text": "Momentum reversal in late Oct."}})
    assert r.status == 200 and not r.body
    sandbox.run_worker()
    report = next((tmp_path / "incidents").glob("INC-1-*.md")).read_text()
    assert "Momentum reversal in late Oct." in report
