"""``serve`` opens a form's loading view itself, right after the ack (handlers/loading.py), on its event loop.

The serving process's job is to acknowledge Slack at once. A Web API call made from a thread would hold the
interpreter lock against the event loop that writes the acks (a thread keeps it up to 5 ms at a time), so
the loading view goes out through slack_sdk's AsyncWebClient on the same loop instead, over one kept-alive
aiohttp session, with slack_sdk's own async retry handlers (429 with Retry-After, 5xx, connection reset).
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
        self._client = AsyncWebClient(token=self.token, base_url=self.base_url, session=self._session, timeout=10,
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
