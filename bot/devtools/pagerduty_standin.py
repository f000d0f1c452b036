"""A local stand-in for PagerDuty's Events API v2 (``POST /v2/enqueue``), for tests and the demo.

A real HTTP server on 127.0.0.1, port 0, in a thread. It checks events as PagerDuty documents them (a 32-character
routing key, ``event_action`` trigger / acknowledge / resolve, a trigger's ``payload.summary``, ``source`` and
``severity``, a dedup key of at most 255 characters for the others), answers ``202`` with the dedup key, and keeps
every request and every accepted event, and each alert's status by dedup key (triggered → acknowledged →
resolved; a trigger after resolve opens it again). ``fail_next`` makes the next requests answer 429 or 5xx.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bot.devtools.served import ServedInThread

__all__ = ["PagerDutyStandIn", "Received"]

SEVERITIES = ("critical", "error", "warning", "info")


@dataclass
class Received:
    """One request: its body (parsed), the status answered, and whether the event was accepted."""

    body: Any
    status: int
    at: float = field(default_factory=time.time)

    @property
    def accepted(self) -> bool:
        return self.status == 202

    @property
    def action(self) -> str | None:
        return self.body.get("event_action") if isinstance(self.body, dict) else None


class PagerDutyStandIn(ServedInThread):
    def __init__(self, *, routing_key: str | None = None) -> None:
        self.routing_key = routing_key  # when set, another key is refused (400), as PagerDuty does
        self._lock = threading.Condition()
        self._received: list[Received] = []
        self._faults: deque[tuple[int, int | None]] = deque()
        self.alerts: dict[str, str] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> PagerDutyStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                standin._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="pagerduty-standin", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        """The enqueue endpoint, as PAGERDUTY_EVENTS_URL."""
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v2/enqueue"

    # ------------------------------------------------------------------------------------------ the test's side

    def fail_next(self, status: int = 429, *, times: int = 1, retry_after: int | None = None) -> None:
        """The next ``times`` requests answer ``status`` (429 with ``Retry-After`` when given, or a 5xx)."""
        with self._lock:
            self._faults.extend([(status, retry_after)] * times)

    def heal(self) -> None:
        """Forget the failures still queued: the next request is answered normally."""
        with self._lock:
            self._faults.clear()

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def events(self, action: str | None = None) -> list[dict]:
        """The accepted events (optionally of one action), oldest first."""
        return [r.body for r in self.received() if r.accepted and (action is None or r.action == action)]

    def wait_for(self, predicate: Callable[[dict], bool], *, count: int = 1, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [r.body for r in self._received if r.accepted and predicate(r.body)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"PagerDuty stand-in: {count} matching event(s) not received in {timeout} s; "
                                         f"got {[r.body for r in self._received]}")
                self._lock.wait(left)

    # ------------------------------------------------------------------------------------------ the server's side

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length)
        try:
            body: Any = json.loads(raw or b"null")
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers: dict[str, str] = {}
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if request.path != "/v2/enqueue":
            status, answer = 404, {"status": "not found", "message": f"no route {request.path}"}
        elif fault is not None:
            status, retry_after = fault
            answer = {"status": "throttle event", "message": "Requests for this service are arriving too quickly"} \
                if status == 429 else {"status": "error", "message": "Internal server error"}
            if retry_after is not None:
                headers["Retry-After"] = str(retry_after)
        else:
            status, answer = self._accept(body)
        with self._lock:
            self._received.append(Received(body, status))
            self._lock.notify_all()
        data = json.dumps(answer).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(data)

    def _accept(self, event: Any) -> tuple[int, dict]:
        errors = self._check(event)
        if errors:
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
        action = event["event_action"]
        key = event.get("dedup_key") or uuid.uuid4().hex
        with self._lock:
            current = self.alerts.get(key)
            if action == "trigger" and current in (None, "resolved"):
                self.alerts[key] = "triggered"
            elif action == "acknowledge" and current == "triggered":
                self.alerts[key] = "acknowledged"
            elif action == "resolve" and current in ("triggered", "acknowledged"):
                self.alerts[key] = "resolved"
        return 202, {"status": "success", "message": "Event processed", "dedup_key": key}

    def _check(self, event: Any) -> list[str]:
        if not isinstance(event, dict):
            return ["the body must be a JSON object"]
        errors = []
        key = event.get("routing_key")
        if not isinstance(key, str) or len(key) != 32:
            errors.append("'routing_key' must be a 32 character string")
        elif self.routing_key is not None and key != self.routing_key:
            errors.append("Invalid routing key")
        action = event.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' must be one of trigger, acknowledge, resolve")
        dedup = event.get("dedup_key")
        if dedup is not None and (not isinstance(dedup, str) or not dedup or len(dedup) > 255):
            errors.append("'dedup_key' must be a string of 1 to 255 characters")
        if action in ("acknowledge", "resolve") and dedup is None:
            errors.append("'dedup_key' is required for acknowledge and resolve")
        if action == "trigger":
            payload = event.get("payload")
            if not isinstance(payload, dict):
                errors.append("'payload' is required for trigger")
            else:
                for name in ("summary", "source"):
                    if not isinstance(payload.get(name), str) or not payload[name].strip():
                        errors.append(f"'payload.{name}' is required")
                if len(str(payload.get("summary") or "")) > 1024:
                    errors.append("'payload.summary' must be at most 1024 characters")
                if payload.get("severity") not in SEVERITIES:
                    errors.append("'payload.severity' must be one of critical, error, warning, info")
        return errors
