"""Issue 8, item 4: Socket Mode for real.

``rollback-bot serve`` with ``SLACK_APP_TOKEN`` runs Bolt's ``SocketModeHandler`` (slack_sdk's built-in
WebSocket client). Here the Web API stand-in answers ``apps.connections.open`` with the address of a local
WebSocket server (aiohttp's, already a dependency) that behaves as Slack's Socket Mode endpoint does: it says
``hello``, delivers envelopes (``slash_commands``, ``interactive``) and expects an acknowledgement
``{"envelope_id": …[, "payload": …]}`` for each within three seconds. The app, PostgreSQL and models are real.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from pydantic import SecretStr
from slack_bolt.adapter.socket_mode import SocketModeHandler

from bot.app import build_app
from bot.membership import ensure_in_channel
from bot.server import BackgroundServer
from bot.compose import build_services
from core.services import Services
from tests.e2e.test_security import ClaimSpy

MODEL = "growth_momentum_large"
CHANNEL = "C0INCIDENT"
APP_TOKEN = "xapp-1-A0001-1234567890-socketmodetoken"
ACK_LIMIT = 3.0  # Slack's acknowledgement window


@dataclass
class Ack:
    envelope_id: str
    sent_at: float
    acked_at: float
    message: dict

    @property
    def seconds(self) -> float:
        return self.acked_at - self.sent_at


@dataclass
class FakeSocketModeServer:
    """A local stand-in for Slack's Socket Mode WebSocket endpoint (one app connection at a time)."""

    app_id: str = "A0001"
    host: str = "127.0.0.1"
    port: int = 0
    acks: dict[str, Ack] = field(default_factory=dict)
    other_messages: list[Any] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._server: BackgroundServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sent: dict[str, float] = {}
        self._ws: web.WebSocketResponse | None = None
        self._cond = threading.Condition()

    # -------------------------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/link/?ticket={uuid.uuid4()}&app_id={self.app_id}"

    def start(self) -> FakeSocketModeServer:
        app = web.Application()
        app.router.add_get("/link/", self._handle)
        app.on_startup.append(self._remember_loop)  # the server's own loop, where the WebSocket lives
        self._server = BackgroundServer(app, self.host, self.port).start()  # the same runner the app's tests use
        self.port = self._server.port
        return self

    def stop(self) -> None:
        async def close_socket() -> None:
            if self._ws is not None and not self._ws.closed:
                await self._ws.close()

        asyncio.run_coroutine_threadsafe(close_socket(), self._loop).result(10)
        self._server.stop()

    # -------------------------------------------------------------------------------- protocol

    async def _remember_loop(self, _: web.Application) -> None:
        self._loop = asyncio.get_running_loop()

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        with self._cond:
            self._ws = ws
            self.connections += 1
            self._cond.notify_all()
        await ws.send_str(json.dumps({
            "type": "hello",
            "num_connections": 1,
            "debug_info": {"host": "applink-test", "build_number": 1, "approximate_connection_time": 18060},
            "connection_info": {"app_id": self.app_id},
        }))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            now = time.monotonic()
            try:
                data = json.loads(msg.data)
            except json.JSONDecodeError:
                data = msg.data
            with self._cond:
                envelope_id = data.get("envelope_id") if isinstance(data, dict) else None
                if envelope_id in self._sent:
                    self.acks[envelope_id] = Ack(envelope_id, self._sent[envelope_id], now, data)
                else:
                    self.other_messages.append(data)
                self._cond.notify_all()
        return ws

    def wait_connected(self, timeout: float = 10.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self._ws is not None, timeout), "the app never connected"

    def send(self, envelope_type: str, payload: dict, *, accepts_response_payload: bool,
             envelope_id: str | None = None) -> str:
        """Deliver one envelope as Slack does; returns its envelope_id."""
        self.wait_connected()
        envelope_id = envelope_id or str(uuid.uuid4())
        envelope = {"envelope_id": envelope_id, "payload": payload, "type": envelope_type,
                    "accepts_response_payload": accepts_response_payload}
        with self._cond:
            self._sent[envelope_id] = time.monotonic()
        assert self._ws is not None
        asyncio.run_coroutine_threadsafe(self._ws.send_str(json.dumps(envelope)), self._loop).result(5)
        return envelope_id

    def wait_ack(self, envelope_id: str, timeout: float = 10.0) -> Ack:
        with self._cond:
            self._cond.wait_for(lambda: envelope_id in self.acks, timeout)
            ack = self.acks.get(envelope_id)
        assert ack is not None, f"no acknowledgement of {envelope_id}; other messages: {self.other_messages}"
        return ack


