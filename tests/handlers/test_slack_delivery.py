"""The Slack updates of a state change are queued in its transaction (core.slack_outbox) and delivered by the Slack
lane of whichever process has a Slack client (handlers/slack_delivery.py): in order and once per incident, even
with two lanes on one database; a break-glass CLI rollback shows up in Slack once a `serve` runs; a process killed
right after a state commit loses no reply.

Real parts: the real CLI and a real bot process in subprocesses (tests/crash_child.py), a real PostgreSQL, the
real app against the Slack stand-in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bot.compose import build_services
from bot.devtools.sandbox import Sandbox
from core import halt_watch, slack_outbox
from core.repository import enqueue
from core.registry import ModelRegistry
from handlers.slack_delivery import lane

ROOT = Path(__file__).resolve().parents[2]
MODEL = "growth_momentum_large"
CHANNEL = "C0INCIDENT"
STEP_NEEDLES = ("Automated trading halted", "Emergency backup", "restored atomically", "model_deployment_log",
                "Verified", "Trading resumed")
MILESTONES = ("opened", "halted", "rolled back", "trading resumed")  # the stakeholders' headlines, in order


def target(world) -> str:
    return ModelRegistry(world.models_dir).recommend(MODEL).backup.name


def app_settings(settings, standin, **extra):
    return settings.model_copy(update={"slack_api_url": standin.base_url, "stakeholders": ["U0DAVE"], **extra})


def positions(texts: list[str], needles) -> list[int]:
    """Where each needle appears in ``texts``: asserted to be exactly once."""
    out = []
    for needle in needles:
        hits = [i for i, t in enumerate(texts) if needle in t]
        assert len(hits) == 1, (needle, texts)
        out += hits
    return out


def stakeholder_mentions(texts: list[str]) -> list[str]:
    return [t for t in texts if t.startswith("<@U0DAVE>")]


def slack_jobs(conn, incident_id: int) -> list[dict]:
    return conn.execute("SELECT id, payload->>'what' AS what, done_at, last_error FROM rollback_bot.jobs"
                        " WHERE kind = 'slack' AND incident_id = %s ORDER BY id", (incident_id,)).fetchall()


def requested(box: Sandbox, world):
    """Alice asks for a rollback of MODEL in Slack: the incident, its card posted."""
    reply = box.command("U0ALICE", f"start {MODEL} {target(world)} Sharpe collapsed --confirm")
    assert "posted in" in box.responses(reply.response_key, timeout=20)[0]["text"]
    return box.services.engine.list_incidents()[0]


def approved_in_slack(s, db, standin, world) -> tuple[object, str]:
    """A Slack app in which the rollback is requested and approved (its `execute` queued, run by nobody there),
    then stopped: the incident and its card's ts."""
    with Sandbox(build_services(s, db), standin=standin) as box:
        inc = requested(box, world)
        box.services.engine.approve(incident_id=inc.id, approver="U0BOB")
        assert box.app.progress.flush(20)
        return inc, box.services.engine.get(inc.id).message_ts


def thread_after_a_restart(s, db, standin, card_ts: str, timeout: float = 30) -> list[str]:
    """A Slack app started afterwards delivers what is queued: the card's thread once it has."""
    with Sandbox(build_services(s, db), standin=standin) as box:
        assert box.app.progress.flush(timeout)
        time.sleep(0.3)  # a second delivery, if there were one, would show now
        return [m.text for m in standin.thread(CHANNEL, card_ts)]


