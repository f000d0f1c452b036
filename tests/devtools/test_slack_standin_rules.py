"""The Slack stand-in refuses what Slack refuses (bot/devtools/slack_standin.py, bot/devtools/slack_scopes.py, bot/devtools/block_kit_rules.py):
expired or reused trigger ids, posts where the bot is not a member, methods outside the manifest's scopes, Block
Kit over Slack's limits, and 429 on demand. Each rule is tested here through the real slack_sdk WebClient."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from bot.devtools import slack_scopes
from bot.devtools.slack_standin import TRIGGER_TTL, SlackStandIn

TOKEN = "xoxb-rules-test-token"
JOINED, OTHER, PRIVATE = "C0JOINED", "C0OTHER", "G0PRIVATE"


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    with SlackStandIn(joined={JOINED}, users={"U0ALICE": {"name": "alice"}}) as s:
        yield s


@pytest.fixture
def client(slack: SlackStandIn) -> WebClient:
    return WebClient(token=TOKEN, base_url=slack.base_url)


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(SlackApiError) as err:
        call(*args, **kwargs)
    return err.value.response["error"]


def modal(blocks: list | None = None, **extra) -> dict:
    return {"type": "modal", "callback_id": "x", "title": {"type": "plain_text", "text": "Title"},
            "blocks": blocks or [], **extra}


def section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


# ------------------------------------------------------------------------------------------- trigger_id


def test_a_trigger_id_opens_one_view_within_three_seconds(slack, client):
    trigger = slack.issue_trigger_id()
    assert client.views_open(trigger_id=trigger, view=modal())["ok"]
    assert error_of(client.views_open, trigger_id=trigger, view=modal()) == "exchanged_trigger_id"
    stale = slack.issue_trigger_id(issued_at=time.monotonic() - TRIGGER_TTL - 0.1)
    assert error_of(client.views_open, trigger_id=stale, view=modal()) == "expired_trigger_id"
    assert error_of(client.views_open, trigger_id="1.2.made-up", view=modal()) == "invalid_trigger_id"
    # views.push uses up a trigger the same way
    pushed = slack.issue_trigger_id()
    assert client.views_push(trigger_id=pushed, view=modal())["ok"]
    assert error_of(client.views_push, trigger_id=pushed, view=modal()) == "exchanged_trigger_id"
    assert TRIGGER_TTL == 3.0


def test_a_trigger_expires_in_real_time(slack, client):
    trigger = slack.issue_trigger_id(issued_at=time.monotonic() - TRIGGER_TTL + 0.3)
    time.sleep(0.4)
    assert error_of(client.views_open, trigger_id=trigger, view=modal()) == "expired_trigger_id"


# ------------------------------------------------------------------------------------------- membership


def test_posts_ephemerals_and_file_shares_need_membership(slack, client):
    assert error_of(client.chat_postMessage, channel=OTHER, text="hi") == "not_in_channel"
    assert error_of(client.chat_postEphemeral, channel=OTHER, user="U0ALICE", text="hi") == "not_in_channel"
    assert error_of(client.files_upload_v2, channel=OTHER, content=b"x", filename="a.txt") == "not_in_channel"
    assert slack.messages() == [] and slack.ephemerals() == []
    # in its own channel, and in a DM, the bot may write
    assert client.chat_postMessage(channel=JOINED, text="hi")["ok"]
    assert client.chat_postEphemeral(channel=JOINED, user="U0ALICE", text="hi")["ok"]
    assert client.files_upload_v2(channel=JOINED, content=b"x", filename="a.txt")["ok"]
    assert client.chat_postMessage(channel="U0ALICE", text="a DM")["ok"]
    # a person invites it, or it leaves
    slack.join(OTHER)
    assert client.chat_postMessage(channel=OTHER, text="hi")["ok"]
    slack.leave(OTHER)
    assert error_of(client.chat_postMessage, channel=OTHER, text="hi") == "not_in_channel"


def test_chat_write_public_lets_a_post_through_but_not_an_ephemeral_or_a_file(slack):
    with SlackStandIn(scopes=slack.scopes | {"chat:write.public"}) as public:
        c = WebClient(token=TOKEN, base_url=public.base_url)
        assert c.chat_postMessage(channel=OTHER, text="hi")["ok"]
        assert error_of(c.chat_postMessage, channel=PRIVATE, text="hi") == "not_in_channel"
        assert error_of(c.chat_postEphemeral, channel=OTHER, user="U0ALICE", text="hi") == "not_in_channel"
        assert error_of(c.files_upload_v2, channel=OTHER, content=b"x", filename="a.txt") == "not_in_channel"


def test_conversations_info_and_join(slack, client):
    info = client.conversations_info(channel=OTHER)["channel"]
    assert (info["is_member"], info["is_private"]) == (False, False)
    joined = client.conversations_join(channel=OTHER)
    assert joined["channel"]["is_member"] and OTHER in slack.joined
    assert client.conversations_join(channel=OTHER)["warning"] == "already_in_channel"
    # a private channel: invisible until invited, and never joined by the bot itself
    assert error_of(client.conversations_info, channel=PRIVATE) == "channel_not_found"
    assert error_of(client.conversations_join, channel=PRIVATE) == "method_not_supported_for_channel_type"
    slack.join(PRIVATE)
    info = client.conversations_info(channel=PRIVATE)["channel"]
    assert (info["is_member"], info["is_private"]) == (True, True)


# ------------------------------------------------------------------------------------------- scopes


def test_a_method_outside_the_granted_scopes_answers_missing_scope():
    granted = slack_scopes.manifest_scopes() - {"users:read", "channels:join"}
    with SlackStandIn(scopes=granted, users={"U0ALICE": {"name": "alice"}}) as s:
        c = WebClient(token=TOKEN, base_url=s.base_url)
        with pytest.raises(SlackApiError) as err:
            c.users_info(user="U0ALICE")
        assert err.value.response["error"] == "missing_scope" and err.value.response["needed"] == "users:read"
        assert "chat:write" in err.value.response["provided"].split(",")
        assert error_of(c.conversations_join, channel=OTHER) == "missing_scope"
        assert c.auth_test()["ok"] and c.chat_getPermalink  # methods that need no scope still answer


def test_conversations_info_needs_the_scope_of_the_channel_type():
    granted = slack_scopes.manifest_scopes() - {"groups:read"}
    with SlackStandIn(scopes=granted, joined={PRIVATE}) as s:
        c = WebClient(token=TOKEN, base_url=s.base_url)
        assert c.conversations_info(channel=OTHER)["ok"]
        assert error_of(c.conversations_info, channel=PRIVATE) == "missing_scope"


def test_every_answered_method_has_a_scope_rule_and_the_manifest_grants_what_the_bot_uses(slack):
    assert slack.methods == set(slack_scopes.METHOD_SCOPES)
    # what the stand-in says it answers is what it answers, each method under its own scope rule
    with SlackStandIn(scopes=()) as bare:
        c = WebClient(token=TOKEN, base_url=bare.base_url)
        for method in sorted(slack.methods):
            try:
                answer = c.api_call(method, json={"channel": OTHER}).data
            except SlackApiError as err:
                answer = err.response.data
            if slack_scopes.needed_scopes(method, channel_kind="public"):
                assert answer.get("error") == "missing_scope", (method, answer)
            else:
                assert answer.get("error") not in ("unknown_method", "missing_scope"), (method, answer)
        assert error_of(c.api_call, "chat.scheduleMessage", json={"channel": OTHER}) == "unknown_method"
    granted = slack_scopes.manifest_scopes()
    bot_methods = set(slack_scopes.METHOD_SCOPES) - {"apps.connections.open"}
    for method in bot_methods:
        needed = slack_scopes.needed_scopes(method, channel_kind="public")
        assert not needed or granted.intersection(needed), (method, needed)
    assert {"channels:join", "channels:read", "groups:read"} <= granted
    assert "chat:write.public" not in granted  # the bot is a member of its channel; it needs no more


def test_manifest_scopes_reads_the_bot_list_only(tmp_path):
    manifest = tmp_path / "manifest.yml"
    manifest.write_text("oauth_config:\n  scopes:\n    user:\n      - admin\n    bot:\n      - commands  # x\n"
                        "      - 'chat:write'\nsettings:\n  bot:\n    - not-a-scope\n")
    assert slack_scopes.manifest_scopes(manifest) == {"commands", "chat:write"}
    manifest.write_text("oauth_config:\n  scopes: {}\n")
    with pytest.raises(ValueError, match="no bot scopes"):
        slack_scopes.manifest_scopes(manifest)


# ------------------------------------------------------------------------------------------- Block Kit


@pytest.mark.parametrize("blocks, pointer", [
    ([section("x")] * 51, "/blocks]"),
    ([section("x" * 3001)], "/blocks/0/text/text"),
    ([{"type": "section", "fields": [{"type": "mrkdwn", "text": "x" * 2001}]}], "/blocks/0/fields/0/text"),
    ([{"type": "section", "fields": [{"type": "mrkdwn", "text": "x"}] * 11}], "/blocks/0/fields]"),
    ([{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}], "/blocks/0/text/text"),
    ([{"type": "header", "text": {"type": "mrkdwn", "text": "x"}}], "/blocks/0/text/type"),
    ([{"type": "actions", "elements": [{"type": "button", "action_id": "a",
                                        "text": {"type": "plain_text", "text": "x" * 76}}]}], "/elements/0/text/text"),
    ([{"type": "actions", "elements": [{"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "ok"},
                                        "confirm": {"title": {"type": "plain_text", "text": "Sure?"},
                                                    "text": {"type": "plain_text", "text": "x" * 301},
                                                    "confirm": {"type": "plain_text", "text": "Yes"},
                                                    "deny": {"type": "plain_text", "text": "No"}}}]}],
     "/confirm/text/text"),
    ([{"type": "context", "elements": [{"type": "mrkdwn", "text": "x"}] * 11}], "/blocks/0/elements]"),
    ([section("")], "/blocks/0/text/text"),
    ([{"type": "bogus"}], "/blocks/0/type"),
])
def test_messages_over_block_kit_limits_answer_invalid_blocks(slack, client, blocks, pointer):
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel=JOINED, text="t", blocks=blocks)
    assert err.value.response["error"] == "invalid_blocks"
    assert any(pointer in m for m in err.value.response["response_metadata"]["messages"]), err.value.response
    assert slack.messages() == []
    # the same blocks in an update or an ephemeral, and through a response_url
    posted = client.chat_postMessage(channel=JOINED, text="fine")
    assert error_of(client.chat_update, channel=JOINED, ts=posted["ts"], text="t", blocks=blocks) == "invalid_blocks"
    assert error_of(client.chat_postEphemeral, channel=JOINED, user="U0ALICE", text="t",
                    blocks=blocks) == "invalid_blocks"
    sent = WebhookClient(slack.response_url("k", channel=JOINED, user="U0ALICE")).send(text="t", blocks=blocks)
    assert (sent.status_code, sent.body) == (400, "invalid_blocks")


def test_block_kit_limits_are_inclusive(slack, client):
    blocks = [section("x" * 3000)] + [section("y")] * 48 + [
        {"type": "section", "fields": [{"type": "mrkdwn", "text": "z" * 2000}] * 10}]
    assert client.chat_postMessage(channel=JOINED, text="t", blocks=blocks)["ok"]
    assert error_of(client.chat_postMessage, channel=JOINED, text="x" * 40_001) == "msg_too_long"


def test_views_over_block_kit_limits_answer_invalid_arguments(slack, client):
    def opens(view: dict) -> str:
        return error_of(client.views_open, trigger_id=slack.issue_trigger_id(), view=view)

    assert opens(modal([section("x")] * 101)) == "invalid_arguments"
    assert client.views_open(trigger_id=slack.issue_trigger_id(), view=modal([section("x")] * 100))["ok"]
    assert opens(modal(title={"type": "plain_text", "text": "x" * 25})) == "invalid_arguments"
    assert opens(modal(private_metadata="x" * 3001)) == "invalid_arguments"
    select = {"type": "input", "label": {"type": "plain_text", "text": "Pick"}, "element": {
        "type": "static_select", "action_id": "s",
        "options": [{"text": {"type": "plain_text", "text": "o"}, "value": str(i)} for i in range(101)]}}
    assert opens(modal([select], submit={"type": "plain_text", "text": "Go"})) == "invalid_arguments"
    select["element"]["options"] = select["element"]["options"][:3]
    assert opens(modal([select])) == "invalid_arguments"  # an input block needs a submit button
    with pytest.raises(SlackApiError) as err:
        client.views_publish(user_id="U0ALICE", view={"type": "home", "blocks": [section("x")] * 101})
    assert "no more than 100 items" in err.value.response["response_metadata"]["messages"][0]
    # a refused view used no trigger: the same trigger still opens a valid one
    trigger = slack.issue_trigger_id()
    assert error_of(client.views_open, trigger_id=trigger, view=modal([section("x")] * 101)) == "invalid_arguments"
    opened = client.views_open(trigger_id=trigger, view=modal())["view"]
    assert error_of(client.views_update, view_id=opened["id"], view=modal([section("")])) == "invalid_arguments"


# ------------------------------------------------------------------------------------------- 429


def test_rate_limit_on_demand_answers_429_with_retry_after(slack, client):
    slack.rate_limit("chat.postMessage", retry_after=2)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel=JOINED, text="x")
    assert err.value.response.status_code == 429 and err.value.response.headers["Retry-After"] == "2"
    assert err.value.response["error"] == "ratelimited"
    assert client.chat_postMessage(channel=JOINED, text="x")["ok"]


def test_the_bots_client_waits_out_a_429_and_retries(slack):
    from bot.app import build_client
    from bot.observability import Metrics
    from core.settings import Settings

    client = build_client(Settings(_env_file=None, slack_bot_token=TOKEN, slack_api_url=slack.base_url), Metrics())
    slack.rate_limit("views.open", retry_after=1)
    started = time.monotonic()
    opened = client.views_open(trigger_id=slack.issue_trigger_id(), view=modal())
    assert opened["ok"] and 1.0 <= time.monotonic() - started < TRIGGER_TTL
    first, second = slack.calls("views.open")
    assert (first.status, second.status) == (429, 200)


# ------------------------------------------------------------------------------------------- slow answers


def test_a_held_call_waits_unanswered_until_released(slack, client):
    import threading

    held = slack.hold("views.open")
    answers: list = []
    caller = threading.Thread(target=lambda: answers.append(
        client.views_open(trigger_id=slack.issue_trigger_id(), view=modal())))
    caller.start()
    assert held.wait(5)
    time.sleep(0.2)
    assert answers == [] and slack.calls("views.open") == []  # neither answered nor recorded yet
    assert client.chat_postMessage(channel=JOINED, text="x")["ok"]  # other calls go on meanwhile
    held.release()
    caller.join(5)
    assert answers and answers[0]["ok"] and len(slack.calls("views.open")) == 1
    assert client.views_open(trigger_id=slack.issue_trigger_id(), view=modal())["ok"]  # only the next one was held


def test_a_padded_answer_carries_many_zeros_for_its_reader(slack, client):
    padding = slack.pad("views.open", items=1000)
    opened = client.views_open(trigger_id=slack.issue_trigger_id(), view=modal())
    assert opened["ok"] and opened["view"]["id"] and opened["padding"] == [0] * 1000
    assert padding.answered.wait(5) and padding.answered_at is not None
    assert "padding" not in client.views_open(trigger_id=slack.issue_trigger_id(), view=modal()).data
    slack.pad("views.open", items=10)
    with pytest.raises(SlackApiError) as err:  # a refusal is not padded
        client.views_open(trigger_id="unknown", view=modal())
    assert "padding" not in err.value.response.data
