"""What every listener module receives from the composition root."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from core.auth import Authorizer
from core.engine import Engine
from core.followups import FollowUps
from core.loss import LossBook
from core.paging import Paging
from core.registry import ModelRegistry
from core.report import Reports
from core.services import Services
from core.worker import Worker, lower_thread_priority

log = logging.getLogger("rollback_bot.handlers")


def work_pool(workers: int = 4) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slack-work", initializer=lower_thread_priority)


def opener_pool(workers: int = 4) -> ThreadPoolExecutor:
    """Opening a loading modal is one Web API call that must not wait behind slow work (handlers/loading.py)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modal-open")


def decision_pool(workers: int = 2) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slack-decide")


RemoteSubmit = Callable[[str, dict[str, Any]], None]


@dataclass
class Deps:
    services: Services  # the facade's own methods (status, backups, diagnose, report, ...)
    auth: Authorizer
    executor: ThreadPoolExecutor
    # The parts the handlers use directly, handed in by the composition root (bot/app.py).
    engine: Engine
    followups: FollowUps
    paging: Paging
    loss: LossBook
    registry: ModelRegistry
    reports: Reports
    worker: Worker
    works: dict[str, Callable[..., Any]] = field(default_factory=dict)
    remote: RemoteSubmit | None = None  # set by `serve`: work goes to the work process (bot/workproc.py)
    openers: ThreadPoolExecutor = field(default_factory=opener_pool)
    # A lane of its own for decisions (Approve, Deny, Proceed anyway, Abandon, Take over): however many slow
    # commands (diagnose, backups) fill the work pool, a decision never waits behind them.
    decisions: ThreadPoolExecutor = field(default_factory=lambda: decision_pool())

    @property
    def channel(self) -> str:
        return self.services.settings.incident_channel or ""

    def work(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``fn`` as work that may run after the ack (here, or in the work process by name)."""
        self.works[work_name(fn)] = fn
        return fn

    def later(self, work: Callable[..., Any], *, urgent: bool = False, **kwargs: Any) -> None:
        """Run ``work`` after the ack: in the work process when there is one, else on the app's small pool
        (cheaper than Bolt's lazy listeners, which deep-copy each request). The ack never waits for it.
        ``urgent``: on the decisions lane, never behind slow commands."""
        if self.remote is not None:
            payload = encode(kwargs)
            if urgent:
                payload["urgent"] = True
            self.remote(work_name(work), payload)
            return
        self.run_local(work, urgent=urgent, **kwargs)

    def later_modal(self, work: Callable[..., Any], *, kind: str, trigger_id: str, client: Any,
                    loading: dict | None = None, **kwargs: Any) -> None:
        """``later`` for work that shows a modal: a loading view is opened first, at once, on a pool of its own
        (unless ``serve`` opened it already: ``loading`` given), and handed to ``work`` to fill in on the
        decisions lane (the person is looking at the loading view; it never waits behind slow commands)."""
        if loading is not None:
            self.later(work, urgent=True, client=client, loading=loading, **kwargs)
            return

        def open_then_work() -> None:
            from handlers.loading import open_loading

            try:
                opened = open_loading(client, trigger_id, kind)
            except Exception:  # noqa: BLE001 - the work runs all the same and opens its form itself
                log.exception("the loading view could not be opened")
                opened = {}
            self.later(work, urgent=True, client=client, loading=opened, **kwargs)

        self.openers.submit(open_then_work)

    def run_local(self, work: Callable[..., Any], *, urgent: bool = False, **kwargs: Any) -> None:
        def run() -> None:
            try:
                work(**kwargs)
            except Exception:  # noqa: BLE001 - work reports its own errors; this is the last resort
                log.exception("background work %s failed", getattr(work, "__name__", work))

        (self.decisions if urgent else self.executor).submit(run)

    def shutdown(self) -> None:
        """Wait for the work after the ack (loading views first: they hand work to both lanes) to finish."""
        self.openers.shutdown(wait=True)
        self.executor.shutdown(wait=True)
        self.decisions.shutdown(wait=True)


def work_name(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "__wrapped__", fn)
    return f"{inner.__module__}.{inner.__qualname__}"


def encode(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Plain values of a listener's keyword arguments (the client and logger are the child's own)."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in ("body", "event", "loading"):
            out[key] = value
        elif key == "respond":
            out["response_url"] = getattr(value, "response_url", None)
    return out
