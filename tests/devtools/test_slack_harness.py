"""Tests of the Slack test harness: bot.devtools.slack_standin and bot.devtools.slack_signing.

The stand-in is exercised through the real ``slack_sdk.WebClient``; the sender
through ``slack_sdk``'s ``SignatureVerifier`` and a real Bolt ``App`` served by
a tiny stdlib HTTP server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from slack_bolt import App
from slack_bolt.request import BoltRequest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import Clock, SignatureVerifier

from bot.devtools.slack_signing import SlackSender, sign
from bot.devtools.slack_standin import Call, SlackStandIn

TOKEN = "xoxb-1111-secret-test-token"
SECRET = "test-signing-secret"
OPS = "C0OPS"


@pytest.fixture
def standin() -> Iterator[SlackStandIn]:
    with SlackStandIn(
        users={"U0ALICE": {"name": "alice", "real_name": "Alice Adams", "tz": "Europe/London"}},
        usergroups={"S0ONCALL": ["U0ALICE", "U0BOB"]},
        channels={"ops": OPS},
        joined={OPS},  # as if invited: the strict rules have tests of their own (test_slack_standin_rules.py)
    ) as slack:
        yield slack


@pytest.fixture
def client(standin: SlackStandIn) -> WebClient:
    return WebClient(token=TOKEN, base_url=standin.base_url)


# --------------------------------------------------------------------------- stand-in


def test_post_then_update_are_recorded_with_bodies(standin: SlackStandIn, client: WebClient) -> None:
    blocks = [{"type": "section", "block_id": "s1", "text": {"type": "mrkdwn", "text": "*Rollback?*"}}]
    posted = client.chat_postMessage(channel=OPS, text="Rollback requested", blocks=blocks)
    assert posted["ok"] is True and posted["channel"] == OPS
    assert posted["message"]["text"] == "Rollback requested" and posted["message"]["blocks"] == blocks
    reply = client.chat_postMessage(channel=OPS, text="step 1", thread_ts=posted["ts"])
    assert float(reply["ts"]) > float(posted["ts"])

    updated = client.chat_update(channel=OPS, ts=posted["ts"], text="Rollback approved", blocks=[])
    assert updated["ok"] is True and updated["ts"] == posted["ts"]

    [first, second] = standin.wait_for("chat.postMessage", count=2)
    assert first.body == {"channel": OPS, "text": "Rollback requested", "blocks": blocks}
    assert second.body["thread_ts"] == posted["ts"]
    [update] = standin.calls("chat.update")
    assert update.body == {"channel": OPS, "ts": posted["ts"], "text": "Rollback approved", "blocks": []}
    assert [c.method for c in standin.calls()] == ["chat.postMessage", "chat.postMessage", "chat.update"]

    # The token is recorded as present but never stored.
    assert update.authorized and update.headers["authorization"] == "Bearer xoxb-<redacted>"
    assert "secret-test-token" not in repr(standin.calls())

    parent, child = standin.thread(OPS, posted["ts"])
    assert parent.text == "Rollback approved" and parent.blocks == [] and parent.edited
    assert parent.versions[0]["text"] == "Rollback requested" and parent.versions[0]["blocks"] == blocks
    assert child.thread_ts == posted["ts"] and child.is_reply
    assert [m.ts for m in standin.messages(OPS)] == [posted["ts"], reply["ts"]]

    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel=OPS, ts="1600000000.000001", text="nope")
    assert err.value.response["error"] == "message_not_found"


def test_other_methods_answer_like_slack(standin: SlackStandIn, client: WebClient) -> None:
    auth = client.auth_test()
    assert (auth["user_id"], auth["bot_id"], auth["team_id"]) == ("U0ROLLBOT", "B0ROLLBOT", "T0001")

    posted = client.chat_postMessage(channel="#ops", text="hi")
    assert posted["channel"] == OPS
    link = client.chat_getPermalink(channel=OPS, message_ts=posted["ts"])
    assert link["permalink"] == f"https://example.slack.com/archives/{OPS}/p{posted['ts'].replace('.', '')}"

    eph = client.chat_postEphemeral(channel=OPS, user="U0ALICE", text="only you")
    assert [e.ts for e in standin.ephemerals("U0ALICE")] == [eph["message_ts"]]

    dm = client.conversations_open(users="U0ALICE")["channel"]["id"]
    assert dm.startswith("D") and dm == standin.dm_channel("U0ALICE")
    client.chat_postMessage(channel="U0ALICE", text="direct")
    assert [m.text for m in standin.messages(dm)] == ["direct"]

    user = client.users_info(user="U0ALICE")["user"]
    assert (user["id"], user["name"], user["real_name"], user["tz"]) == (
        "U0ALICE", "alice", "Alice Adams", "Europe/London")
    with pytest.raises(SlackApiError) as err:
        client.users_info(user="U0NOBODY")
    assert err.value.response["error"] == "user_not_found"

    assert client.usergroups_users_list(usergroup="S0ONCALL")["users"] == ["U0ALICE", "U0BOB"]
    with pytest.raises(SlackApiError) as err:
        client.usergroups_users_list(usergroup="S0NOPE")
    assert err.value.response["error"] == "no_such_subteam"

    modal = client.views_open(trigger_id=standin.issue_trigger_id(), view={"type": "modal", "callback_id": "confirm",
                                                           "title": {"type": "plain_text", "text": "Confirm"},
                                                           "blocks": []})["view"]
    updated = client.views_update(view_id=modal["id"], view={"type": "modal", "callback_id": "confirm2",
                                                              "title": {"type": "plain_text", "text": "Done"},
                                                              "blocks": []})["view"]
    assert updated["id"] == modal["id"] and standin.view(modal["id"])["callback_id"] == "confirm2"

    home = {"type": "home", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "v1"}}]}
    first = client.views_publish(user_id="U0ALICE", view=home)["view"]
    home["blocks"][0]["text"]["text"] = "v2"
    second = client.views_publish(user_id="U0ALICE", view=home)["view"]
    assert first["id"] == second["id"]
    assert standin.home_view("U0ALICE")["blocks"][0]["text"]["text"] == "v2"

    with pytest.raises(SlackApiError) as err:
        client.api_call("chat.nonexistent", json={"x": 1})
    assert err.value.response["error"] == "unknown_method"
    assert standin.calls("chat.nonexistent")[0].body == {"x": 1}

    with pytest.raises(SlackApiError) as err:
        client.apps_connections_open(app_token="xapp-1")
    assert err.value.response["ok"] is False
    standin.socket_mode_url = "ws://127.0.0.1:1/socket"
    assert client.apps_connections_open(app_token="xapp-1")["url"] == "ws://127.0.0.1:1/socket"

    with pytest.raises(SlackApiError) as err:
        WebClient(base_url=standin.base_url).auth_test()
    assert err.value.response["error"] == "not_authed"


def test_files_upload_v2_stores_the_bytes(standin: SlackStandIn, client: WebClient) -> None:
    parent = client.chat_postMessage(channel=OPS, text="rollback #7")
    content = b"model,version\nxgb,41\n" + bytes(range(256))
    result = client.files_upload_v2(channel=OPS, content=content, filename="audit.csv", title="Audit",
                                    initial_comment="audit log attached", thread_ts=parent["ts"])
    assert result["ok"] is True and result["file"]["size"] == len(content)

    methods = [c.method for c in standin.calls()]
    assert methods == ["chat.postMessage", "files.getUploadURLExternal", "upload", "files.completeUploadExternal"]
    [upload] = standin.uploads()
    assert upload.content == content and upload.completed and upload.filename == "audit.csv"
    assert (upload.channels, upload.thread_ts, upload.initial_comment, upload.title) == (
        [OPS], parent["ts"], "audit log attached", "Audit")
    [_, file_message] = standin.thread(OPS, parent["ts"])
    assert file_message.text == "audit log attached" and file_message.files[0]["id"] == upload.file_id


def test_rate_limit_is_retried_by_slack_sdk(standin: SlackStandIn, client: WebClient) -> None:
    standin.fail_next("chat.postMessage", status=429, retry_after=0)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=1))

    posted = client.chat_postMessage(channel=OPS, text="after a 429")

    assert posted["ok"] is True
    first, second = standin.calls("chat.postMessage")
    assert (first.status, second.status) == (429, 200)
    assert first.response["error"] == "ratelimited" and second.body == first.body
    assert [m.text for m in standin.messages()] == ["after a 429"]


def test_faults_without_retry_surface_as_errors(standin: SlackStandIn, client: WebClient) -> None:
    standin.fail_next("chat.postMessage", status=429, retry_after=7)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel=OPS, text="x")
    assert err.value.response.status_code == 429 and err.value.response.headers["Retry-After"] == "7"

    standin.fail_next("chat.postMessage", status=503)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel=OPS, text="x")
    assert err.value.response.status_code == 503

    standin.fail_next("chat.update", error="cant_update_message", times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError) as err:
            client.chat_update(channel=OPS, ts="1.1", text="x")
        assert err.value.response["error"] == "cant_update_message"
    assert client.chat_postMessage(channel=OPS, text="fine")["ok"]
    assert [m.text for m in standin.messages()] == ["fine"]  # failed calls had no side effects


def test_wait_for_blocks_until_the_call_arrives(standin: SlackStandIn, client: WebClient) -> None:
    timer = threading.Timer(0.2, lambda: client.chat_postMessage(channel=OPS, text="later"))
    timer.start()
    try:
        [call] = standin.wait_for("chat.postMessage", lambda c: c.body["text"] == "later", timeout=5)
    finally:
        timer.join()
    assert isinstance(call, Call) and call.at <= time.time()


def test_wait_for_times_out_with_a_listing(standin: SlackStandIn, client: WebClient) -> None:
    client.chat_postMessage(channel=OPS, text="unrelated message")
    started = time.monotonic()
    with pytest.raises(AssertionError) as err:
        standin.wait_for("chat.update", timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 3
    message = str(err.value)
    assert "Timed out after 0.3s waiting for 1 call(s) of 'chat.update'" in message
    assert "chat.postMessage" in message and "unrelated message" in message

    # A predicate that raises KeyError is a non-match, not a crash.
    with pytest.raises(AssertionError, match="matching the predicate"):
        standin.wait_for("chat.postMessage", lambda c: c.body["thread_ts"] == "1", timeout=0.1)


def test_response_url_posts_are_recorded(standin: SlackStandIn) -> None:
    from slack_sdk.webhook import WebhookClient

    url = standin.response_url("cmd-1", channel=OPS, user="U0ALICE")
    assert WebhookClient(url).send(text="working on it").status_code == 200
    assert WebhookClient(url).send(text="posted", response_type="in_channel").status_code == 200
    first, second = standin.wait_for("response_url", count=2)
    assert first.body == {"text": "working on it", "key": "cmd-1"}
    assert second.body["response_type"] == "in_channel"
    assert [e.text for e in standin.ephemerals("U0ALICE")] == ["working on it"]
    assert [m.text for m in standin.messages(OPS)] == ["posted"]


# --------------------------------------------------------------------------- signing


def test_sign_matches_slack_documented_example() -> None:
    body = ("token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
            "&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
            "&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
            "&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    headers = sign("8f742231b10e8888abcd99yyyzzz85a5", body, timestamp=1531420618)
    assert headers == {
        "X-Slack-Request-Timestamp": "1531420618",
        "X-Slack-Signature": "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
    }


def test_sign_is_accepted_by_slack_sdk_verifier() -> None:
    body = '{"type":"event_callback","event":{"type":"app_home_opened"}}'
    verifier = SignatureVerifier(SECRET)
    assert verifier.is_valid_request(body, sign(SECRET, body))
    assert not verifier.is_valid_request(body, sign("another-secret", body))
    assert not verifier.is_valid_request(body + " ", sign(SECRET, body))
    assert not verifier.is_valid_request(body, sign(SECRET, body, timestamp=int(time.time()) - 301))

    class FixedClock(Clock):
        def now(self) -> float:
            return 1_600_000_000.0

    assert SignatureVerifier(SECRET, clock=FixedClock()).is_valid_request(body, sign(SECRET, body, 1_600_000_000))


# --------------------------------------------------------------------------- a real Bolt app


class _BoltServer(ThreadingHTTPServer):
    daemon_threads = True
    app: App


class _BoltHandler(BaseHTTPRequestHandler):
    """The smallest HTTP adapter: request -> BoltRequest -> app.dispatch -> response."""

    server: _BoltServer

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8")
        request = BoltRequest(body=raw, query=urlsplit(self.path).query,
                              headers={k.lower(): v for k, v in self.headers.items()})
        response = self.server.app.dispatch(request)
        data = (response.body or "").encode("utf-8")
        self.send_response(response.status)
        for name, values in response.headers.items():
            if name != "content-length":
                for value in values:
                    self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def _build_app(standin: SlackStandIn) -> App:
    # NB: Bolt ignores App(token=...) when client= is given and uses client.token.
    app = App(signing_secret=SECRET, token_verification_enabled=False,
              client=WebClient(token=TOKEN, base_url=standin.base_url))

    @app.command("/rollback")
    def rollback(ack: Any, command: dict[str, Any], say: Any, respond: Any) -> None:
        ack(f"Rollback of {command['text']} requested")
        say(blocks=[{"type": "actions", "block_id": "decide", "elements": [
            {"type": "button", "action_id": "approve", "value": command["text"],
             "text": {"type": "plain_text", "text": "Approve"}}]}], text=f"Approve rollback of {command['text']}?")
        respond("Posted the approval request")

    @app.action("approve")
    def approve(ack: Any, body: dict[str, Any], action: dict[str, Any], client: WebClient, say: Any) -> None:
        ack()
        client.chat_update(channel=body["channel"]["id"], ts=body["message"]["ts"],
                           text=f"Approved by <@{body['user']['id']}>: {action['value']}", blocks=[])
        say(text="Rolling back now", thread_ts=body["message"]["ts"])

    @app.view("confirm")
    def confirm(ack: Any, view: dict[str, Any]) -> None:
        reason = view["state"]["values"]["reason"]["input"]["value"]
        if not reason:
            ack(response_action="errors", errors={"reason": "A reason is required"})
        else:
            ack()

    @app.event("app_home_opened")
    def home(event: dict[str, Any], client: WebClient) -> None:
        client.views_publish(user_id=event["user"], view={"type": "home", "blocks": []})

    return app


@pytest.fixture
def bolt(standin: SlackStandIn) -> Iterator[SlackSender]:
    server = _BoltServer(("127.0.0.1", 0), _BoltHandler)
    server.app = _build_app(standin)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield SlackSender(f"http://127.0.0.1:{server.server_address[1]}/slack/events", SECRET)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_bolt_slash_command_then_button(standin: SlackStandIn, bolt: SlackSender) -> None:
    response_url = standin.response_url("cmd", channel=OPS, user="U0ALICE")
    status, body, headers = bolt.slash_command("/rollback", "model-v41", user_id="U0ALICE", channel_id=OPS,
                                               response_url=response_url)
    assert status == 200 and body == "Rollback of model-v41 requested"

    [post] = standin.wait_for("chat.postMessage")
    assert post.body["channel"] == OPS and post.body["text"] == "Approve rollback of model-v41?"
    [respond] = standin.wait_for("response_url")
    assert respond.body["key"] == "cmd" and respond.body["text"] == "Posted the approval request"

    [card] = standin.messages(OPS)
    status, body, _ = bolt.block_action(user_id="U0ALICE", action_id="approve", channel_id=OPS,
                                        message_ts=card.ts, message=card.as_slack(),
                                        response_url=standin.response_url("btn"))
    assert (status, body) == (200, "")
    [update] = standin.wait_for("chat.update")
    assert update.body["text"] == "Approved by <@U0ALICE>: model-v41"
    standin.wait_for("chat.postMessage", lambda c: c.body.get("thread_ts") == card.ts)
    parent, reply = standin.thread(OPS, card.ts)
    assert parent.text.startswith("Approved") and reply.text == "Rolling back now"


def test_bolt_view_submission_and_home_event(standin: SlackStandIn, bolt: SlackSender) -> None:
    missing = bolt.view_submission(user_id="U0ALICE", callback_id="confirm", state_values={"reason": {"input": ""}})
    assert missing.status == 200
    assert missing.json() == {"response_action": "errors", "errors": {"reason": "A reason is required"}}
    given = bolt.view_submission(user_id="U0ALICE", callback_id="confirm",
                                 state_values={"reason": {"input": "bad model"}})
    assert (given.status, given.body) == (200, "")

    assert bolt.app_home_opened("U0ALICE").status == 200
    [publish] = standin.wait_for("views.publish")
    assert publish.body["user_id"] == "U0ALICE" and standin.home_view("U0ALICE") is not None


def test_bolt_rejects_bad_signature_and_stale_timestamp(standin: SlackStandIn, bolt: SlackSender) -> None:
    url = standin.response_url("x")
    kwargs: dict[str, Any] = {"user_id": "U0ALICE", "channel_id": OPS, "response_url": url}
    assert bolt.slash_command("/rollback", "v1", secret="wrong-secret", **kwargs).status == 401
    assert bolt.slash_command("/rollback", "v1", timestamp=int(time.time()) - 6 * 60, **kwargs).status == 401
    unsigned = bolt.raw("command=%2Frollback", {"Content-Type": "application/x-www-form-urlencoded"})
    assert unsigned.status == 401 and json.loads(unsigned.body) == {"error": "invalid request"}
    time.sleep(0.2)
    assert standin.calls() == []  # nothing reached Slack


class _CaptureServer(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[tuple[dict[str, str], str]]


class _CaptureHandler(BaseHTTPRequestHandler):
    server: _CaptureServer

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8")
        self.server.requests.append(({k.lower(): v for k, v in self.headers.items()}, raw))
        self.send_response(418)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"nope!")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def capture() -> Iterator[tuple[SlackSender, list[tuple[dict[str, str], str]]]]:
    server = _CaptureServer(("127.0.0.1", 0), _CaptureHandler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield SlackSender(f"http://127.0.0.1:{server.server_address[1]}/slack/events", SECRET), server.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_sender_payload_shapes_and_retry_headers(
    capture: tuple[SlackSender, list[tuple[dict[str, str], str]]],
) -> None:
    from urllib.parse import parse_qs

    sender, requests = capture
    verifier = SignatureVerifier(SECRET)

    result = sender.slash_command("/rollback", "v41 now", user_id="U0ALICE", channel_id=OPS,
                                  response_url="http://r/1", retry_num=1, retry_reason="http_timeout")
    assert (result.status, result.body) == (418, "nope!")  # HTTP errors are returned, not raised
    headers, raw = requests[-1]
    assert verifier.is_valid_request(raw, headers)
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert (headers["x-slack-retry-num"], headers["x-slack-retry-reason"]) == ("1", "http_timeout")
    form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
    assert set(form) == {"token", "team_id", "team_domain", "channel_id", "channel_name", "user_id", "user_name",
                         "command", "text", "api_app_id", "is_enterprise_install", "response_url", "trigger_id"}
    assert (form["command"], form["text"], form["user_id"], form["is_enterprise_install"]) == (
        "/rollback", "v41 now", "U0ALICE", "false")

    message = {"type": "message", "ts": "1700000000.000100", "text": "Approve?", "blocks": [
        {"type": "actions", "block_id": "decide", "elements": [
            {"type": "button", "action_id": "approve", "value": "v41", "style": "danger",
             "text": {"type": "plain_text", "text": "Approve"}}]}]}
    sender.block_action(user_id="U0ALICE", action_id="approve", channel_id=OPS, message_ts=message["ts"],
                        message=message, response_url="http://r/2")
    headers, raw = requests[-1]
    assert verifier.is_valid_request(raw, headers) and "x-slack-retry-num" not in headers
    payload = json.loads(parse_qs(raw)["payload"][0])
    assert payload["type"] == "block_actions" and payload["user"]["id"] == "U0ALICE"
    assert payload["container"] == {"type": "message", "message_ts": message["ts"], "channel_id": OPS,
                                    "is_ephemeral": False}
    assert payload["channel"]["id"] == OPS and payload["message"] == message
    assert payload["response_url"] == "http://r/2" and payload["trigger_id"]
    [action] = payload["actions"]
    assert (action["action_id"], action["block_id"], action["value"], action["type"]) == (
        "approve", "decide", "v41", "button")

    sender.view_submission(user_id="U0ALICE", callback_id="confirm", private_metadata="run=7",
                           state_values={"reason": {"input": "bad model"}})
    view = json.loads(parse_qs(requests[-1][1])["payload"][0])["view"]
    assert (view["callback_id"], view["private_metadata"]) == ("confirm", "run=7")
    assert view["state"]["values"] == {"reason": {"input": {"type": "plain_text_input", "value": "bad model"}}}

    sender.app_home_opened("U0ALICE", retry_num=2, retry_reason="http_error")
    headers, raw = requests[-1]
    envelope = json.loads(raw)
    assert headers["content-type"] == "application/json" and verifier.is_valid_request(raw, headers)
    assert (headers["x-slack-retry-num"], headers["x-slack-retry-reason"]) == ("2", "http_error")
    assert envelope["type"] == "event_callback" and envelope["event"]["type"] == "app_home_opened"
    assert envelope["event_id"].startswith("Ev") and envelope["authorizations"][0]["is_bot"] is True
