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
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import threading
import time
import zoneinfo
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from bot.devtools import block_kit_rules, slack_scopes

__all__ = [
    "Call",
    "Ephemeral",
    "SlackStandIn",
    "StoredMessage",
    "Upload",
]

logger = logging.getLogger(__name__)

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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    standin: SlackStandIn


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        self.server.standin._handle(self)

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature from base class
        logger.debug("slack stand-in: " + format, *args)


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


class SlackStandIn:
    """A stand-in Slack Web API server for tests and demos.

    Args:
        users: ``users.info`` data by user id, e.g. ``{"U0ALICE": {"name": "alice",
            "real_name": "Alice", "tz": "Europe/London"}}``; unknown ids answer
            ``user_not_found``.
        usergroups: ``usergroups.users.list`` members by subteam id; unknown ids
            answer ``no_such_subteam``.
        channels: channel name -> id, used when a message is posted to ``#name``.
        team_id, team_domain, bot_user_id, bot_id, app_id: identity reported by
            ``auth.test`` and used in answers.
        require_auth: answer ``not_authed`` to Web API calls without a token.
        scopes: the bot token's scopes; by default those ``manifest.yml`` declares.
        joined: channel ids the bot is a member of at the start: none by default, as for a
            newly installed app (``conversations.join`` joins a public one; ``join`` is a
            person inviting it, ``leave`` removing it).
        private_channels: channel ids that are private (``G…`` ids always are);
            the bot cannot join them itself and cannot see them until invited.
    """

    def __init__(
        self,
        *,
        users: Mapping[str, Mapping[str, Any]] | None = None,
        usergroups: Mapping[str, Iterable[str]] | None = None,
        channels: Mapping[str, str] | None = None,
        team_id: str = "T0001",
        team_domain: str = "example",
        bot_user_id: str = "U0ROLLBOT",
        bot_id: str = "B0ROLLBOT",
        app_id: str = "A0001",
        require_auth: bool = True,
        scopes: Iterable[str] | None = None,
        joined: Iterable[str] = (),
        private_channels: Iterable[str] = (),
    ) -> None:
        self.users: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (users or {}).items()}
        self.usergroups: dict[str, list[str]] = {k: list(v) for k, v in (usergroups or {}).items()}
        self.channels: dict[str, str] = {k.lstrip("#"): v for k, v in (channels or {}).items()}
        self.team_id = team_id
        self.team_domain = team_domain
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.require_auth = require_auth
        self.scopes: frozenset[str] = frozenset(slack_scopes.manifest_scopes() if scopes is None else scopes)
        self.joined: set[str] = set(joined)
        self.private_channels: set[str] = set(private_channels)
        self.socket_mode_url: str | None = None
        """When set, ``apps.connections.open`` answers ``{"ok": true, "url": socket_mode_url}``."""

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._origin = ""
        self._reset_state()
        self._methods: dict[str, Callable[[JSONDict], JSONDict]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.getPermalink": self._chat_get_permalink,
            "views.open": self._views_open,
            "views.push": self._views_open,  # Slack checks and answers a push like an open
            "views.update": self._views_update,
            "views.publish": self._views_publish,
            "conversations.open": self._conversations_open,
            "conversations.info": self._conversations_info,
            "conversations.join": self._conversations_join,
            "users.info": self._users_info,
            "usergroups.users.list": self._usergroups_users_list,
            "files.getUploadURLExternal": self._files_get_upload_url_external,
            "files.completeUploadExternal": self._files_complete_upload_external,
            "apps.connections.open": self._apps_connections_open,
        }

    def _reset_state(self) -> None:
        self._calls: list[Call] = []
        self._faults: dict[str, deque[_Fault]] = {}
        self._messages: list[StoredMessage] = []
        self._message_index: dict[tuple[str, str], StoredMessage] = {}
        self._ephemerals: list[Ephemeral] = []
        self._views: dict[str, JSONDict] = {}
        self._home_views: dict[str, str] = {}
        self._uploads: dict[str, Upload] = {}
        self._dms: dict[tuple[str, ...], str] = {}
        self._response_targets: dict[str, _ResponseTarget] = {}
        self._triggers: dict[str, float] = {}  # trigger_id -> when it was issued (time.monotonic())
        self._exchanged: set[str] = set()
        self._seq = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SlackStandIn:
        """Bind 127.0.0.1 on a free port and serve in a daemon thread."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.standin = self
        self._server = server
        self._origin = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="slack-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> SlackStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server."""
        if not self._origin or self._server is None:
            raise RuntimeError("SlackStandIn is not started")
        return self._origin

    @property
    def base_url(self) -> str:
        """Web API base URL for ``WebClient(base_url=...)``, with the trailing slash."""
        return f"{self.origin}/api/"

    # ------------------------------------------------------------------ configuration

    def add_user(self, user_id: str, *, name: str | None = None, real_name: str | None = None,
                 tz: str = "UTC", **extra: Any) -> None:
        """Make ``users.info`` know ``user_id``."""
        with self._lock:
            self.users[user_id] = {"name": name or user_id.lower(), "real_name": real_name or name or user_id,
                                   "tz": tz, **extra}

    def response_url(self, key: str, *, channel: str | None = None, user: str | None = None,
                     message_ts: str | None = None, thread_ts: str | None = None) -> str:
        """A ``response_url`` on this server; POSTs to it are recorded as method ``"response_url"``.

        When ``channel`` is given the post also changes the conversation model the
        way Slack would: ``in_channel`` posts a message, the default (ephemeral)
        adds an ephemeral for ``user``, and ``replace_original``/``delete_original``
        act on the message ``message_ts``.
        """
        with self._lock:
            self._response_targets[key] = _ResponseTarget(channel, user, message_ts, thread_ts)
        return f"{self.origin}/response/{quote(key, safe='')}"

    def issue_trigger_id(self, *, issued_at: float | None = None) -> str:
        """A ``trigger_id`` as Slack puts in an interaction payload: it opens one view within ``TRIGGER_TTL``
        seconds of ``issued_at`` (``time.monotonic()``, default now)."""
        with self._lock:
            self._seq += 1
            trigger_id = f"{int(time.time())}{self._seq:06d}.{self.team_id[1:]}.{self._seq:032x}"
            self._triggers[trigger_id] = time.monotonic() if issued_at is None else issued_at
            return trigger_id

    def join(self, channel: str) -> None:
        """The bot becomes a member of ``channel`` (a person invited it, public or private)."""
        with self._lock:
            self.joined.add(channel)

    def leave(self, channel: str) -> None:
        """The bot is no longer a member of ``channel`` (``conversations.info`` says ``is_member: false``)."""
        with self._lock:
            self.joined.discard(channel)

    def is_member(self, channel: str) -> bool:
        """A DM always; a channel once joined."""
        with self._lock:
            return self._channel_kind(channel) == "im" or channel in self.joined

    def rate_limit(self, method: str, *, retry_after: int = 1, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` answer HTTP 429 ``ratelimited`` with ``Retry-After``."""
        self.fail_next(method, status=429, retry_after=retry_after, times=times)

    def fail_next(self, method: str, *, status: int = 429, retry_after: int | None = 1,
                  error: str | None = None, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` fail.

        With ``error`` the answer is HTTP 200 ``{"ok": false, "error": error}``;
        otherwise HTTP ``status`` (429 adds ``Retry-After: retry_after``, body
        ``ratelimited``; other statuses answer ``fatal_error``). ``method`` may also
        be ``"response_url"`` or ``"upload"``. Successive calls queue up.
        """
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.setdefault(method, deque()).append(_Fault(status, retry_after, error, times))

    def revoke_token(self, error: str = "token_revoked") -> None:
        """From now on Slack refuses the bot's token: every Web API method, ``auth.test`` included, answers
        ``{"ok": false, "error": error}`` (``token_revoked``, ``invalid_auth``, …), as after an uninstall."""
        for method in self._methods:
            self.fail_next(method, error=error, times=1 << 30)

    # ------------------------------------------------------------------ recorded calls

    def calls(self, method: str | None = None) -> list[Call]:
        """Recorded calls in arrival order, optionally only those of ``method``."""
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def wait_for(self, method: str, predicate: Callable[[Call], bool] | None = None,
                 timeout: float = 5.0, count: int = 1) -> list[Call]:
        """Block until at least ``count`` calls of ``method`` matching ``predicate`` arrived.

        Returns all matching calls. A predicate raising ``KeyError``/``IndexError``/
        ``TypeError`` counts as no match. On timeout raises ``AssertionError``
        listing every call received.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matched = [c for c in self._calls if c.method == method and self._matches(predicate, c)]
                if len(matched) >= count:
                    return matched
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(self._timeout_message(method, predicate, timeout, count, len(matched)))
                self._cond.wait(remaining)

    @staticmethod
    def _matches(predicate: Callable[[Call], bool] | None, call: Call) -> bool:
        if predicate is None:
            return True
        try:
            return bool(predicate(call))
        except (KeyError, IndexError, TypeError):
            return False

    def _timeout_message(self, method: str, predicate: Callable[[Call], bool] | None,
                         timeout: float, count: int, matched: int) -> str:
        what = f"{count} call(s) of {method!r}" + (" matching the predicate" if predicate else "")
        lines = [f"Timed out after {timeout:g}s waiting for {what}; {matched} matched.",
                 f"Received {len(self._calls)} call(s):"]
        lines += [f"  {i}. {_summarize(c)}" for i, c in enumerate(self._calls, 1)] or ["  (none)"]
        return "\n".join(lines)

    def clear(self) -> None:
        """Forget the recorded calls (the conversation model is kept)."""
        with self._lock:
            self._calls.clear()

    def reset(self) -> None:
        """Forget calls, messages, views, uploads, DMs, response URLs and pending faults."""
        with self._lock:
            self._reset_state()

    # ------------------------------------------------------------------ conversation views

    def messages(self, channel: str | None = None, *, include_deleted: bool = False) -> list[StoredMessage]:
        """Stored channel messages (copies) in posting order."""
        with self._lock:
            return [copy.deepcopy(m) for m in self._messages
                    if (channel is None or m.channel == channel) and (include_deleted or not m.deleted)]

    def message(self, channel: str, ts: str) -> StoredMessage | None:
        """The stored message ``ts`` in ``channel`` (a copy), or None."""
        with self._lock:
            found = self._message_index.get((channel, ts))
            return copy.deepcopy(found) if found else None

    def thread(self, channel: str, ts: str) -> list[StoredMessage]:
        """The parent message ``ts`` (if stored) followed by its replies, in order."""
        with self._lock:
            return [copy.deepcopy(m) for m in self._messages
                    if m.channel == channel and not m.deleted and (m.ts == ts or m.thread_ts == ts)]

    def ephemerals(self, user: str | None = None) -> list[Ephemeral]:
        """Ephemeral messages (copies) in order, optionally only those shown to ``user``."""
        with self._lock:
            return [copy.deepcopy(e) for e in self._ephemerals if user is None or e.user == user]

    def uploads(self) -> list[Upload]:
        """File uploads (copies) in the order their URLs were requested."""
        with self._lock:
            return [copy.deepcopy(u) for u in self._uploads.values()]

    def view(self, view_id: str) -> JSONDict | None:
        """The latest state of a view opened/pushed/updated/published here."""
        with self._lock:
            found = self._views.get(view_id)
            return copy.deepcopy(found) if found else None

    def views(self) -> list[JSONDict]:
        """All known views (latest state of each), in creation order."""
        with self._lock:
            return copy.deepcopy(list(self._views.values()))

    def home_view(self, user_id: str) -> JSONDict | None:
        """The latest App Home view published for ``user_id``."""
        with self._lock:
            view_id = self._home_views.get(user_id)
            return copy.deepcopy(self._views[view_id]) if view_id else None

    def dm_channel(self, user_id: str) -> str:
        """The DM channel id ``conversations.open`` returns for ``user_id``."""
        return self._dm_for((user_id,))

    # ------------------------------------------------------------------ HTTP handling

    def _handle(self, request: _Handler) -> None:
        url = urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in request.headers.items()}
        if "authorization" in headers:
            headers["authorization"] = _redact_authorization(headers["authorization"])

        path = url.path
        if path.startswith("/api/"):
            method = path[len("/api/"):]
            try:
                body = {**_flatten_qs(url.query), **_parse_body(raw, headers.get("content-type", ""))}
            except ValueError:
                body = {"_unparsable": raw[:200].decode("utf-8", "replace")}
            authed = "authorization" in headers or bool(body.get("token"))
            if "token" in body:
                body["token"] = _redact_token(str(body["token"]))
            answer: Callable[[], Answer] = lambda: self._answer_api(method, body, authed)  # noqa: E731
        elif path.startswith("/upload/"):
            method = UPLOAD_METHOD
            file_id = unquote(path[len("/upload/"):])
            body = {"file_id": file_id, "length": len(raw)}
            answer = lambda: self._answer_upload(file_id, raw)  # noqa: E731
        elif path.startswith("/response/"):
            method = RESPONSE_URL_METHOD
            key = unquote(path[len("/response/"):])
            try:
                payload = _parse_body(raw, headers.get("content-type", "application/json"))
            except ValueError:
                payload = {"_unparsable": raw[:200].decode("utf-8", "replace")}
            body = {**payload, "key": key}
            answer = lambda: self._answer_response_url(key, payload)  # noqa: E731
        else:
            method, body = "unknown_path", {"path": path}
            answer = lambda: (404, "not_found", {})  # noqa: E731

        with self._cond:
            fault = self._take_fault(method)
            try:
                status, response, extra_headers = self._fault_answer(fault) if fault else answer()
            except Exception as exc:  # a malformed request must not kill the server thread
                logger.exception("slack stand-in failed to answer %s", method)
                status, response, extra_headers = 500, _err("standin_internal_error", detail=repr(exc)), {}
            self._calls.append(Call(method, body, headers, time.time(), status, copy.deepcopy(response)))
            self._cond.notify_all()
        self._write(request, status, response, extra_headers)

    @staticmethod
    def _write(request: _Handler, status: int, response: JSONDict | str, headers: dict[str, str]) -> None:
        if isinstance(response, str):
            data, content_type = response.encode("utf-8"), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(response).encode("utf-8"), "application/json; charset=utf-8"
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(data)

    def _take_fault(self, method: str) -> _Fault | None:
        queue = self._faults.get(method)
        if not queue:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.popleft()
        return fault

    @staticmethod
    def _fault_answer(fault: _Fault) -> Answer:
        if fault.error is not None:
            return 200, _err(fault.error), {}
        if fault.status == 429:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return 429, _err("ratelimited"), headers
        return fault.status, _err("fatal_error"), {}

    def _answer_api(self, method: str, body: JSONDict, authed: bool) -> Answer:
        handler = self._methods.get(method)
        if handler is None:
            return 200, _err("unknown_method", req_method=method), {}
        if self.require_auth and not authed:
            return 200, _err("not_authed"), {}
        kind = self._channel_kind(body.get("channel")) if method == "conversations.info" else None
        needed = slack_scopes.needed_scopes(method, channel_kind=kind)
        if needed and not self.scopes.intersection(needed):
            return 200, _err("missing_scope", needed=",".join(needed), provided=",".join(sorted(self.scopes))), {}
        return 200, handler(body), {}

    # ------------------------------------------------------------------ helpers

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

    # ------------------------------------------------------------------ Web API methods

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

    def _chat_update(self, body: JSONDict) -> JSONDict:
        if self._resolve_channel(body.get("channel")) is None:
            return _err("channel_not_found")
        message = self._find_message(body.get("channel"), body.get("ts"))
        if message is None:
            return _err("message_not_found")
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
        if self._resolve_channel(body.get("channel")) is None:
            return _err("channel_not_found")
        message = self._find_message(body.get("channel"), body.get("message_ts"))
        if message is None:
            return _err("message_not_found")
        link = f"https://{self.team_domain}.slack.com/archives/{message.channel}/p{message.ts.replace('.', '')}"
        if message.is_reply:
            link += f"?thread_ts={message.thread_ts}&cid={message.channel}"
        return {"ok": True, "channel": message.channel, "permalink": link}

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

    def _files_get_upload_url_external(self, body: JSONDict) -> JSONDict:
        filename, length = body.get("filename"), body.get("length")
        if not filename or length is None or not str(length).isdigit():
            return _err("invalid_arguments")
        file_id = self._next_id("F")
        self._uploads[file_id] = Upload(file_id=file_id, filename=filename, length=int(length),
                                        alt_txt=body.get("alt_txt"), snippet_type=body.get("snippet_type"))
        return {"ok": True, "upload_url": f"{self._origin}/upload/{file_id}", "file_id": file_id}

    def _answer_upload(self, file_id: str, raw: bytes) -> Answer:
        upload = self._uploads.get(file_id)
        if upload is None:
            return 404, "file_not_found", {}
        upload.content = raw
        return 200, f"OK - {len(raw)}", {}

    def _files_complete_upload_external(self, body: JSONDict) -> JSONDict:
        entries = _maybe_json(body.get("files"))
        if not isinstance(entries, list) or not entries:
            return _err("invalid_arguments")
        uploads: list[tuple[Upload, JSONDict]] = []
        for entry in entries:
            upload = self._uploads.get(entry.get("id", "")) if isinstance(entry, dict) else None
            if upload is None or upload.content is None or upload.completed:
                return _err("file_not_found")
            uploads.append((upload, entry))
        channels = [c for c in (self._resolve_channel(body.get("channel_id")),) if c]
        channels += [c for c in (self._resolve_channel(x.strip()) for x in str(body.get("channels") or "").split(","))
                     if c and c not in channels]
        for channel in channels:
            refused = self._refuse_outside(channel)
            if refused:
                return refused
        thread_ts = body.get("thread_ts") or None
        comment = body.get("initial_comment")
        files = []
        for upload, entry in uploads:
            upload.completed, upload.channels, upload.thread_ts = True, list(channels), thread_ts
            upload.initial_comment, upload.title = comment, entry.get("title") or upload.filename
            files.append(self._file_object(upload))
        for channel in channels:
            self._store_message(StoredMessage(
                channel=channel, ts=self._next_ts(), text=comment or "", thread_ts=thread_ts,
                user=self.bot_user_id, bot_id=self.bot_id, files=copy.deepcopy(files),
                via="files.completeUploadExternal"))
        return {"ok": True, "files": files}

    def _file_object(self, upload: Upload) -> JSONDict:
        size = len(upload.content or b"")
        ext = upload.filename.rsplit(".", 1)[-1] if "." in upload.filename else "binary"
        return {"id": upload.file_id, "created": _TS_BASE, "timestamp": _TS_BASE, "name": upload.filename,
                "title": upload.title, "filetype": ext, "user": self.bot_user_id, "size": size,
                "url_private": f"{self._origin}/files/{upload.file_id}/{quote(upload.filename)}",
                "permalink": f"https://{self.team_domain}.slack.com/files/{self.bot_user_id}/{upload.file_id}/"
                             f"{quote(upload.filename)}",
                "channels": list(upload.channels), "is_public": False}

    def _apps_connections_open(self, body: JSONDict) -> JSONDict:
        if self.socket_mode_url is None:
            return _err("not_allowed_token_type")
        return {"ok": True, "url": self.socket_mode_url}

    # ------------------------------------------------------------------ response_url

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