# ------------------------------------------------------------------------------------------- payloads


def slash_command_payload(text: str, *, user: str, response_url: str, trigger_id: str | None = None,
                          channel: str = "C0OPS") -> dict:
    """A ``slash_commands`` envelope's payload: the same fields as the HTTP form, as a JSON object."""
    return {
        "token": "verification-token", "team_id": "T0001", "team_domain": "example", "channel_id": channel,
        "channel_name": "general", "user_id": user, "user_name": user.lower(), "command": "/rollback",
        "text": text, "api_app_id": "A0001", "is_enterprise_install": "false", "response_url": response_url,
        "trigger_id": trigger_id or f"{int(time.time() * 1000)}.{uuid.uuid4().int % 10**9}.{uuid.uuid4().hex}",
    }


def block_actions_payload(*, user: str, action_id: str, message: dict, channel: str,
                          response_url: str = "https://hooks.slack.com/actions/T0001/1/abc") -> dict:
    """An ``interactive`` envelope's payload for a click on a message button (Slack's block_actions shape)."""
    element, block_id = {}, None
    for block in message.get("blocks") or []:
        for e in block.get("elements") or []:
            if e.get("action_id") == action_id:
                element, block_id = e, block.get("block_id")
    assert element, f"no {action_id} button in the message"
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0001"},
        "api_app_id": "A0001", "token": "verification-token",
        "container": {"type": "message", "message_ts": message["ts"], "channel_id": channel, "is_ephemeral": False},
        "trigger_id": f"{int(time.time() * 1000)}.{uuid.uuid4().int % 10**9}.{uuid.uuid4().hex}",
        "team": {"id": "T0001", "domain": "example"}, "enterprise": None, "is_enterprise_install": False,
        "channel": {"id": channel, "name": "incidents"},
        "message": message,
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [{"action_id": action_id, "block_id": block_id, "text": element.get("text"),
                     "value": element.get("value"), "style": element.get("style"), "type": "button",
                     "action_ts": f"{time.time():.6f}"}],
    }


# -------------------------------------------------------------------------------------------- fixture


@dataclass
class SocketApp:
    server: FakeSocketModeServer
    handler: SocketModeHandler
    services: Services
    standin: Any
    app: Any


@pytest.fixture
def socket_app(settings, db, standin, world) -> Iterator[SocketApp]:
    """The real app, connected the way ``rollback-bot serve`` connects in Socket Mode."""
    server = FakeSocketModeServer().start()
    standin.socket_mode_url = server.url
    s = settings.model_copy(update={"slack_api_url": standin.base_url, "slack_signing_secret": None,
                                    "slack_app_token": SecretStr(APP_TOKEN)})
    services = build_services(s, db)
    app = build_app(s, services)
    ensure_in_channel(app.client, s.incident_channel)  # as `serve` does at start
    handler = SocketModeHandler(app, s.slack_app_token.get_secret_value(), web_client=app.client)
    handler.connect()  # non-blocking: what handler.start() does before it waits for ever
    try:
        server.wait_connected()
        yield SocketApp(server, handler, services, standin, app)
    finally:
        handler.close()
        app.progress.flush(10)
        app.progress.close()  # stops its Slack lane
        server.stop()


# ---------------------------------------------------------------------------------------------- tests


def test_connection_uses_apps_connections_open_with_the_app_token(socket_app):
    [call] = socket_app.standin.calls("apps.connections.open")
    assert call.authorized and call.ok
    assert socket_app.server.connections == 1


def test_help_is_acked_with_its_answer_as_the_payload(socket_app):
    url = socket_app.standin.response_url("sm-help", channel="C0OPS", user="U0ALICE")
    envelope = socket_app.server.send("slash_commands", slash_command_payload("help", user="U0ALICE", response_url=url),
                                      accepts_response_payload=True)
    ack = socket_app.server.wait_ack(envelope)
    assert ack.seconds < ACK_LIMIT
    assert ack.message["envelope_id"] == envelope
    assert "/rollback status" in ack.message["payload"]["text"]
    assert ack.message["payload"]["response_type"] == "ephemeral"


