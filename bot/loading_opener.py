"""How a form's loading view is opened for ``serve`` (handlers/loading.py), in its loading process
(bot/loading_proc.py), never on the event loop that writes the acks.

slack_sdk's AsyncWebClient on the process's event loop, over one kept-alive aiohttp session, with slack_sdk's
own async retry handlers (429 with Retry-After, 5xx, connection reset): many views open at once.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from handlers.loading import loading_view

log = logging.getLogger("rollback_bot.loading")

__all__ = ["LoadingOpener"]


class LoadingOpener:
    """``await opener.open(trigger_id, kind)`` -> ``{"id", "hash"}`` of the loading view, ``{}`` if Slack refused."""

    def __init__(self, *, token: str | None, base_url: str, metrics: Any = None) -> None:
        self.token = token
        self.base_url = base_url
        self.metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None
        self._views: dict[str, dict] = {}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        # slack_sdk formats every request and answer for a debug line unless its logger's own level is set
        sdk_log = logging.getLogger("rollback_bot.loading.slack_sdk")
        sdk_log.setLevel(logging.getLogger().getEffectiveLevel())
        self._client = AsyncWebClient(token=self.token, base_url=self.base_url, session=self._session, timeout=10,
                                      logger=sdk_log,
                                      retry_handlers=[AsyncConnectionErrorRetryHandler(max_retry_count=1),
                                                      AsyncRateLimitErrorRetryHandler(max_retry_count=1),
                                                      AsyncServerErrorRetryHandler(max_retry_count=1)])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = self._client = None

    async def open(self, trigger_id: str, kind: str) -> dict[str, str]:
        if self._client is None:
            await self.start()
        assert self._client is not None
        view = self._views.get(kind) or self._views.setdefault(kind, loading_view(kind))
        try:
            response = await self._client.views_open(trigger_id=trigger_id, view=view)
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "unknown")
            if self.metrics is not None:
                self.metrics.slack_errors.labels(method="views.open", error=error[:60]).inc()
            log.warning("the loading view could not be opened: %s", error)
            return {}
        except Exception:  # noqa: BLE001 - the work is handed over all the same; it opens the form itself
            log.exception("the loading view could not be opened")
            return {}
        opened = response["view"]
        return {"id": opened["id"], "hash": opened.get("hash", "")}
