"""Modals under load: a command or click that opens a form → ``views.open`` at Slack, while 20 ``/rollback
diagnose`` run.

    python -m bench modal                 # demo-size world (300 tickers x 520 days); a few minutes on 2 cores
    python -m bench modal --size test     # quicker, lighter diagnoses

Slack's ``trigger_id`` opens a view only within 3 seconds of the click. The real ``rollback-bot serve`` (with its
work process) runs on the generated world of ``bench.common``; the Slack stand-in runs in this process, so the
trigger ids are its own and every call's arrival is timed on this process's clock. Each round sends 20
``/rollback diagnose MODEL`` (they fill the work process's pool for seconds) and then, while they run, modal
requests one after the other, alternating ``/rollback start`` (the request form: database reads and backup
scoring) and a click on *Deny* of an open request (the deny form).

Printed, per request kind and overall: request → ``views.open`` (the loading view, opened by ``serve`` right
after the ack) p50/p95/p99, against the target p99 <= 0.5 s and Slack's 3 s limit; request → the form filled in
(``views.update``), for information; and every refused ``views.open`` (an expired trigger is a failure).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

NAME = "modal"
TARGET_P99 = 0.5
SLACK_LIMIT = 3.0
DIAGNOSES = 20
CHANNEL = "C0INCIDENT"
SECRET = "bench-modal-signing-secret-0123"
TOKEN = "xoxb-bench-modal-token-0123456789"
KINDS = ("command", "click")


@dataclass
class Sample:
    kind: str
    sent: float
    trigger: str
    in_flight: int
    opened: float | None = None
    filled: float | None = None
    error: str | None = None


@dataclass
class Results:
    samples: list[Sample] = field(default_factory=list)
    batch_seconds: list[float] = field(default_factory=list)


def pct(values: list[float], q: float) -> float:
    data = sorted(values)
    if not data:
        return float("nan")
    k = (len(data) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def run_bench(size: str, rounds: int, per_round: int, out=sys.stdout) -> Results:
    from bench.ack import _child_env, child, free_port, wait_listening, world_env
    from bench.common import bench_world
    from bot.devtools.slack_signing import SlackSender
    from bot.devtools.slack_standin import SlackStandIn

    print(f"preparing the generated world ({size}: database and models) ...", file=out, flush=True)
    with bench_world(size=size) as bw, tempfile.TemporaryDirectory(prefix="bench-modal-") as tmp, \
            SlackStandIn() as standin, contextlib.ExitStack() as stack:
        work = Path(tmp)
        port = free_port()
        env = _child_env({**world_env(bw), "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET,
                          "SLACK_API_URL": standin.base_url, "INCIDENT_CHANNEL": CHANNEL, "APPROVERS": "U0BOB",
                          "OPERATORS": "U0ALICE,U0BOB", "PORT": str(port), "WATCHDOG_EVERY_MINUTES": "0",
                          "HEAVY_COMMANDS_PER_MINUTE": "10000",  # the load is the point: no per-person limit
                          "LOG_FORMAT": "text"})
        log = work / "serve.log"
        serve = stack.enter_context(child([sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1"], env=env,
                                          cwd=work, log=log))
        url = f"http://127.0.0.1:{port}/slack/events"
        wait_listening(url, serve, log)
        sender = SlackSender(url, SECRET, trigger_ids=standin.issue_trigger_id)
        model = sorted(bw.world.models)[0]
        keys = iter(range(1_000_000))

        def command(user: str, text: str, trigger: str | None = None) -> str:
            key = f"r{next(keys)}"
            sender.slash_command(text=text, user_id=user, channel_id="C0OPS", trigger_id=trigger,
                                 response_url=standin.response_url(key, channel="C0OPS", user=user))
            return key

        # an open request whose Deny button the clicks press
        with bw.services() as services:
            backup = services.registry.recommend(model).backup.name
        key = command("U0ALICE", f"start {model} {backup} bench modal --confirm")
        standin.wait_for("response_url", lambda c: c.body.get("key") == key, timeout=120)
        card = next(m for m in standin.messages(CHANNEL) if not m.is_reply)

        def click(trigger: str | None = None) -> None:
            sender.block_action(user_id="U0BOB", action_id="rollback_deny", channel_id=CHANNEL, message_ts=card.ts,
                                message=card.as_slack(), trigger_id=trigger)

        def wait_answered(batch: list[str], timeout: float = 600) -> None:
            calls = standin.wait_for("response_url", lambda c: c.body.get("key") in batch, count=len(batch),
                                     timeout=timeout)
            real = sum(1 for c in calls if str(c.body.get("text", "")).startswith("Diagnostics of"))
            if real < len(batch):  # a refusal (rate limit, error) is no load: the measurement would mean nothing
                raise RuntimeError(f"only {real} of {len(batch)} diagnose commands ran: "
                                   + "; ".join(sorted({str(c.body.get('text'))[:120] for c in calls})))

        # warm-up: imports, pools, the first form of each kind
        wait_answered([command("U0ALICE", f"diagnose {model}")])
        command("U0ALICE", "start")
        click()
        time.sleep(2)

        results = Results()
        pool = ThreadPoolExecutor(max_workers=DIAGNOSES)
        for r in range(rounds):
            started = time.time()
            batch = list(pool.map(lambda _: command("U0ALICE", f"diagnose {model}"), range(DIAGNOSES)))
            time.sleep(0.2)
            for i in range(per_round):
                kind = KINDS[(r + i) % len(KINDS)]
                answered = {c.body["key"] for c in standin.calls("response_url") if c.body.get("key") in batch}
                trigger = standin.issue_trigger_id()  # Slack's 3 s start now, before the request is even sent
                sent = time.time()
                if kind == "command":
                    command("U0ALICE", "start", trigger)
                else:
                    click(trigger)
                results.samples.append(Sample(kind, sent, trigger, DIAGNOSES - len(answered)))
                time.sleep(0.15)
            wait_answered(batch)
            results.batch_seconds.append(time.time() - started)
            print(f"  round {r + 1}/{rounds}: {DIAGNOSES} diagnoses answered in {results.batch_seconds[-1]:.1f} s",
                  file=out, flush=True)
        pool.shutdown()
        time.sleep(3)  # the last forms are filled in
        collect(standin, results)
        return results


def collect(standin, results: Results) -> None:
    """Match each request to its views.open (by trigger) and the views.update that filled that view."""
    opens = {c.body.get("trigger_id"): c for c in standin.calls("views.open")}
    updates = [c for c in standin.calls("views.update") if c.ok]
    for s in results.samples:
        call = opens.get(s.trigger)
        if call is None:
            s.error = "no views.open"
            continue
        if not call.ok:
            s.error = str((call.response or {}).get("error") or call.status)
            continue
        s.opened = call.at - s.sent
        view_id = call.response["view"]["id"]
        filled = next((u for u in updates if u.response["view"]["id"] == view_id
                       and u.response["view"]["callback_id"] not in ("loading_modal", "notice_modal")), None)
        s.filled = filled.at - s.sent if filled else None


def report(results: Results, out=sys.stdout) -> bool:
    print("", file=out)
    print(f"request → views.open with {DIAGNOSES} /rollback diagnose in flight (seconds; Slack's limit"
          f" {SLACK_LIMIT:g} s, target p99 <= {TARGET_P99:g} s)", file=out)
    print(f"{'request':<9} {'n':>4} {'in flight':>10} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}   "
          f"{'form filled p50':>15} {'p99':>7}  refused", file=out)
    ok_all = True
    for kind in (*KINDS, "all"):
        group = [s for s in results.samples if kind in ("all", s.kind)]
        opened = [s.opened for s in group if s.opened is not None]
        filled = [s.filled for s in group if s.filled is not None]
        refused = [s.error for s in group if s.error]
        flight = min((s.in_flight for s in group), default=0)
        print(f"{kind:<9} {len(group):>4} {'>= ' + str(flight):>10} {pct(opened, 50):>7.3f} {pct(opened, 95):>7.3f}"
              f" {pct(opened, 99):>7.3f} {max(opened, default=float('nan')):>7.3f}   {pct(filled, 50):>15.3f}"
              f" {pct(filled, 99):>7.3f}  {len(refused)}" + (f" ({', '.join(sorted(set(refused)))})" if refused else ""),
              file=out)
        if kind == "all":
            ok_all = bool(opened) and pct(opened, 99) <= TARGET_P99 and not refused
    batches = results.batch_seconds
    print(f"\neach batch of {DIAGNOSES} diagnoses took {min(batches, default=0):.1f}–{max(batches, default=0):.1f} s"
          " (the work process's pool was busy the whole time)", file=out)
    p99 = pct([s.opened for s in results.samples if s.opened is not None], 99)
    print(f"modal target (p99 {p99:.3f} s <= {TARGET_P99:g} s, Slack's limit {SLACK_LIMIT:g} s, nothing refused): "
          + ("PASS" if ok_all else "FAIL"), file=out)
    return ok_all


def run(argv: list[str] | None = None) -> int:
    """``python -m bench modal [--size demo|test] [--rounds R] [--per-round N]``: measure, print, exit 0."""
    parser = argparse.ArgumentParser(prog="python -m bench modal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("demo", "test"), default="demo", help="the generated world (default demo)")
    parser.add_argument("--rounds", type=int, default=5, help="batches of 20 diagnoses (default 5)")
    parser.add_argument("--per-round", type=int, default=8, help="modal requests per batch (default 8)")
    ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    started = time.monotonic()
    report(run_bench(ns.size, ns.rounds, ns.per_round))
    print(f"(bench modal took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run())
