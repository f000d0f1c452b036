"""A local stand-in for the Slack Web API.

``SlackStandIn`` is a real HTTP server on 127.0.0.1 that the real
``slack_sdk.WebClient(base_url=standin.base_url)`` (or ``AsyncWebClient``)
talks to. It records every call, answers the methods rollback-bot uses with
Slack-shaped JSON, keeps a small model of the conversation (messages, threads,
ephemerals, views, uploads) and can inject faults (HTTP 429 / 5xx /
``ok: false``).

It is as strict as Slack where the bot could go wrong only in a real workspace:

* a ``trigger_id`` must have been issued here (``issue_trigger_id``, which the
  Sandbox's sender uses), opens one view, and expires 3 s after it was issued
  (``invalid_trigger_id`` / ``exchanged_trigger_id`` / ``expired_trigger_id``);
* posts, ephemerals and file shares in a channel the bot is not a member of
  answer ``not_in_channel`` (``joined``: the bot's channels; ``conversations.join``
  joins a public one; posts in an unjoined public channel pass only with the
  ``chat:write.public`` scope);
* a method whose scope ``manifest.yml`` does not grant answers ``missing_scope``
  (bot/devtools/slack_scopes.py);
* Block Kit over Slack's limits answers ``invalid_blocks`` (messages) or
  ``invalid_arguments`` (views), as listed in bot/devtools/block_kit_rules.py;
* ``rate_limit(method)`` makes the next call answer HTTP 429 ``ratelimited`` with
  ``Retry-After``.

It is used by the test suite and by ``rollback-bot demo``; it never talks to
the internet. Token values are never stored: the ``Authorization`` header and
any ``token`` body field are redacted when a call is recorded.

Example::

    with SlackStandIn(users={"U0ALICE": {"name": "alice"}}) as slack:
        client = WebClient(token="xoxb-test", base_url=slack.base_url)
        client.chat_postMessage(channel="C0OPS", text="hello")
        [call] = slack.wait_for("chat.postMessage")

The parts: ``records`` (what is recorded, request parsing), ``server`` (``SlackStandIn``: state, lifecycle, faults,
HTTP), ``recorded`` (reading calls and the conversation), ``conversation`` (the conversation model), ``chat``,
``views`` and ``files`` (the Web API methods).
"""

from __future__ import annotations

from bot.devtools.slack_standin.records import (
    RESPONSE_URL_METHOD, TRIGGER_TTL, UPLOAD_METHOD, Call, Ephemeral, StoredMessage, Upload,
)
from bot.devtools.slack_standin.server import SlackStandIn

__all__ = [
    "RESPONSE_URL_METHOD",
    "TRIGGER_TTL",
    "UPLOAD_METHOD",
    "Call",
    "Ephemeral",
    "SlackStandIn",
    "StoredMessage",
    "Upload",
]
