"""Issue 8, item 3: security. Signed requests only (wrong signature, stale or future timestamp, tampered body),
replayed deliveries have one effect, secrets never reach a log line, names from people cannot leave
MODELS_DIR (encoded, look-alike, symlink, NUL, very long), very long and non-ASCII text is stored and shown
clipped within Block Kit's limits, and SQL metacharacters in every free-text field are stored verbatim.

Everything goes through the real app over signed HTTP against the Slack stand-in, or through the real CLI in a
subprocess; nothing is mocked. Where a test must know that a replayed delivery was *refused* (rather than
"not yet handled"), it watches ``Services.claim_delivery`` through a recording wrapper (a spy on our own
service object, which still does the real work in PostgreSQL).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.devtools.sandbox import Sandbox
from bot.devtools.slack_signing import SenderResponse, SlackSender, sign
from core.db import Database
from bot.compose import build_services
from core.services import Services
from tests.helpers import assert_consistent, checks_ticked, shown_modal, submit_shown_modal, trading_halted

ROOT = Path(__file__).resolve().parents[2]
MODEL = "growth_momentum_large"
CHANNEL = "C0INCIDENT"
SQL_NASTY = "Robert'); DROP TABLE clients; -- $$ $tag$ \\ \\\\ %s %(x)s {0} \" ` ; /* */ E'\\x27' OR '1'='1"


# ----------------------------------------------------------------------------------------------- helpers


class RecordingSender(SlackSender):
    """A SlackSender that keeps the exact bytes and headers of every request, so it can replay them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[bytes | str, dict[str, str]]] = []

    def raw(self, body: str | bytes, headers: Mapping[str, str] | None = None) -> SenderResponse:
        self.sent.append((body, dict(headers or {})))
        return super().raw(body, headers)

    def replay(self, index: int = -1) -> SenderResponse:
        body, headers = self.sent[index]
        return super().raw(body, headers)


class ClaimSpy:
    """Wraps ``services.claim_delivery``: records each key and whether it was the first delivery."""

    def __init__(self, services: Services) -> None:
        self._real = services.claim_delivery
        self.results: list[tuple[str, bool]] = []
        self._cond = threading.Condition()
        services.claim_delivery = self  # type: ignore[method-assign]

    def __call__(self, key: str) -> bool:
        first = self._real(key)
        with self._cond:
            self.results.append((key, first))
            self._cond.notify_all()
        return first

    def wait_refused(self, prefix: str, timeout: float = 10.0) -> str:
        """Block until a delivery whose key starts with ``prefix`` was refused as a duplicate."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for key, first in self.results:
                    if key.startswith(prefix) and not first:
                        return key
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no duplicate delivery of {prefix!r} was refused; claims: {self.results}")
                self._cond.wait(left)


@pytest.fixture
def box(sandbox) -> Sandbox:
    """The sandbox with a sender that records what it sends."""
    secret = sandbox.services.settings.slack_signing_secret.get_secret_value()
    sandbox.sender = RecordingSender(sandbox.server.url + "/slack/events", secret,
                                     trigger_ids=sandbox.standin.issue_trigger_id,
                                     response_urls=sandbox.click_response_url)
    return sandbox


def target(box: Sandbox) -> str:
    return box.services.registry.recommend(MODEL).backup.name


def command(box: Sandbox, user: str, text: str, **kw) -> tuple[SenderResponse, str]:
    reply = box.command(user, text, **kw)
    return SenderResponse(reply.status, reply.ack, {}), reply.response_key


def answer(box: Sandbox, key: str, timeout: float = 15.0) -> dict:
    return box.responses(key, timeout=timeout)[0]


def card(box: Sandbox):
    msgs = [m for m in box.standin.messages(CHANNEL) if not m.is_reply]
    assert len(msgs) == 1, [m.text for m in msgs]
    return msgs[0]


def click(box: Sandbox, user: str, action_id: str, message) -> SenderResponse:
    return box.sender.block_action(user_id=user, action_id=action_id, channel_id=CHANNEL, message_ts=message.ts,
                                   message=message.as_slack())


def request_rollback(box: Sandbox, reason: str = "IC collapsed after the regime change", user: str = "U0ALICE"):
    r, key = command(box, user, f"start {MODEL} {target(box)} {reason} --confirm")
    assert r.status == 200
    body = answer(box, key)
    assert "posted in" in body["text"], body
    return card(box)


def answered_by_dm(box: Sandbox, user: str, needle: str) -> list:
    """A form submitted without the command's response_url (metadata built by the test) is answered in the
    channel it names, C0OPS, where the bot is not a member: Slack refuses the ephemeral, so the answer is a DM."""
    return box.standin.wait_for("chat.postMessage", lambda c: c.ok and c.body.get("channel") == user
                                and needle in c.body.get("text", ""))


def as_view(value) -> dict:
    return value if isinstance(value, dict) else json.loads(value)


def count(conn, sql: str, *params) -> int:
    return conn.execute(sql, params).fetchone()["n"]


# ------------------------------------------------------------------------------------------ Block Kit limits


def block_kit_problems(blocks: list[dict], *, max_blocks: int = 50) -> list[str]:
    """Slack's limits a message or view must respect (those slack_sdk checks and those it does not)."""
    out = []
    if len(blocks) > max_blocks:
        out.append(f"{len(blocks)} blocks (limit {max_blocks})")
    for i, b in enumerate(blocks):
        kind = b.get("type")
        text = (b.get("text") or {}).get("text", "") if isinstance(b.get("text"), dict) else ""
        if kind == "section":
            if len(text) > 3000:
                out.append(f"block {i}: section text of {len(text)} chars")
            fields = b.get("fields") or []
            if len(fields) > 10:
                out.append(f"block {i}: {len(fields)} fields")
            out += [f"block {i}: field of {len(f['text'])} chars" for f in fields if len(f.get("text", "")) > 2000]
        elif kind == "header" and len(text) > 150:
            out.append(f"block {i}: header of {len(text)} chars")
        elif kind == "context":
            elements = b.get("elements") or []
            if len(elements) > 10:
                out.append(f"block {i}: {len(elements)} context elements")
            out += [f"block {i}: context text of {len(e.get('text', ''))} chars" for e in elements
                    if len(e.get("text", "")) > 3000]
        elif kind == "actions":
            for e in b.get("elements") or []:
                label = (e.get("text") or {}).get("text", "")
                if len(label) > 75:
                    out.append(f"block {i}: button label of {len(label)} chars")
    return out


