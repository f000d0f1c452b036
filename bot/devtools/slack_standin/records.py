"""What the Slack stand-in records and answers with: the recorded call, message, ephemeral and upload, and the
pure helpers that parse and redact requests."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

logger = logging.getLogger("bot.devtools.slack_standin")

JSONDict = dict[str, Any]
Answer = tuple[int, JSONDict | str, dict[str, str]]

# Form-encoded bodies carry these fields as JSON strings; they are decoded when recorded.
_JSON_FIELDS = frozenset({"blocks", "attachments", "view", "files", "metadata", "unfurls", "user_auth_blocks"})
_TS_BASE = 1_700_000_000
TRIGGER_TTL = 3.0
"""Seconds a ``trigger_id`` stays valid after Slack issued it."""

RESPONSE_URL_METHOD = "response_url"
"""Pseudo method name under which POSTs to :meth:`SlackStandIn.response_url` URLs are recorded."""

UPLOAD_METHOD = "upload"
"""Pseudo method name under which POSTs to ``files.getUploadURLExternal`` upload URLs are recorded."""


@dataclass(frozen=True)
class Call:
    """One request received by the stand-in.

    ``body`` is the parsed request (form fields flattened to strings, JSON fields
    such as ``blocks``/``view`` decoded, query-string parameters merged in);
    ``headers`` has lower-case names with the ``authorization`` value redacted.
    ``status`` and ``response`` are what the stand-in answered.
    """

    method: str
    body: JSONDict
    headers: dict[str, str]
    at: float
    status: int = 200
    response: Any = None

    @property
    def authorized(self) -> bool:
        """True when the request carried an ``Authorization`` header."""
        return "authorization" in self.headers

    @property
    def ok(self) -> bool:
        """True when the stand-in answered HTTP 200 and (for JSON answers) ``ok: true``."""
        if self.status != 200:
            return False
        return not isinstance(self.response, dict) or bool(self.response.get("ok", True))


@dataclass
class StoredMessage:
    """A channel message as the stand-in keeps it.

    ``versions`` holds the earlier states (``text``/``blocks``/``attachments``)
    replaced by ``chat.update`` or ``replace_original``, oldest first.
    ``via`` is the method that created the message.
    """

    channel: str
    ts: str
    text: str = ""
    blocks: list[JSONDict] = field(default_factory=list)
    attachments: list[JSONDict] = field(default_factory=list)
    thread_ts: str | None = None
    user: str | None = None
    bot_id: str | None = None
    files: list[JSONDict] = field(default_factory=list)
    metadata: JSONDict | None = None
    via: str = "chat.postMessage"
    deleted: bool = False
    versions: list[JSONDict] = field(default_factory=list)
    extra: JSONDict = field(default_factory=dict)

    @property
    def edited(self) -> bool:
        """True once the message has been updated at least once."""
        return bool(self.versions)

    @property
    def is_reply(self) -> bool:
        """True for a threaded reply (``thread_ts`` set and different from ``ts``)."""
        return self.thread_ts is not None and self.thread_ts != self.ts

    def as_slack(self) -> JSONDict:
        """This message shaped like the ``message`` object Slack returns and sends."""
        message: JSONDict = {
            "type": "message",
            "text": self.text,
            "ts": self.ts,
            "user": self.user,
            "bot_id": self.bot_id,
            "blocks": copy.deepcopy(self.blocks),
        }
        if self.attachments:
            message["attachments"] = copy.deepcopy(self.attachments)
        if self.files:
            message["files"] = copy.deepcopy(self.files)
        if self.thread_ts is not None:
            message["thread_ts"] = self.thread_ts
            if self.is_reply:
                message["parent_user_id"] = self.user
        if self.metadata is not None:
            message["metadata"] = copy.deepcopy(self.metadata)
        if self.versions:
            message["edited"] = {"user": self.user, "ts": self.versions[-1]["edited_ts"]}
        return message


@dataclass
class Ephemeral:
    """An ephemeral message (``chat.postEphemeral`` or an ephemeral ``response_url`` post)."""

    channel: str | None
    user: str | None
    ts: str
    text: str = ""
    blocks: list[JSONDict] = field(default_factory=list)
    attachments: list[JSONDict] = field(default_factory=list)
    thread_ts: str | None = None
    via: str = "chat.postEphemeral"
    replaced: bool = False
    response_url_key: str | None = None


@dataclass
class Upload:
    """A file going through the ``files.getUploadURLExternal`` -> upload -> complete flow."""

    file_id: str
    filename: str
    length: int
    content: bytes | None = None
    title: str | None = None
    alt_txt: str | None = None
    snippet_type: str | None = None
    completed: bool = False
    channels: list[str] = field(default_factory=list)
    thread_ts: str | None = None
    initial_comment: str | None = None


@dataclass
class _Fault:
    status: int
    retry_after: int | None
    error: str | None
    remaining: int


@dataclass
class _ResponseTarget:
    channel: str | None
    user: str | None
    message_ts: str | None
    thread_ts: str | None


def _err(error: str, **extra: Any) -> JSONDict:
    return {"ok": False, "error": error, **extra}


def _redact_token(value: str) -> str:
    """Keep a Slack token's type prefix (``xoxb-``) only: ``xoxb-<redacted>``."""
    prefix = value.split("-", 1)[0] if value.startswith("xox") else ""
    return f"{prefix}-<redacted>" if prefix else "<redacted>"


def _redact_authorization(value: str) -> str:
    scheme, _, credential = value.partition(" ")
    if not credential:
        return "<redacted>"
    return f"{scheme} {_redact_token(credential)}"


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _flatten_qs(text: str) -> JSONDict:
    parsed = parse_qs(text, keep_blank_values=True)
    return {k: v[0] if len(v) == 1 else v for k, v in parsed.items()}


def _parse_body(raw: bytes, content_type: str) -> JSONDict:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not raw:
        return {}
    if media_type == "application/json":
        value = json.loads(raw.decode("utf-8"))
        return value if isinstance(value, dict) else {"_json": value}
    if media_type in ("application/x-www-form-urlencoded", ""):
        body = _flatten_qs(raw.decode("utf-8"))
        return {k: _maybe_json(v) if k in _JSON_FIELDS else v for k, v in body.items()}
    return {"_content_type": media_type, "_length": len(raw)}


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list) else [value]


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _summarize(call: Call, limit: int = 240) -> str:
    body = json.dumps(call.body, default=str, sort_keys=True)
    if len(body) > limit:
        body = body[: limit - 3] + "..."
    return f"[{call.status}] {call.method} {body}"
