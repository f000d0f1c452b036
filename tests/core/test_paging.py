"""core.paging with the Slack layer: primary contacts (user groups expanded) first, the emergency contacts when
nobody presses *Acknowledge* within ESCALATION_ACK_MINUTES, PagerDuty alongside (trigger, acknowledge, resolve with
one dedup key per incident). Signed Slack requests, the Slack and PagerDuty stand-ins, the real PostgreSQL; time
is the engine's clock, never a sleep."""

from __future__ import annotations

import json
import threading

import pytest
from pydantic import SecretStr

from bot.devtools.pagerduty_standin import PagerDutyStandIn
from bot.devtools.sandbox import Sandbox
from core import incidents
from bot.compose import build_services
from tests.helpers import Clock, whispered
from tests.e2e.test_slack_flow import CHANNEL, MODEL, card_message

KEY = "P" * 32


@pytest.fixture
def pd():
    with PagerDutyStandIn(routing_key=KEY) as standin:
        yield standin


@pytest.fixture
def clock():
    return Clock(incidents.utcnow().replace(microsecond=0))


@pytest.fixture
def people(standin):
    for uid, name in [("U0ERIN", "erin"), ("U0FRANK", "frank"), ("U0GRACE", "grace")]:
        standin.add_user(uid, name=name, real_name=name.title())
    standin.usergroups["S0ONCALL"] = ["U0ERIN", "U0FRANK"]
    return standin


def paging_settings(settings, standin, pd, **extra):
    return settings.model_copy(update={
        "slack_api_url": standin.base_url, "primary_contacts": ["S0ONCALL"], "emergency_contacts": ["U0GRACE"],
        "escalation_ack_minutes": 10, "escalate_after_minutes": 30, "pagerduty_routing_key": SecretStr(KEY),
        "pagerduty_events_url": pd.url, "pagerduty_backoff_seconds": 0.01, **extra})


def box(settings, db, standin, pd, clock, **extra) -> Sandbox:
    return Sandbox(build_services(paging_settings(settings, standin, pd, **extra), db, clock=clock), standin=standin)


def dm_pages(standin, user, needle="Escalation"):
    dm = standin.dm_channel(user)
    return [m for m in standin.messages(dm) if needle in m.text]


def buttons(message) -> list[str]:
    return [e["action_id"] for b in message.blocks if b["type"] == "actions" for e in b["elements"]]


def press(b: Sandbox, user: str, message, channel: str):
    r = b.sender.block_action(user_id=user, action_id="page_acknowledge", channel_id=channel, message_ts=message.ts,
                              message=message.as_slack())
    assert r.status == 200
    return r


def page_row(conn, incident_id):
    return conn.execute("SELECT * FROM rollback_bot.pages WHERE incident_id = %s", (incident_id,)).fetchone()


def losing_half_a_million(b: Sandbox):
    """Alice requests a rollback of MODEL and puts its loss at 500k (the incident, as requested)."""
    target = b.services.registry.recommend(MODEL).backup.name
    b.responses(b.command("U0ALICE", f"start {MODEL} {target} losing money --confirm").response_key)
    inc = b.services.engine.list_incidents()[0]
    b.responses(b.command("U0ALICE", f"loss {inc.ref} 500k").response_key)
    return inc


def halt(b: Sandbox):
    reply = b.command("U0ALICE", "halt fat-finger orders from the momentum book")
    b.responses(reply.response_key)
    b.settle()
    return b.services.engine.list_incidents()[0]


