"""What a test reads from the Slack stand-in: the recorded calls (``calls``, ``wait_for``) and the conversation model
(messages, threads, ephemerals, uploads, views)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

from bot.devtools.slack_standin.records import JSONDict, Call, Ephemeral, StoredMessage, Upload, _summarize


class _Recorded:
    """The reading side of ``SlackStandIn`` (bot/devtools/slack_standin/server.py holds its state)."""

    def calls(self, method: str | None = None) -> list[Call]:
        """Recorded calls in arrival order, optionally only those of ``method``."""
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def wait_for(self, method: str, predicate: Callable[[Call], bool] | None = None,
                 timeout: float = 5.0, count: int = 1) -> list[Call]:
        """Block until at least ``count`` calls of ``method`` matching ``predicate`` arrived.

        Returns all matching calls. A predicate raising ``KeyError``/``IndexError``/
        ``TypeError`` counts as no match. On timeout raises ``AssertionError``
        listing every call received.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matched = [c for c in self._calls if c.method == method and self._matches(predicate, c)]
                if len(matched) >= count:
                    return matched
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(self._timeout_message(method, predicate, timeout, count, len(matched)))
                self._cond.wait(remaining)

    @staticmethod
    def _matches(predicate: Callable[[Call], bool] | None, call: Call) -> bool:
        if predicate is None:
            return True
        try:
            return bool(predicate(call))
        except (KeyError, IndexError, TypeError):
            return False

    def _timeout_message(self, method: str, predicate: Callable[[Call], bool] | None,
                         timeout: float, count: int, matched: int) -> str:
        what = f"{count} call(s) of {method!r}" + (" matching the predicate" if predicate else "")
        lines = [f"Timed out after {timeout:g}s waiting for {what}; {matched} matched.",
                 f"Received {len(self._calls)} call(s):"]
        lines += [f"  {i}. {_summarize(c)}" for i, c in enumerate(self._calls, 1)] or ["  (none)"]
        return "\n".join(lines)

    def clear(self) -> None:
        """Forget the recorded calls (the conversation model is kept)."""
        with self._lock:
            self._calls.clear()

    def reset(self) -> None:
        """Forget calls, messages, views, uploads, DMs, response URLs and pending faults."""
        with self._lock:
            self._reset_state()

    def messages(self, channel: str | None = None, *, include_deleted: bool = False) -> list[StoredMessage]:
        """Stored channel messages (copies) in posting order."""
        with self._lock:
            return [copy.deepcopy(m) for m in self._messages
                    if (channel is None or m.channel == channel) and (include_deleted or not m.deleted)]

    def message(self, channel: str, ts: str) -> StoredMessage | None:
        """The stored message ``ts`` in ``channel`` (a copy), or None."""
        with self._lock:
            found = self._message_index.get((channel, ts))
            return copy.deepcopy(found) if found else None

    def thread(self, channel: str, ts: str) -> list[StoredMessage]:
        """The parent message ``ts`` (if stored) followed by its replies, in order."""
        with self._lock:
            return [copy.deepcopy(m) for m in self._messages
                    if m.channel == channel and not m.deleted and (m.ts == ts or m.thread_ts == ts)]

    def ephemerals(self, user: str | None = None) -> list[Ephemeral]:
        """Ephemeral messages (copies) in order, optionally only those shown to ``user``."""
        with self._lock:
            return [copy.deepcopy(e) for e in self._ephemerals if user is None or e.user == user]

    def uploads(self) -> list[Upload]:
        """File uploads (copies) in the order their URLs were requested."""
        with self._lock:
            return [copy.deepcopy(u) for u in self._uploads.values()]

    def view(self, view_id: str) -> JSONDict | None:
        """The latest state of a view opened/pushed/updated/published here."""
        with self._lock:
            found = self._views.get(view_id)
            return copy.deepcopy(found) if found else None

    def views(self) -> list[JSONDict]:
        """All known views (latest state of each), in creation order."""
        with self._lock:
            return copy.deepcopy(list(self._views.values()))

    def home_view(self, user_id: str) -> JSONDict | None:
        """The latest App Home view published for ``user_id``."""
        with self._lock:
            view_id = self._home_views.get(user_id)
            return copy.deepcopy(self._views[view_id]) if view_id else None

    def dm_channel(self, user_id: str) -> str:
        """The DM channel id ``conversations.open`` returns for ``user_id``."""
        return self._dm_for((user_id,))
