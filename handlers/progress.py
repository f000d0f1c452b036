"""The engine's events, shown in Slack: the status card updated in place and one thread reply per step.

The Slack updates of a state change (its reply, the card, a runbook step journaled with it, the stakeholders'
message of a milestone) are not sent from here: they are queued in the state change's transaction
(core.slack_outbox) and delivered by the Slack lane (handlers/slack_delivery.py), in order and once, by
whichever process has a Slack client; so are those of steps journaled without a state change (diagnostics,
evidence, pages, acknowledgements, loss figures, the early halt, the halt sweep, warnings: ``queued`` events),
which the lane shows through ``on_step`` when a handler is registered there. This listener shows the rest: the
report upload (``on_step["report"]``) and the live displays that only make sense in the process doing the work
(the halt watch's running trade counts, the retrain's live output), and any event published unqueued (an engine
without an incident channel). Those are queued and sent in order by one background thread, so Slack's latency
never slows a rollback down and a Slack failure (after slack_sdk's own retries) is logged, never raised into the
engine. An ``on_step`` handler may run again on a retried Slack-lane job: it updates the card before it replies.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from slack_sdk import WebClient

from core import slack_outbox
from core.errors import DatabaseUnavailable
from core.incidents import Event, Incident
from core.worker import Worker, lower_thread_priority
from handlers import incident_views as iv
from handlers.deps import Deps

log = logging.getLogger("rollback_bot.progress")


class SlackProgress:
    def __init__(self, client: WebClient, deps: Deps) -> None:
        self.client = client
        self.deps = deps
        self.after_change: list[Callable[[Incident], None]] = []  # run by the Slack lane's state deliveries
        self.after_followups: list[Callable[[int], None]] = []  # an incident's follow-ups changed (App Home)
        self._queue: queue.Queue[Event | tuple[str, Callable[[], None]] | None] = queue.Queue()
        self.on_step: dict[str, Callable[[Incident, Event], None]] = {}
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._drain, name="slack-progress", daemon=True)
        self._thread.start()
        self.lane: Worker | None = None  # the Slack lane (handlers/slack_delivery.py), set by bot/app.py
        self.on_close: list[Callable[[], None]] = []  # other Slack threads to stop with it (the App Home's)

    # ------------------------------------------------------------------------------ engine side

    def __call__(self, event: Event) -> None:
        if event.kind == "state" or event.queued:
            return  # queued with the state change (core.slack_outbox), delivered by the Slack lane
        with self._idle:
            self._pending += 1
        self._queue.put(event)

    def submit(self, work: Callable[[], None], *, ref: str = "") -> None:
        """Run Slack work for incident ``ref`` on the reporting thread, in order with its other messages."""
        with self._idle:
            self._pending += 1
        self._queue.put((ref, work))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event queued here has been shown and every Slack update queued in the database
        (core.slack_outbox) has been delivered, by this process or another (tests, demo)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._idle:
                if not self._idle.wait_for(lambda: self._pending == 0, max(0.0, deadline - time.monotonic())):
                    return False
            try:
                if not slack_outbox.wait_delivered(self.deps.engine.db, max(0.0, deadline - time.monotonic())):
                    return False
            except DatabaseUnavailable:  # nobody can tell (nor deliver) now
                return False
            with self._idle:
                if self._pending == 0:  # nothing new came while the database was polled
                    return True

    def close(self) -> None:
        """Stop the Slack lane, the reporting thread and the threads registered in ``on_close``."""
        if self.lane is not None:
            self.lane.stop()
        for stop in self.on_close:
            stop()
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

    def show(self, event: Event, inc: Incident | None = None) -> None:
        """A step's or a warning's reply in the thread of ``inc`` (default: the freshest row of the event's
        incident), through the step's ``on_step`` handler when it has one. The card is updated before the reply,
        so a retried delivery (handlers/slack_delivery.py) never doubles a reply."""
        inc = inc or self.deps.engine.get(event.incident.id)
        if event.kind == "step" and event.step in self.on_step:
            self.on_step[event.step](inc, event)
            return
        if inc.channel and inc.message_ts:
            self.update_card(inc)
            if event.kind == "step" and event.step:
                self.reply(inc, iv.step_reply(event.incident, event.step, event.detail, event.error))
            elif event.kind == "warning":
                self.reply(inc, f":warning: {event.error}")

    def changed(self, incident: Incident) -> None:
        """An incident's state changed (the Slack lane delivered it): the after-change hooks (App Home)."""
        for hook in self.after_change:
            try:
                hook(incident)
            except Exception:  # noqa: BLE001
                log.exception("after-change hook failed for %s", incident.ref)

    def update_card(self, inc: Incident) -> None:
        steps = self.deps.engine.steps(inc.id)
        self.client.chat_update(
            channel=inc.channel, ts=inc.message_ts, text=f"{iv.incident_title(inc)}: {inc.state}",
            blocks=iv.incident_card(inc, steps),
        )

    def reply(self, inc: Incident, text: str) -> None:
        self.client.chat_postMessage(channel=inc.channel, thread_ts=inc.thread_ts or inc.message_ts, text=text)

    def post_card(self, inc: Incident, timeout: float = 10.0) -> Incident:
        """A new incident's card in INCIDENT_CHANNEL, as it is once posted. The card is posted by the incident's
        first Slack update (handlers/slack_delivery.py): this delivers it now, in this thread, or waits while
        the Slack lane of this or another process does. Raises when it could not be posted (it is retried)."""
        deadline = time.monotonic() + timeout
        while True:
            fresh = self.deps.engine.get(inc.id)
            if fresh.message_ts:
                return fresh
            job = self.lane.claim(incident_id=inc.id) if self.lane is not None else None
            if job is not None:
                self.lane.run_job(job)
                fresh = self.deps.engine.get(inc.id)
                if fresh.message_ts:
                    return fresh
                raise RuntimeError(f"{inc.ref}'s card could not be posted in Slack"
                                   f" ({slack_outbox.last_error(self.deps.engine.db, job['id'])});"
                                   " it is retried")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{inc.ref}'s card was not posted in Slack within {timeout:g} s; it is retried")
            time.sleep(0.02)

    def post_card_now(self, inc: Incident) -> Incident:
        """Post the incident's card to INCIDENT_CHANNEL and remember where it is (the first Slack update of an
        incident that has none does, handlers/slack_delivery.py)."""
        steps = self.deps.engine.steps(inc.id)
        resp = self.client.chat_postMessage(
            channel=self.deps.channel, text=f"{iv.incident_title(inc)}: {inc.state}", blocks=iv.incident_card(inc, steps)
        )
        self.deps.engine.set_message(inc.id, channel=resp["channel"], message_ts=resp["ts"])
        return self.deps.engine.get(inc.id)