def all_block_problems(standin) -> list[str]:
    """Check every message, update, ephemeral, response_url post and view the app sent."""
    problems = []
    for call in standin.calls():
        body = call.body
        if call.method in ("views.open", "views.update", "views.push", "views.publish"):
            view = as_view(body.get("view"))
            blocks, limit = view.get("blocks") or [], 100
        else:
            blocks, limit = body.get("blocks"), 50
            if isinstance(blocks, str):
                blocks = json.loads(blocks)
            blocks = blocks or []
            if len(body.get("text") or "") > 40000:
                problems.append(f"{call.method}: text of {len(body['text'])} chars")
        problems += [f"{call.method}: {p}" for p in block_kit_problems(blocks, max_blocks=limit)]
    return problems


# =========================================================================================== signatures


def test_wrong_signature_stale_future_tampered_and_missing_headers_are_401_with_no_effect(box, world, conn):
    """Each forgery of an effectful request (a halt) is refused with 401 and changes nothing."""
    s = box.sender
    url = box.standin.response_url("forged", channel="C0OPS", user="U0ALICE")
    now = int(time.time())
    forged = [
        dict(secret="not-the-signing-secret"),
        # Past five minutes by half a minute: the check runs a moment after `now`, and `now` is rounded down.
        dict(timestamp=now - 330),              # older than five minutes
        dict(timestamp=now + 330),              # from the future
        dict(headers={"X-Slack-Signature": "v0=" + "0" * 64}),
        dict(headers={"X-Slack-Signature": ""}),
    ]
    for kw in forged:
        r = s.slash_command(text="halt forged", user_id="U0ALICE", channel_id="C0OPS", response_url=url, **kw)
        assert r.status == 401, (kw, r)
    # no signature headers at all
    body = urllib.parse.urlencode({"command": "/rollback", "text": "halt forged", "user_id": "U0ALICE",
                                   "channel_id": "C0OPS", "response_url": url, "trigger_id": "1.2.3"})
    assert s.raw(body, {"Content-Type": "application/x-www-form-urlencoded"}).status == 401
    # a correctly signed body, then a different body sent under that signature
    good = urllib.parse.urlencode({"command": "/rollback", "text": "status", "user_id": "U0ALICE",
                                   "channel_id": "C0OPS", "response_url": url, "trigger_id": "1.2.4"})
    tampered = good.replace("text=status", "text=halt+forged")
    headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(s.signing_secret, good)}
    assert s.raw(tampered, headers).status == 401
    # a forged button click on a real request card
    message = request_rollback(box)
    r = box.sender.block_action(user_id="U0BOB", action_id="rollback_approve", channel_id=CHANNEL,
                                message_ts=message.ts, message=message.as_slack(), secret="wrong")
    assert r.status == 401
    r = box.sender.block_action(user_id="U0BOB", action_id="rollback_approve", channel_id=CHANNEL,
                                message_ts=message.ts, message=message.as_slack(), timestamp=now - 3600)
    assert r.status == 401
    # a control request, signed correctly, is answered: the app was listening all along
    r, key = command(box, "U0ALICE", "status")
    assert r.status == 200 and answer(box, key)
    box.settle()
    assert box.standin.calls("response_url") and not [c for c in box.standin.calls("response_url")
                                                        if c.body["key"] == "forged"]
    assert not trading_halted(conn)
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.incidents WHERE kind = 'halt'") == 0
    assert box.services.engine.list_incidents()[0].state == "requested"  # the forged approvals did nothing


