"""`serve` opens a form's loading view off the ack path (bot/loading_proc.py): a slow ``views.open`` (held by Slack,
or slow to read) never delays the ack of the next request, and the form still opens and is filled in."""

from __future__ import annotations

import os
import signal
import time

from bot.devtools.slack_signing import SlackSender
from handlers.ids import View
from tests.bot.test_serve import children, serve  # noqa: F401 - the fixture: `rollback-bot serve` as real processes


def _sender(url: str, settings) -> SlackSender:
    return SlackSender(url + "/slack/events", settings.slack_signing_secret.get_secret_value())


def _start_form(sender: SlackSender, standin, key: str):
    """``/rollback start`` with no arguments: serve opens the form's loading view, the work process fills it in."""
    return sender.slash_command(text="start", user_id="U0ALICE", channel_id="C1",
                                response_url=standin.response_url(key, channel="C1", user="U0ALICE"),
                                trigger_id=standin.issue_trigger_id())


def _status(sender: SlackSender, standin, key: str):
    return sender.slash_command(text="status", user_id="U0ALICE", channel_id="C1",
                                response_url=standin.response_url(key, channel="C1", user="U0ALICE"))


def _filled_in(standin, view_id: str, timeout: float = 20.0):
    return standin.wait_for("views.update", lambda c: c.body["view_id"] == view_id and c.status == 200,
                            timeout=timeout)[0]


def _updated(standin, view_id: str) -> bool:
    return any(c.body.get("view_id") == view_id for c in standin.calls("views.update"))


def _warm_up(sender: SlackSender, standin) -> None:
    """One form end to end first, so that every process of serve has started and imported what it needs (on a
    busy machine a process still starting may let the first trigger expire: then once more)."""
    for attempt in range(3):
        before = len(standin.calls("views.open"))
        assert _start_form(sender, standin, f"warm{attempt}").status == 200
        opened = standin.wait_for("views.open", timeout=20, count=before + 1)[before]
        if opened.status == 200 and opened.response["ok"]:
            _filled_in(standin, opened.response["view"]["id"])
            return
        time.sleep(1)
    raise AssertionError(f"no form opened: {standin.calls('views.open')}")


def test_a_held_views_open_does_not_delay_the_next_ack(serve, settings, standin):  # noqa: F811
    url = serve()
    sender = _sender(url, settings)
    _warm_up(sender, standin)
    before = len(standin.calls("views.open"))
    held = standin.hold("views.open")
    assert _start_form(sender, standin, "form").status == 200
    assert held.wait(10), "serve did not ask Slack to open the loading view"
    # Slack has not answered that views.open yet: the next request is acked all the same.
    second = _status(sender, standin, "second")
    acked_while_held = not held.released()
    held.release()
    assert second.status == 200 and acked_while_held
    opened = standin.wait_for("views.open", timeout=10, count=before + 1)[before]
    assert opened.status == 200 and opened.response["ok"], opened.response
    assert opened.body["view"]["callback_id"] == View.LOADING
    filled = _filled_in(standin, opened.response["view"]["id"])
    assert filled.body["view"]["callback_id"] == View.START  # the work process filled the loading view in
    assert len(standin.calls("views.open")) == before + 1  # the trigger was used once
    standin.wait_for("response_url", lambda c: c.body.get("key") == "second", timeout=15)


def test_reading_a_slow_views_open_answer_does_not_hold_the_acks(serve, settings, standin):  # noqa: F811
    """An answer costly to read (millions of items to parse) stands for a ``views.open`` that costs CPU time:
    while it is read, serve keeps acking at once. Judged against the time the answer took to turn into the
    filled-in form (read, hand-over, fill-in), so a slow machine slows both sides alike."""
    url = serve()
    sender = _sender(url, settings)
    _warm_up(sender, standin)
    before = len(standin.calls("views.open"))
    padding = standin.pad("views.open", items=10_000_000)
    assert _start_form(sender, standin, "form").status == 200
    assert padding.answered.wait(20), "serve did not ask Slack to open the loading view"
    opened = standin.calls("views.open")[before]
    assert opened.response["ok"], opened.response
    view_id = opened.response["view"]["id"]
    acks: list[float] = []
    deadline = time.monotonic() + 60
    while not _updated(standin, view_id) and time.monotonic() < deadline:
        started = time.perf_counter()
        assert _status(sender, standin, f"s{len(acks)}").status == 200
        acks.append(time.perf_counter() - started)
        time.sleep(0.02)
    filled = _filled_in(standin, view_id, timeout=1)
    assert filled.body["view"]["callback_id"] == View.START
    assert padding.answered_at is not None
    to_filled = filled.at - padding.answered_at
    print(f"acks: n={len(acks)} max={max(acks):.3f} s; answer to filled-in form {to_filled:.3f} s")
    assert len(acks) >= 3, (acks, to_filled)
    assert max(acks) < to_filled / 2, f"an ack took {max(acks):.3f} s while the answer took {to_filled:.3f} s"


def test_a_dead_loading_process_hands_its_forms_over_and_is_started_again(serve, settings, standin):  # noqa: F811
    url, proc = serve.with_process()
    sender = _sender(url, settings)
    _warm_up(sender, standin)
    [loader] = children(proc.pid, "loading")
    before = len(standin.calls("views.open"))
    held = standin.hold("views.open")
    assert _start_form(sender, standin, "orphan").status == 200
    assert held.wait(10)
    os.kill(loader, signal.SIGKILL)  # it dies before Slack answered: the request goes on without a loading view
    try:
        # the work process opens the form with the trigger itself (the held call has not used it)
        opened = standin.wait_for("views.open", timeout=20, count=before + 1)[before]
    finally:
        held.release()
    assert opened.response["ok"] and opened.body["view"]["callback_id"] == View.START, opened.response
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not [p for p in children(proc.pid, "loading") if p != loader]:
        time.sleep(0.1)
    assert [p for p in children(proc.pid, "loading") if p != loader], "the loading process was not started again"
    _warm_up(sender, standin)  # and forms open through it again
    assert _status(sender, standin, "after").status == 200
    standin.wait_for("response_url", lambda c: c.body.get("key") == "after", timeout=20)
