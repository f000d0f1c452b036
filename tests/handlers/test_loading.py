"""Modals open at once (handlers/loading.py): a loading view opens with the trigger right after the ack, and the
work fills it in with views.update. Slack's trigger_id lasts 3 s (the stand-in enforces it), and work such as
twenty /rollback diagnose can hold the work pool far longer."""

from __future__ import annotations

import json
import threading
import time

from bot.devtools.slack_signing import SlackSender
from handlers.loading import modal_for
from tests.helpers import shown_modal
from tests.bot.test_serve import serve  # noqa: F401 - the real `rollback-bot serve` fixture

MODEL = "growth_momentum_large"
DIAGNOSES = 20
LIMIT = 0.5  # the loading view must be open this soon after the request; Slack allows 3 s


def diagnose_flood(standin, send) -> list[str]:
    """Send DIAGNOSES ``/rollback diagnose`` commands at once; returns their response keys."""
    keys = [f"diag-{i}" for i in range(DIAGNOSES)]
    threads = [threading.Thread(target=send, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return keys


def answered(standin, keys) -> int:
    return len({c.body["key"] for c in standin.calls("response_url") if c.body.get("key") in keys})


def check_form_opened_under_load(standin, sent_at: float, keys: list[str]) -> None:
    [opened] = standin.wait_for("views.open", timeout=10)
    assert opened.ok, opened.response  # not expired_trigger_id
    assert opened.response["view"]["callback_id"] == "loading_modal"
    assert opened.at - sent_at < LIMIT, f"the form opened {opened.at - sent_at:.2f} s after the command"
    # it did not wait for the diagnoses queued before it (the old path opened it after them)
    done_before = len({c.body["key"] for c in standin.calls("response_url")
                       if c.body.get("key") in keys and c.at <= opened.at})
    assert done_before < DIAGNOSES // 2, f"{done_before} diagnoses were answered before the form opened"
    form = shown_modal(standin, "rollback_start_modal", timeout=120)
    assert form["id"] == opened.response["view"]["id"]
    standin.wait_for("response_url", lambda c: c.body.get("key") in keys, count=DIAGNOSES, timeout=180)
    assert [c.response["error"] for c in standin.calls() if not c.ok] == []


def test_a_form_opens_at_once_while_twenty_diagnoses_run(sandbox, world):
    standin = sandbox.standin

    def send(key: str) -> None:
        url = standin.response_url(key, channel="C0OPS", user="U0ALICE")
        sandbox.sender.slash_command(text=f"diagnose {MODEL}", user_id="U0ALICE", channel_id="C0OPS",
                                     response_url=url)

    keys = diagnose_flood(standin, send)
    sent_at = time.time()
    sandbox.command("U0ALICE", "start")
    check_form_opened_under_load(standin, sent_at, keys)


def test_serve_opens_the_loading_view_before_handing_the_form_to_the_work_process(serve, settings, standin, world):
    """The same with the real `serve`: the serving process opens the loading view right after the ack."""
    url = serve()
    sender = SlackSender(url + "/slack/events", settings.slack_signing_secret.get_secret_value(),
                         trigger_ids=standin.issue_trigger_id)

    def send(key: str) -> None:
        sender.slash_command(text=f"diagnose {MODEL}", user_id="U0ALICE", channel_id="C0OPS",
                             response_url=standin.response_url(key, channel="C0OPS", user="U0ALICE"))

    keys = diagnose_flood(standin, send)
    sent_at = time.time()
    sender.slash_command(text="start", user_id="U0ALICE", channel_id="C0OPS",
                         response_url=standin.response_url("start", channel="C0OPS", user="U0ALICE"))
    check_form_opened_under_load(standin, sent_at, keys)


def test_a_refusal_is_shown_in_the_loading_view(sandbox, world, conn):
    reply = sandbox.command("U0DAVE", "start")
    notice = json.dumps(shown_modal(sandbox.standin, "notice_modal"))
    assert "Only operators may request a rollback" in notice
    assert sandbox.standin.calls("response_url") == []  # said once, where the person is looking
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.incidents").fetchone()["n"] == 0
    assert reply.status == 200


def test_a_rate_limited_loading_view_is_retried_within_the_trigger_lifetime(sandbox, world):
    sandbox.standin.rate_limit("views.open", retry_after=1)
    sandbox.command("U0ALICE", f"start {MODEL}")
    form = shown_modal(sandbox.standin, "rollback_start_modal")
    limited, opened = sandbox.standin.calls("views.open")
    assert limited.status == 429 and opened.ok and form["id"] == opened.response["view"]["id"]


def test_without_a_loading_view_the_form_is_opened_with_the_trigger(sandbox, world):
    """Slack refused the loading view (say a 5xx after retries): the work opens the form itself."""
    sandbox.standin.fail_next("views.open", error="internal_error")
    sandbox.command("U0ALICE", "start")
    opened = sandbox.standin.wait_for("views.open", lambda c: c.ok)[0]
    assert opened.response["view"]["callback_id"] == "rollback_start_modal"


def test_which_requests_open_a_modal():
    def command(text: str) -> dict:
        return {"command": "/rollback", "text": text, "trigger_id": "t"}

    def click(action_id: str) -> dict:
        return {"type": "block_actions", "trigger_id": "t", "actions": [{"action_id": action_id}]}

    assert modal_for(command("start")) == "start"
    assert modal_for(command(f"start {MODEL} the reason")) == "start"  # no backup: the form, prefilled
    assert modal_for(command(f"start {MODEL} backup_x")) == "start"  # no reason
    assert modal_for(command(f"start {MODEL} backup_x IC collapsed")) is None  # posted at once
    assert modal_for(command("status")) is None and modal_for(command("")) is None
    assert modal_for(click("rollback_deny")) == "deny" and modal_for(click("add_root_cause")) == "root_cause"
    assert modal_for(click("attention_rollback_again")) == "start" and modal_for(click("attention_accept")) == "accept"
    assert modal_for(click("fix_retrain")) == "retrain"
    assert modal_for(click("followup_assign")) == "followup_assign" and modal_for(click("add_prevention")) == "prevention"
    assert modal_for(click("loss_update")) == "loss"
    assert modal_for(click("followup_take")) is None and modal_for(click("page_acknowledge")) is None
    assert modal_for(click("rollback_approve")) is None
    assert modal_for({"command": "/rollback", "text": "start"}) is None  # no trigger, no modal


def test_serve_retries_a_rate_limited_loading_view(serve, settings, standin, world):
    url = serve()
    sender = SlackSender(url + "/slack/events", settings.slack_signing_secret.get_secret_value(),
                         trigger_ids=standin.issue_trigger_id)
    standin.rate_limit("views.open", retry_after=1)
    sender.slash_command(text="start", user_id="U0ALICE", channel_id="C0OPS",
                         response_url=standin.response_url("start", channel="C0OPS", user="U0ALICE"))
    form = shown_modal(standin, "rollback_start_modal", timeout=30)
    limited, opened = standin.calls("views.open")
    assert limited.status == 429 and opened.ok and form["id"] == opened.response["view"]["id"]
    assert 1.0 <= opened.at - limited.at < 3.0  # Retry-After honoured, within the trigger's 3 s