def test_non_numeric_timestamp_is_401(box, world, conn):
    url = box.standin.response_url("nan-ts", channel="C0OPS", user="U0ALICE")
    r = box.sender.slash_command(text="halt forged", user_id="U0ALICE", channel_id="C0OPS", response_url=url,
                                 headers={"X-Slack-Request-Timestamp": "not-a-number"})
    assert not trading_halted(conn)  # whatever the status, the forged request had no effect
    assert r.status == 401


def test_the_signature_covers_the_exact_bytes_of_the_body(box):
    """A latin-1 re-encoding of a signed UTF-8 body (same text to a lenient reader) does not verify."""
    s = box.sender
    url = box.standin.response_url("enc", channel="C0OPS", user="U0ALICE")
    text = "status é"
    body = urllib.parse.urlencode({"command": "/rollback", "text": text, "user_id": "U0ALICE", "channel_id": "C0OPS",
                                   "response_url": url, "trigger_id": "9.9.9"})
    headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(s.signing_secret, body)}
    other = urllib.parse.urlencode({"command": "/rollback", "text": text, "user_id": "U0ALICE", "channel_id": "C0OPS",
                                    "response_url": url, "trigger_id": "9.9.9"}, encoding="latin-1")
    assert other != body
    assert s.raw(other, headers).status == 401
    assert s.raw(body, headers).status == 200


# ============================================================================================== replays


def test_replayed_halt_command_halts_once(box, world, conn):
    spy = ClaimSpy(box.services)
    r, key = command(box, "U0ALICE", "halt suspicious fills")
    assert r.status == 200
    assert "halted" in answer(box, key)["text"]
    again = box.sender.replay()
    assert again.status == 200  # within five minutes Slack's signature scheme accepts it; the app must dedupe
    spy.wait_refused("command:")
    box.settle()
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.incidents WHERE kind = 'halt'") == 1
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.halt_holders") == 1
    assert len(box.standin.calls("response_url")) == 1


def test_replayed_start_command_posts_one_request(box, world, conn):
    spy = ClaimSpy(box.services)
    request_rollback(box)
    box.sender.replay()
    spy.wait_refused("command:")
    box.settle()
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.incidents") == 1
    assert len([m for m in box.standin.messages(CHANNEL) if not m.is_reply]) == 1
    assert len(box.standin.calls("response_url")) == 1  # no "already has an open rollback" answer either


def test_replayed_status_command_is_answered_once(box, world):
    spy = ClaimSpy(box.services)
    r, key = command(box, "U0ALICE", "status")
    answer(box, key)
    box.sender.replay()
    spy.wait_refused("command:")
    assert len(box.standin.calls("response_url")) == 1


def test_replayed_approve_click_acts_once_and_tells_nobody_twice(box, world, conn):
    spy = ClaimSpy(box.services)
    message = request_rollback(box)
    assert click(box, "U0BOB", "rollback_approve", message).status == 200
    box.standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
    assert box.sender.replay().status == 200
    spy.wait_refused("action:")
    box.settle()
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.steps WHERE step = 'approved'") == 1
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.jobs WHERE kind = 'execute'") == 1
    assert box.standin.ephemerals("U0BOB") == []  # not even an "already approved" whisper
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.audit_log WHERE action = 'approve'") == 1


def test_replayed_deny_click_opens_one_form(box, world, conn):
    spy = ClaimSpy(box.services)
    message = request_rollback(box)
    click(box, "U0CAROL", "rollback_deny", message)
    shown_modal(box.standin, "rollback_deny_modal")
    box.sender.replay()
    spy.wait_refused("action:")
    box.settle()
    # the replay carries the same trigger_id: its loading view is refused (Slack: exchanged_trigger_id) and
    # no second form is filled in
    opened = box.standin.calls("views.open")
    assert [c.ok for c in opened] == [True, False] and opened[1].response["error"] == "exchanged_trigger_id"
    assert len([c for c in box.standin.calls("views.update") if c.ok]) == 1


