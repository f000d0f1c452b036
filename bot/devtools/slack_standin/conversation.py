"""The Slack stand-in's conversation model: ids and timestamps, DMs, channel kinds and membership, message storage."""

from __future__ import annotations

import datetime as _dt
import zoneinfo
from typing import Any

from bot.devtools import block_kit_rules
from bot.devtools.slack_standin.records import JSONDict, _TS_BASE, StoredMessage, _as_list, _err


class _Conversation:
    """Helpers of ``SlackStandIn``'s Web API methods over its conversation model."""

    def _next_ts(self) -> str:
        self._seq += 1
        return f"{_TS_BASE + self._seq // 10_000}.{(self._seq % 10_000) * 100:06d}"

    def _next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}{self._seq:010d}"

    def _dm_for(self, users: tuple[str, ...]) -> str:
        key = tuple(sorted(users))
        with self._lock:
            if key not in self._dms:
                self._dms[key] = f"D{key[0][1:]}" if len(key) == 1 else self._next_id("G")
            return self._dms[key]

    def _channel_kind(self, channel: Any) -> str | None:
        """``public``, ``private`` or ``im`` for a channel id; None when it is not one."""
        if not isinstance(channel, str) or not channel or channel[0] not in "CGD":
            return None
        if channel[0] == "D":
            return "im"
        return "private" if channel[0] == "G" or channel in self.private_channels else "public"

    def _refuse_outside(self, channel: str, *, post: bool = False) -> JSONDict | None:
        """``not_in_channel`` unless the bot may write in ``channel`` (a post in a public channel it has not
        joined passes with ``chat:write.public``)."""
        if self.is_member(channel):
            return None
        if post and self._channel_kind(channel) == "public" and "chat:write.public" in self.scopes:
            return None
        return _err("not_in_channel")

    @staticmethod
    def _refuse_blocks(body: JSONDict) -> JSONDict | None:
        errors = block_kit_rules.message_errors(body.get("blocks"), text=body.get("text"))
        if not errors:
            return None
        if any("/text]" in e and "/blocks" not in e for e in errors):
            return _err("msg_too_long")
        return _err("invalid_blocks", response_metadata={"messages": errors})

    def _resolve_channel(self, value: Any) -> str | None:
        """Channel id for an id, a user id (-> DM) or a known ``#name``; None if unknown."""
        if not isinstance(value, str) or not value:
            return None
        if value.startswith("#") or value[0].islower():
            return self.channels.get(value.lstrip("#"))
        if value[0] in "UW":
            return self._dm_for((value,))
        return value

    def _store_message(self, message: StoredMessage) -> StoredMessage:
        self._messages.append(message)
        self._message_index[(message.channel, message.ts)] = message
        return message

    def _find_message(self, channel: Any, ts: Any) -> StoredMessage | None:
        resolved = self._resolve_channel(channel)
        if resolved is None or not isinstance(ts, str):
            return None
        found = self._message_index.get((resolved, ts))
        return found if found is not None and not found.deleted else None

    @staticmethod
    def _revise(message: StoredMessage, body: JSONDict, edited_ts: str) -> None:
        message.versions.append({"text": message.text, "blocks": message.blocks,
                                 "attachments": message.attachments, "edited_ts": edited_ts})
        if "text" in body:
            message.text = body.get("text") or ""
        if "blocks" in body:
            message.blocks = _as_list(body.get("blocks"))
        if "attachments" in body:
            message.attachments = _as_list(body.get("attachments"))
        if "metadata" in body:
            message.metadata = body.get("metadata")

    def _user_object(self, user_id: str) -> JSONDict:
        data = self.users[user_id]
        tz_name = data.get("tz", "UTC")
        try:
            now = _dt.datetime.now(zoneinfo.ZoneInfo(tz_name))
            offset = now.utcoffset()
            tz_offset, tz_label = int(offset.total_seconds()) if offset else 0, now.tzname() or tz_name
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            tz_offset, tz_label = 0, tz_name
        name = data.get("name", user_id.lower())
        real_name = data.get("real_name", name)
        profile = {"real_name": real_name, "display_name": data.get("display_name", name),
                   "email": data.get("email", f"{name}@{self.team_domain}.test"), "team": self.team_id}
        user = {"id": user_id, "team_id": self.team_id, "name": name, "deleted": False, "real_name": real_name,
                "tz": tz_name, "tz_label": tz_label, "tz_offset": tz_offset, "is_admin": False,
                "is_owner": False, "is_bot": False, "is_app_user": False, "updated": _TS_BASE,
                "profile": profile}
        user.update({k: v for k, v in data.items() if k not in ("display_name", "email")})
        return user
