"""App Home is re-published off the live-progress path (handlers/home.py): a running rollback's card never
waits for it, and its view is built once per burst of changes, not once per change and viewer."""

from __future__ import annotations

import json

from tests.e2e.test_slack_flow import CHANNEL, card_message, click, request

VIEWERS = ("U0ALICE", "U0BOB", "U0CAROL")


def published(sandbox, user: str) -> list:
    return [c for c in sandbox.standin.calls("views.publish") if c.ok and c.body.get("user_id") == user]


def test_a_slow_app_home_never_delays_a_running_rollbacks_progress(sandbox, world, conn):
    for user in VIEWERS:
        sandbox.services.home_opened(user_id=user)
    # Slack rate-limits views.publish: the first publish waits three times (3 s or more each) before it goes out
    sandbox.standin.fail_next("views.publish", status=429, retry_after=3, times=3)
    card = request(sandbox)
    click(sandbox, "U0BOB", "rollback_approve", card)
    sandbox.standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
    assert sandbox.services.worker.run_due() >= 1
    assert sandbox.app.progress.flush(10), "the rollback's progress waited"
    # every step is on the card while App Home is still waiting for Slack
    assert not any(published(sandbox, u) for u in VIEWERS)
    assert sandbox.services.engine.list_incidents()[0].state == "monitoring"
    assert "Trading resumed" in json.dumps(card_message(sandbox).blocks)
    states = conn.execute("SELECT count(*) AS n FROM rollback_bot.steps").fetchone()["n"]

    assert sandbox.app.home_publisher.flush(40)
    for user in VIEWERS:
        sent = published(sandbox, user)
        # the change that was waiting, then one more for everything that changed meanwhile; not one per change
        assert 1 <= len(sent) <= 2 < states, (user, len(sent), states)
        home = json.dumps(sandbox.standin.home_view(user))
        assert "INC-1" in home and "monitoring" in home
    assert sandbox.standin.message(CHANNEL, card.ts) is not None


def test_the_home_publisher_stops_with_the_slack_layer_and_publishes_nothing_after():
    """Closed (progress.close, when the Slack app stops), a change waiting for its quiet period is dropped and the
    publisher's thread ends: nothing of a stopped app touches Slack or a closed database pool later."""
    import threading
    import time

    from handlers.home import HomePublisher

    before = set(threading.enumerate())  # (other tests' publishers are none of this one's business)
    published: list[float] = []
    started = threading.Event()
    publisher = HomePublisher(lambda: (started.set(), published.append(time.monotonic())), quiet=0.2, max_wait=1.0)
    publisher.changed()
    assert publisher.flush(5) and published, "a change is published after its quiet period"
    publisher.changed()  # waits for its quiet period ...
    closed_at = time.monotonic()
    publisher.close()    # ... and is dropped
    assert time.monotonic() - closed_at < 1.0, "close waits for no quiet period"
    publisher.changed()  # after close: ignored
    time.sleep(0.5)
    assert len(published) == 1
    assert not [t for t in set(threading.enumerate()) - before if t.name == "home-publisher"], \
        "the publisher's thread still runs"