def submit_request_form(box: Sandbox, *, reason: str, severity: str = "high", loss: str = "") -> SenderResponse:
    """Alice submits the request form for MODEL and its recommended backup, every pre-rollback check ticked."""
    sel = lambda v: {"type": "static_select", "selected_option": {"value": v}}  # noqa: E731
    values = {"model_block": {"start_model_select": sel(MODEL)}, "backup_block": {"backup": sel(target(box))},
              "reason_block": {"reason": reason}, "severity_block": {"severity": sel(severity)},
              "loss_block": {"loss": loss}, **checks_ticked()}
    return box.sender.view_submission(user_id="U0ALICE", callback_id="rollback_start_modal", state_values=values,
                                      private_metadata=json.dumps({"channel": "C0OPS"}))


def test_replayed_request_form_submission_posts_one_request(box, world, conn):
    spy = ClaimSpy(box.services)
    r = submit_request_form(box, reason="form reason")
    assert r.status == 200
    answered_by_dm(box, "U0ALICE", "INC-1")
    r = box.sender.replay()
    assert r.status == 200
    # The replay is acked before the lazy part runs; its validation may already see INC-1 open and answer with
    # an error in the form. Either way no second request appears.
    if not (r.json() or {}).get("errors"):
        spy.wait_refused("view:")
    box.settle()
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.incidents") == 1
    assert len([m for m in box.standin.messages(CHANNEL) if not m.is_reply]) == 1
    assert len(answered_by_dm(box, "U0ALICE", "posted in")) == 1


def test_replayed_deny_submission_denies_once(box, world, conn):
    message = request_rollback(box)
    click(box, "U0CAROL", "rollback_deny", message)
    r = submit_shown_modal(box, "U0CAROL", "rollback_deny_modal",
                           {"deny_reason_block": {"reason": "not this backup"}})
    assert r.status == 200 and not r.body
    r = box.sender.replay()
    assert r.status == 200 and "already denied" in json.dumps(r.json())
    box.settle()
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.steps WHERE step = 'denied'") == 1
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.audit_log WHERE action = 'deny' AND outcome = 'ok'") == 1


# ======================================================================================= secrets in logs


@pytest.fixture
def secret_dsn(database_url: str) -> str:
    """The test database's URL with a password in it (the local cluster trusts 127.0.0.1 and ignores it)."""
    parts = urllib.parse.urlsplit(database_url)
    user = parts.username or "rollback_bot"
    netloc = f"{user}:Pw-{os.getpid()}-s3cr3t-dbpass@{parts.hostname}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def secret_values(settings, dsn: str) -> list[str]:
    password = urllib.parse.urlsplit(dsn).password
    return [settings.slack_bot_token.get_secret_value(), settings.slack_signing_secret.get_secret_value(), password]


def leaks(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s and s in text]


def test_secrets_never_in_any_log_line_of_a_whole_rollback(settings, standin, world, conn, secret_dsn, caplog):
    """Request, approve, execute with DEBUG logging on every logger: no line holds a token, secret or password."""
    caplog.set_level(logging.DEBUG)
    s = settings.model_copy(update={"slack_api_url": standin.base_url, "database_url": SecretStr(secret_dsn)})
    secrets = secret_values(s, secret_dsn)
    assert all(secrets)
    db = Database(s.database_dsn(), max_size=4).open()
    try:
        with Sandbox(build_services(s, db), standin=standin) as box:
            request_rollback(box)
            message = card(box)
            click(box, "U0BOB", "rollback_approve", message)
            standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
            assert box.run_worker() >= 1
            r, key = command(box, "U0ALICE", "status")
            answer(box, key)
            box.sender.slash_command(text="status", user_id="U0ALICE", channel_id="C0OPS",
                                     response_url="http://127.0.0.1:9/x", secret="wrong")  # a refused request
            box.settle()
            assert box.services.engine.list_incidents()[0].state == "monitoring"
    finally:
        db.close()
    records = caplog.records
    assert len(records) > 20, "DEBUG logging was not captured"
    assert any(r.name.startswith("slack_sdk") for r in records), "slack_sdk's request logging was not captured"
    everything = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in records) + "\n" + caplog.text
    assert leaks(everything, secrets) == []
    # also nothing secret went to Slack itself
    sent = json.dumps([c.body for c in standin.calls()])
    assert leaks(sent, secrets[1:]) == []


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_against_a_wrong_database_host_is_a_clear_error_without_the_password(tmp_path):
    password = "Pw-wrong-host-s3cr3t"
    token, secret = "xoxb-cli-token-0001", "cli-signing-secret-0001"
    for url in (f"postgresql://rollback_bot:{password}@127.0.0.1:1/rollback_bot",
                f"postgresql://rollback_bot:{password}@no-such-host.invalid:5432/rollback_bot"):
        env = cli_env(DATABASE_URL=url, SLACK_BOT_TOKEN=token, SLACK_SIGNING_SECRET=secret, MODELS_DIR=str(tmp_path))
        r = run_cli(["-v", "status"], env, tmp_path)
        out = r.stdout + r.stderr
        assert r.returncode != 0
        assert "PostgreSQL does not answer" in r.stderr, r.stderr
        assert "Traceback" not in out
        assert leaks(out, [password, token, secret]) == []
        assert len(r.stderr.strip().splitlines()) < 40


