"""The Slack stand-in's server: ``SlackStandIn`` (its state, lifecycle, configuration and faults) and the HTTP
handling that records each call and dispatches it to a Web API method (the other modules of this package)."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from bot.devtools import slack_scopes
from bot.devtools.served import ServedInThread
from bot.devtools.slack_standin.records import (
    Answer, JSONDict, RESPONSE_URL_METHOD, UPLOAD_METHOD, Call, Ephemeral, StoredMessage, Upload, _Fault,
    _ResponseTarget, _err, _flatten_qs, _parse_body, _redact_authorization, _redact_token, logger,
)
from bot.devtools.slack_standin.chat import _ChatMethods
from bot.devtools.slack_standin.conversation import _Conversation
from bot.devtools.slack_standin.files import _FileMethods
from bot.devtools.slack_standin.holds import _Holds, Padding, take_next
from bot.devtools.slack_standin.recorded import _Recorded
from bot.devtools.slack_standin.views import _ViewMethods


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


class SlackStandIn(ServedInThread, _Recorded, _Conversation, _ChatMethods, _ViewMethods, _FileMethods, _Holds):
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
        self._release_holds()
        self._holds = {}
        self._paddings = {}
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

    @property
    def methods(self) -> frozenset[str]:
        """The Web API methods this stand-in answers; any other answers ``unknown_method``. Each has a scope rule
        in ``bot.devtools.slack_scopes.METHOD_SCOPES``."""
        return frozenset(self._methods)

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
        for method in self.methods:
            self.fail_next(method, error=error, times=1 << 30)

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

        self._wait_if_held(method)
        with self._cond:
            fault = self._take_fault(method)
            try:
                status, response, extra_headers = self._fault_answer(fault) if fault else answer()
            except Exception as exc:  # a malformed request must not kill the server thread
                logger.exception("slack stand-in failed to answer %s", method)
                status, response, extra_headers = 500, _err("standin_internal_error", detail=repr(exc)), {}
            self._calls.append(Call(method, body, headers, time.time(), status, copy.deepcopy(response)))
            self._cond.notify_all()
        ok = status == 200 and isinstance(response, dict) and response.get("ok") is True
        padding = self._take_padding(method) if ok else None
        self._write(request, status, response, extra_headers, padding)
        if padding is not None:
            self._padded_sent(padding)

    @classmethod
    def _write(cls, request: _Handler, status: int, response: JSONDict | str, headers: dict[str, str],
               padding: Padding | None = None) -> None:
        if isinstance(response, str):
            data, content_type = response.encode("utf-8"), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(response).encode("utf-8"), "application/json; charset=utf-8"
            if padding is not None:
                data = cls._padded(data, padding)
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(data)

    def _take_fault(self, method: str) -> _Fault | None:
        return take_next(self._faults.get(method))

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
