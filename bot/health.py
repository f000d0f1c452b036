"""What `serve` reports about itself: the database, the bot token (Slack's ``auth.test``) and the work process.

* At start ``verify_token`` calls ``auth.test``: a token Slack refuses (``invalid_auth``, ``token_revoked`` …)
  stops start-up with one line naming SLACK_BOT_TOKEN and Slack's error, never the token.
* ``SlackAuth`` checks the token again every ``SLACK_AUTH_CHECK_SECONDS`` on a thread of its own and keeps the
  last answer, so ``/healthz`` never waits for Slack; a revoked token makes ``/healthz`` 503 with a JSON body
  naming Slack's error.
* ``ops_routes`` adds ``GET /healthz`` and ``GET /metrics`` to an aiohttp app: the Slack app in HTTP mode, or
  a small app of their own (``build_ops_app``) on HEALTH_PORT in Socket Mode, and on METRICS_ADDR.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from core.errors import ConfigError, RollbackError

log = logging.getLogger("rollback_bot.health")

# Slack's answers that mean the token itself is no good (as opposed to Slack being unreachable).
REFUSED = frozenset({
    "invalid_auth", "token_revoked", "token_expired", "account_inactive", "not_authed", "not_allowed_token_type",
    "team_disabled", "ekm_access_denied",
})
UP = "up"
UNREACHABLE = "unreachable"

Render = Callable[[], tuple[bytes, str]]


def _auth_test(client: WebClient) -> str:
    """``up``, Slack's error code, or ``unreachable``."""
    try:
        client.auth_test()
        return UP
    except SlackApiError as exc:
        return str((exc.response.get("error") if exc.response is not None else None) or "error")
    except Exception:  # noqa: BLE001 - connection refused, DNS, timeout (after slack_sdk's own retries)
        return UNREACHABLE


def verify_token(client: WebClient) -> None:
    """Start-up: raise a one-line error when Slack refuses SLACK_BOT_TOKEN or cannot be asked."""
    state = _auth_test(client)
    if state == UP:
        return
    if state in REFUSED:
        raise ConfigError(f"SLACK_BOT_TOKEN was refused by Slack's auth.test ({state}): install the app again or"
                          " set a valid bot token")
    if state == UNREACHABLE:
        raise RollbackError("Slack could not be reached at SLACK_API_URL to check SLACK_BOT_TOKEN (auth.test)")
    raise RollbackError(f"Slack's auth.test failed ({state}); SLACK_BOT_TOKEN could not be checked")


class SlackAuth:
    """The bot token's standing, re-checked with ``auth.test`` every ``every`` seconds; the last answer kept."""

    def __init__(self, client: WebClient, *, every: float, state: str = UP) -> None:
        self.client = client
        self.every = every
        self.state = state
        self.checked_at = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> str:
        state = _auth_test(self.client)
        if state != self.state:
            (log.info if state == UP else log.error)("Slack auth.test: %s (was %s)", state, self.state)
        self.state, self.checked_at = state, time.time()
        return state

    def start(self) -> SlackAuth:
        def loop() -> None:
            while not self._stop.wait(self.every):
                self.check()

        self._thread = threading.Thread(target=loop, name="slack-auth-check", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Health:
    db_ping: Callable[[], bool]
    slack: SlackAuth | None = None
    work_alive: Callable[[], bool] | None = None

    def report(self) -> tuple[int, dict]:
        """(HTTP status, body): 200 when the database answers and Slack accepts the token. A work process being
        started again is reported; it does not fail the check (requests wait for it in order)."""
        database = self.db_ping()
        body: dict = {"ok": False, "database": UP if database else "down"}
        ok = database
        if self.slack is not None:
            body["slack"] = self.slack.state
            body["slack_checked_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.slack.checked_at))
            ok = ok and self.slack.state == UP
        if self.work_alive is not None:
            body["work_process"] = UP if self.work_alive() else "restarting"
        body["ok"] = ok
        return (200 if ok else 503), body


def ops_routes(web_app: web.Application, executor: ThreadPoolExecutor, *, health: Health | None,
               render: Render | None) -> None:
    """``GET /healthz`` (when ``health``) and ``GET /metrics`` (when ``render``), run off the event loop."""

    async def healthz(_: web.Request) -> web.Response:
        assert health is not None
        status, body = await asyncio.get_running_loop().run_in_executor(executor, health.report)
        return web.json_response(body, status=status)

    async def metrics(_: web.Request) -> web.Response:
        assert render is not None
        body, content_type = await asyncio.get_running_loop().run_in_executor(executor, render)
        return web.Response(body=body, headers={"Content-Type": content_type})

    if health is not None:
        web_app.router.add_get("/healthz", healthz)
    if render is not None:
        web_app.router.add_get("/metrics", metrics)


def build_ops_app(*, health: Health | None = None, render: Render | None = None) -> web.Application:
    """An app serving only ``/healthz`` and/or ``/metrics`` (HEALTH_PORT in Socket Mode, METRICS_ADDR)."""
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ops")
    web_app = web.Application()
    ops_routes(web_app, executor, health=health, render=render)

    async def on_cleanup(_: web.Application) -> None:
        executor.shutdown(wait=False, cancel_futures=True)

    web_app.on_cleanup.append(on_cleanup)
    return web_app