@pytest.mark.parametrize(("name", "value", "secret"), [
    ("DATABASE_URL", "mysql://rollback_bot:Pw-malformed-s3cr3t@db:3306/x", "Pw-malformed-s3cr3t"),
    ("SLACK_BOT_TOKEN", "xapp-Tok-malformed-s3cr3t", "Tok-malformed-s3cr3t"),
    ("SLACK_APP_TOKEN", "xoxb-Tok-malformed-app-s3cr3t", "Tok-malformed-app-s3cr3t"),
])
def test_a_malformed_secret_setting_is_named_but_never_echoed(tmp_path, name, value, secret):
    env = cli_env(**{name: value})
    for args in (["-v", "status"], ["-v", "serve"]):
        r = run_cli(args, env, tmp_path, timeout=60)
        assert r.returncode == 2, (r.returncode, r.stderr)
        assert name in r.stderr and "Traceback" not in r.stderr
        assert secret not in r.stdout + r.stderr


def test_cli_break_glass_rollback_at_debug_logs_no_secret(tmp_path, world, conn, secret_dsn):
    password = urllib.parse.urlsplit(secret_dsn).password
    token, secret = "xoxb-cli-token-0002", "cli-signing-secret-0002"
    backup = world.models[MODEL].backups[0].name
    env = cli_env(DATABASE_URL=secret_dsn, SLACK_BOT_TOKEN=token, SLACK_SIGNING_SECRET=secret,
                  MODELS_DIR=str(world.models_dir), INCIDENTS_DIR=str(tmp_path / "incidents"))
    r = run_cli(["-v", "rollback", MODEL, "--to", backup, "--reason", "model broke", "--by", "ops-oncall", "--yes", "--confirm"], env,
                tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert leaks(r.stdout + r.stderr, [password, token, secret]) == []
    assert assert_consistent(conn, world.models_dir, MODEL) == backup


def test_serve_at_debug_logs_no_secret(tmp_path, world, standin, secret_dsn):
    """The real ``rollback-bot -v serve`` process: its whole stderr, after signed requests, holds no secret."""
    import socket

    password = urllib.parse.urlsplit(secret_dsn).password
    token, secret = "xoxb-serve-token-0003", "serve-signing-secret-0003"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = cli_env(DATABASE_URL=secret_dsn, SLACK_BOT_TOKEN=token, SLACK_SIGNING_SECRET=secret,
                  SLACK_API_URL=standin.base_url, MODELS_DIR=str(world.models_dir), INCIDENT_CHANNEL=CHANNEL,
                  APPROVERS="U0BOB", OPERATORS="U0ALICE,U0BOB", PORT=str(port),
                  INCIDENTS_DIR=str(tmp_path / "incidents"))
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "bot", "-v", "serve", "--host", "127.0.0.1"], env=env,
                                cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        sender = SlackSender(f"http://127.0.0.1:{port}/slack/events", secret, timeout=5)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.05)
        url = standin.response_url("serve-status", channel="C0OPS", user="U0ALICE")
        assert sender.slash_command(text="status", user_id="U0ALICE", channel_id="C0OPS", response_url=url).status == 200
        standin.wait_for("response_url", lambda c: c.body["key"] == "serve-status", timeout=30)
        backup = world.models[MODEL].backups[0].name
        url = standin.response_url("serve-start", channel="C0OPS", user="U0ALICE")
        sender.slash_command(text=f"start {MODEL} {backup} drift --confirm", user_id="U0ALICE", channel_id="C0OPS",
                             response_url=url)
        standin.wait_for("response_url", lambda c: c.body["key"] == "serve-start", timeout=30)
        standin.wait_for("chat.postMessage", lambda c: c.body.get("channel") == CHANNEL)
        posted = next(m for m in standin.messages(CHANNEL) if not m.is_reply)
        sender.block_action(user_id="U0BOB", action_id="rollback_approve", channel_id=CHANNEL,
                            message_ts=posted.ts, message=posted.as_slack())
        standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""), timeout=30)
        assert sender.slash_command(text="status", user_id="U0ALICE", channel_id="C0OPS", response_url=url,
                                    secret="forged").status == 401
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    text = log_path.read_text()
    assert re.search(r"debug", text, re.IGNORECASE), text[-2000:]  # DEBUG logging was on
    assert leaks(text, [password, token, secret]) == []


# ========================================================================================= path traversal

