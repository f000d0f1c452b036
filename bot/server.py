"""HTTP serving: aiohttp (a production-grade asyncio server) in front of the synchronous Bolt App.

``POST /slack/events`` turns the request into a ``BoltRequest`` and dispatches it on a thread pool, so the
event loop never blocks and many requests are acked concurrently; ``GET /healthz`` answers 200 only when the
database answers and (under `serve`) Slack accepts the token (bot/health.py); ``GET /metrics`` serves the
Prometheus metrics, unless they have an address of their own (METRICS_ADDR).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs

from aiohttp import web
from slack_bolt import App, BoltRequest, BoltResponse
from slack_sdk.signature import SignatureVerifier

from bot.health import Health, ops_routes
from bot.loading_proc import LoadingProcess
from core.services import Services

log = logging.getLogger("rollback_bot.server")

EVENTS_PATH = "/slack/events"
MAX_BODY = 1 << 20


def _to_aiohttp(resp: BoltResponse) -> web.Response:
    headers = {k: v[0] for k, v in resp.headers.items() if v and k.lower() not in ("content-length", "content-type")}
    content_type = resp.headers.get("content-type", ["text/plain"])[0].split(";")[0]
    return web.Response(status=resp.status, body=resp.body.encode("utf-8"), headers=headers, content_type=content_type)


Forward = Callable[..., None]  # (body, headers, loading=None): bot/workproc.py WorkProcess.forward


def build_web_app(app: App, services: Services, *, workers: int = 32, forward: Forward | None = None,
                  signing_secret: str | None = None, work_alive: Callable[[], bool] | None = None,
                  health: Health | None = None, serve_metrics: bool = True) -> web.Application:
    """With ``forward`` (``serve`` with its work process), a signed request that needs nothing but an empty ack
    (a command other than help, a button click, an event) is acked here at once and handed to the work process
    whole; everything else (modal submissions, help, Slack's checks) goes through the Bolt App here. A request
    that opens a modal gets its loading view right after the ack and before the hand-over, so that the 3-second
    trigger never waits behind the work process (handlers/loading.py); the view is opened by serve's loading
    process (bot/loading_proc.py), so that the next request's ack never waits for a ``views.open`` either."""
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bolt")
    verifier = SignatureVerifier(signing_secret) if forward is not None and signing_secret else None
    opener = LoadingProcess() if verifier is not None else None

    async def slack_events(request: web.Request) -> web.Response:
        stamp = request.headers.get("X-Slack-Request-Timestamp", "")
        if not stamp.isdigit() or len(stamp) > 12:
            return web.Response(status=401, text="invalid request timestamp")
        body = (await request.read()).decode("utf-8", errors="replace")
        if verifier is not None and forward is not None:
            if not verifier.is_valid(body, stamp, request.headers.get("X-Slack-Signature", "")):
                return web.Response(status=401, text="invalid request signature")
            if needs_only_an_ack(body, request.headers.get("Content-Type", "")):
                headers = {k: v for k, v in request.headers.items()
                           if k.lower().startswith(("x-slack", "content-type"))}
                # Handed over once this step is done, after the ack has gone out: the work process waking up
                # then never delays the ack itself.
                loop = asyncio.get_running_loop()
                modal = modal_to_open(body, request.headers.get("Content-Type", ""))
                if modal is None or opener is None:
                    loop.call_soon(forward, body, headers)
                else:
                    kind, trigger_id = modal
                    loop.call_soon(opener.open, trigger_id, kind, lambda opened: forward(body, headers, opened))
                return web.Response(status=200, body=b"")
        bolt_req = BoltRequest(body=body, query=request.query_string, headers=dict(request.headers))
        loop = asyncio.get_running_loop()
        resp = await loop.run_in_executor(executor, app.dispatch, bolt_req)
        return _to_aiohttp(resp)

    async def on_startup(_: web.Application) -> None:
        if opener is not None:
            opener.start()

    async def on_cleanup(_: web.Application) -> None:
        executor.shutdown(wait=False, cancel_futures=True)
        if opener is not None:
            opener.stop()

    web_app = web.Application(client_max_size=MAX_BODY)
    web_app.router.add_post(EVENTS_PATH, slack_events)
    ops_routes(web_app, executor, health=health or Health(db_ping=services.db.ping, work_alive=work_alive),
               render=app.metrics.render if serve_metrics else None)  # type: ignore[attr-defined]
    web_app.on_startup.append(on_startup)
    web_app.on_cleanup.append(on_cleanup)
    return web_app


def needs_only_an_ack(body: str, content_type: str) -> bool:
    """True for what the Bolt App would answer with an empty ack: a `/rollback` subcommand other than help,
    a button click, an Events API callback. Modal submissions (validated in the ack), help (answered in the
    ack), url_verification and ssl_check are not."""
    from handlers.commands import WORK_VERBS

    if "json" in content_type:
        try:
            return json.loads(body).get("type") == "event_callback"
        except ValueError:
            return False
    form = _form(body)
    if "payload" in form:
        parsed = _fields(body)
        return isinstance(parsed, dict) and parsed.get("type") == "block_actions"
    if form.get("command", [""])[0] and not form.get("ssl_check"):
        verb = (form.get("text", [""])[0].strip().split(" ", 1)[0] or "help").lower()
        return verb in WORK_VERBS
    return False


def modal_to_open(body: str, content_type: str) -> tuple[str, str] | None:
    """(kind, trigger_id) when the request opens a modal (handlers/loading.py ``modal_for``), else None."""
    from handlers.loading import modal_for

    if "json" in content_type:
        return None
    parsed = _fields(body)
    kind = modal_for(parsed) if isinstance(parsed, dict) else None
    return (kind, parsed["trigger_id"]) if kind else None  # type: ignore[index]


@functools.lru_cache(maxsize=8)
def _form(body: str) -> dict[str, list[str]]:
    """A form-encoded request parsed once for both questions above (read only)."""
    return parse_qs(body, keep_blank_values=True)


@functools.lru_cache(maxsize=8)
def _fields(body: str) -> object:
    """An interactivity payload decoded, or a command's fields; None when unreadable (read only)."""
    form = _form(body)
    try:
        return json.loads(form["payload"][0]) if "payload" in form else {k: v[0] for k, v in form.items()}
    except ValueError:
        return None


def serve_http(web_app: web.Application, *, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM (aiohttp installs the handlers and shuts down gracefully)."""
    web.run_app(web_app, host=host, port=port, access_log=None, print=None, handle_signals=True)


class BackgroundServer:
    """The same HTTP app on its own event loop in a thread (tests, demo, console)."""

    def __init__(self, web_app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self.web_app = web_app
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        import threading

        ready = threading.Event()

        async def boot() -> None:
            self._runner = web.AppRunner(self.web_app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(boot())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="http-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the HTTP server did not start")
        return self

    def stop(self) -> None:
        async def down() -> None:
            if self._runner:
                await self._runner.cleanup()

        fut = asyncio.run_coroutine_threadsafe(down(), self._loop)
        fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