def test_a_break_glass_cli_rollback_shows_up_in_slack_once_serve_runs(settings, world, conn, db, standin, tmp_path):
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env.update(PYTHONPATH=str(ROOT), DATABASE_URL=settings.database_dsn(), MODELS_DIR=str(world.models_dir),
               INCIDENTS_DIR=str(tmp_path / "incidents"), HALT_QUIET_SECONDS="0.2", INCIDENT_CHANNEL=CHANNEL)
    r = subprocess.run([sys.executable, "-m", "bot", "rollback", MODEL, "--to", target(world), "--reason",
                        "Slack is down", "--by", "oncall-jane", "--yes", "--confirm"],
                       env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    inc = conn.execute("SELECT * FROM rollback_bot.incidents").fetchone()
    assert inc["state"] == "monitoring" and inc["message_ts"] is None  # Slack was down: nothing posted yet
    assert all(j["done_at"] is None for j in slack_jobs(conn, inc["id"])) and slack_jobs(conn, inc["id"])
    assert "slack" in r.stdout  # the CLI says what stays queued for `serve`
    assert standin.calls() == []

    # Slack and `serve` are back: its Slack lane delivers what the CLI queued.
    with Sandbox(build_services(app_settings(settings, standin), db), standin=standin) as box:
        assert box.app.progress.flush(30), slack_jobs(conn, inc["id"])
        cards = [m for m in standin.messages(CHANNEL) if not m.is_reply]
        assert len(cards) == 1, [m.text for m in cards]  # the card, posted once by the first delivery
        card = cards[0]
        row = conn.execute("SELECT channel, message_ts FROM rollback_bot.incidents").fetchone()
        assert row == {"channel": CHANNEL, "message_ts": card.ts}
        assert "monitoring" in str(card.blocks) and "break-glass" in str(card.blocks)
        texts = [m.text for m in standin.thread(CHANNEL, card.ts)]
        steps = positions(texts, STEP_NEEDLES)
        assert steps == sorted(steps), texts  # in the order the state changes committed
        mentions = stakeholder_mentions(texts)
        assert len(mentions) == len(MILESTONES), mentions
        assert [m for m in MILESTONES if any(m in t for t in mentions)] == list(MILESTONES)
        assert positions(mentions, MILESTONES) == list(range(len(MILESTONES)))
        assert texts.index(mentions[1]) > texts.index(next(t for t in texts if "Automated trading halted" in t))
        dm = standin.dm_channel("U0DAVE")
        assert len(standin.messages(dm)) == len(MILESTONES)  # the stakeholder's DMs, once per milestone
        assert all(j["done_at"] is not None and j["last_error"] is None for j in slack_jobs(conn, inc["id"]))


def _crash_child(settings, world, label: str, mode: str) -> None:
    url = settings.database_dsn()
    env = {**os.environ, "INCIDENT_CHANNEL": CHANNEL}
    argv = [sys.executable, "-m", "tests.crash_child", "--db", url, "--models", str(world.models_dir),
            "--incidents", str(settings.incidents_dir), "--model", MODEL, "--backup", target(world),
            "--kill-at", label, "--mode", mode]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {label} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"


def test_a_process_killed_right_after_a_state_commit_still_gets_its_reply_and_card_update(
        settings, world, conn, db, standin):
    s = app_settings(settings, standin)
    inc, card_ts = approved_in_slack(s, db, standin, world)
    before = [m.text for m in standin.thread(CHANNEL, card_ts)]
    assert any("Approved by" in t for t in before) and not any("Automated trading halted" in t for t in before)

    # Another bot process (no Slack client) runs the rollback and is killed right after the halt's commit: the
    # halt's step reply, its state and its milestone were queued in that transaction, nothing was shown.
    _crash_child(settings, world, "after:halting", "recover")
    assert conn.execute("SELECT state FROM rollback_bot.incidents").fetchone()["state"] == "halted"
    assert not any("Automated trading halted" in m.text for m in standin.thread(CHANNEL, card_ts))

    # A `serve` that starts afterwards delivers them, once, into the card's thread, and updates the card.
    texts = thread_after_a_restart(s, db, standin, card_ts, timeout=20)
    halted = positions(texts, ["Automated trading halted"])[0]
    assert halted > max(i for i, t in enumerate(texts) if "Approved by" in t)
    assert len([t for t in stakeholder_mentions(texts) if "halted for the rollback" in t]) == 1
    card = standin.message(CHANNEL, card_ts)
    assert card.edited and "*State: halted*" in str(card.blocks)
    assert len([m for m in standin.messages(CHANNEL) if not m.is_reply]) == 1  # no second card


def test_two_lanes_on_one_database_post_each_reply_once_and_in_order(settings, world, conn, db, standin):
    s = app_settings(settings, standin)
    with Sandbox(build_services(s, db), standin=standin) as one, \
            Sandbox(build_services(s, db), standin=standin) as two:
        inc = requested(one, world)
        # The rollback runs in a third process without Slack (a bare worker): both lanes deliver its updates.
        bare = build_services(s, db)
        bare.engine.approve(incident_id=inc.id, approver="U0BOB")
        bare.worker.run_due()
        assert one.app.progress.flush(30) and two.app.progress.flush(30)
        card_ts = one.services.engine.get(inc.id).message_ts
        texts = [m.text for m in standin.thread(CHANNEL, card_ts)]
        steps = positions(texts, ("Approved by",) + STEP_NEEDLES)
        assert steps == sorted(steps), texts
        mentions = stakeholder_mentions(texts)
        assert positions(mentions, MILESTONES) == list(range(len(MILESTONES)))
        assert len([m for m in standin.messages(CHANNEL) if not m.is_reply]) == 1
        jobs = conn.execute("SELECT locked_by FROM rollback_bot.jobs WHERE kind = 'slack' AND incident_id = %s",
                            (inc.id,)).fetchall()
        assert len(jobs) >= len(STEP_NEEDLES) + len(MILESTONES)


def test_an_incidents_slack_updates_are_claimed_one_at_a_time_in_order(settings, db, conn, world):
    """The claim itself: only an incident's oldest undone update is claimable, even while another lane holds it;
    other incidents' updates are not held up."""
    services = build_services(settings, db)
    first, second = lane(services.engine), lane(services.engine)
    for worker in (first, second):
        worker.on(slack_outbox.KIND, lambda job: None)
    inc_a, _ = services.engine.request_rollback(model=MODEL, backup=target(world), reason="a", requested_by="U0ALICE")
    other = services.engine.halt_trading(user="U0BOB", reason="another incident").id
    ids = [j["id"] for j in slack_jobs(conn, inc_a.id)]
    assert len(ids) >= 2
    held = first.claim(incident_id=inc_a.id)
    assert held["id"] == ids[0]
    assert second.claim(incident_id=inc_a.id) is None  # the next one waits while the first is held elsewhere
    assert second.claim()["incident_id"] == other  # another incident's update goes ahead
    first.run_job(held)
    nxt = second.claim(incident_id=inc_a.id)
    assert nxt["id"] == ids[1]


def test_a_process_killed_right_after_the_diagnostics_commit_still_gets_its_reply_once(
        settings, world, conn, db, standin):
    """Diagnostics change no state: their reply is queued in the transaction that journals them, not left to the
    in-process listener of the process that ran them."""
    s = app_settings(settings, standin)
    inc, card_ts = approved_in_slack(s, db, standin, world)

    # A bare worker (no Slack client) runs the rollback, then its diagnostics, and is killed right after the
    # diagnostics' commit, before any listener heard of them.
    _crash_child(settings, world, "publish:diagnostics", "jobs")
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.steps WHERE incident_id = %s AND step = 'diagnostics'",
                        (inc.id,)).fetchone()["n"] == 1
    assert not any(":stethoscope:" in m.text for m in standin.thread(CHANNEL, card_ts))

    texts = thread_after_a_restart(s, db, standin, card_ts)
    diagnosed = positions(texts, [":stethoscope:"])[0]
    assert diagnosed > positions(texts, ["Automated trading halted"])[0]  # in the order of the commits
    assert all(j["done_at"] is not None for j in slack_jobs(conn, inc.id))
    assert len([m for m in standin.messages(CHANNEL) if not m.is_reply]) == 1


