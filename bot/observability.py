"""Structured JSON logs carrying the incident id, secret redaction, and Prometheus metrics.

* Every log line is one JSON object: time, level, logger, message, the incident the thread works on
  (``core.logctx``), and the exception if any.
* A filter replaces every configured secret value (tokens, signing secret, database and SMTP passwords)
  with ``[redacted]`` in every record, whatever logged it.
* ``Metrics`` holds the app's Prometheus collectors in its own registry: rollbacks by outcome, step
  durations, Slack API calls, errors and retries. ``GET /metrics`` serves them; under `serve` (multiprocess
  mode, bot/metrics_dir.py) it serves the sum over serve and its work process.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

from bot import metrics_dir
from core.engine import Engine
from core.incidents import CLOSED, Event
from core.logctx import current_incident
from core.settings import Settings

# ------------------------------------------------------------------------------------------------ logs


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        incident = getattr(record, "incident", None) or current_incident.get()
        if incident:
            entry["incident"] = incident
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class RedactSecrets(logging.Filter):
    """Replace secret values wherever they appear in a record (message, args, exception text)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg = self._clean(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self._clean(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def secret_values(settings: Settings) -> list[str]:
    out = []
    for name in ("slack_bot_token", "slack_signing_secret", "slack_app_token", "database_url", "smtp_url"):
        value = getattr(settings, name, None)
        if value is None:
            continue
        raw = value.get_secret_value()
        if name in ("database_url", "smtp_url"):
            password = urlsplit(raw).password
            if password:
                out.append(password)
        else:
            out.append(raw)
    return out


def configure_logging(settings: Settings | None, *, json_format: bool, verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if settings is not None:
        handler.addFilter(RedactSecrets(secret_values(settings)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    level = "DEBUG" if verbose else settings.log_level if settings is not None else "INFO"
    root.setLevel(getattr(logging, level))


# --------------------------------------------------------------------------------------------- metrics


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rollbacks = Counter("rollback_bot_rollbacks", "Rollbacks by outcome", ["outcome"], registry=self.registry)
        self.steps = Histogram(
            "rollback_bot_step_duration_seconds", "Duration of each runbook step", ["step"], registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.slack_errors = Counter("rollback_bot_slack_api_errors", "Slack Web API errors", ["method", "error"],
                                    registry=self.registry)
        self.slack_retries = Counter("rollback_bot_slack_api_retries", "Slack Web API retries", ["reason"],
                                     registry=self.registry)
        self.slack_calls = Counter("rollback_bot_slack_api_calls", "Slack Web API calls", ["method"],
                                   registry=self.registry)
        for outcome in ("rolled_back", *sorted(CLOSED)):  # every outcome shown from the start, at 0
            self.rollbacks.labels(outcome=outcome)

    def render(self) -> tuple[bytes, str]:
        """This process's metrics; in multiprocess mode, every process's (serve and its work process)."""
        path = metrics_dir.active()
        if path is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=path)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def watch(self, engine: Engine) -> None:
        def on_event(event: Event) -> None:
            inc = event.incident
            if event.kind == "state" and inc.kind == "rollback":
                if inc.state in CLOSED or inc.state == "revert_failed":
                    self.rollbacks.labels(outcome=inc.state).inc()
                elif inc.state in ("monitoring", "verified"):
                    self.rollbacks.labels(outcome="rolled_back").inc()
            elif event.kind == "step" and event.step:
                step = next((s for s in reversed(engine.steps(inc.id)) if s.step == event.step), None)
                if step and step.finished_at:
                    self.steps.labels(step=event.step).observe((step.finished_at - step.started_at).total_seconds())

        engine.subscribe(on_event)


def counting(handler_class: type[RetryHandler], metrics: Metrics | None, reason: str, **kwargs) -> RetryHandler:
    """One of slack_sdk's own retry handlers, counting each retry it makes into ``metrics``."""

    class Counting(handler_class):  # type: ignore[valid-type, misc]
        def prepare_for_next_attempt(self, *, state: RetryState, request: HttpRequest,
                                     response: HttpResponse | None = None, error: Exception | None = None) -> None:
            if metrics is not None:
                metrics.slack_retries.labels(reason=reason).inc()
            super().prepare_for_next_attempt(state=state, request=request, response=response, error=error)

    return Counting(**kwargs)


class InstrumentedWebClient(WebClient):
    """slack_sdk's WebClient that counts API errors and retries into ``Metrics``."""

    metrics: Metrics | None = None

    def api_call(self, api_method: str, **kwargs):  # type: ignore[override]
        if self.metrics is not None:
            self.metrics.slack_calls.labels(method=api_method).inc()
        try:
            return super().api_call(api_method, **kwargs)
        except SlackApiError as exc:
            if self.metrics is not None:
                error = (exc.response.get("error") if exc.response is not None else None) or "unknown"
                self.metrics.slack_errors.labels(method=api_method, error=str(error)[:60]).inc()
            raise
