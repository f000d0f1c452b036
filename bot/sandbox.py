"""The real app, served over HTTP, talking to a local Slack Web API stand-in: for tests, demo and console.

Everything is real except Slack itself: requests reach the app signed as Slack signs them, the app's
``slack_sdk.WebClient`` calls the stand-in over HTTP, PostgreSQL is a real server, models are real files.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from bot.app import build_app
from bot.membership import ensure_in_channel
from bot.server import BackgroundServer, build_web_app
from bot.slack_signing import SenderResponse, SlackSender
from bot.slack_standin import SlackStandIn
from core.services import Services

SIGNING_SECRET = "sandbox-signing-secret"
BOT_TOKEN = "xoxb-sandbox-token"


@dataclass
class Reply:
    status: int
    ack: str
    response_key: str


class Sandbox:
    def __init__(self, services: Services, *, standin: SlackStandIn | None = None, start_worker: bool = False) -> None:
        self.services = services
        self.standin = standin or SlackStandIn()
        self._own_standin = standin is None
        self.server: BackgroundServer | None = None
        self.sender: SlackSender | None = None
        self.start_worker = start_worker
        self._keys = itertools.count(1)

    def start(self) -> Sandbox:
        if self._own_standin:
            self.standin.start()
        settings = self.services.settings
        if settings.slack_signing_secret is None or settings.slack_bot_token is None:
            raise ValueError("sandbox settings need SLACK_SIGNING_SECRET and SLACK_BOT_TOKEN")
        app = build_app(settings, self.services)
        self.app = app
        if settings.incident_channel:
            ensure_in_channel(app.client, settings.incident_channel)  # as `serve` does at start
        self.server = BackgroundServer(build_web_app(app, self.services)).start()
        self.sender = SlackSender(self.server.url + "/slack/events", settings.slack_signing_secret.get_secret_value(),
                                  trigger_ids=self.standin.issue_trigger_id, response_urls=self.click_response_url)
        if self.start_worker and hasattr(self.services, "start_background"):
            self.services.start_background()
        return self

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until every engine event has been shown in Slack."""
        self.app.progress.flush(timeout)

    def run_worker(self) -> int:
        """Run every due background job now (tests and the demo drive the worker explicitly)."""
        n = self.services.worker.run_due()
        self.settle()
        return n

    def stop(self) -> None:
        if self.start_worker and hasattr(self.services, "stop_background"):
            self.services.stop_background()
        if self.server:
            self.server.stop()
        if getattr(self, "app", None) is not None:
            self.app.deps.shutdown()  # work after the ack still talks to the stand-in
            self.app.progress.flush(10)
            self.app.progress.close()
        if self._own_standin:
            self.standin.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ acting

    def command(self, user: str, text: str, *, channel: str = "C0OPS", **kwargs) -> Reply:
        """Type ``/rollback {text}`` as ``user``; returns the HTTP ack and the response_url key to wait on."""
        assert self.sender is not None
        key = f"cmd-{next(self._keys)}"
        url = self.standin.response_url(key, channel=channel, user=user)
        resp: SenderResponse = self.sender.slash_command(
            text=text, user_id=user, channel_id=channel, response_url=url, **kwargs
        )
        return Reply(resp.status, resp.body, key)

    def click_response_url(self, channel: str, user: str, message_ts: str) -> str:
        """The response_url Slack gives a click on a message button: it answers in that channel, to that user."""
        return self.standin.response_url(f"click-{next(self._keys)}", channel=channel, user=user,
                                         message_ts=message_ts)

    def responses(self, key: str, timeout: float = 10.0, count: int = 1) -> list[dict]:
        calls = self.standin.wait_for("response_url", lambda c: c.body.get("key") == key, timeout=timeout, count=count)
        return [c.body for c in calls]