TRAVERSAL = [
    "../outside",
    "..%2foutside",
    "%2e%2e%2foutside",
    "%2E%2E%2F%2E%2E%2Fetc",
    "..%252f..%252fetc",               # double encoded
    "..\\..\\outside",
    "/etc/passwd",
    "~root",
    "\uff0e\uff0e\uff0foutside",       # fullwidth ．．／
    "\u2024\u2024\u2215outside",       # one-dot leaders and a division slash
    "growth_momentum_large\u200b",     # zero-width space look-alike of a real model
    "ɡrowth_momentum_large",           # Latin small script g look-alike
    "growth_momentum_large%00",
    ".",
    "x" * 10_000,
]


@pytest.fixture
def outside(world, tmp_path) -> Path:
    """A complete, valid model folder outside MODELS_DIR: reaching it would be a traversal."""
    import shutil

    src = world.models_dir / MODEL
    dest = tmp_path / "outside"
    dest.mkdir()
    for name in ("model.json", "metadata.json"):
        shutil.copy(src / name, dest / name)
    backup = dest / "backup_2020-01-01"
    backup.mkdir()
    for name in ("model.json", "metadata.json"):
        shutil.copy(src / world.models[MODEL].backups[0].name / name, backup / name)
    return dest


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", TRAVERSAL, ids=lambda n: repr(n)[:30])
def test_backups_command_refuses_traversal_names(box, world, outside, name):
    before = listing(world.models_dir)
    r, key = command(box, "U0ALICE", f"backups {name}")
    assert r.status == 200
    body = answer(box, key)
    text = body["text"]
    assert re.search(r"Invalid model name|Unknown model", text), text
    assert "backup_2020-01-01" not in json.dumps(body)  # the outside folder's backup is never listed
    assert len(text) < 600  # a 10k-char name is not echoed back whole
    assert listing(world.models_dir) == before
    assert all_block_problems(box.standin) == []


def test_backups_command_with_nul_in_the_name(box, world):
    # A literal NUL arrives when the form field holds %00; Bolt decodes it.
    r, key = command(box, "U0ALICE", f"backups {MODEL}\x00../../etc")
    body = answer(box, key)
    assert "Invalid model name" in body["text"] and "NUL" in body["text"]


def test_symlinked_model_folder_leaving_models_dir_is_refused(box, world, outside):
    (world.models_dir / "escape_model").symlink_to(outside, target_is_directory=True)
    r, key = command(box, "U0ALICE", "backups escape_model")
    body = answer(box, key)
    assert "outside MODELS_DIR" in body["text"] or "Unknown model" in body["text"], body["text"]
    assert "backup_2020-01-01" not in json.dumps(body)
    r, key = command(box, "U0ALICE", "status")
    assert "escape_model" not in json.dumps(answer(box, key))
    r, key = command(box, "U0ALICE", "start escape_model backup_2020-01-01 escaping --confirm")
    body = answer(box, key)
    assert "outside MODELS_DIR" in body["text"] or "Unknown model" in body["text"], body["text"]
    assert box.services.engine.list_incidents() == []


def test_symlinked_backup_leaving_models_dir_is_refused_by_start(box, world, conn, outside):
    """A backup folder that is a symlink to a valid model outside MODELS_DIR cannot be rolled back to."""
    (world.models_dir / MODEL / "backup_zz_escape").symlink_to(outside / "backup_2020-01-01",
                                                              target_is_directory=True)
    r, key = command(box, "U0ALICE", f"start {MODEL} backup_zz_escape it looks better --confirm")
    body = answer(box, key)
    assert "outside MODELS_DIR" in body["text"], body["text"]
    assert box.services.engine.list_incidents() == []
    r, key = command(box, "U0ALICE", f"backups {MODEL}")
    text = json.dumps(answer(box, key))
    assert "backup_zz_escape" in text and "outside MODELS_DIR" in text  # listed, with the reason it is unusable
    assert box.services.backups(model=MODEL).recommendation.backup.name != "backup_zz_escape"
    assert not trading_halted(conn)


@pytest.mark.parametrize("backup", ["backup_../../outside", "backup_%2e%2e%2f", "backup_\x00", "backup_" + "y" * 5000,
                                    "backup_\uff0e\uff0e"])
def test_start_command_refuses_traversal_backup_names(box, world, conn, backup):
    before = listing(world.models_dir)
    r, key = command(box, "U0ALICE", f"start {MODEL} {backup} reason --confirm")
    text = answer(box, key)["text"]
    assert "Invalid backup name" in text, text
    assert len(text) < 600
    assert box.services.engine.list_incidents() == []
    assert listing(world.models_dir) == before and not trading_halted(conn)


