"""Answers meant for one person: through the request's ``response_url``, else an ephemeral message in the channel,
and a DM (``chat.postMessage`` to the user id) when that fails for any reason.

A ``response_url`` works in any channel; an ephemeral message only where the bot is a member, so a form
submitted from a channel the bot never joined would otherwise lose its answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from slack_sdk import WebClient
from slack_sdk.webhook import WebhookClient

log = logging.getLogger("rollback_bot.replies")

__all__ = ["PrivateReply", "tell_privately"]


def _delivered(response: Any) -> bool:
    """A response_url post answers HTTP 200 ``ok``; WebhookClient returns other statuses instead of raising."""
    return getattr(response, "status_code", 200) == 200


def _dm(client: WebClient, user: str, text: str, blocks: Sequence[dict] | None, why: str) -> None:
    log.warning("a private answer could not be delivered (%s); sending it as a DM", why)
    client.chat_postMessage(channel=user, text=text, blocks=blocks)


def tell_privately(client: WebClient, user: str, text: str, *, blocks: Sequence[dict] | None = None,
                   response_url: str | None = None, channel: str | None = None) -> None:
    """``text`` for ``user`` alone: via ``response_url`` when there is one, else ephemeral in ``channel``;
    on any error (or with neither), a DM."""
    why = "no response_url or channel"
    try:
        if response_url:
            response = WebhookClient(response_url).send(text=text, blocks=blocks, response_type="ephemeral",
                                                          replace_original=False)
            if _delivered(response):
                return
            why = f"response_url answered HTTP {response.status_code} {response.body!r}"
        elif channel:
            client.chat_postEphemeral(channel=channel, user=user, text=text, blocks=blocks)
            return
    except Exception as exc:  # noqa: BLE001 - any failure falls back to the DM
        why = f"{type(exc).__name__}: {exc}"
    _dm(client, user, text, blocks, why)


class PrivateReply:
    """Bolt's ``respond`` for a person's own answers, falling back to a DM when the response_url post fails."""

    def __init__(self, respond: Callable[..., Any] | None, client: WebClient, user: str) -> None:
        self.respond = respond
        self.client = client
        self.user = user
        self.response_url = getattr(respond, "response_url", None)

    def __call__(self, text: str = "", blocks: Sequence[dict] | None = None, **kwargs: Any) -> Any:
        why = "no response_url"
        if self.respond is not None:
            try:
                response = self.respond(text=text, blocks=blocks, **kwargs)
                if _delivered(response):
                    return response
                why = f"response_url answered HTTP {response.status_code} {response.body!r}"
            except Exception as exc:  # noqa: BLE001 - any failure falls back to the DM
                why = f"{type(exc).__name__}: {exc}"
        _dm(self.client, self.user, text, blocks, why)
        return None
