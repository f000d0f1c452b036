"""Ack latency: ``/rollback status`` and a button click, rollback-bot against two bare Bolt apps.

    python -m bench ack                  # about a minute on 2 cores (also: python -m bench.ack)
    python -m bench ack --requests 500   # quicker, noisier

Three servers, each in a process of its own on 127.0.0.1, all started before measuring and measured by this
process with signed requests (asyncio + aiohttp client, keep-alive):

* ``rollback-bot``: the real app, started exactly as in production (``python -m bot serve``: aiohttp verifies
  the signature and acks, and hands the request to the work process, which answers it and runs the background
  worker), on the generated world of ``bench.common`` (a database of its own, never ``DATABASE_URL``);
* ``bare-sync``: a bare synchronous Bolt ``App`` (``process_before_response=True``) whose ``/rollback`` command
  only ``ack()``s, served by the same ``bot.server`` code;
* ``fastest``: the fastest bare configuration measured (../shared/design/measured.md): ``AsyncApp`` with
  ``process_before_response=True`` on Bolt's own aiohttp adapter, its command a no-op ``ack()`` too.

The click opens a form, so every server does what a form's click must: ack, then open the form's loading view
within Slack's 3 seconds. The bare apps open the same loading view (``handlers.loading.loading_view``) the way
Bolt offers for work after the ack, a lazy listener (a thread for ``App``, an asyncio task for ``AsyncApp``);
rollback-bot opens it from its loading process (bot/loading_proc.py). (Before, the bare apps' click only acked:
they were then measured doing less than a form's click needs.)

rollback-bot is measured twice:

* ``rollback-bot`` (the ack path, judged against the target): the work process is paused (SIGSTOP) while a
  batch is sent and resumed after it, so its replies are computed after the batch instead of on the same two
  cores during it. Nothing else changes: ``serve`` verifies, acks and hands over every request as always (its
  loading process, which opens the click's loading view, runs on), and the bench then checks that the Slack
  stand-in received a reply for every request of the batch.
* ``rollback-bot+work``: the work process runs alongside, answering each request (database queries, Block Kit,
  a reply to the stand-in) while the next ones are acked. Printed for information: on a 2-core machine the
  replies, PostgreSQL, the stand-in and the load generator then share the cores, which no bare app has to do.

The Slack Web API stand-in runs in a process of its own (Bolt calls ``auth.test`` first; rollback-bot posts its
answers to it). The button is ``Add root cause`` on an unknown incident: the ack is immediate, and the work
process answers with an ephemeral "no such incident". Each measurement is split into rounds, and every round
measures each server in turn, the order rotating, so a change in the machine's background load weighs on all
alike; between batches the bench waits until every server process (and rollback-bot's work process) is idle.

Printed: p50/p95/p99 per server, request kind and concurrency (1 and 20), the ratios of rollback-bot's p99 to
each bare server's, and PASS/FAIL against the target p99 <= 1.2 x fastest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-signing-secret-0123456789"
TOKEN = "xoxb-bench-token-0123456789"
CHANNEL = "C0INCIDENT"
NAME = "ack"
TARGET_RATIO = 1.2
CONCURRENCY = (1, 20)
KINDS = ("status", "click")
SERVERS = ("rollback-bot", "rollback-bot+work", "bare-sync", "fastest")
PAUSED = "rollback-bot"  # the same server as rollback-bot+work, its work process paused during a batch


# ------------------------------------------------------------------------------------------- requests


def _signed(body: str, content_type: str) -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"Content-Type": content_type, "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


def status_request(i: int, response_base: str) -> tuple[str, dict[str, str]]:
    """``/rollback status`` typed by an operator, form-encoded and signed as Slack sends it."""
    fields = {
        "token": "verification-token", "team_id": "T0001", "team_domain": "example", "channel_id": "C0OPS",
        "channel_name": "ops", "user_id": "U0ALICE", "user_name": "alice", "command": "/rollback",
        "text": "status", "api_app_id": "A0001", "is_enterprise_install": "false",
        "response_url": f"{response_base}/response/bench-{i}",
        "trigger_id": f"{int(time.time() * 1000)}.{i:09d}.{os.urandom(16).hex()}",
    }
    body = urllib.parse.urlencode(fields)
    return body, _signed(body, "application/x-www-form-urlencoded")


def click_request(i: int, response_base: str) -> tuple[str, dict[str, str]]:
    """A click on ``Add root cause`` (block_actions) in the incident channel."""
    ts = f"1700000000.{i % 1_000_000:06d}"
    payload = {
        "type": "block_actions",
        "user": {"id": "U0BOB", "username": "bob", "name": "bob", "team_id": "T0001"},
        "api_app_id": "A0001", "token": "verification-token",
        "container": {"type": "message", "message_ts": ts, "channel_id": CHANNEL, "is_ephemeral": False},
        "trigger_id": f"{int(time.time() * 1000)}.{i:09d}.{os.urandom(16).hex()}",
        "team": {"id": "T0001", "domain": "example"}, "enterprise": None, "is_enterprise_install": False,
        "channel": {"id": CHANNEL, "name": "incidents"},
        "message": {"type": "message", "ts": ts, "text": "INC-999999", "user": "U0ROLLBOT", "blocks": []},
        "state": {"values": {}},
        "response_url": f"{response_base}/response/click-{i}",
        "actions": [{"action_id": "add_root_cause", "block_id": "b1", "type": "button", "value": "999999",
                     "text": {"type": "plain_text", "text": "Add root cause"}, "action_ts": f"{time.time():.6f}"}],
    }
    body = urllib.parse.urlencode({"payload": json.dumps(payload, separators=(",", ":"))})
    return body, _signed(body, "application/x-www-form-urlencoded")


MAKERS: dict[str, Callable[[int, str], tuple[str, dict[str, str]]]] = {"status": status_request,
                                                                      "click": click_request}


# ------------------------------------------------------------------------------------------- measuring


@dataclass
class Result:
    server: str
    kind: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def pct(self, q: float) -> float:
        data = sorted(self.latencies)
        if not data:
            return float("nan")
        k = (len(data) - 1) * q / 100
        lo, hi = int(k), min(int(k) + 1, len(data) - 1)
        return (data[lo] + (data[hi] - data[lo]) * (k - lo)) * 1000


async def _load(url: str, make: Callable[[int], tuple[str, dict[str, str]]], n: int, concurrency: int,
                cap_seconds: float, result: Result) -> None:
    import aiohttp

    counter = itertools.count()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cap_seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def worker() -> None:
            while True:
                i = next(counter)
                if i >= n or loop.time() > deadline:
                    return
                body, headers = make(i)
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body.encode(), headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    result.latencies.append(time.perf_counter() - t0)
                else:
                    result.errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def measure(server: str, url: str, kind: str, concurrency: int, n: int, response_base: str, offset: int,
            cap_seconds: float) -> Result:
    result = Result(server, kind, concurrency)
    make = MAKERS[kind]
    asyncio.run(_load(url, lambda i: make(offset + i, response_base), n, concurrency, cap_seconds, result))
    return result


def _cpu_ticks(pid: int) -> int:
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def wait_idle(pids: list[int], *, quiet_seconds: float = 0.3, cap: float = 60.0) -> None:
    """Wait until the processes have used (almost) no CPU for ``quiet_seconds``: the lazy work is done."""
    deadline = time.monotonic() + cap
    last = sum(_cpu_ticks(p) for p in pids)
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = sum(_cpu_ticks(p) for p in pids)
        if now - last > 1:  # more than a tick (10 ms) of CPU in 50 ms
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_seconds:
            return
        last = now


# ------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


@contextlib.contextmanager
def child(argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def wait_listening(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    """Until the server answers an (unsigned, so refused) POST: any HTTP status means it is up."""
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(proc.args)} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            opener.open(urllib.request.Request(url, data=b"", method="POST"), timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up:\n{log.read_text()[-3000:]}")


def world_env(bw) -> dict[str, str]:
    """The environment ``rollback-bot serve`` needs to serve the bench world (``bench.common``)."""
    return {"DATABASE_URL": bw.url, "MODELS_DIR": str(bw.models_dir), "INCIDENTS_DIR": str(bw.root / "incidents")}


# ------------------------------------------------------------------------------------------- child mains


def run_standin(port_file: Path) -> int:
    """The Slack stand-in; on SIGUSR1 it writes how many replies to a person (posts to a response URL,
    ephemeral messages) it received."""
    from bot.devtools.slack_standin import SlackStandIn

    # Blocked before the server's threads start (they inherit it), so that the signals wait for sigwait here.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    standin = SlackStandIn().start()
    count_file = port_file.with_suffix(".count")
    port_file.write_text(standin.origin)
    while signal.sigwait({signal.SIGUSR1, signal.SIGTERM}) == signal.SIGUSR1:
        tmp = count_file.with_suffix(".tmp")
        tmp.write_text(str(sum(1 for c in standin.calls() if c.method in ("response_url", "chat.postEphemeral"))))
        os.replace(tmp, count_file)
    os._exit(0)


def run_bare_sync(port: int, api_url: str) -> int:
    """A bare synchronous Bolt App, served by bot.server like rollback-bot: the command only acks; the click acks,
    then opens the same loading view as rollback-bot, as a Bolt lazy listener (after the ack)."""
    from types import SimpleNamespace

    from slack_bolt import App
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    from bot.server import build_web_app, serve_http
    from handlers.loading import loading_view, modal_for

    app = App(signing_secret=SECRET, client=WebClient(token=TOKEN, base_url=api_url),
              token_verification_enabled=False, process_before_response=True)

    def open_form(body, client) -> None:  # noqa: ANN001 - Bolt's argument injection
        with contextlib.suppress(SlackApiError):  # refused like rollback-bot's (the bench's trigger ids)
            client.views_open(trigger_id=body["trigger_id"], view=loading_view(modal_for(body) or ""))

    app.command("/rollback")(lambda ack: ack())
    app.action("add_root_cause")(ack=lambda ack: ack(), lazy=[open_form])
    no_db = SimpleNamespace(db=SimpleNamespace(ping=lambda: True))  # /healthz only
    serve_http(build_web_app(app, no_db, serve_metrics=False), host="127.0.0.1", port=port)  # type: ignore[arg-type]
    return 0


def run_fastest(port: int, api_url: str) -> int:
    """AsyncApp(process_before_response=True) on Bolt's aiohttp adapter: the command only acks; the click acks,
    then opens the same loading view as rollback-bot, as a Bolt lazy listener (an asyncio task after the ack)."""
    from aiohttp import web
    from slack_bolt.async_app import AsyncApp
    from slack_sdk.errors import SlackApiError
    from slack_sdk.web.async_client import AsyncWebClient

    from handlers.loading import loading_view, modal_for

    app = AsyncApp(signing_secret=SECRET, client=AsyncWebClient(token=TOKEN, base_url=api_url),
                   process_before_response=True)

    async def noop(ack) -> None:  # noqa: ANN001 - Bolt's argument injection
        await ack()

    async def open_form(body, client) -> None:  # noqa: ANN001 - Bolt's argument injection
        with contextlib.suppress(SlackApiError):  # refused like rollback-bot's (the bench's trigger ids)
            await client.views_open(trigger_id=body["trigger_id"], view=loading_view(modal_for(body) or ""))

    app.command("/rollback")(noop)
    app.action("add_root_cause")(ack=noop, lazy=[open_form])
    web.run_app(app.web_app(path="/slack/events", port=port), host="127.0.0.1", port=port, access_log=None,
                print=None)
    return 0


# ------------------------------------------------------------------------------------------- the bench


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (the work process of ``rollback-bot serve`` is its child)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return found


def _argv(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
    return []


def replies_received(standin: subprocess.Popen, port_file: Path, timeout: float = 10.0) -> int:
    """How many replies the stand-in process has received so far (it answers SIGUSR1 with a file)."""
    count_file = port_file.with_suffix(".count")
    count_file.unlink(missing_ok=True)
    standin.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not count_file.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the Slack stand-in did not report its count")
        time.sleep(0.005)
    return int(count_file.read_text())


def run_bench(requests: int, cap_seconds: float, rounds: int = 5, out=sys.stdout) -> list[Result]:
    from bench.common import bench_world

    print("preparing the generated world (database and models) ...", file=out, flush=True)
    with bench_world() as bw, tempfile.TemporaryDirectory(prefix="bench-ack-") as tmp, \
            contextlib.ExitStack() as stack:
        work = Path(tmp)
        port_file = work / "standin.url"
        standin = stack.enter_context(child([sys.executable, "-m", "bench.ack", "_standin", str(port_file)],
                                            env=_child_env(), cwd=work, log=work / "standin.log"))
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or standin.poll() is not None:
                raise RuntimeError("the Slack stand-in did not start:\n" + (work / "standin.log").read_text())
            time.sleep(0.02)
        origin = port_file.read_text().strip()
        api_url = origin + "/api/"

        urls: dict[str, str] = {}
        procs: dict[str, subprocess.Popen] = {}
        for server in SERVERS:
            if server == PAUSED:
                continue  # the same process as rollback-bot+work
            port = free_port()
            log = work / f"{server}.log"
            if server == "rollback-bot+work":
                env = _child_env({**world_env(bw), "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET,
                                  "SLACK_API_URL": api_url, "INCIDENT_CHANNEL": CHANNEL,
                                  "APPROVERS": "U0BOB", "OPERATORS": "U0ALICE,U0BOB", "PORT": str(port)})
                argv = [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1"]
            else:
                env = _child_env()
                argv = [sys.executable, "-m", "bench.ack", "_" + server.replace("-", "_"), str(port), api_url]
            procs[server] = stack.enter_context(child(argv, env=env, cwd=work, log=log))
            urls[server] = f"http://127.0.0.1:{port}/slack/events"
            wait_listening(urls[server], procs[server], log)
        urls[PAUSED] = urls["rollback-bot+work"]
        serve = procs["rollback-bot+work"]

        def all_pids() -> list[int]:
            return [p for proc in procs.values() for p in descendants(proc.pid)] + [standin.pid]

        def work_process() -> int:  # serve's other child, its loading process, runs on: it is on the ack path
            below = [p for p in descendants(serve.pid) if p != serve.pid and _argv(p)[-1:] == ["work"]]
            if len(below) != 1:
                raise RuntimeError(f"expected one work process under rollback-bot serve, found {below}")
            return below[0]

        offset = 0
        for server in SERVERS:  # warm-up: auth.test, imports, pools, the first replies
            for kind in KINDS:
                measure(server, urls[server], kind, 4, 40, origin, offset, cap_seconds)
                offset += 40
        wait_idle(all_pids())

        # Interleaved: each measurement is split into rounds, and every round measures each server in turn
        # (the order rotating), so a change in the machine's background load weighs on all of them alike.
        pooled: dict[tuple[str, str, int], Result] = {}
        per_round = max(1, requests // rounds)
        for concurrency in CONCURRENCY:
            for kind in KINDS:
                for r in range(rounds):
                    order = SERVERS[r % len(SERVERS):] + SERVERS[:r % len(SERVERS)]
                    for server in order:
                        part = measure_batch(server, urls[server], kind, concurrency, per_round, origin, offset,
                                             cap_seconds / rounds, paused=work_process() if server == PAUSED
                                             else None, replies=lambda: replies_received(standin, port_file))
                        offset += per_round
                        total = pooled.setdefault((server, kind, concurrency), Result(server, kind, concurrency))
                        total.latencies.extend(part.latencies)
                        total.errors += part.errors
                        wait_idle(all_pids())  # the replies to this batch are sent before the next batch
                for server in SERVERS:
                    res = pooled[(server, kind, concurrency)]
                    print(f"  {server:<17} {kind:<7} c={concurrency:<3} n={len(res.latencies):<5}"
                          f" p50 {res.pct(50):6.2f} ms  p99 {res.pct(99):6.2f} ms"
                          + (f"  errors {res.errors}" if res.errors else ""), file=out, flush=True)
        return [pooled[(s, k, c)] for s in SERVERS for c in CONCURRENCY for k in KINDS]


def measure_batch(server: str, url: str, kind: str, concurrency: int, n: int, response_base: str, offset: int,
                  cap_seconds: float, *, paused: int | None, replies: Callable[[], int]) -> Result:
    """One batch; with ``paused`` (the work process's pid) that process is stopped during the batch, then
    resumed, and the batch counts as failed unless the stand-in then receives a reply for every request."""
    if paused is None:
        return measure(server, url, kind, concurrency, n, response_base, offset, cap_seconds)
    before = replies()
    os.kill(paused, signal.SIGSTOP)
    try:
        result = measure(server, url, kind, concurrency, n, response_base, offset, cap_seconds)
    finally:
        os.kill(paused, signal.SIGCONT)
    expected = before + len(result.latencies)
    deadline = time.monotonic() + 60
    while (got := replies()) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the work process answered {got - before} of {len(result.latencies)} requests"
                               " acked while it was paused")
        time.sleep(0.05)
    return result


def report(results: list[Result], out=sys.stdout) -> bool:
    by = {(r.server, r.kind, r.concurrency): r for r in results}
    print("", file=out)
    print("ack latency (ms), measured in this run", file=out)
    print(f"{'server':<17} {'request':<8} {'conc':>4} {'n':>5} {'p50':>8} {'p95':>8} {'p99':>8}", file=out)
    for r in results:
        print(f"{r.server:<17} {r.kind:<8} {r.concurrency:>4} {len(r.latencies):>5} {r.pct(50):>8.2f}"
              f" {r.pct(95):>8.2f} {r.pct(99):>8.2f}" + (f"   ({r.errors} errors)" if r.errors else ""), file=out)
    print("", file=out)
    print(f"ratios of rollback-bot's p99 (target: <= {TARGET_RATIO} x fastest, judged on the ack path)", file=out)
    print(f"{'request':<8} {'conc':>4} {'vs bare-sync':>13} {'vs fastest':>11}  verdict   {'with work alongside':>20}",
          file=out)
    all_pass = True
    for concurrency in CONCURRENCY:
        for kind in KINDS:
            real = by.get((PAUSED, kind, concurrency))
            loaded = by.get(("rollback-bot+work", kind, concurrency))
            bare = by.get(("bare-sync", kind, concurrency))
            fast = by.get(("fastest", kind, concurrency))
            if not (real and loaded and bare and fast) or not real.latencies or not loaded.latencies:
                print(f"{kind:<8} {concurrency:>4}  incomplete", file=out)
                all_pass = False
                continue
            vs_bare = real.pct(99) / bare.pct(99)
            vs_fast = real.pct(99) / fast.pct(99)
            ok = vs_fast <= TARGET_RATIO and real.errors == 0 and loaded.errors == 0
            all_pass &= ok
            print(f"{kind:<8} {concurrency:>4} {vs_bare:>12.2f}x {vs_fast:>10.2f}x  {'PASS' if ok else 'FAIL':<7}"
                  f" {loaded.pct(99) / fast.pct(99):>19.2f}x", file=out)
    print("", file=out)
    print("ack target: " + ("PASS" if all_pass else "FAIL"), file=out)
    print("(with work alongside: rollback-bot+work, whose replies share the cores with the acks; for information)",
          file=out)
    return all_pass


def run(argv: list[str] | None = None) -> int:
    """``python -m bench ack [--requests N] [--rounds R] [--cap S]``: measure, print, exit 0 (benchmarks report,
    not gate)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "_standin":
        return run_standin(Path(args[1]))
    if args and args[0] == "_bare_sync":
        return run_bare_sync(int(args[1]), args[2])
    if args and args[0] == "_fastest":
        return run_fastest(int(args[1]), args[2])
    parser = argparse.ArgumentParser(prog="python -m bench ack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement (default 2000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per measurement (default 5)")
    parser.add_argument("--cap", type=float, default=30.0, help="seconds at most per measurement (default 30)")
    ns = parser.parse_args(args)
    started = time.monotonic()
    report(run_bench(ns.requests, ns.cap, ns.rounds))
    print(f"(bench ack took {time.monotonic() - started:.0f} s)")
    return 0


def main() -> int:
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