def test_an_acknowledgement_in_a_process_without_slack_is_replied_once_by_a_lane(settings, world, conn, db, standin):
    """An acknowledgement changes no state: its reply and card update are queued with it (core.paging), so the
    Slack lane of another process shows them (handlers/paging.py's handler, card first), once."""
    s = app_settings(settings, standin)
    with Sandbox(build_services(s, db), standin=standin) as box:
        inc = requested(box, world)
        assert box.app.progress.flush(20)
        card_ts = box.services.engine.get(inc.id).message_ts
        edited = len(standin.message(CHANNEL, card_ts).versions)
        bare = build_services(s, db)  # e.g. the CLI: no Slack client, no listener
        bare.paging.start(bare.engine.get(inc.id), "nobody approved yet")
        bare.paging.acknowledge(incident_id=inc.id, user="U0GRACE", allowed=True)
        assert box.app.progress.flush(20)
        time.sleep(0.3)  # a second delivery, if there were one, would show now
        texts = [m.text for m in standin.thread(CHANNEL, card_ts)]
        positions(texts, ["<@U0GRACE> acknowledged the page; the emergency contacts will not be paged"])
        assert len(standin.message(CHANNEL, card_ts).versions) > edited  # the card updated too


def test_a_pnl_query_failure_in_a_process_without_slack_is_warned_once_in_the_thread(settings, world, conn, db,
                                                                                       standin):
    """A warning changes no state: it is queued with the failure's journal entry (core.pnl), so the Slack lane of
    another process posts it in the incident's thread, once, though the poll failing again is not told again."""
    s = app_settings(settings, standin)
    with Sandbox(build_services(s, db), standin=standin) as box:
        inc = requested(box, world)
        assert box.app.progress.flush(20)
        card_ts = box.services.engine.get(inc.id).message_ts
        bare = build_services(s.model_copy(update={"pnl_query": "SELECT 'not a number'"}), db)  # no Slack client
        for slot in range(3):  # polls of the open incident (as its state changes queue them), failing each time
            with bare.db.transaction() as c:
                enqueue(c, "loss_poll", incident_id=inc.id, payload={"slot": slot}, dedupe_key=f"test-poll:{slot}")
            bare.worker.run_due()
        assert box.app.progress.flush(20)
        time.sleep(0.3)  # a second delivery, if there were one, would show now
        texts = [m.text for m in standin.thread(CHANNEL, card_ts)]
        positions(texts, [":warning: PNL_QUERY must return a number"])
        assert all(j["done_at"] is not None and j["last_error"] is None for j in slack_jobs(conn, inc.id))


