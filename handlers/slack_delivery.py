"""The Slack lane: delivers the Slack updates that state changes queued in their transactions (core.slack_outbox).

Every process with a Slack client (``serve`` and its work process, the demo, the sandbox) runs one: a second
``core.worker.Worker`` for the ``slack`` kind only, with its own thread, so a delivery never waits behind a
running rollback, woken at once by the NOTIFY of the job's insert. An incident's updates are claimed in order
(``ordered``), so two processes sharing the database post each reply once and in the order the state changes
committed. A Slack failure (after slack_sdk's own retries) is logged and the job retried with back-off; later
updates of that incident wait for it.

One delivery: the incident's card is posted in INCIDENT_CHANNEL first if it has none yet (a break-glass
rollback, or a request whose card is being posted: ``SlackProgress.post_card`` delivers the first update in its
own thread), then the card is updated in place (before the reply, so a retried job never doubles a reply), then
the reply: the step's (``step``; a step with a ``SlackProgress.on_step`` handler, such as diagnostics, evidence,
pages, acknowledgements, loss figures and the early halt, is shown by that handler, which also updates the card
before it replies), a warning (``warning``), the state's (``state``; the App Home hooks run too), or the
stakeholders' message of a milestone (``milestone``, ``SlackNotifier.milestone``); ``card`` only updates the card.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from core import slack_outbox
from core.incidents import Event, Incident, utcnow
from core.worker import Worker
from handlers import incident_views as iv

if TYPE_CHECKING:
    from handlers.progress import SlackProgress

log = logging.getLogger("rollback_bot.progress")

LEASE_SECONDS = 60.0  # a delivery whose process died is taken over after this
MAX_ATTEMPTS = 60  # with back-off capped at a minute: Slack may be down for most of an hour
MAX_BACKOFF_SECONDS = 60.0


def lane(engine, *, poll_seconds: float = 2.0) -> Worker:
    """A worker for the Slack updates only, on the real clock (a test's engine clock may stand still)."""
    return Worker(engine, standard=False, ordered=[slack_outbox.KIND], clock=utcnow, poll_seconds=poll_seconds,
                  lease_seconds=LEASE_SECONDS, max_attempts=MAX_ATTEMPTS, max_backoff_seconds=MAX_BACKOFF_SECONDS,
                  name="slack-lane")


class SlackDelivery:
    def __init__(self, progress: SlackProgress, milestone: Callable[[Incident, str], None]) -> None:
        self.progress = progress
        self.engine = progress.deps.engine
        self.milestone = milestone

    def __call__(self, job: dict) -> None:
        payload = job["payload"]
        then = slack_outbox.incident_of(payload["incident"])  # as it was in the state change's transaction
        try:
            inc = self.engine.get(job["incident_id"])  # as it is now: where its card is, what the card shows
            if not inc.channel or not inc.message_ts:
                inc = self.progress.post_card_now(inc)
            what = payload["what"]
            if what == "step":  # through its on_step handler if it has one (diagnostics, pages, loss figures…)
                self.progress.show(Event("step", then, payload["step"], payload.get("detail") or {},
                                         payload.get("error")), inc)
            elif what == "warning":
                self.progress.show(Event("warning", then, error=payload.get("error")), inc)
            elif what == "state":
                self.progress.update_card(inc)
                text = iv.state_reply(then)
                if text:
                    self.progress.reply(inc, text)
                self.progress.changed(then)
            elif what == "card":
                self.progress.update_card(inc)
                self.progress.changed(then)
            elif what == "milestone":
                self.milestone(then, payload["milestone"])
            else:
                log.error("INC-%s: unknown Slack update %r; dropped", job["incident_id"], what)
        except Exception:
            log.exception("could not show an update of %s in Slack; it is retried", then.ref)
            raise
