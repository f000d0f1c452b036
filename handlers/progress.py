"""The engine's events, shown in Slack: the status card updated in place and one thread reply per step.

Subscribed to the engine in every bot process, so whichever process runs a rollback reports it. Events are
queued and sent in order by one background thread, so Slack's latency never slows a rollback down and a
Slack failure (after slack_sdk's own retries) is logged, never raised into the engine.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from slack_sdk import WebClient

from core.incidents import Event, Incident
from core.worker import lower_thread_priority
from handlers import incident_views as iv
from handlers.deps import Deps

log = logging.getLogger("rollback_bot.progress")


class SlackProgress:
    def __init__(self, client: WebClient, deps: Deps) -> None:
        self.client = client
        self.deps = deps
        self.after_change: list[Callable[[Incident], None]] = []
        self.after_followups: list[Callable[[int], None]] = []  # an incident's follow-ups changed (App Home)
        self._queue: queue.Queue[Event | tuple[str, Callable[[], None]] | None] = queue.Queue()
        self.on_step: dict[str, Callable[[Incident, Event], None]] = {}
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._drain, name="slack-progress", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------ engine side

    def __call__(self, event: Event) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(event)

    def submit(self, work: Callable[[], None], *, ref: str = "") -> None:
        """Run Slack work for incident ``ref`` on the reporting thread, in order with its other messages."""
        with self._idle:
            self._pending += 1
        self._queue.put((ref, work))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event has been shown (tests, demo)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        self._queue.put(None)

    def _drain(self) -> None:
        lower_thread_priority()
        while True:
            event = self._queue.get()
            if event is None:
                return
            ref = event.incident.ref if isinstance(event, Event) else event[0]
            try:
                if isinstance(event, Event):
                    self.show(event)
                else:
                    event[1]()
            except Exception:  # noqa: BLE001 - Slack being down must not stop the reporting thread
                log.exception("could not show an update of %s in Slack", ref or "an incident")
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    # ------------------------------------------------------------------------------ Slack side

    def show(self, event: Event) -> None:
        inc = self.deps.engine.get(event.incident.id)  # freshest row (message ts, state)
        if event.kind == "step" and event.step in self.on_step:
            self.on_step[event.step](inc, event)
            return
        if inc.channel and inc.message_ts:
            if event.kind == "step" and event.step:
                self.reply(inc, iv.step_reply(inc, event.step, event.detail, event.error))
            elif event.kind == "warning":
                self.reply(inc, f":warning: {event.error}")
            elif event.kind == "state":
                text = iv.state_reply(event.incident)
                if text:
                    self.reply(inc, text)
            self.update_card(inc)
        if event.kind == "state":
            for hook in self.after_change:
                try:
                    hook(event.incident)
                except Exception:  # noqa: BLE001
                    log.exception("after-change hook failed for %s", inc.ref)

    def update_card(self, inc: Incident) -> None:
        steps = self.deps.engine.steps(inc.id)
        self.client.chat_update(
            channel=inc.channel, ts=inc.message_ts, text=f"{iv.incident_title(inc)}: {inc.state}",
            blocks=iv.incident_card(inc, steps),
        )

    def reply(self, inc: Incident, text: str) -> None:
        self.client.chat_postMessage(channel=inc.channel, thread_ts=inc.thread_ts or inc.message_ts, text=text)

    def post_card(self, inc: Incident) -> Incident:
        """Post a new incident's card to INCIDENT_CHANNEL and remember where it is."""
        steps = self.deps.engine.steps(inc.id)
        resp = self.client.chat_postMessage(
            channel=self.deps.channel, text=f"{iv.incident_title(inc)}: {inc.state}", blocks=iv.incident_card(inc, steps)
        )
        self.deps.engine.set_message(inc.id, channel=resp["channel"], message_ts=resp["ts"])
        inc = self.deps.engine.get(inc.id)
        self(Event("state", inc))  # now that it has a thread: the opening notifications
        return inc
