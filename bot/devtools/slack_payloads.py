"""The shapes of what Slack sends an app: the parts ``SlackSender`` (bot/devtools/slack_signing.py) puts together.

``SlackPayloads`` holds the workspace identity (team, app, bot) and builds the pieces every request shares: the
user and team objects, the interactivity envelope (``block_actions``, ``block_suggestion``, ``view_submission``,
``view_closed``), a modal's ``view`` object, Slack-shaped ids, and the element a click or a typed query is on.
It sends nothing; signing and posting are ``slack_signing``'s.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, TypedDict, Unpack

__all__ = ["Identity", "JSONDict", "SlackPayloads", "compact", "find_element", "state_values"]

JSONDict = dict[str, Any]


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def state_values(values: Mapping[str, Mapping[str, Any]] | None) -> JSONDict:
    """Slack's ``state.values``; a plain string leaf becomes a ``plain_text_input`` value."""
    result: JSONDict = {}
    for block_id, actions in (values or {}).items():
        result[block_id] = {
            action_id: value if isinstance(value, dict) else {"type": "plain_text_input", "value": value}
            for action_id, value in actions.items()
        }
    return result


_state_values = state_values  # for the methods whose parameter has the name


def find_element(container: Mapping[str, Any], action_id: str) -> JSONDict:
    """The element with ``action_id`` in a message/view's blocks, plus its ``_block_id``."""
    for block in container.get("blocks") or []:
        candidates = list(block.get("elements") or [])
        if isinstance(block.get("accessory"), dict):
            candidates.append(block["accessory"])
        if isinstance(block.get("element"), dict):
            candidates.append(block["element"])
        for element in candidates:
            if isinstance(element, dict) and element.get("action_id") == action_id:
                return {**element, "_block_id": block.get("block_id")}
    return {}


class Identity(TypedDict, total=False):
    """The workspace identity put in payloads (each has a default: ``SlackPayloads.DEFAULTS``)."""

    team_id: str
    api_app_id: str
    team_domain: str
    bot_user_id: str
    bot_id: str
    verification_token: str          # the (deprecated) ``token`` field Slack still sends
    trigger_ids: Callable[[], str] | None  # where new ``trigger_id`` values come from; by default made up here


class SlackPayloads:
    """The workspace identity put in payloads, and the payload parts built from it."""

    DEFAULTS: Identity = {"team_id": "T0001", "api_app_id": "A0001", "team_domain": "example",
                          "bot_user_id": "U0ROLLBOT", "bot_id": "B0ROLLBOT",
                          "verification_token": "verification-token", "trigger_ids": None}

    def __init__(self, **identity: Unpack[Identity]) -> None:
        unknown = set(identity) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        values = {**self.DEFAULTS, **identity}
        self.team_id: str = values["team_id"]
        self.api_app_id: str = values["api_app_id"]
        self.team_domain: str = values["team_domain"]
        self.bot_user_id: str = values["bot_user_id"]
        self.bot_id: str = values["bot_id"]
        self.verification_token: str = values["verification_token"]
        self.trigger_ids: Callable[[], str] | None = values["trigger_ids"]
        self._counter = itertools.count(1)

    # ------------------------------------------------------------------ ids

    def new_trigger_id(self) -> str:
        """A fresh trigger id shaped like Slack's (``13345224609.738474920.8088930838d88f008e0``)."""
        if self.trigger_ids is not None:
            return self.trigger_ids()
        return f"{int(time.time() * 1000)}.{next(self._counter):09d}.{secrets.token_hex(16)}"

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._counter):08d}{secrets.token_hex(2).upper()}"

    # ------------------------------------------------------------------ parts

    def _user(self, user_id: str, user_name: str | None) -> JSONDict:
        name = user_name or user_id.lower()
        return {"id": user_id, "username": name, "name": name, "team_id": self.team_id}

    def _team(self) -> JSONDict:
        return {"id": self.team_id, "domain": self.team_domain}

    @staticmethod
    def _channel_name(channel_id: str, channel_name: str | None) -> str:
        if channel_name:
            return channel_name
        if channel_id.startswith("D"):
            return "directmessage"
        return "privategroup" if channel_id.startswith("G") else "general"

    def _interaction(self, kind: str, user_id: str, user_name: str | None, **fields: Any) -> JSONDict:
        """The envelope every interactivity payload shares, then ``fields`` (a ``trigger_id`` where Slack sends
        one)."""
        payload: JSONDict = {"type": kind, "team": self._team(), "user": self._user(user_id, user_name),
                             "api_app_id": self.api_app_id, "token": self.verification_token}
        payload.update(fields)
        payload.update(is_enterprise_install=False, enterprise=None)
        return payload

    @staticmethod
    def _find_element(container: Mapping[str, Any], action_id: str) -> JSONDict:
        return find_element(container, action_id)

    def _view_payload(self, *, view_id: str | None, callback_id: str, private_metadata: str,
                      state_values: Mapping[str, Mapping[str, Any]] | None,
                      view: Mapping[str, Any] | None) -> JSONDict:
        view_id = view_id or self._new_id("V")
        values = _state_values(state_values)
        payload: JSONDict = {
            "id": view_id,
            "team_id": self.team_id,
            "type": "modal",
            "blocks": [],
            "private_metadata": private_metadata,
            "callback_id": callback_id,
            "state": {"values": values},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "title": {"type": "plain_text", "text": "Modal", "emoji": True},
            "clear_on_close": False,
            "notify_on_close": False,
            "close": None,
            "submit": None,
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": self.api_app_id,
            "external_id": "",
            "app_installed_team_id": self.team_id,
            "bot_id": self.bot_id,
        }
        payload.update(view or {})
        payload.update(id=view_id, callback_id=callback_id, private_metadata=private_metadata)
        payload["state"] = {"values": values}
        return payload