def test_a_client_halted_by_a_sweep_in_a_process_without_slack_is_said_once_in_the_thread(settings, world, conn,
                                                                                            db, standin):
    """The halt sweep changes no state: its reply is queued with its journal entry (core.halt_watch), so the
    Slack lane of another process says which client was halted during the halt, once."""
    s = app_settings(settings, standin)
    with Sandbox(build_services(s, db), standin=standin) as box:
        box.responses(box.command("U0ALICE", "halt suspicious fills").response_key, timeout=20)
        assert box.app.progress.flush(20)
        inc = next(i for i in box.services.engine.list_incidents() if i.kind == "halt")
        card_ts = box.services.engine.get(inc.id).message_ts
        assert card_ts, "the manual halt has a card"
        inactive = conn.execute("SELECT client_id FROM clients WHERE NOT active ORDER BY client_id"
                                ).fetchone()["client_id"]
        conn.execute("UPDATE clients SET active = true WHERE client_id = %s", (inactive,))
        bare = build_services(s, db)  # no Slack client, no listener
        halt_watch.sweep(bare.engine)
        halt_watch.sweep(bare.engine)  # nothing new the second time
        assert box.app.progress.flush(20)
        time.sleep(0.3)  # a second delivery, if there were one, would show now
        texts = [m.text for m in standin.thread(CHANNEL, card_ts)]
        positions(texts, [f"Client(s) {inactive} became active during the halt"])
