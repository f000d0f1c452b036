"""`serve` opens a form's loading view off the ack path (bot/loading_proc.py): a slow ``views.open`` (held by Slack,
or slow to read) never delays the ack of the next request, and the form still opens and is filled in."""

from __future__ import annotations

import time

from bot.devtools.slack_signing import SlackSender
from handlers.ids import View
from tests.bot.test_serve import serve  # noqa: F401 - the fixture: `rollback-bot serve` as real processes


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
    """One form end to end first, so that every process of serve has started and imported what it needs."""
    assert _start_form(sender, standin, "warm").status == 200
    opened = standin.wait_for("views.open", timeout=20)[0]
    _filled_in(standin, opened.response["view"]["id"])


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