@pytest.mark.parametrize("args", [
    ["backups", "../outside"],
    ["backups", "%2e%2e%2foutside"],
    ["backups", "escape_model"],
    ["rollback", MODEL, "--to", "backup_../../outside", "--reason", "r", "--by", "me", "--confirm"],
    ["rollback", MODEL, "--to", "backup_zz_escape", "--reason", "r", "--by", "me", "--confirm"],
    ["rollback", "../" + MODEL, "--to", "backup_x", "--reason", "r", "--by", "me", "--confirm"],
    ["rollback", MODEL, "--to", "backup_" + "z" * 5000, "--reason", "r", "--by", "me", "--confirm"],
], ids=lambda a: " ".join(a)[:40])
def test_cli_refuses_traversal(tmp_path, world, conn, outside, database_url, args):
    (world.models_dir / "escape_model").symlink_to(outside, target_is_directory=True)
    (world.models_dir / MODEL / "backup_zz_escape").symlink_to(outside / "backup_2020-01-01",
                                                              target_is_directory=True)
    before = listing(world.models_dir)
    env = cli_env(DATABASE_URL=database_url, MODELS_DIR=str(world.models_dir))
    r = run_cli(args, env, tmp_path)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert re.search(r"Invalid (model|backup) name|Unknown model|outside MODELS_DIR", r.stderr), r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr) < 600
    assert "backup_2020-01-01" not in r.stdout
    assert listing(world.models_dir) == before
    assert count(conn, "SELECT count(*) AS n FROM rollback_bot.incidents") == 0
    assert not trading_halted(conn)


# ============================================================================ very long and non-ASCII input

LONG_REASON = ("Sharpe collapsed 📉 after the regime change; الخسائر كبيرة جدا; 損失が大きい; "
               "ℌ𝔢𝔩𝔩𝔬 <@U0EVERYONE> <!channel> &amp; *bold* ") * 120


def test_very_long_non_ascii_reason_is_stored_and_shown_clipped(box, world, conn):
    assert len(LONG_REASON) > 10_000
    message = request_rollback(box, reason=LONG_REASON.strip())
    inc = box.services.engine.list_incidents()[0]
    assert 0 < len(inc.reason) <= 2000
    assert LONG_REASON.strip().startswith(inc.reason)  # clipped, never mangled
    text = json.dumps(message.blocks, ensure_ascii=False)
    assert "📉" in text and "الخسائر" in text
    assert "<!channel>" not in text and "<@U0EVERYONE>" not in text  # user text cannot mention or broadcast
    click(box, "U0BOB", "rollback_approve", message)
    box.standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
    box.run_worker()
    assert box.services.engine.get(inc.id).state == "monitoring"
    r, key = command(box, "U0ALICE", "incidents")
    answer(box, key)
    assert all_block_problems(box.standin) == []
    row = conn.execute("SELECT deployment_reason FROM model_deployment_log WHERE model_name = %s AND is_production",
                       (MODEL,)).fetchone()
    assert row["deployment_reason"].startswith(f"INC-{inc.id}: Sharpe collapsed 📉")


def test_very_long_non_ascii_halt_reason_and_modal_fields(box, world, conn):
    r, key = command(box, "U0ALICE", "halt " + LONG_REASON)
    assert "halted" in answer(box, key)["text"]
    halt = box.services.engine.list_incidents()[0]
    assert 0 < len(halt.reason) <= 2000
    r, key = command(box, "U0ALICE", "status")
    answer(box, key)
    # the request form with a reason far beyond the input's max_length (Slack enforces it; we must not crash)
    r = submit_request_form(box, reason=LONG_REASON, severity="critical", loss="1e308")
    assert r.status == 200
    answered_by_dm(box, "U0ALICE", "INC-2")
    box.settle()
    assert all_block_problems(box.standin) == []


@pytest.mark.parametrize("text", ["backups модель_большая", "backups 💥", "frobnicate " + "ش" * 5000,
                                  "start " + "é" * 300, "report INC-" + "9" * 40])
def test_non_ascii_and_very_long_commands_get_a_clear_answer(box, world, text):
    r, key = command(box, "U0ALICE", text)
    assert r.status == 200
    if r.body:  # answered in the ack (help / unknown subcommand)
        payload = json.loads(r.body)
        assert len(payload["text"]) < 5000
        assert block_kit_problems(payload.get("blocks") or []) == []
    elif text.startswith("start"):  # the form's loading view opened at once: the answer is shown in it
        notice = json.dumps(shown_modal(box.standin, "notice_modal")["blocks"], ensure_ascii=False)
        assert "model" in notice and "Something went wrong" not in notice and len(notice) < 1000, notice
    else:
        body = answer(box, key)
        assert "Something went wrong" not in body["text"], body["text"]
        assert len(body["text"]) < 1000
    box.settle()
    assert all_block_problems(box.standin) == []


