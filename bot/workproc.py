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

import collections
import contextlib
import fcntl
import inspect
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from typing import Any

from slack_bolt.context.respond import Respond

from bot import metrics_dir

log = logging.getLogger("rollback_bot.workproc")


class WorkProcess:
    """The parent's side: a child process fed JSON lines on its standard input.

    An item is written at once by the thread that submits it (for `serve`, the event loop acking Slack): one
    non-blocking write into a pipe enlarged to hold a burst, with no thread hand-off, so forwarding costs an
    ack no more than a system call. Only when the pipe is full or the child is gone does the item wait in a
    backlog, in order, for the writer thread, which starts the child again when needed and resends a line
    the dead child got only part of.
    """

    PIPE_BYTES = 1 << 20  # Linux's default limit for an unprivileged process

    def __init__(self, argv: list[str] | None = None) -> None:
        self.argv = argv or [sys.executable, "-m", "bot", "work"]
        self._proc: subprocess.Popen | None = None
        self._fd: int | None = None
        self._lock = threading.Lock()  # one writer on the pipe at a time; guards _proc, _fd and _backlog's head
        self._backlog: collections.deque[list] = collections.deque()  # [bytes, bytes already written]
        self._wake = threading.Event()
        self._stopping = threading.Event()

    def start(self, *, supervise_every: float = 2.0) -> WorkProcess:
        with self._lock:
            self._spawn()
        threading.Thread(target=self._write_loop, name="work-writer", daemon=True).start()
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
        if self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()  # the old child's pipe
        if self._proc is not None and self._proc.poll() is not None:
            metrics_dir.mark_dead(self._proc.pid)  # its counters stay in serve's /metrics
        # A session of its own: where the kernel groups CPU time by session (autogroup), the child's work is
        # then weighed apart from the acks instead of counting against them.
        self._proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, env=dict(os.environ),
                                      start_new_session=True)
        assert self._proc.stdin is not None
        self._fd = self._proc.stdin.fileno()
        os.set_blocking(self._fd, False)
        with contextlib.suppress(AttributeError, OSError):  # Linux only; a smaller pipe only means more backlog
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, self.PIPE_BYTES)  # type: ignore[attr-defined]
        if self._backlog:
            self._backlog[0][1] = 0  # the old child never saw the end of this line: send it whole
        log.info("work process %s started", self._proc.pid)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def forward(self, body: str, headers: dict[str, str], loading: dict | None = None) -> None:
        """A whole Slack request, verified and acked by the parent, for the child's app to handle; ``loading``:
        the loading modal the parent opened for it (handlers/loading.py), ``{}`` if that failed."""
        item: dict[str, Any] = {"body": body, "headers": headers}
        if loading is not None:
            item["loading"] = loading
        self.submit(DISPATCH, item)

    def submit(self, name: str, payload: dict[str, Any]) -> None:
        """Hand a work item to the child: written now when the pipe takes it, else queued behind the others."""
        data = (json.dumps({"work": name, **payload}, ensure_ascii=False) + "\n").encode("utf-8")
        if self._lock.acquire(blocking=False):
            try:
                if not self._backlog and self._fd is not None:
                    try:
                        written = os.write(self._fd, data)
                    except (BlockingIOError, BrokenPipeError, OSError):
                        written = 0
                    if written == len(data):
                        return
                    self._backlog.append([data, written])  # the backlog was empty: this stays first
                    self._wake.set()
                    return
            finally:
                self._lock.release()
        self._backlog.append([data, 0])
        self._wake.set()

    def _write_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            try:
                self._drain()
            except Exception:  # noqa: BLE001 - the writer must live on; the next item tries again
                log.exception("work items could not be handed to the work process")
                time.sleep(0.5)
                self._wake.set()

    def _drain(self) -> None:
        """Write the backlog in order, waiting for the pipe when it is full and restarting a dead child."""
        while True:
            with self._lock:
                if self._stopping.is_set() or not self._backlog:
                    return
                item = self._backlog[0]
                if not self.alive() or self._fd is None:
                    log.warning("work process is not running; starting it again")
                    self._spawn()
                fd = self._fd
                try:
                    item[1] += os.write(fd, item[0][item[1]:])
                except BlockingIOError:
                    pass
                except (BrokenPipeError, OSError):
                    if self.alive():
                        raise
                    continue  # it died: respawned (and the line resent whole) on the next turn
                if item[1] >= len(item[0]):
                    self._backlog.popleft()
                    continue
            select.select([], [fd], [], 0.5)  # room in the pipe (or the child is gone), without the lock

    def stop(self, timeout: float = 20.0) -> None:
        with self._lock:
            self._drain_blocking()
            self._stopping.set()
            self._wake.set()
            proc, self._proc, self._fd = self._proc, None, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()  # end of input: the child finishes its work and exits
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=5)

    def _drain_blocking(self, timeout: float = 5.0) -> None:
        """At stop (lock held): what is still in the backlog goes to the child before its input ends."""
        deadline = time.monotonic() + timeout
        while self._backlog and self.alive() and self._fd is not None and time.monotonic() < deadline:
            item = self._backlog[0]
            try:
                item[1] += os.write(self._fd, item[0][item[1]:])
            except BlockingIOError:
                select.select([], [self._fd], [], 0.1)
                continue
            except OSError:
                return
            if item[1] >= len(item[0]):
                self._backlog.popleft()
        if self._backlog:
            log.error("%d work items were not handed to the work process before it stopped", len(self._backlog))


