"""The Slack stand-in's ``auth``, ``chat``, ``conversations``, ``users``, ``usergroups`` and ``apps`` methods, and posts
to a ``response_url``."""

from __future__ import annotations

from bot.devtools import block_kit_rules
from bot.devtools.slack_standin.records import (
    Answer, JSONDict, RESPONSE_URL_METHOD, _TS_BASE, Ephemeral, StoredMessage, _as_list, _err, _truthy,
)


class _ChatMethods:
    """Web API methods of ``SlackStandIn`` about messages, conversations and people."""

    def _auth_test(self, body: JSONDict) -> JSONDict:
        return {"ok": True, "url": f"https://{self.team_domain}.slack.com/", "team": self.team_domain.title(),
                "user": "rollback-bot", "team_id": self.team_id, "user_id": self.bot_user_id,
                "bot_id": self.bot_id, "is_enterprise_install": False}

    def _chat_post_message(self, body: JSONDict) -> JSONDict:
        channel = self._resolve_channel(body.get("channel"))
        if channel is None:
            return _err("channel_not_found")
        blocks, attachments = _as_list(body.get("blocks")), _as_list(body.get("attachments"))
        text = body.get("text") or ""
        if not text and not blocks and not attachments:
            return _err("no_text")
        refused = self._refuse_outside(channel, post=True) or self._refuse_blocks(body)
        if refused:
            return refused
        known = {"channel", "text", "blocks", "attachments", "thread_ts", "metadata", "token"}
        message = self._store_message(StoredMessage(
            channel=channel, ts=self._next_ts(), text=text, blocks=blocks, attachments=attachments,
            thread_ts=body.get("thread_ts") or None, user=self.bot_user_id, bot_id=self.bot_id,
            metadata=body.get("metadata"), via="chat.postMessage",
            extra={k: v for k, v in body.items() if k not in known and v is not None},
        ))
        return {"ok": True, "channel": channel, "ts": message.ts, "message": message.as_slack()}

    def _message_in_channel(self, body: JSONDict, ts_key: str) -> StoredMessage | JSONDict:
        """The message ``body`` names (channel and ``body[ts_key]``), or Slack's error when there is none."""
        if self._resolve_channel(body.get("channel")) is None:
            return _err("channel_not_found")
        message = self._find_message(body.get("channel"), body.get(ts_key))
        return _err("message_not_found") if message is None else message

    def _chat_update(self, body: JSONDict) -> JSONDict:
        message = self._message_in_channel(body, "ts")
        if not isinstance(message, StoredMessage):
            return message
        refused = self._refuse_blocks(body)
        if refused:
            return refused
        self._revise(message, body, self._next_ts())
        return {"ok": True, "channel": message.channel, "ts": message.ts, "text": message.text,
                "message": message.as_slack()}

    def _chat_delete(self, body: JSONDict) -> JSONDict:
        message = self._find_message(body.get("channel"), body.get("ts"))
        if message is None:
            return _err("message_not_found")
        message.deleted = True
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def _chat_post_ephemeral(self, body: JSONDict) -> JSONDict:
        channel = self._resolve_channel(body.get("channel"))
        if channel is None:
            return _err("channel_not_found")
        if not body.get("user"):
            return _err("user_not_found")
        blocks, attachments = _as_list(body.get("blocks")), _as_list(body.get("attachments"))
        text = body.get("text") or ""
        if not text and not blocks and not attachments:
            return _err("no_text")
        refused = self._refuse_outside(channel) or self._refuse_blocks(body)
        if refused:
            return refused
        ephemeral = Ephemeral(channel=channel, user=body["user"], ts=self._next_ts(), text=text, blocks=blocks,
                              attachments=attachments, thread_ts=body.get("thread_ts") or None)
        self._ephemerals.append(ephemeral)
        return {"ok": True, "message_ts": ephemeral.ts}

    def _chat_get_permalink(self, body: JSONDict) -> JSONDict:
        message = self._message_in_channel(body, "message_ts")
        if not isinstance(message, StoredMessage):
            return message
        link = f"https://{self.team_domain}.slack.com/archives/{message.channel}/p{message.ts.replace('.', '')}"
        if message.is_reply:
            link += f"?thread_ts={message.thread_ts}&cid={message.channel}"
        return {"ok": True, "channel": message.channel, "permalink": link}

    def _conversations_open(self, body: JSONDict) -> JSONDict:
        if body.get("channel"):
            return {"ok": True, "no_op": True, "already_open": True, "channel": {"id": body["channel"]}}
        users = tuple(u.strip() for u in str(body.get("users") or "").split(",") if u.strip())
        if not users:
            return _err("users_list_not_supplied")
        existed = tuple(sorted(users)) in self._dms
        channel = self._dm_for(users)
        return {"ok": True, "no_op": existed, "already_open": existed, "channel": {"id": channel}}

    def _channel_object(self, channel: str) -> JSONDict:
        kind = self._channel_kind(channel)
        names = {v: k for k, v in self.channels.items()}
        return {"id": channel, "name": names.get(channel, channel.lower()), "is_channel": kind == "public",
                "is_group": kind == "private", "is_im": kind == "im", "is_private": kind != "public",
                "is_archived": False, "is_member": self.is_member(channel), "created": _TS_BASE}

    def _conversations_info(self, body: JSONDict) -> JSONDict:
        channel = self._resolve_channel(body.get("channel"))
        kind = self._channel_kind(channel)
        if channel is None or kind is None or (kind == "private" and not self.is_member(channel)):
            return _err("channel_not_found")  # a private channel is invisible until the bot is invited
        return {"ok": True, "channel": self._channel_object(channel)}

    def _conversations_join(self, body: JSONDict) -> JSONDict:
        channel = self._resolve_channel(body.get("channel"))
        kind = self._channel_kind(channel)
        if channel is None or kind is None:
            return _err("channel_not_found")
        if kind != "public":
            return _err("method_not_supported_for_channel_type")
        answer: JSONDict = {"ok": True}
        if channel in self.joined:
            answer["warning"] = "already_in_channel"
        self.joined.add(channel)
        return {**answer, "channel": self._channel_object(channel)}

    def _users_info(self, body: JSONDict) -> JSONDict:
        user_id = body.get("user")
        if user_id not in self.users:
            return _err("user_not_found")
        return {"ok": True, "user": self._user_object(user_id)}

    def _usergroups_users_list(self, body: JSONDict) -> JSONDict:
        group = body.get("usergroup")
        if group not in self.usergroups:
            return _err("no_such_subteam")
        return {"ok": True, "users": list(self.usergroups[group])}

    def _apps_connections_open(self, body: JSONDict) -> JSONDict:
        if self.socket_mode_url is None:
            return _err("not_allowed_token_type")
        return {"ok": True, "url": self.socket_mode_url}

    def _answer_response_url(self, key: str, payload: JSONDict) -> Answer:
        if block_kit_rules.message_errors(payload.get("blocks"), text=payload.get("text")):
            return 400, "invalid_blocks", {}
        target = self._response_targets.get(key)
        if target is None or target.channel is None:
            return 200, "ok", {}
        original = self._message_index.get((target.channel, target.message_ts or ""))
        replace, delete = _truthy(payload.get("replace_original")), _truthy(payload.get("delete_original"))
        if target.message_ts is None and (replace or delete):
            # No channel message behind this URL (e.g. a slash command): the "original"
            # is the ephemeral reply posted earlier through the same URL.
            for earlier in self._ephemerals:
                if earlier.response_url_key == key:
                    earlier.replaced = True
        if delete:
            if original is not None:
                original.deleted = True
            return 200, "ok", {}
        if replace and original is not None:
            self._revise(original, payload, self._next_ts())
            return 200, "ok", {}
        blocks, attachments = _as_list(payload.get("blocks")), _as_list(payload.get("attachments"))
        text = payload.get("text") or ""
        thread_ts = payload.get("thread_ts") or target.thread_ts
        if payload.get("response_type") == "in_channel":
            self._store_message(StoredMessage(
                channel=target.channel, ts=self._next_ts(), text=text, blocks=blocks, attachments=attachments,
                thread_ts=thread_ts, user=self.bot_user_id, bot_id=self.bot_id, via=RESPONSE_URL_METHOD))
        else:
            self._ephemerals.append(Ephemeral(target.channel, target.user, self._next_ts(), text, blocks,
                                              attachments, thread_ts, via=RESPONSE_URL_METHOD,
                                              response_url_key=key))
        return 200, "ok", {}