@pytest.mark.parametrize("where", ["reason", "halt"])
def test_nul_and_control_characters_in_free_text_are_not_a_crash(box, world, conn, where):
    """PostgreSQL text cannot hold NUL: such input must get a clear answer, not an error id."""
    nasty = "bad\x00data\x07 \x1b[31mred"
    if where == "reason":
        r, key = command(box, "U0ALICE", f"start {MODEL} {target(box)} {nasty} --confirm")
    else:
        r, key = command(box, "U0ALICE", f"halt {nasty}")
    body = answer(box, key)
    assert "Something went wrong" not in body["text"], body["text"]


# ================================================================================ SQL metacharacters


def test_sql_metacharacters_in_every_slack_free_text_field_are_stored_verbatim(box, world, conn):
    clients_before = count(conn, "SELECT count(*) AS n FROM clients")
    # reason of a request (slash command; its words are re-joined with single spaces)
    message = request_rollback(box, reason=SQL_NASTY)
    first = box.services.engine.list_incidents()[0]
    assert first.reason == SQL_NASTY
    # deny reason
    click(box, "U0CAROL", "rollback_deny", message)
    r = submit_shown_modal(box, "U0CAROL", "rollback_deny_modal",
                           {"deny_reason_block": {"reason": SQL_NASTY + "\nsecond line"}})
    assert r.status == 200 and not r.body, r.body
    assert box.services.engine.get(first.id).decision_note == SQL_NASTY + "\nsecond line"
    # root cause
    r = box.sender.view_submission(user_id="U0BOB", callback_id="root_cause_modal",
                                   state_values={"root_cause_block": {"text": SQL_NASTY}},
                                   private_metadata=json.dumps({"incident": first.id}))
    assert r.status == 200 and not r.body, r.body
    assert box.services.engine.get(first.id).root_cause == SQL_NASTY
    # halt reason
    r, key = command(box, "U0ALICE", f"halt {SQL_NASTY}")
    answer(box, key)
    halt = box.services.engine.list_incidents()[0]
    assert halt.kind == "halt" and halt.reason == SQL_NASTY
    assert conn.execute("SELECT reason FROM rollback_bot.trading_state").fetchone()["reason"] == SQL_NASTY
    r, key = command(box, "U0BOB", "resume")
    answer(box, key)
    # a request from the form, executed: the reason reaches model_deployment_log
    submit_request_form(box, reason=SQL_NASTY)
    answered_by_dm(box, "U0ALICE", "posted in")
    box.settle()
    inc = next(i for i in box.services.engine.list_incidents() if i.kind == "rollback" and i.is_open)
    assert inc.reason == SQL_NASTY
    assert box.services.engine.approve(incident_id=inc.id, approver="U0BOB").state == "approved"
    box.run_worker()
    row = conn.execute("SELECT deployment_reason FROM model_deployment_log WHERE model_name = %s AND is_production",
                       (MODEL,)).fetchone()
    assert row["deployment_reason"] == f"{inc.ref}: {SQL_NASTY}"
    # tables intact
    assert count(conn, "SELECT count(*) AS n FROM clients") == clients_before
    assert conn.execute("SELECT to_regclass('public.clients') AS t").fetchone()["t"] is not None
    assert_consistent(conn, world.models_dir, MODEL)
    assert all_block_problems(box.standin) == []


def test_sql_metacharacters_in_cli_by_and_reason_are_stored_verbatim(tmp_path, world, conn, database_url):
    clients_before = count(conn, "SELECT count(*) AS n FROM clients")
    backup = world.models[MODEL].backups[0].name
    by = "o'neil\"; DELETE FROM model_deployment_log; --"
    env = cli_env(DATABASE_URL=database_url, MODELS_DIR=str(world.models_dir),
                  INCIDENTS_DIR=str(tmp_path / "incidents"))
    r = run_cli(["rollback", MODEL, "--to", backup, "--reason", SQL_NASTY, "--by", by, "--yes", "--confirm"], env, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    inc = conn.execute("SELECT * FROM rollback_bot.incidents").fetchone()
    assert inc["reason"] == SQL_NASTY and inc["requested_by"] == by
    row = conn.execute("SELECT * FROM model_deployment_log WHERE model_name = %s AND is_production",
                       (MODEL,)).fetchone()
    assert row["deployment_reason"] == f"INC-{inc['id']}: {SQL_NASTY}"
    assert row["deployed_by"].startswith(by)
    audit = conn.execute("SELECT actor FROM rollback_bot.audit_log WHERE action = 'break_glass_rollback'").fetchone()
    assert audit["actor"] == by
    assert count(conn, "SELECT count(*) AS n FROM clients") == clients_before
    assert count(conn, "SELECT count(*) AS n FROM model_deployment_log") > 1
    assert_consistent(conn, world.models_dir, MODEL)