def decode(payload: dict[str, Any], client: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"client": client}
    for key in ("body", "event", "loading"):
        if key in payload:
            kwargs[key] = payload[key]
    if "response_url" in payload:
        kwargs["respond"] = Respond(response_url=payload["response_url"])
    kwargs["logger"] = log
    return kwargs


DISPATCH = "dispatch"


def is_decision(body: str) -> bool:
    """A click that decides an incident (Approve, Deny, Proceed anyway, …): it goes on the decisions lane."""
    if "block_actions" not in body:
        return False
    from urllib.parse import parse_qs

    from handlers.ids import DECISIONS

    try:
        payload = json.loads(parse_qs(body).get("payload", ["{}"])[0])
        return payload.get("type") == "block_actions" and payload["actions"][0]["action_id"] in DECISIONS
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return False


def serve_stdin(deps: Any, client: Any, stream: Any = None, *, app: Any = None) -> None:
    """The child's loop: run each work item on the app's pool until standard input ends. A ``dispatch`` item
    is a whole Slack request the parent already verified and acked: the app handles it as if it came itself.
    Decisions (Approve, Deny, Proceed anyway, …) run on a lane of their own, never behind slow commands."""
    from slack_bolt import BoltRequest

    stream = stream or sys.stdin.buffer  # UTF-8 bytes, whatever the locale (json.loads reads bytes)
    for line in stream:
        line = line.strip()
        if not line:
            continue
        try:
            item = json.loads(line)
            if item.get("work") == DISPATCH and app is not None:
                context = {"loading": item["loading"]} if "loading" in item else None
                request = BoltRequest(body=item["body"], headers={k: [v] for k, v in item["headers"].items()},
                                      context=context)
                # a form being filled in (its loading view is open) goes on the decisions lane too
                urgent = is_decision(item["body"]) or "loading" in item
                deps.run_local(app.dispatch, urgent=urgent, req=request)
                continue
            work = deps.works[item.pop("work")]
            urgent = bool(item.pop("urgent", False))
        except (ValueError, KeyError) as exc:
            log.error("unreadable work item: %s", exc)
            continue
        kwargs = decode(item, client)
        accepted = inspect.signature(work).parameters
        deps.run_local(work, urgent=urgent, **{k: v for k, v in kwargs.items() if k in accepted})
    deps.shutdown()