def test_primary_then_emergency_when_nobody_acknowledges(settings, db, people, pd, clock, world, conn):
    standin = people
    with box(settings, db, standin, pd, clock) as b:
        inc = halt(b)
        clock.at(minutes=29)
        b.run_worker()
        assert pd.events() == [] and not dm_pages(standin, "U0ERIN")
        # T+30: the primary contacts, the group S0ONCALL expanded to its members, and PagerDuty
        clock.at(minutes=30)
        b.run_worker()
        assert standin.calls("usergroups.users.list")
        for user in ("U0ERIN", "U0FRANK"):
            (dm,) = dm_pages(standin, user)
            assert f"Escalation* of {inc.ref}" in dm.text and "page_acknowledge" in buttons(dm)
        assert not dm_pages(standin, "U0GRACE")
        mention = next(m for m in standin.thread(CHANNEL, inc.message_ts) if "Escalation" in m.text)
        assert "<!subteam^S0ONCALL>" in mention.text and "page_acknowledge" in buttons(mention)
        (trigger,) = pd.events("trigger")
        assert trigger["dedup_key"].startswith(f"rollback-bot/{inc.ref}/")
        assert trigger["payload"]["summary"].startswith(f"{inc.ref} is still open after 30 min")
        assert trigger["payload"]["custom_details"]["incident"] == inc.ref
        row = page_row(conn, inc.id)
        assert row["pagerduty_sent"] == "trigger" and row["acknowledged_at"] is None
        assert row["emergency_due_at"] == clock.at(minutes=40)
        card = json.dumps(card_message(b).blocks)
        assert "not acknowledged yet" in card and "page_acknowledge" in card
        # not yet at T+39: nobody else is woken
        clock.at(minutes=39, seconds=59)
        b.run_worker()
        assert not dm_pages(standin, "U0GRACE", "Emergency")
        # T+40, nobody pressed Acknowledge: the emergency contacts
        clock.at(minutes=40)
        b.run_worker()
        (emergency,) = dm_pages(standin, "U0GRACE", "Emergency escalation")
        assert "nobody acknowledged the page within 10 minutes" in emergency.text
        assert any("<@U0GRACE>" in m.text and "Emergency escalation" in m.text
                   for m in standin.thread(CHANNEL, inc.message_ts))
        assert len(dm_pages(standin, "U0ERIN")) == 1, "the primary contacts are not paged again"
        clock.at(minutes=60)
        b.run_worker()
        assert len(dm_pages(standin, "U0GRACE", "Emergency")) == 1, "the emergency tier fires once"
        # Grace acknowledges in her DM: PagerDuty's alert is acknowledged, her message loses its button
        clock.at(minutes=61)
        dm = standin.dm_channel("U0GRACE")
        press(b, "U0GRACE", emergency, dm)
        standin.wait_for("chat.update", lambda c: c.body.get("channel") == dm)
        b.run_worker()
        assert "page_acknowledge" not in buttons(standin.message(dm, emergency.ts))
        assert "Acknowledged by <@U0GRACE>" in json.dumps(standin.message(dm, emergency.ts).blocks)
        assert pd.alerts[trigger["dedup_key"]] == "acknowledged"
        assert any("<@U0GRACE> acknowledged the page; the emergency contacts had been paged already" in m.text
                   for m in standin.thread(CHANNEL, inc.message_ts))
        row = page_row(conn, inc.id)
        assert row["acknowledged_by"] == "U0GRACE" and row["pagerduty_sent"] == "acknowledge"
        # trading resumes: the halt incident closes and PagerDuty's alert is resolved
        reply = b.command("U0BOB", "resume")
        b.responses(reply.response_key)
        # the page closed in the transaction that closed the incident (core.outbox), no listener or sweep needed
        assert page_row(conn, inc.id)["closed_at"] is not None
        b.run_worker()
        assert pd.alerts[trigger["dedup_key"]] == "resolved"
        assert [e["event_action"] for e in pd.events()] == ["trigger", "acknowledge", "resolve"]
        log = [(r["tier"], r["channel"], r["recipient"], r["ok"]) for r in conn.execute(
            "SELECT * FROM rollback_bot.page_log WHERE incident_id = %s ORDER BY id", (inc.id,))]
        assert ("primary", "slack", "U0ERIN", True) in log and ("primary", "slack", "U0FRANK", True) in log
        assert ("emergency", "slack", "U0GRACE", True) in log
        assert [x for x in log if x[1] == "pagerduty"] == [("primary", "pagerduty", "trigger", True),
                                                           ("emergency", "pagerduty", "acknowledge", True),
                                                           ("emergency", "pagerduty", "resolve", True)]
        steps = [(s.step, (s.detail or {}).get("tier")) for s in b.services.engine.steps(inc.id)]
        assert ("escalate", None) in steps and ("escalate", "emergency") in steps and ("acknowledge", None) in steps


