"""PagerDuty's Events API v2 through python-pagerduty (``pagerduty.EventsApiV2Client``).

What the library does, and what is set here (python-pagerduty 7.2.0):

- It retries 500, 502, 503 and 504 (2, 4, 6 and 6 times) and network errors (3 times), waiting
  ``sleep_timer`` × 2, × 4, … between tries; at most ``max_http_attempts`` HTTP retries in all.
- By default it retries a 429 without limit and ignores ``Retry-After``: here a 429 is retried
  ``RATE_LIMIT_RETRIES`` times, so a page never hangs a worker; the first wait is PAGERDUTY_BACKOFF_SECONDS.
- After its retries it returns the last response and ``send_event`` raises ``pagerduty.Error`` (or
  ``HttpError``/``ServerHttpError``); any 4xx but 429 (a bad routing key or event) is not retried.
- Its base URL must be https. PAGERDUTY_EVENTS_URL is the enqueue endpoint (``…/v2/enqueue``); plain http is
  accepted only to this machine (a local stand-in, see bot/devtools/pagerduty_standin.py), as settings check.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pagerduty

__all__ = ["PAGERDUTY_SEVERITY", "PagerDuty", "PagerDutyFailed"]

RATE_LIMIT_RETRIES = 4
MAX_HTTP_RETRIES = 6
# The incident's severity as PagerDuty's (critical, error, warning, info).
PAGERDUTY_SEVERITY = {"critical": "critical", "high": "error", "medium": "warning", "low": "info"}


class PagerDutyFailed(Exception):
    """PagerDuty did not accept an event after the client's retries."""


class _EventsClient(pagerduty.EventsApiV2Client):
    """The library's client, allowing plain http to this machine only (the settings check the URL)."""

    @property
    def url(self) -> str:
        return self._url

    @url.setter
    def url(self, new_base_url: str) -> None:
        parts = urlsplit(new_base_url)
        if parts.scheme != "https" and not (parts.scheme == "http"
                                            and parts.hostname in ("127.0.0.1", "localhost", "::1")):
            raise pagerduty.UrlError("API base URL must use scheme https://")
        self._url = new_base_url


class PagerDuty:
    """Trigger, acknowledge and resolve one alert per incident (its dedup key)."""

    def __init__(self, routing_key: str, events_url: str, *, backoff_seconds: float = 1.5,
                 timeout_seconds: float = 10.0) -> None:
        path = urlsplit(events_url).path.rstrip("/")
        if not path.endswith("/v2/enqueue"):
            raise ValueError("PAGERDUTY_EVENTS_URL must end in /v2/enqueue")
        base = events_url.rstrip("/")[: -len("/v2/enqueue")]
        self._client = _EventsClient(routing_key, base_url=base)
        self._client.retry[429] = RATE_LIMIT_RETRIES
        self._client.max_http_attempts = MAX_HTTP_RETRIES
        self._client.sleep_timer = backoff_seconds / 2  # the library doubles it before the first wait
        self._client.timeout = timeout_seconds

    def __repr__(self) -> str:  # never shows the routing key
        return f"PagerDuty({self._client.url!r})"

    def trigger(self, dedup_key: str, *, summary: str, source: str, severity: str = "critical",
                details: dict[str, Any] | None = None) -> str:
        return self._send(lambda: self._client.trigger(
            summary[:1024], source[:255], dedup_key=dedup_key, severity=PAGERDUTY_SEVERITY.get(severity, "critical"),
            custom_details=details or {}))

    def acknowledge(self, dedup_key: str) -> str:
        return self._send(lambda: self._client.acknowledge(dedup_key))

    def resolve(self, dedup_key: str) -> str:
        return self._send(lambda: self._client.resolve(dedup_key))

    def send(self, action: str, dedup_key: str, **trigger: Any) -> str:
        if action == "trigger":
            return self.trigger(dedup_key, **trigger)
        if action == "acknowledge":
            return self.acknowledge(dedup_key)
        if action == "resolve":
            return self.resolve(dedup_key)
        raise ValueError(f"unknown PagerDuty action {action!r}")

    @staticmethod
    def _send(call) -> str:
        try:
            return call()
        except pagerduty.Error as exc:
            response = getattr(exc, "response", None)
            status = f"HTTP {response.status_code}: " if response is not None else ""
            raise PagerDutyFailed(f"PagerDuty refused the event ({status}{str(exc)[:300]})") from None
