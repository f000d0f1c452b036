"""The loading process: ``serve`` opens forms' loading views through a small child process of its own.

A form's loading view must be opened within 3 seconds of the click (handlers/loading.py), so ``serve`` opens it
right after the ack, not the work process. But a ``views.open`` costs the process that makes it CPU time (the
request, the answer, slack_sdk's bookkeeping): made on the event loop that writes the acks, or from a thread
holding the interpreter lock against it, the next request's ack waits for it. So the acking process only
writes one short line into a pipe (``{"n", "trigger_id", "kind"}``) and goes on; this child
(``rollback-bot loading``, at a priority below the acks and above the work process) opens the view with
slack_sdk's AsyncWebClient (bot/loading_opener.py: one kept-alive session, async retry handlers) and writes back
``{"n", "loading"}``. ``serve`` then hands the request over to the work process with its loading view, which
the work fills in with ``views.update``; ``{}`` (Slack refused, or this child is gone) means the work opens the
form with the trigger itself, as before.

A trigger is sent here once and opened once. If the child dies, what it had not answered is handed over with
``{}`` and the child is started again for the next form.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bot import metrics_dir

log = logging.getLogger("rollback_bot.loading")

Then = Callable[[dict], None]  # called on serve's event loop with the loading view ({} when not opened)
LINE_MAX = select.PIPE_BUF  # a line this short goes into the pipe whole or not at all


class LoadingProcess:
    """``serve``'s side, used on its event loop: ``open(trigger_id, kind, then)`` never waits; ``then(loading)``
    runs on the loop once the child answered."""

    def __init__(self, argv: list[str] | None = None) -> None:
        self.argv = argv or [sys.executable, "-m", "bot", "loading"]
        self._proc: subprocess.Popen | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, Then] = {}
        self._buffer = b""
        self._seq = itertools.count()

    def start(self) -> LoadingProcess:
        self._loop = asyncio.get_running_loop()
        self._spawn()
        return self

    def _spawn(self) -> None:
        assert self._loop is not None
        old = self._proc
        if old is not None:
            self._drop_reader(old)
            for pipe in (old.stdin, old.stdout):
                with contextlib.suppress(OSError):
                    pipe.close()  # type: ignore[union-attr]
            if old.poll() is not None:
                metrics_dir.mark_dead(old.pid)  # its counters stay in serve's /metrics
        self._proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(os.environ),
                                      start_new_session=True)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        os.set_blocking(self._proc.stdin.fileno(), False)
        os.set_blocking(self._proc.stdout.fileno(), False)
        self._buffer = b""
        self._loop.add_reader(self._proc.stdout.fileno(), self._readable, self._proc)
        log.info("loading process %s started", self._proc.pid)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def open(self, trigger_id: str, kind: str, then: Then) -> None:
        """Have the loading view opened; ``then({...})`` later, or ``then({})`` at once when it cannot be asked."""
        n = next(self._seq)
        line = (json.dumps({"n": n, "trigger_id": trigger_id, "kind": kind}) + "\n").encode()
        try:
            if len(line) > LINE_MAX:
                raise ValueError("trigger_id too long")
            if not self.alive():
                self._gone("the loading process is not running; starting it again")
                self._spawn()
            assert self._proc is not None and self._proc.stdin is not None
            self._pending[n] = then
            os.write(self._proc.stdin.fileno(), line)  # up to PIPE_BUF bytes: whole, or BlockingIOError
        except (OSError, ValueError) as exc:
            log.warning("the loading view could not be asked for (%s); the work opens the form itself", exc)
            self._pending.pop(n, None)
            _call(then, {})

    def _readable(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        try:
            data = os.read(proc.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the child is gone: started again at once, ready for the next form
            self._drop_reader(proc)
            if proc is self._proc:
                self._gone("the loading process exited")
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    if proc.poll() is None:
                        proc.kill()  # its output ended: it is going anyway
                    proc.wait(1)
                self._spawn()
            return
        if proc is self._proc:
            self._lines(data)

    def _lines(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            try:
                item = json.loads(line)
                then = self._pending.pop(int(item["n"]))
            except (ValueError, KeyError, TypeError):
                log.error("unreadable answer from the loading process: %r", line[:200])
                continue
            loading = item.get("loading")
            _call(then, loading if isinstance(loading, dict) else {})

    def _drop_reader(self, proc: subprocess.Popen) -> None:
        if self._loop is not None and proc.stdout is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(proc.stdout.fileno())

    def _gone(self, why: str) -> None:
        """Every request still waiting for its loading view is handed over without one."""
        if self._pending:
            log.error("%s; %d form(s) handed over without a loading view", why, len(self._pending))
        elif self._proc is not None:
            log.warning(why)
        pending, self._pending = self._pending, {}
        for then in pending.values():
            _call(then, {})

    def stop(self, timeout: float = 5.0) -> None:
        """End the child's input; the views it is opening are still handed over (up to ``timeout``)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._drop_reader(proc)
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()
        deadline = time.monotonic() + timeout
        fd = proc.stdout.fileno()
        while self._pending and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                break
            if not data:
                break
            self._lines(data)
        self._gone("serve is stopping")
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        with contextlib.suppress(OSError):
            proc.stdout.close()


def _call(then: Then, loading: dict) -> None:
    try:
        then(loading)
    except Exception:  # noqa: BLE001 - one request's hand-over must not stop the others
        log.exception("a request could not be handed over after its loading view")


# ------------------------------------------------------------------------------------------- the child


async def _serve(opener: Any, reader: asyncio.StreamReader, out: Any) -> None:
    tasks: set[asyncio.Task] = set()

    async def one(n: int, trigger_id: str, kind: str) -> None:
        loading = await opener.open(trigger_id, kind)
        out.write((json.dumps({"n": n, "loading": loading}) + "\n").encode())
        out.flush()

    while line := await reader.readline():
        try:
            item = json.loads(line)
            task = asyncio.create_task(one(int(item["n"]), str(item["trigger_id"]), str(item["kind"])))
        except (ValueError, KeyError, TypeError):
            log.error("unreadable loading request: %r", line[:200])
            continue
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:  # input ended (serve is stopping): finish what was asked
        await asyncio.wait(tasks, timeout=10)
    await opener.close()


async def _main(token: str | None, base_url: str, metrics: Any) -> None:
    from bot.loading_opener import LoadingOpener

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 16)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    await _serve(LoadingOpener(token=token, base_url=base_url, metrics=metrics), reader, sys.stdout.buffer)


LOADING_NICENESS = 5  # below the acks (serve, 0), above the work process (core/worker.py WORK_NICENESS, 10)


def lower_priority(niceness: int = LOADING_NICENESS) -> None:
    """Acks first: this process (and, with Linux's autogroup, its session's group) gives way to ``serve``'s event
    loop when both want a CPU, and still comes before the work process."""
    with contextlib.suppress(OSError):
        os.nice(niceness)
    with contextlib.suppress(OSError):
        with open("/proc/self/autogroup", "w") as group:  # absent without autogroup
            group.write(str(niceness))


def cmd_loading(args: Any, settings: Any) -> int:
    """``rollback-bot loading``: the loading process ``serve`` starts for itself (no help, not in --help)."""
    from bot.observability import Metrics

    lower_priority()
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    asyncio.run(_main(token, settings.slack_api_url, Metrics()))
    return 0
