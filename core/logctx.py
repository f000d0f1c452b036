"""The incident a thread is working on, for log records (``bot.observability`` puts it in every JSON line)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

current_incident: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_incident", default=None)


@contextlib.contextmanager
def incident_context(ref: str | None) -> Iterator[None]:
    token = current_incident.set(ref)
    try:
        yield
    finally:
        current_incident.reset(token)
