"""One place that turns errors into what a person sees.

Domain errors (``RollbackError``) become a clear ephemeral message; a database that does not answer says since
when and what to check by hand (core/outage.py). Anything else is logged with a short
error id, and the person is told that id so they can quote it.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any

from slack_bolt import App, BoltResponse

from core.errors import DatabaseUnavailable, RollbackError
from core.outage import outage_text
from handlers.blocks import error_blocks

log = logging.getLogger("rollback_bot.handlers")


def describe(exc: BaseException) -> str:
    if isinstance(exc, DatabaseUnavailable):
        return outage_text(exc)  # what failed, since when, and the runbook's checks by hand
    if isinstance(exc, RollbackError):
        return str(exc)
    error_id = uuid.uuid4().hex[:8]
    log.error("unexpected error %s", error_id, exc_info=exc)
    return f"Something went wrong (error id {error_id}). Nothing further was done; quote this id to the bot's owners."


def tell_person(respond: Callable | None, message: str) -> None:
    """An ephemeral answer to the person who asked; a failure to deliver it is logged, never raised."""
    if respond is None:
        return
    try:
        respond(text=message, blocks=error_blocks(message), response_type="ephemeral", replace_original=False)
    except Exception:  # noqa: BLE001 - reporting must not raise
        log.warning("could not deliver an error message")


def register(app: App) -> None:
    @app.error
    def on_error(error: Exception, body: dict, respond: Callable | None = None) -> BoltResponse | None:
        if body.get("response_url"):
            tell_person(respond, describe(error))
        return BoltResponse(status=200, body="")


def guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """For work done after the ack (no Bolt error handler sees it): report failures to the person via ``respond``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the person
            respond, client, body = kwargs.get("respond"), kwargs.get("client"), kwargs.get("body") or {}
            user = body.get("user_id") or (body.get("user") or {}).get("id")
            if client is not None and user:
                from handlers.replies import PrivateReply

                respond = PrivateReply(respond, client, user)  # a DM when the response_url fails
            tell_person(respond, describe(exc))
            return None

    return wrapper
