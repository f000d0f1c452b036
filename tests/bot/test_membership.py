"""At start the bot is a member of INCIDENT_CHANNEL (bot/membership.py): it joins a public one itself, and stops
`serve` with the fix for a private one it was not invited to. Private answers fall back to a DM
(handlers/replies.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from slack_sdk import WebClient

from bot.devtools import slack_scopes
from bot.membership import ensure_in_channel
from bot.devtools.slack_standin import SlackStandIn
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "xoxb-membership-test"


def client_of(standin: SlackStandIn) -> WebClient:
    return WebClient(token=TOKEN, base_url=standin.base_url)


def test_a_member_stays_a_public_channel_is_joined_a_private_one_needs_an_invite():
    with SlackStandIn(joined={"C0MINE"}, channels={"incidents": "C0PUBLIC", "secret": "G0SECRET"}) as s:
        c = client_of(s)
        assert ensure_in_channel(c, "C0MINE") == "member" and s.calls("conversations.join") == []
        assert ensure_in_channel(c, "C0PUBLIC") == "joined" and "C0PUBLIC" in s.joined
        assert ensure_in_channel(c, "C0PUBLIC") == "member"
        with pytest.raises(ConfigError, match=r"invite @rollback-bot .*/invite @rollback-bot"):
            ensure_in_channel(c, "G0SECRET")
        assert "G0SECRET" not in s.joined
        s.join("G0SECRET")
        assert ensure_in_channel(c, "G0SECRET") == "member"


def test_without_channels_join_the_fix_is_to_reinstall_or_invite():
    with SlackStandIn(scopes=slack_scopes.manifest_scopes() - {"channels:join"}) as s:
        with pytest.raises(ConfigError, match="lacks channels:join.*reinstall.*invite @rollback-bot"):
            ensure_in_channel(client_of(s), "C0PUBLIC")
    with SlackStandIn(scopes=slack_scopes.manifest_scopes() - {"channels:read"}) as s:
        with pytest.raises(ConfigError, match="lacks the scope channels:read; reinstall it from manifest.yml"):
            ensure_in_channel(client_of(s), "C0PUBLIC")


def test_the_sandbox_joins_the_incident_channel_as_serve_does(sandbox):
    assert "C0INCIDENT" in sandbox.standin.joined
    [join] = sandbox.standin.calls("conversations.join")
    assert join.ok and join.body["channel"] == "C0INCIDENT"


def run_serve(standin: SlackStandIn, channel: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": "/nonexistent",
           "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": "s3cret", "SLACK_API_URL": standin.base_url,
           "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none", "INCIDENT_CHANNEL": channel,
           "APPROVERS": "U0BOB", "PORT": "9", "LOG_FORMAT": "text"}
    return subprocess.run([sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_serve_stops_with_the_fix_when_it_is_not_in_a_private_incident_channel(tmp_path):
    with SlackStandIn() as s:
        done = run_serve(s, "G0SECRET")
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("rollback-bot: configuration error: INCIDENT_CHANNEL G0SECRET was not found: if it"
                                " is a private channel, invite @rollback-bot")
    assert "/invite @rollback-bot" in lines[-1] and "Traceback" not in done.stderr


# ------------------------------------------------------------------------------------------- private answers


def test_a_command_answer_whose_response_url_fails_arrives_as_a_dm(sandbox, world):
    sandbox.standin.fail_next("response_url", status=404)
    sandbox.command("U0ALICE", "status")
    [dm] = sandbox.standin.wait_for("chat.postMessage", lambda c: c.body.get("channel") == "U0ALICE")
    assert dm.ok and dm.body["text"] == "Production models" and dm.body["blocks"]
    assert [m.text for m in sandbox.standin.messages(sandbox.standin.dm_channel("U0ALICE"))] == ["Production models"]


def test_a_click_refusal_whose_response_url_fails_arrives_as_a_dm(sandbox, world):
    from tests.e2e.test_slack_flow import click, request

    card = request(sandbox)
    sandbox.standin.clear()
    sandbox.standin.fail_next("response_url", status=410, times=3)
    click(sandbox, "U0ALICE", "rollback_approve", card)
    [dm] = sandbox.standin.wait_for("chat.postMessage", lambda c: c.body.get("channel") == "U0ALICE")
    assert dm.ok and "own request" in dm.body["text"]


def test_an_error_answer_falls_back_to_a_dm_too(sandbox, world):
    sandbox.standin.fail_next("response_url", status=500, times=3)
    sandbox.command("U0ALICE", "backups no_such_model")
    [dm] = sandbox.standin.wait_for("chat.postMessage", lambda c: c.body.get("channel") == "U0ALICE")
    assert dm.ok and "no_such_model" in dm.body["text"]
