"""`rollback-bot demo` (bot/devtools/demo.py and its scenarios, demo_fixed.py and demo_unfixed.py) plays two whole
incidents through the real app and checks their end state: what it prints, and what the Slack and PagerDuty
stand-ins really received."""

from __future__ import annotations

import io
import json

import psycopg

from bot.devtools import demo


def _between(text: str, start: str, end: str) -> str:
    assert start in text, start
    head = text.split(start, 1)[1]
    assert end in head, end
    return head.split(end, 1)[0]


def test_demo_plays_both_scenarios(database_url, tmp_path):
    # its own database inside the test cluster, so the shared test database is untouched
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS demo_under_test WITH (FORCE)")
        conn.execute("CREATE DATABASE demo_under_test")
    url = database_url.rsplit("/", 1)[0] + "/demo_under_test"
    out = io.StringIO()
    seen: dict = {}

    def observe(env):
        seen["calls"] = env.box.standin.calls()
        seen["pagerduty"] = env.pagerduty.events()
        seen["dm"] = {name: env.box.standin.dm_channel(uid) for uid, name in demo.PEOPLE.items()}

    code = demo.run(root=tmp_path / "demo", database_url=url, out=out, size="test", observe=observe)
    text = out.getvalue()
    assert code == 0, text
    assert "✘" not in text.split("What really happened")[1]
    first, second = text.split("Scenario 2 of 2: a rollback that does NOT fix the problem")
    assert "Scenario 1 of 2: a rollback that fixes the problem" in first

    # scenario 1: the story as before
    for needle in ("/rollback status", "Recommended target", "[Approve] [Halt now] [Deny]",
                   "You cannot approve your own request", "Automated trading halted", "Emergency backup",
                   "Trading resumed", "Incident resolved"):
        assert needle in first, needle
    assert "✔ every client is back on its own settings" in text
    # (1) the evidence is on the card before anybody approves
    card = _between(first, "INC-1 with the evidence for the approver", "clicks [Approve] on her own request")
    assert "Evidence 🎯" in card and "Live IC, current" in card and "Live IC, target" in card
    # (2) the 24-hour watch, condensed on the demo's clock, in one message updated in place
    assert "Enhanced monitoring of INC-1 completed: 48 check(s), 0 missed" in first
    assert "✔ 24-hour enhanced monitoring completed — T+24h" in first
    # (3) a follow-up: posted, taken and done by a person, and in the report
    assert "📋 Follow-ups of INC-1" in first
    assert "carol: clicks [Take it] on “Investigate the root cause”" in first
    assert "done by @carol" in _between(first, "the follow-ups message of INC-1, updated in place", "└")
    followups = _between(first, "│ ## Follow-ups", "═══")
    assert "| Carol (@carol) |" in followups and "done by Carol (@carol) at" in followups
    # (3b) the 24-hour watch's follow-up: taken by Bob, done by the bot when the watch completed with no trouble
    assert "| Bob (@bob) |" in followups and "done by rollback-bot at" in followups
    assert "The 24-hour watch completed, so the bot marked this done." in _between(
        first, "the follow-ups message of INC-1 after the watch", "└")

    calls = seen["calls"]

    def posted(channel=None, *needles):
        """Messages the app posted (in ``channel``, if given) whose text holds every needle."""
        return [c for c in calls if c.method == "chat.postMessage" and c.ok
                and all(n in c.body.get("text", "") for n in needles)
                and (channel is None or (c.response or {}).get("channel", c.body.get("channel")) == channel)]

    board_updates = [c for c in calls if c.method == "chat.update" and c.body.get("text", "").startswith(
        "Follow-ups of INC-1")]
    assert any("done by <@U0CAROL>" in json.dumps(c.body.get("blocks")) for c in board_updates)

    # (4) scenario 2: the restored model fails too; the incident needs attention, is escalated, paged, acknowledged
    assert "INC-2 needs attention: the rollback to" in second and "did not resolve the issue" in second
    assert "🚨 State: needs attention" in second
    assert "rollback-bot in a DM to frank:" in second and "Escalation of INC-2" in second
    ack_wait = _between(second, "15 minutes pass and nobody presses Acknowledge", "frank: clicks [Acknowledge]")
    assert "rollback-bot in a DM to grace:" in ack_wait and "Emergency escalation of INC-2" in ack_wait
    assert "@frank acknowledged the page" in second
    assert "acknowledged by @frank" in _between(second, "INC-2, acknowledged and still open", "└")

    (page,) = posted(seen["dm"]["frank"], "Escalation", "of INC-2")
    assert "page_acknowledge" in json.dumps(page.body.get("blocks"))
    (emergency,) = posted(seen["dm"]["grace"], "Emergency escalation", "of INC-2")
    assert calls.index(page) < calls.index(emergency)
    assert posted(demo.CHANNEL, "<@U0FRANK> acknowledged the page")
    assert not posted(seen["dm"]["frank"], "INC-1"), "the first scenario paged nobody"

    events = [e for e in seen["pagerduty"] if e["dedup_key"].startswith("rollback-bot/INC-2/")]
    assert [e["event_action"] for e in events] == ["trigger", "acknowledge"]
    assert len({e["dedup_key"] for e in events}) == 1
    assert "does not resolve the issue" in events[0]["payload"]["summary"]
    assert len(seen["pagerduty"]) == 2, "nothing was sent to PagerDuty for the first scenario"

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS demo_under_test WITH (FORCE)")
