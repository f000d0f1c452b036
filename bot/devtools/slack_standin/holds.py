"""Slow answers on demand: a call held unanswered until the test lets it go (``hold``), and an answer padded so
that whoever reads it spends CPU time on it (``pad``): to check what waits, and what does not, behind a slow
Slack call."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any


class Hold:
    """The next ``times`` calls of a method wait, unanswered and unrecorded, until ``release()``."""

    def __init__(self, method: str, times: int) -> None:
        self.method = method
        self.remaining = times
        self.reached = threading.Event()
        self._released = threading.Event()

    def wait(self, timeout: float = 10.0) -> bool:
        """True once a call is being held."""
        return self.reached.wait(timeout)

    def release(self) -> None:
        self._released.set()

    def released(self) -> bool:
        return self._released.is_set()


class Padding:
    """The next ``times`` successful answers of a method carry ``"padding": [0, 0, …]`` (``items`` zeros): a few
    bytes a zero, but a Python object each for whoever parses the answer."""

    def __init__(self, method: str, items: int, times: int) -> None:
        self.method = method
        self.remaining = times
        self.data = b"[" + b"0," * (items - 1) + b"0]"
        self.answered = threading.Event()
        self.answered_at: float | None = None  # time.time() once the answer is written (as Call.at)


class _Holds:
    """Mixed into ``SlackStandIn`` (its ``_lock`` guards these queues)."""

    _lock: threading.RLock
    _holds: dict[str, deque[Hold]]
    _paddings: dict[str, deque[Padding]]

    def hold(self, method: str, *, times: int = 1) -> Hold:
        """Hold the next ``times`` calls of ``method`` until ``release()`` on what this returns (at most 60 s)."""
        held = Hold(method, times)
        with self._lock:
            self._holds.setdefault(method, deque()).append(held)
        return held

    def pad(self, method: str, *, items: int, times: int = 1) -> Padding:
        """Pad the next ``times`` successful answers of ``method`` with ``items`` zeros (see ``Padding``)."""
        padding = Padding(method, items, times)
        with self._lock:
            self._paddings.setdefault(method, deque()).append(padding)
        return padding

    def _release_holds(self) -> None:
        for queue in getattr(self, "_holds", {}).values():
            for held in queue:
                held.release()

    def _wait_if_held(self, method: str) -> None:
        with self._lock:
            held = take_next(self._holds.get(method))
        if held is not None:
            held.reached.set()
            held._released.wait(60)

    def _take_padding(self, method: str) -> Padding | None:
        with self._lock:
            return take_next(self._paddings.get(method))

    @staticmethod
    def _padded(data: bytes, padding: Padding) -> bytes:
        """``{…}`` as ``{…, "padding": [0, …]}``."""
        body = data.rstrip()
        return body[:-1] + (b', "padding": ' if body != b"{}" else b'"padding": ') + padding.data + b"}"

    @staticmethod
    def _padded_sent(padding: Padding) -> None:
        padding.answered_at = time.time()
        padding.answered.set()


def take_next(queue: deque | None) -> Any:
    """The first of a queue of knobs that each apply ``remaining`` more times (faults, holds, paddings), used
    once; None when the queue is empty."""
    if not queue:
        return None
    item = queue[0]
    item.remaining -= 1
    if item.remaining <= 0:
        queue.popleft()
    return item
