"""What every listener module receives from the composition root."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from core.auth import Authorizer
from core.services import Services

log = logging.getLogger("rollback_bot.handlers")


@dataclass(frozen=True)
class Deps:
    services: Services
    auth: Authorizer
    executor: ThreadPoolExecutor

    @property
    def channel(self) -> str:
        return self.services.settings.incident_channel or ""

    def later(self, work: Callable[..., Any], **kwargs: Any) -> None:
        """Run ``work`` after the ack, on the app's small pool (cheaper than Bolt's lazy listeners, which
        deep-copy each request): Slack's 3-second acknowledgement never waits for it."""

        def run() -> None:
            try:
                work(**kwargs)
            except Exception:  # noqa: BLE001 - work reports its own errors; this is the last resort
                log.exception("background work %s failed", getattr(work, "__name__", work))

        self.executor.submit(run)
