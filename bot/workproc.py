"""The work process: slow work after the ack runs in a child process of `rollback-bot serve`.

Python threads share one interpreter lock, so in one process a pre-flight (xgboost), diagnostics or a
rollback would make the next Slack request wait for the lock. `serve` therefore keeps its own process for
acknowledging Slack (about what a bare Bolt app costs) and hands each piece of work, as one JSON line, to a
child (`rollback-bot work`) that builds the same app and services and also runs the background worker
(rollbacks, timers, monitoring). Work items carry only plain values: the request body, the response URL.

If the child dies it is started again on the next item; rollbacks themselves are journaled in PostgreSQL
and resumed by the child's worker, so nothing but an in-flight reply can be lost.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from typing import Any

from slack_bolt.context.respond import Respond

log = logging.getLogger("rollback_bot.workproc")


class WorkProcess:
    """The parent's side: a child process fed JSON lines on its standard input."""

    def __init__(self, argv: list[str] | None = None) -> None:
        self.argv = argv or [sys.executable, "-m", "bot", "work"]
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()

    def start(self, *, supervise_every: float = 2.0) -> WorkProcess:
        with self._lock:
            self._spawn()
        threading.Thread(target=self._write_loop, name="work-writer", daemon=True).start()
        self._stopping = threading.Event()
        threading.Thread(target=self._supervise, args=(supervise_every,), name="work-supervisor", daemon=True).start()
        return self

    def _supervise(self, every: float) -> None:
        """The child also runs the background worker: start it again whenever it is gone."""
        while not self._stopping.wait(every):
            with self._lock:
                if self._proc is not None and self._proc.poll() is not None:
                    log.error("work process exited with %s; starting it again", self._proc.returncode)
                    self._spawn()

    def _spawn(self) -> None:
        self._proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, text=True, encoding="utf-8",
                                      env=dict(os.environ))
        log.info("work process %s started", self._proc.pid)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def forward(self, body: str, headers: dict[str, str]) -> None:
        """A whole Slack request, verified and acked by the parent, for the child's app to handle."""
        self.submit(DISPATCH, {"body": body, "headers": headers})

    def submit(self, name: str, payload: dict[str, Any]) -> None:
        """Queue a work item; a writer thread feeds the child, so an ack never waits for a full pipe."""
        self._queue.put(json.dumps({"work": name, **payload}, ensure_ascii=False) + "\n")

    def _write_loop(self) -> None:
        while True:
            line = self._queue.get()
            if line is None:
                return
            try:
                self._write(line)
            except OSError:
                log.exception("a work item could not be handed to the work process")

    def _write(self, line: str) -> None:
        with self._lock:
            for attempt in (1, 2):
                if not self.alive():
                    log.warning("work process is not running; starting it again")
                    self._spawn()
                try:
                    assert self._proc is not None and self._proc.stdin is not None
                    self._proc.stdin.write(line)
                    self._proc.stdin.flush()
                    return
                except (BrokenPipeError, OSError):
                    if attempt == 2:
                        raise

    def stop(self, timeout: float = 20.0) -> None:
        if getattr(self, "_stopping", None) is not None:
            self._stopping.set()
        self._queue.put(None)
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()  # end of input: the child finishes its work and exits
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=5)


def encode(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Plain values of a listener's keyword arguments (the client and logger are the child's own)."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in ("body", "event"):
            out[key] = value
        elif key == "respond":
            out["response_url"] = getattr(value, "response_url", None)
    return out


def decode(payload: dict[str, Any], client: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"client": client}
    for key in ("body", "event"):
        if key in payload:
            kwargs[key] = payload[key]
    if "response_url" in payload:
        kwargs["respond"] = Respond(response_url=payload["response_url"])
    kwargs["logger"] = log
    return kwargs


DISPATCH = "dispatch"


def serve_stdin(deps: Any, client: Any, stream: Any = None, *, app: Any = None) -> None:
    """The child's loop: run each work item on the app's pool until standard input ends. A ``dispatch`` item
    is a whole Slack request the parent already verified and acked: the app handles it as if it came itself."""
    from slack_bolt import BoltRequest

    stream = stream or sys.stdin
    for line in stream:
        line = line.strip()
        if not line:
            continue
        try:
            item = json.loads(line)
            if item.get("work") == DISPATCH and app is not None:
                request = BoltRequest(body=item["body"], headers={k: [v] for k, v in item["headers"].items()})
                deps.run_local(app.dispatch, req=request)
                continue
            work = deps.works[item.pop("work")]
        except (ValueError, KeyError) as exc:
            log.error("unreadable work item: %s", exc)
            continue
        kwargs = decode(item, client)
        accepted = inspect.signature(work).parameters
        deps.run_local(work, **{k: v for k, v in kwargs.items() if k in accepted})
    deps.executor.shutdown(wait=True)
