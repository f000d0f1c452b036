"""App Home: production models with metrics, open incidents and their state, the trading state, the viewer's open
follow-ups and the unassigned ones (overdue first), recent rollbacks. Published on ``app_home_opened`` and
re-published for recent viewers when an incident or its follow-ups change.

Re-publishing is off the live-progress path: a change only marks the home stale (``HomePublisher.changed``), and a
thread of its own builds the shared part once per burst of changes and sends each recent viewer their view. A rollback's card and thread replies never wait for App Home, however many people look at
it or however slowly Slack answers ``views.publish``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from slack_bolt import Ack, App
from slack_sdk import WebClient
from slack_sdk.models.blocks import DividerBlock, HeaderBlock
from slack_sdk.models.views import View

from core.worker import lower_thread_priority
from handlers import blocks as views
from handlers import followup_views as fv
from handlers import incident_views as iv
from handlers.deps import Deps
from handlers.ids import Event
from handlers.progress import SlackProgress

log = logging.getLogger("rollback_bot.home")


def shared_blocks(deps: Deps) -> tuple[list[dict], list[dict]]:
    """What every viewer sees: (the status, the recent incidents)."""
    services = deps.services
    status_blocks = views.status_blocks(services.status())
    recent = [i for i in deps.engine.list_incidents(limit=30) if not i.is_open][:10]
    extra = [DividerBlock().to_dict(), HeaderBlock(text="Recent incidents").to_dict()]
    if recent:
        lines = [
            f"{iv.STATE_EMOJI.get(i.state, '')} *{i.ref}* {views.esc(i.kind)} `{views.esc(i.model_name or '-')}`"
            f" → `{views.esc(i.target_backup or '-')}` · {i.state} · {i.created_at:%Y-%m-%d %H:%M} UTC"
            for i in recent
        ]
        extra.append(views.section("\n".join(lines)).to_dict())
    else:
        extra.append(views.context("No closed incidents yet.").to_dict())
    return status_blocks, extra


def home_view(deps: Deps, user_id: str, shared: tuple[list[dict], list[dict]] | None = None) -> dict:
    """The App Home of ``user_id``: the status, the viewer's follow-ups and the unassigned ones, recent incidents
    (``shared``: the first and last, built once for many viewers)."""
    status_blocks, extra = shared if shared is not None else shared_blocks(deps)
    mine, nobody = deps.followups.open_for(user_id)
    followups = [DividerBlock().to_dict(), *fv.home_blocks(mine, nobody, deps.engine.clock())]
    room = 100 - len(followups) - len(extra)  # a long status is cut before the follow-ups are
    return View(type="home", blocks=status_blocks[:room] + followups + extra).to_dict()


def publish_home(client: WebClient, deps: Deps, user_id: str) -> None:
    client.views_publish(user_id=user_id, view=home_view(deps, user_id))


class HomePublisher:
    """Runs ``publish`` on its own thread after incidents change: once for a burst of changes (when none came
    for ``quiet`` seconds, or ``max_wait`` after the first), never on the caller's thread. The thread starts on
    the first change and ends after ``idle`` seconds without one."""

    def __init__(self, publish: Callable[[], None], *, quiet: float = 1.0, max_wait: float = 5.0,
                 idle: float = 60.0) -> None:
        self.publish = publish
        self.quiet, self.max_wait, self.idle = quiet, max_wait, idle
        self._cond = threading.Condition()
        self._dirty = self._busy = self._closed = False
        self._first = self._last = 0.0
        self._thread: threading.Thread | None = None

    def close(self, timeout: float = 10.0) -> None:
        """Stop: what is waiting is dropped (the process is stopping) and a publish under way ends first."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def changed(self, *_: object) -> None:
        with self._cond:
            if self._closed:
                return
            now = time.monotonic()
            if not self._dirty:
                self._first = now
            self._dirty, self._last = True, now
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="home-publisher", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until no change is waiting to be published (tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._dirty and not self._busy, timeout)

    def _run(self) -> None:
        lower_thread_priority()
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._dirty or self._closed, self.idle) or self._closed:
                    self._thread = None
                    return
                while not self._closed and (
                        wait := min(self._last + self.quiet, self._first + self.max_wait) - time.monotonic()) > 0:
                    self._cond.wait(wait)
                if self._closed:
                    self._thread = None
                    return
                self._dirty, self._busy = False, True
            try:
                self.publish()
            except Exception:  # noqa: BLE001 - the next change tries again
                log.exception("could not re-publish the App Home")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def register(app: App, deps: Deps, progress: SlackProgress) -> None:
    services = deps.services

    def on_event(ack: Ack, event: dict, client: WebClient) -> None:
        ack()
        deps.later(on_home_opened, event=event, client=client, logger=log)

    def on_home_opened(event: dict, client: WebClient, logger: logging.Logger) -> None:
        if event.get("tab", "home") != "home":
            return
        services.home_opened(user_id=event["user"])
        try:
            publish_home(client, deps, event["user"])
        except Exception:  # noqa: BLE001 - a home tab failure must not surface as a retry storm
            logger.exception("could not publish the App Home")

    deps.work(on_home_opened)

    def refresh_viewers() -> None:
        users = services.recent_home_viewers()
        if not users:
            return
        shared = shared_blocks(deps)  # built once; each viewer's own follow-ups added
        for user in users:
            try:
                progress.client.views_publish(user_id=user, view=home_view(deps, user, shared))
            except Exception:  # noqa: BLE001 - one viewer's failure must not keep the others stale
                log.exception("could not re-publish the App Home of %s", user)

    publisher = HomePublisher(refresh_viewers)
    progress.after_change.append(publisher.changed)
    progress.after_followups.append(publisher.changed)
    progress.on_close.append(publisher.close)
    app.home_publisher = publisher  # type: ignore[attr-defined] - tests wait on it
    app.event(Event.APP_HOME_OPENED.value)(on_event)