def test_acknowledged_in_time_the_emergency_tier_never_fires(settings, db, people, pd, clock, world, conn):
    standin = people
    with box(settings, db, standin, pd, clock, loss_escalation_threshold=100_000) as b:
        inc = losing_half_a_million(b)
        b.run_worker()
        (trigger,) = pd.events("trigger")
        assert "estimated loss of 500,000 exceeds" in trigger["payload"]["summary"]
        assert trigger["payload"]["severity"] == "error"  # the incident's severity, high
        mention = next(m for m in standin.thread(CHANNEL, inc.message_ts) if "Escalation" in m.text)
        # Dave is neither a contact nor an operator: refused, nothing changes
        clock.at(minutes=3)
        press(b, "U0DAVE", mention, CHANNEL)
        [told] = whispered(standin, "U0DAVE", "Only the escalation contacts")
        assert told.via == "response_url"  # the click's response_url, not chat.postEphemeral
        assert page_row(conn, inc.id)["acknowledged_at"] is None
        # Erin presses Acknowledge on the thread message at T+5
        clock.at(minutes=5)
        press(b, "U0ERIN", mention, CHANNEL)
        standin.wait_for("chat.postMessage", lambda c: "acknowledged the page" in c.body.get("text", ""))
        b.run_worker()
        assert pd.alerts[trigger["dedup_key"]] == "acknowledged"
        row = page_row(conn, inc.id)
        assert row["acknowledged_by"] == "U0ERIN" and row["acknowledged_at"] == clock.at(minutes=5)
        assert "will not be paged" in standin.wait_for(
            "chat.postMessage", lambda c: "acknowledged the page" in c.body.get("text", ""))[0].body["text"]
        # Frank presses in his DM a minute later: told who was first
        clock.at(minutes=6)
        (frank_dm,) = dm_pages(standin, "U0FRANK")
        press(b, "U0FRANK", frank_dm, standin.dm_channel("U0FRANK"))
        [told] = whispered(standin, "U0FRANK", "already acknowledged")
        assert "by U0ERIN" in told.text and told.channel == standin.dm_channel("U0FRANK")
        card = json.dumps(card_message(b).blocks)
        assert "acknowledged by <@U0ERIN>" in card and "page_acknowledge" not in card
        # the emergency tier's time passes: nobody else is woken
        clock.at(minutes=30)
        b.run_worker()
        assert not dm_pages(standin, "U0GRACE", "Emergency")
        assert page_row(conn, inc.id)["emergency_paged_at"] is None
        # the request is denied: the page closes, PagerDuty's alert is resolved
        b.services.engine.deny(incident_id=inc.id, user="U0CAROL", note="the loss is elsewhere")
        b.run_worker()
        assert pd.alerts[trigger["dedup_key"]] == "resolved"
        assert [e["event_action"] for e in pd.events()] == ["trigger", "acknowledge", "resolve"]
        with db.transaction() as c:
            audit = [(r["actor"], r["outcome"]) for r in c.execute(
                "SELECT * FROM rollback_bot.audit_log WHERE action = 'acknowledge' ORDER BY id")]
        assert audit == [("U0DAVE", "refused"), ("U0ERIN", "ok")]


def test_pagerduty_down_is_retried_and_never_holds_up_slack(settings, db, people, pd, clock, world, conn):
    standin = people
    with box(settings, db, standin, pd, clock) as b:
        inc = halt(b)
        pd.fail_next(500, times=100)
        clock.at(minutes=30)
        b.run_worker()
        assert len(dm_pages(standin, "U0ERIN")) == 1  # Slack paged although PagerDuty answers 500
        warning = [m.text for m in standin.thread(CHANNEL, inc.message_ts) if "PagerDuty did not accept" in m.text]
        assert len(warning) == 1 and "trigger" in warning[0] and "HTTP 500" in warning[0]
        assert page_row(conn, inc.id)["pagerduty_sent"] == "none"
        pd.heal()
        clock.at(minutes=31)  # past the worker's back-off
        b.run_worker()
        assert [e["event_action"] for e in pd.events()] == ["trigger"]
        row = page_row(conn, inc.id)
        assert row["pagerduty_sent"] == "trigger" and row["pagerduty_error"] is None
        assert len([m for m in standin.thread(CHANNEL, inc.message_ts) if "PagerDuty did not accept" in m.text]) == 1


