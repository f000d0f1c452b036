"""At start: the bot must be a member of ``INCIDENT_CHANNEL``, or file uploads and ephemeral answers there fail.

Slack lets a bot post in a channel it has not joined only with ``chat:write.public``, and even then refuses its
file uploads and (in practice) its ephemeral messages there with ``not_in_channel``. So ``serve`` checks with
``conversations.info``; a public channel it joins itself (``conversations.join``, scope ``channels:join``), a
private one a person must invite it to. Otherwise ``serve`` stops with that fix as its one line.
"""

from __future__ import annotations

import logging

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from core.errors import ConfigError

log = logging.getLogger("rollback_bot.membership")

__all__ = ["ensure_in_channel"]


def _error(exc: SlackApiError) -> tuple[str, str]:
    data = exc.response.data if isinstance(exc.response.data, dict) else {}
    return str(data.get("error") or exc), str(data.get("needed") or "")


def ensure_in_channel(client: WebClient, channel: str, *, bot_name: str = "rollback-bot") -> str:
    """``"member"`` when the bot is in ``channel`` already, ``"joined"`` when it has just joined it; else raises
    ``ConfigError`` saying what to do (invite the bot, or reinstall the app with the missing scope)."""
    invite = f"invite @{bot_name} to the channel (type `/invite @{bot_name}` in it)"
    try:
        info = client.conversations_info(channel=channel)["channel"]
    except SlackApiError as exc:
        error, needed = _error(exc)
        if error == "channel_not_found":
            raise ConfigError(f"INCIDENT_CHANNEL {channel} was not found: if it is a private channel, {invite};"
                              " else check the channel ID") from None
        if error == "missing_scope":
            raise ConfigError(f"INCIDENT_CHANNEL {channel} could not be checked: the Slack app lacks the scope"
                              f" {needed or '(see manifest.yml)'}; reinstall it from manifest.yml") from None
        raise ConfigError(f"INCIDENT_CHANNEL {channel} could not be checked: Slack answered {error}") from None
    name = f"#{info.get('name') or channel}"
    if info.get("is_member"):
        return "member"
    if info.get("is_private") or info.get("is_im"):
        raise ConfigError(f"rollback-bot is not a member of the private INCIDENT_CHANNEL {name} ({channel}): "
                          + invite.replace("the channel", name))
    try:
        client.conversations_join(channel=channel)
    except SlackApiError as exc:
        error, needed = _error(exc)
        scope = f" (the Slack app lacks {needed}: reinstall it from manifest.yml)" if error == "missing_scope" else ""
        raise ConfigError(f"rollback-bot is not a member of INCIDENT_CHANNEL {name} ({channel}) and could not join"
                          f" it: {error}{scope}; " + invite.replace("the channel", name)) from None
    log.info("joined the incident channel %s (%s)", name, channel)
    return "joined"
