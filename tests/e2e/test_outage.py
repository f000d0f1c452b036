"""When the platform's database does not answer (core/db.py, core/outage.py, handlers/errors.py): a clear Slack
answer within seconds, saying what failed, since when, and what to check by hand, instead of a generic error.
Requests arrive signed over HTTP; the database is a closed port, or a real PostgreSQL behind a TCP proxy that
the test cuts and restores."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from bot.devtools.sandbox import Sandbox
from bot.devtools.slack_signing import SlackSender
from core.db import Database
from bot.compose import build_services
from tests.bot.test_serve import children, free_port, serve  # noqa: F401 - the fixture

MODEL = "growth_momentum_large"
SINCE = "since 20"  # "since 2026-11-30 10:00:00 UTC (…)"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def answer_text(body: dict) -> str:
    return body.get("text", "") + json.dumps(body.get("blocks", []))


def assert_outage_answer(text: str, target: str) -> None:
    assert f"The platform database does not answer (PostgreSQL at {target})" in text, text
    assert SINCE in text and "as this bot process saw it" in text and "Nothing was done" in text
    host, port = target.split("/")[0].split(":")
    assert f"pg_isready -h {host} -p {port}" in text and "max_connections" in text and "API_LOG" in text
    assert "Something went wrong" not in text


def test_an_unreachable_database_is_answered_within_seconds(settings, standin, world):
    port = closed_port()
    url = f"postgresql://rollback_bot:secret-pw@127.0.0.1:{port}/trading"
    s = settings.model_copy(update={"slack_api_url": standin.base_url, "database_url": SecretStr(url)})
    db = Database(s.database_dsn(), max_size=2).open(wait=False)
    try:
        with Sandbox(build_services(s, db), standin=standin) as box:
            answers = []
            for text in ("status", f"diagnose {MODEL}"):
                t0 = time.monotonic()
                reply = box.command("U0ALICE", text)
                assert reply.status == 200
                body = box.responses(reply.response_key, timeout=15)[0]
                answers.append((time.monotonic() - t0, answer_text(body)))
            first_since = db.down_since
    finally:
        db.close()
    target = f"127.0.0.1:{port}/trading"
    for elapsed, text in answers:
        assert elapsed < 6, f"answered after {elapsed:.1f} s"
        assert_outage_answer(text, target)
        assert "secret-pw" not in text
    assert answers[1][0] < 2, "once known down, the answer comes at once"
    assert first_since is not None and (datetime.now(timezone.utc) - first_since).total_seconds() < 60
    assert f"{first_since:%Y-%m-%d %H:%M:%S} UTC" in answers[1][1]  # the first failure, kept


class Proxy:
    """A TCP proxy in front of PostgreSQL that can be cut (listener and every connection closed) and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> Proxy:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_serve_answers_within_seconds_when_the_database_goes_away_and_again_when_it_is_back(
        serve, settings, standin, world):  # noqa: F811 - the fixture
    real = urlsplit(settings.database_dsn())
    proxy = Proxy((real.hostname, real.port)).start()
    via_proxy = urlunsplit(real._replace(netloc=f"{real.username}@127.0.0.1:{proxy.port}"
                                         if not real.password else
                                         f"{real.username}:{real.password}@127.0.0.1:{proxy.port}"))
    try:
        url, proc = serve.with_process(DATABASE_URL=via_proxy)
        sender = SlackSender(url + "/slack/events", settings.slack_signing_secret.get_secret_value())

        def ask(text: str, key: str, timeout: float) -> tuple[float, str]:
            t0 = time.monotonic()
            r = sender.slash_command(text=text, user_id="U0ALICE", channel_id="C1",
                                     response_url=standin.response_url(key, channel="C1", user="U0ALICE"))
            assert r.status == 200
            body = standin.wait_for("response_url", lambda c: c.body.get("key") == key, timeout=timeout)[0].body
            return time.monotonic() - t0, answer_text(body)

        elapsed, text = ask("status", "up", 20)
        assert MODEL in text and "does not answer" not in text
        proxy.cut()
        target = f"127.0.0.1:{proxy.port}/{real.path.lstrip('/')}"
        for key, command in (("down-status", "status"), ("down-diagnose", f"diagnose {MODEL}")):
            elapsed, text = ask(command, key, 15)
            assert elapsed < 8, f"{command}: answered after {elapsed:.1f} s"
            assert_outage_answer(text, target)
        # the work process dies while the database is down: the one started in its place answers all the same
        work = children(proc.pid)  # serve's work process (not its loading process)
        assert len(work) == 1
        os.kill(work[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while children(proc.pid) in ([], work):
            assert time.monotonic() < deadline, "no new work process"
            time.sleep(0.1)
        elapsed, text = ask("status", "down-again", 30)
        assert_outage_answer(text, target)
        proxy.start()
        deadline = time.monotonic() + 60
        n = 0
        while True:  # back: the next commands are answered as usual
            n += 1
            elapsed, text = ask("status", f"back-{n}", 20)
            if MODEL in text and "does not answer" not in text:
                break
            assert time.monotonic() < deadline, text
            time.sleep(1)
    finally:
        proxy.cut()