def test_pagerduty_down_for_an_hour_is_still_retried_and_the_trigger_lands_once_it_is_back(settings, db, people, pd,
                                                                                          clock, world, conn):
    """No give-up and no sweep: each refused try queues the next one (back-off doubling up to 5 minutes)."""
    with box(settings, db, people, pd, clock) as b:
        inc = halt(b)
        pd.fail_next(500, times=10_000)
        for minute in range(30, 91):  # an hour of refusals, the worker running every minute
            clock.at(minutes=minute)
            b.run_worker()
        refused = conn.execute("SELECT ok FROM rollback_bot.page_log WHERE incident_id = %s AND channel = 'pagerduty'",
                               (inc.id,)).fetchall()
        assert len(refused) > 10 and not any(r["ok"] for r in refused), refused  # far more than a job's 5 attempts
        assert page_row(conn, inc.id)["pagerduty_sent"] == "none"
        pd.heal()
        clock.at(minutes=96)  # the longest wait between two tries is 5 minutes
        b.run_worker()
        assert [e["event_action"] for e in pd.events()] == ["trigger"]
        assert page_row(conn, inc.id)["pagerduty_sent"] == "trigger"
        with db.transaction() as c:  # the retries are done, none is left waiting
            left = c.execute("SELECT count(*) AS n FROM rollback_bot.jobs WHERE kind = 'pagerduty' AND done_at IS NULL"
                             " AND incident_id = %s", (inc.id,)).fetchone()["n"]
        assert left == 0


def test_slack_down_does_not_keep_the_page_from_pagerduty(settings, db, people, pd, clock, world, conn):
    standin = people
    with box(settings, db, standin, pd, clock) as b:
        inc = halt(b)
        standin.fail_next("conversations.open", error="fatal_error", times=100)
        standin.fail_next("chat.postMessage", error="fatal_error", times=100)
        clock.at(minutes=30)
        b.run_worker()
        assert [e["event_action"] for e in pd.events()] == ["trigger"]
        assert conn.execute("SELECT outcome FROM rollback_bot.audit_log WHERE action = 'escalate'"
                            ).fetchone()["outcome"] == "failed"  # the Slack page is retried by its timer
        assert page_row(conn, inc.id)["pagerduty_sent"] == "trigger"


def test_two_processes_page_the_emergency_tier_once_and_a_restart_forgets_nothing(settings, db, people, pd, clock,
                                                                                  world, conn):
    standin = people
    with box(settings, db, standin, pd, clock) as first:
        inc = halt(first)
        clock.at(minutes=30)
        first.run_worker()
    # both processes restart; at T+40 they race for the emergency tier
    boxes = [box(settings, db, standin, pd, clock).start() for _ in range(2)]
    try:
        clock.at(minutes=41)
        barrier = threading.Barrier(2)

        def run(b):
            barrier.wait()
            b.services.worker.run_due()

        threads = [threading.Thread(target=run, args=(b,)) for b in boxes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for b in boxes:
            b.settle()
        assert len(dm_pages(standin, "U0GRACE", "Emergency escalation")) == 1
        assert len(pd.events("trigger")) == 1
        with db.transaction() as c:
            c.execute("UPDATE rollback_bot.jobs SET done_at = NULL, locked_until = NULL WHERE kind = 'page_emergency'")
        for b in boxes:
            b.run_worker()
        assert len(dm_pages(standin, "U0GRACE", "Emergency escalation")) == 1, "a re-run job pages nobody twice"
    finally:
        for b in boxes:
            b.stop()
    assert page_row(conn, inc.id)["emergency_paged_at"] == clock.at(minutes=41)


def test_an_incident_closed_before_its_page_ran_starts_no_alert(settings, db, people, pd, clock, world, conn):
    standin = people
    with box(settings, db, standin, pd, clock, loss_escalation_threshold=100_000) as b:
        inc = losing_half_a_million(b)
        b.services.engine.deny(incident_id=inc.id, user="U0CAROL", note="wrong model")
        b.run_worker()
        clock.at(minutes=30)
        b.run_worker()
        assert pd.events() == [] and not dm_pages(standin, "U0GRACE", "Emergency")
        assert page_row(conn, inc.id)["closed_at"] is not None