def test_slash_command_and_button_click_are_acked_in_time_and_take_effect(socket_app, conn):
    sm, standin = socket_app.server, socket_app.standin
    # /rollback status: acked at once (empty ack), the answer goes to the response_url
    url = standin.response_url("sm-status", channel="C0OPS", user="U0ALICE")
    env = sm.send("slash_commands", slash_command_payload("status", user="U0ALICE", response_url=url),
                  accepts_response_payload=True)
    ack = sm.wait_ack(env)
    assert ack.seconds < ACK_LIMIT and ack.message == {"envelope_id": env}
    body = standin.wait_for("response_url", lambda c: c.body["key"] == "sm-status", timeout=15)[0].body
    assert MODEL in json.dumps(body["blocks"])

    # /rollback start: the request card is posted in the incident channel
    backup = socket_app.services.registry.recommend(MODEL).backup.name
    url = standin.response_url("sm-start", channel="C0OPS", user="U0ALICE")
    env = sm.send("slash_commands",
                  slash_command_payload(f"start {MODEL} {backup} IC collapsed --confirm", user="U0ALICE", response_url=url),
                  accepts_response_payload=True)
    assert sm.wait_ack(env).seconds < ACK_LIMIT
    standin.wait_for("response_url", lambda c: c.body["key"] == "sm-start", timeout=15)
    card = next(m for m in standin.messages(CHANNEL) if not m.is_reply)

    # a second person clicks Approve: an ``interactive`` envelope
    env = sm.send("interactive", block_actions_payload(user="U0BOB", action_id="rollback_approve",
                                                       message=card.as_slack(), channel=CHANNEL),
                  accepts_response_payload=False)
    ack = sm.wait_ack(env)
    assert ack.seconds < ACK_LIMIT and ack.message == {"envelope_id": env}
    standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""), timeout=15)
    inc = socket_app.services.engine.list_incidents()[0]
    assert inc.state == "approved" and inc.approved_by == "U0BOB"
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.jobs WHERE kind = 'execute'").fetchone()["n"] == 1

    # a click by the requester herself is acked too, and refused with an ephemeral message
    url = standin.response_url("sm-own", channel=CHANNEL, user="U0ALICE")
    env = sm.send("interactive", block_actions_payload(user="U0ALICE", action_id="rollback_approve",
                                                       message=card.as_slack(), channel=CHANNEL, response_url=url),
                  accepts_response_payload=False)
    assert sm.wait_ack(env).seconds < ACK_LIMIT
    [refusal] = standin.wait_for("response_url", lambda c: c.body["key"] == "sm-own", timeout=15)
    assert "already approved" in refusal.body["text"]
    assert sm.other_messages == []


def test_redelivered_envelope_is_acked_again_but_acts_once(socket_app, conn):
    """Slack redelivers an envelope it did not see acknowledged (new envelope_id, same payload)."""
    sm, standin = socket_app.server, socket_app.standin
    spy = ClaimSpy(socket_app.services)
    url = standin.response_url("sm-halt", channel="C0OPS", user="U0ALICE")
    payload = slash_command_payload("halt suspicious fills", user="U0ALICE", response_url=url)
    first = sm.send("slash_commands", payload, accepts_response_payload=True)
    assert sm.wait_ack(first).seconds < ACK_LIMIT
    standin.wait_for("response_url", lambda c: c.body["key"] == "sm-halt", timeout=15)
    again = sm.send("slash_commands", payload, accepts_response_payload=True)
    assert sm.wait_ack(again).seconds < ACK_LIMIT
    spy.wait_refused("command:")
    socket_app.app.progress.flush(10)
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.incidents WHERE kind = 'halt'").fetchone()["n"] == 1
    assert len(standin.calls("response_url")) == 1  # the halt's answer; nothing for the redelivery


def test_twenty_envelopes_at_once_are_all_acked_within_three_seconds(socket_app):
    sm, standin = socket_app.server, socket_app.standin
    envelopes = []
    for i in range(20):
        url = standin.response_url(f"sm-burst-{i}", channel="C0OPS", user="U0ALICE")
        envelopes.append(sm.send("slash_commands", slash_command_payload("status", user="U0ALICE", response_url=url),
                                 accepts_response_payload=True))
    acks = [sm.wait_ack(e, timeout=15) for e in envelopes]
    assert max(a.seconds for a in acks) < ACK_LIMIT, sorted(a.seconds for a in acks)
    standin.wait_for("response_url", lambda c: c.body["key"].startswith("sm-burst-"), timeout=30, count=20)
