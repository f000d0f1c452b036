"""The Slack stand-in's ``views.*`` methods: single-use trigger ids, Block Kit limits, hashes, App Home."""

from __future__ import annotations

import copy
import time
from typing import Any

from bot.devtools import block_kit_rules
from bot.devtools.slack_standin.records import JSONDict, TRIGGER_TTL, _as_list, _err, _maybe_json


class _ViewMethods:
    """Web API methods of ``SlackStandIn`` about views (modals and App Home)."""

    def _new_view(self, spec: JSONDict, *, view_id: str | None = None, root_view_id: str | None = None,
                  previous_view_id: str | None = None) -> JSONDict:
        view_id = view_id or self._next_id("V")
        view = {
            "id": view_id, "team_id": self.team_id, "type": spec.get("type", "modal"),
            "blocks": _as_list(spec.get("blocks")), "private_metadata": spec.get("private_metadata", ""),
            "callback_id": spec.get("callback_id", ""), "state": {"values": {}},
            "hash": f"{int(time.time())}.{self._next_id('h')}", "title": spec.get("title"),
            "clear_on_close": bool(spec.get("clear_on_close", False)),
            "notify_on_close": bool(spec.get("notify_on_close", False)),
            "close": spec.get("close"), "submit": spec.get("submit"),
            "previous_view_id": previous_view_id, "root_view_id": root_view_id or view_id,
            "app_id": self.app_id, "external_id": spec.get("external_id", ""),
            "app_installed_team_id": self.team_id, "bot_id": self.bot_id,
        }
        self._views[view_id] = view
        return view

    @staticmethod
    def _view_spec(body: JSONDict, expected_type: str) -> JSONDict | None:
        spec = _maybe_json(body.get("view"))
        if not isinstance(spec, dict) or spec.get("type", expected_type) != expected_type:
            return None
        return spec

    @staticmethod
    def _refuse_view(spec: JSONDict) -> JSONDict | None:
        errors = block_kit_rules.view_errors(spec)
        return _err("invalid_arguments", response_metadata={"messages": errors}) if errors else None

    def _exchange_trigger(self, trigger_id: Any) -> JSONDict | None:
        """Use up ``trigger_id``: an error unless Slack issued it, it is unused and under TRIGGER_TTL old."""
        issued = self._triggers.get(trigger_id) if isinstance(trigger_id, str) else None
        if issued is None:
            return _err("invalid_trigger_id")
        if trigger_id in self._exchanged:
            return _err("exchanged_trigger_id")
        if time.monotonic() - issued > TRIGGER_TTL:
            return _err("expired_trigger_id")
        self._exchanged.add(trigger_id)
        return None

    def _views_open(self, body: JSONDict) -> JSONDict:
        if not body.get("trigger_id"):
            return _err("invalid_arguments", response_metadata={"messages": ["[ERROR] missing trigger_id"]})
        spec = self._view_spec(body, "modal")
        if spec is None:
            return _err("invalid_arguments")
        refused = self._refuse_view(spec) or self._exchange_trigger(body.get("trigger_id"))
        if refused:
            return refused
        return {"ok": True, "view": copy.deepcopy(self._new_view(spec))}

    def _views_update(self, body: JSONDict) -> JSONDict:
        spec = self._view_spec(body, "modal")
        if spec is None:
            return _err("invalid_arguments")
        current: JSONDict | None = None
        if body.get("view_id"):
            current = self._views.get(body["view_id"])
        elif body.get("external_id"):
            current = next((v for v in self._views.values() if v["external_id"] == body["external_id"]), None)
        if current is None:
            return _err("not_found")
        if body.get("hash") and body["hash"] != current["hash"]:
            return _err("hash_conflict")
        refused = self._refuse_view(spec)
        if refused:
            return refused
        view = self._new_view(spec, view_id=current["id"], root_view_id=current["root_view_id"],
                              previous_view_id=current["previous_view_id"])
        return {"ok": True, "view": copy.deepcopy(view)}

    def _views_publish(self, body: JSONDict) -> JSONDict:
        user_id = body.get("user_id")
        if not user_id:
            return _err("invalid_arguments")
        spec = self._view_spec(body, "home")
        if spec is None or "type" not in spec:
            return _err("invalid_arguments")
        refused = self._refuse_view(spec)
        if refused:
            return refused
        view = self._new_view(spec, view_id=self._home_views.get(user_id))
        self._home_views[user_id] = view["id"]
        return {"ok": True, "view": copy.deepcopy(view)}
