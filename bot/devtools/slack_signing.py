"""Send requests to a Slack app the way Slack does: signed, with Slack's payload shapes.

``sign()`` implements Slack's request signing (``v0=`` + hex HMAC-SHA256 of
``v0:{timestamp}:{body}``). ``SlackSender`` POSTs slash commands, interactivity
payloads (``block_actions``, ``view_submission``, ``view_closed``) and Events
API callbacks to an app's ``/slack/events`` URL using only the standard
library, and returns HTTP errors instead of raising them.

Every sending method accepts ``timestamp=`` (sign with this Unix time, e.g. one
older than five minutes), ``secret=`` (sign with another secret, i.e. a wrong
signature) and ``headers=`` (extra or overriding headers) (``SendOptions``).

The payload shapes (user, team, the interactivity envelope, a modal's view) are ``slack_payloads.SlackPayloads``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypedDict, Unpack
from urllib.parse import urlencode

from bot.devtools.slack_payloads import Identity, JSONDict, SlackPayloads, compact as _compact, state_values as _state_values

__all__ = ["SenderResponse", "SendOptions", "SlackSender", "sign"]

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


def sign(signing_secret: str, body: str | bytes, timestamp: int | None = None) -> dict[str, str]:
    """Slack's signature headers for ``body``: ``X-Slack-Request-Timestamp`` and ``X-Slack-Signature``."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    raw = body.encode("utf-8") if isinstance(body, str) else body
    basestring = b"v0:" + str(ts).encode("ascii") + b":" + raw
    digest = hmac.new(signing_secret.encode("utf-8"), basestring, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={digest}"}


class SenderResponse(NamedTuple):
    """What the app answered: ``status, body, headers = sender.slash_command(...)``."""

    status: int
    body: str
    headers: dict[str, str]

    def json(self) -> Any:
        """The body parsed as JSON (``None`` for an empty body)."""
        return json.loads(self.body) if self.body.strip() else None


class SendOptions(TypedDict, total=False):
    """How a request is signed and sent, accepted by every sending method."""

    timestamp: int | None        # sign with this Unix time (e.g. one older than five minutes)
    secret: str | None           # sign with another secret (a wrong signature)
    headers: Mapping[str, str] | None  # extra or overriding headers
    retry_num: int | None        # Slack's X-Slack-Retry-Num (and X-Slack-Retry-Reason)
    retry_reason: str | None


class SlackSender(SlackPayloads):
    """Signed HTTP client posting Slack-shaped requests to a Bolt app.

    Args:
        url: the app's request URL, e.g. ``http://127.0.0.1:3000/slack/events``.
        signing_secret: the app's signing secret.
        team_id, api_app_id, team_domain, bot_user_id, bot_id: workspace identity put in payloads.
        verification_token: the (deprecated) ``token`` field Slack still sends.
        timeout: socket timeout in seconds.
        trigger_ids: where new ``trigger_id`` values come from, e.g. ``SlackStandIn.issue_trigger_id`` (the
            stand-in then accepts them for ``views.open`` within 3 s, once); by default made up here.
        response_urls: ``(channel_id, user_id, message_ts) -> url``: the ``response_url`` Slack puts in a click
            on a message button when the caller gives none (e.g. one from ``SlackStandIn.response_url``).
    """

    def __init__(
        self,
        url: str,
        signing_secret: str,
        *,
        timeout: float = 10.0,
        response_urls: Callable[[str, str, str], str] | None = None,
        **identity: Unpack[Identity],
    ) -> None:
        super().__init__(**identity)
        self.url = url
        self.signing_secret = signing_secret
        self.timeout = timeout
        self.response_urls = response_urls
        # An explicit empty ProxyHandler: requests to a local app never go through an HTTP(S)_PROXY.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # ------------------------------------------------------------------ transport

    def raw(self, body: str | bytes, headers: Mapping[str, str] | None = None) -> SenderResponse:
        """POST ``body`` with exactly ``headers``: nothing is signed (urllib only adds a default Content-Type)."""
        data = body.encode("utf-8") if isinstance(body, str) else body
        request = urllib.request.Request(self.url, data=data, headers=dict(headers or {}), method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return SenderResponse(response.status, response.read().decode("utf-8", "replace"),
                                      dict(response.headers.items()))
        except urllib.error.HTTPError as error:
            with error:
                return SenderResponse(error.code, error.read().decode("utf-8", "replace"),
                                      dict(error.headers.items()))

    def send(
        self,
        body: str,
        content_type: str,
        *,
        timestamp: int | None = None,
        secret: str | None = None,
        headers: Mapping[str, str] | None = None,
        retry_num: int | None = None,
        retry_reason: str | None = None,
    ) -> SenderResponse:
        """POST ``body`` signed like Slack (optionally with another ``timestamp``/``secret``)."""
        all_headers = {"Content-Type": content_type, "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)"}
        all_headers.update(sign(self.signing_secret if secret is None else secret, body, timestamp))
        if retry_num is not None:
            all_headers["X-Slack-Retry-Num"] = str(retry_num)
            all_headers["X-Slack-Retry-Reason"] = retry_reason or "http_timeout"
        all_headers.update(headers or {})
        return self.raw(body, all_headers)

    def _send_interactivity(self, payload: JSONDict, **kwargs: Unpack[SendOptions]) -> SenderResponse:
        return self.send(urlencode({"payload": _compact(payload)}), FORM, **kwargs)

    # ------------------------------------------------------------------ slash commands

    def slash_command(
        self,
        command: str = "/rollback",
        text: str = "",
        *,
        user_id: str,
        channel_id: str,
        response_url: str,
        user_name: str | None = None,
        channel_name: str | None = None,
        trigger_id: str | None = None,
        **send: Unpack[SendOptions],
    ) -> SenderResponse:
        """POST a slash command, form-encoded like Slack's payload."""
        fields = {
            "token": self.verification_token,
            "team_id": self.team_id,
            "team_domain": self.team_domain,
            "channel_id": channel_id,
            "channel_name": self._channel_name(channel_id, channel_name),
            "user_id": user_id,
            "user_name": user_name or user_id.lower(),
            "command": command,
            "text": text,
            "api_app_id": self.api_app_id,
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": trigger_id or self.new_trigger_id(),
        }
        return self.send(urlencode(fields), FORM, **send)

    # ------------------------------------------------------------------ interactivity

    def block_action(
        self,
        *,
        user_id: str,
        action_id: str,
        value: str | None = None,
        block_id: str | None = None,
        channel_id: str | None = None,
        message_ts: str | None = None,
        message: Mapping[str, Any] | None = None,
        response_url: str | None = None,
        trigger_id: str | None = None,
        user_name: str | None = None,
        channel_name: str | None = None,
        is_ephemeral: bool = False,
        view: Mapping[str, Any] | None = None,
        action_type: str = "button",
        action: Mapping[str, Any] | None = None,
        state_values: Mapping[str, Mapping[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
        **send: Unpack[SendOptions],
    ) -> SenderResponse:
        """POST a ``block_actions`` payload for a click on ``action_id``.

        For a message button pass ``channel_id`` + ``message_ts`` (and ideally the
        ``message`` dict as posted, e.g. ``StoredMessage.as_slack()``: ``block_id``,
        the button text and ``value`` are then taken from it unless given). For a
        button in a modal or App Home pass ``view`` instead. ``action`` adds/overrides
        fields of the action (e.g. ``selected_option``); ``extra`` of the payload.
        """
        element = self._find_element(message or view or {}, action_id)
        action_obj: JSONDict = {
            "action_id": action_id,
            "block_id": block_id or element.get("_block_id") or self._new_id("b"),
            "type": action_type,
            "action_ts": f"{time.time():.6f}",
        }
        if "text" in element:
            action_obj["text"] = element["text"]
        if value is not None or "value" in element:
            action_obj["value"] = value if value is not None else element["value"]
        if "style" in element:
            action_obj["style"] = element["style"]
        action_obj.update(action or {})

        payload = self._interaction("block_actions", user_id, user_name,
                                    trigger_id=trigger_id or self.new_trigger_id())
        if view is not None:
            payload["container"] = {"type": "view", "view_id": view.get("id")}
            payload["view"] = dict(view)
        else:
            if channel_id is None or message_ts is None:
                raise ValueError("block_action needs channel_id and message_ts (or a view)")
            payload["container"] = {"type": "message", "message_ts": message_ts, "channel_id": channel_id,
                                    "is_ephemeral": is_ephemeral}
        if channel_id is not None:
            payload["channel"] = {"id": channel_id, "name": self._channel_name(channel_id, channel_name)}
        if view is None and not is_ephemeral:
            payload["message"] = dict(message) if message is not None else {
                "type": "message", "ts": message_ts, "text": "", "user": self.bot_user_id, "blocks": []}
        payload["state"] = {"values": _state_values(state_values)}
        if response_url is None and view is None and self.response_urls is not None:
            assert channel_id is not None and message_ts is not None
            response_url = self.response_urls(channel_id, user_id, message_ts)
        if response_url is not None:
            payload["response_url"] = response_url
        payload["actions"] = [action_obj]
        payload.update(extra or {})
        return self._send_interactivity(payload, **send)

    def block_suggestion(
        self,
        *,
        user_id: str,
        action_id: str,
        value: str,
        view: Mapping[str, Any],
        block_id: str | None = None,
        **send: Unpack[SendOptions],
    ) -> SenderResponse:
        """POST a ``block_suggestion`` payload: a person typed ``value`` into the ``external_select`` menu
        ``action_id`` of the modal ``view`` (its ``state`` and ``private_metadata`` travel with it). The app
        answers in the acknowledgement: ``{"options": [...]}``."""
        element = self._find_element(view, action_id)
        payload = self._interaction(
            "block_suggestion", user_id, None, container={"type": "view", "view_id": view.get("id")},
            action_id=action_id, block_id=block_id or element.get("_block_id") or self._new_id("b"), value=value,
            view=dict(view))
        return self._send_interactivity(payload, **send)

    def view_submission(
        self,
        *,
        user_id: str,
        callback_id: str,
        state_values: Mapping[str, Mapping[str, Any]],
        private_metadata: str = "",
        view_id: str | None = None,
        trigger_id: str | None = None,
        user_name: str | None = None,
        view: Mapping[str, Any] | None = None,
        response_urls: list[JSONDict] | None = None,
        **send: Unpack[SendOptions],
    ) -> SenderResponse:
        """POST a ``view_submission`` for a modal.

        ``state_values`` is ``{block_id: {action_id: value}}``; a ``str``/``None``
        value becomes ``{"type": "plain_text_input", "value": value}``, a dict is
        sent as is (e.g. ``{"type": "static_select", "selected_option": {...}}``).
        ``view`` adds fields to the view (``blocks``, ``title``, ``hash``...).
        """
        payload = self._interaction(
            "view_submission", user_id, user_name, trigger_id=trigger_id or self.new_trigger_id(),
            view=self._view_payload(view_id=view_id, callback_id=callback_id, private_metadata=private_metadata,
                                    state_values=state_values, view=view),
            response_urls=list(response_urls or []))
        return self._send_interactivity(payload, **send)

    def view_closed(
        self,
        *,
        user_id: str,
        callback_id: str,
        private_metadata: str = "",
        view_id: str | None = None,
        is_cleared: bool = False,
        user_name: str | None = None,
        view: Mapping[str, Any] | None = None,
        **send: Unpack[SendOptions],
    ) -> SenderResponse:
        """POST a ``view_closed`` payload (sent when a modal with ``notify_on_close`` is closed)."""
        payload = self._interaction(
            "view_closed", user_id, user_name,
            view=self._view_payload(view_id=view_id, callback_id=callback_id, private_metadata=private_metadata,
                                    state_values=None, view=view),
            is_cleared=is_cleared)
        return self._send_interactivity(payload, **send)

    # ------------------------------------------------------------------ Events API

    def event(
        self,
        event: Mapping[str, Any],
        *,
        event_id: str | None = None,
        event_time: int | None = None,
        **send: Unpack[SendOptions],
    ) -> SenderResponse:
        """POST an Events API ``event_callback`` wrapping ``event`` (JSON)."""
        envelope = {
            "token": self.verification_token,
            "team_id": self.team_id,
            "api_app_id": self.api_app_id,
            "event": dict(event),
            "type": "event_callback",
            "event_id": event_id or self._new_id("Ev"),
            "event_time": int(time.time()) if event_time is None else event_time,
            "authorizations": [{"enterprise_id": None, "team_id": self.team_id, "user_id": self.bot_user_id,
                                "is_bot": True, "is_enterprise_install": False}],
            "is_ext_shared_channel": False,
            "event_context": f"4-{secrets.token_urlsafe(24)}",
        }
        return self.send(_compact(envelope), JSON, **send)

    def app_home_opened(self, user_id: str, *, tab: str = "home", view: Mapping[str, Any] | None = None,
                        **kwargs: Any) -> SenderResponse:
        """POST an ``app_home_opened`` event for ``user_id`` (``kwargs`` as for :meth:`event`)."""
        event: JSONDict = {"type": "app_home_opened", "user": user_id, "channel": f"D{user_id[1:]}", "tab": tab,
                           "event_ts": f"{time.time():.6f}"}
        if view is not None:
            event["view"] = dict(view)
        return self.event(event, **kwargs)

    def url_verification(self, challenge: str = "challenge-token", **kwargs: Any) -> SenderResponse:
        """POST Slack's ``url_verification`` handshake (``kwargs``: timestamp/secret/headers)."""
        body = {"token": self.verification_token, "challenge": challenge, "type": "url_verification"}
        return self.send(_compact(body), JSON, **kwargs)
