"""Follow-ups in Slack (handlers/followups.py over core/followups.py): the follow-ups message in the incident's
thread, Take it / Assign… / Done / Add prevention measure, who may press them, reminders when overdue (once, with
two bot processes), `/rollback followups`, and the report's Follow-ups and Prevention sections and checklist items
9 and 10. Signed requests against the stand-in, the real PostgreSQL, time moved with the engine clock."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

from psycopg.types.json import Jsonb

from bot.devtools.sandbox import Sandbox
from core import incidents
from bot.compose import build_services
from tests.helpers import Clock, corrupt_after_restore, shown_modal, whispered
from tests.e2e.test_slack_flow import CHANNEL, MODEL, approve_and_run, click, request

HOUR = timedelta(hours=1)


def dumps(value):
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def box_with(settings, db, standin, clock, **services_kw):
    services = build_services(settings.model_copy(update={"slack_api_url": standin.base_url}), db, **services_kw)
    services.engine.clock = clock
    return Sandbox(services, standin=standin)


def new_clock():
    # ahead of the database's clock, so that jobs queued for "now" by the database are due for the engine
    return Clock(incidents.utcnow().replace(microsecond=0) + timedelta(minutes=15))


def run_to_monitoring(box):
    card = request(box)
    approve_and_run(box, card, runs=3)
    inc = box.services.engine.list_incidents()[0]
    return card, inc


def board_message(box, card):
    boards = [m for m in box.standin.thread(CHANNEL, card.ts) if m.text.startswith("Follow-ups of")]
    assert len(boards) == 1, [m.text for m in boards]
    return box.standin.message(CHANNEL, boards[0].ts)


def item(box, inc, kind):
    return next(i for i in box.services.followups.items(inc.id) if i.kind == kind)


def press(box, user, action, board, value):
    block = f"followup:{value}" if action != "add_prevention" else "prevention_actions"
    r = box.sender.block_action(user_id=user, action_id=action, value=str(value), block_id=block,
                                channel_id=CHANNEL, message_ts=board.ts, message=board.as_slack())
    assert r.status == 200


def ephemeral(box, user, needle, count=1):
    """Told privately: through the click's response_url (never chat.postEphemeral, which needs the channel)."""
    told = whispered(box.standin, user, needle, count=count)
    assert all(e.via == "response_url" for e in told), [e.via for e in told]
    return told


def opened_view(box, callback_id):
    """The form as the person sees it: a loading view opened with the click's trigger at once (the stand-in holds
    Slack's 3 s, single-use trigger), then filled in with views.update."""
    shown = shown_modal(box.standin, callback_id)
    [opened] = [c for c in box.standin.calls("views.open") if c.ok and c.response["view"]["id"] == shown["id"]]
    assert opened.response["view"]["callback_id"] == "loading_modal"
    return shown


def refused_in_form(box, needle, count=1):
    """A refusal shown in the loading view the click opened (where the person looks), not whispered; ``count``:
    how many such refusals by now (an earlier one with the same words must not stand in for this one)."""
    box.standin.wait_for("views.update", lambda c: c.ok and c.response["view"]["callback_id"] == "notice_modal"
                         and needle in dumps(c.body.get("view")), count=count)


def updated_board(box, needle):
    box.standin.wait_for("chat.update", lambda c: c.body.get("text", "").startswith("Follow-ups of")
                         and needle in dumps(c.body.get("blocks")))
    box.settle()


def report_text(box, inc, tmp_path):
    box.run_worker()
    return next((tmp_path / "incidents").glob(f"INC-{inc.id}-*.md")).read_text()


def test_followups_are_posted_assigned_completed_and_reported(settings, db, standin, world, conn, tmp_path):
    clock = new_clock()
    with box_with(settings, db, standin, clock) as box:
        card, inc = run_to_monitoring(box)
        assert inc.state == "monitoring"
        items = box.services.followups.items(inc.id)
        due = {i.kind: i.due_at - inc.created_at for i in items}
        assert due == {"root_cause": 2 * HOUR, "monitoring": 24 * HOUR, "retrain": 72 * HOUR,
                       "checklist": 168 * HOUR, "prevention": 168 * HOUR}
        assert all(i.state == "open" and i.owner is None for i in items)
        board = board_message(box, card)
        assert board.thread_ts == card.ts and len(board.blocks) <= 50
        text = dumps(board.blocks)
        for label in ("Take it", "Assign…", "Done", "Add prevention measure", "Investigate the root cause",
                      "Retrain growth_momentum_large", "_unassigned_"):
            assert label in text, label

        root, retrain = item(box, inc, "root_cause"), item(box, inc, "retrain")
        prevention = item(box, inc, "prevention")
        # Take it: an approver becomes the owner; the message shows it; checklist item 9 is ticked
        press(box, "U0CAROL", "followup_take", board, root.id)
        updated_board(box, "<@U0CAROL>")
        assert item(box, inc, "root_cause").owner == "U0CAROL"
        report = report_text(box, inc, tmp_path)
        assert "- [x] 9. Root-cause analysis initiated (investigation assigned)" in report
        assert "- [ ] 10. Prevention measures identified" in report

        # somebody who is neither an operator nor one of the incident's people is refused, nothing changes
        board = board_message(box, card)
        press(box, "U0DAVE", "followup_done", board, retrain.id)
        ephemeral(box, "U0DAVE", "Only the incident's people")
        press(box, "U0DAVE", "followup_assign", board, retrain.id)
        refused_in_form(box, "Only the incident's people")
        press(box, "U0DAVE", "add_prevention", board, inc.id)
        refused_in_form(box, "Only the incident's people", count=2)
        click(box, "U0DAVE", "add_root_cause", standin.message(CHANNEL, card.ts))
        # the form's loading view opened at once turns into the refusal
        standin.wait_for("views.update", lambda c: "may add its root cause" in dumps(c.body.get("view")))
        assert item(box, inc, "retrain").state == "open" and item(box, inc, "retrain").owner is None
        refused = conn.execute("SELECT count(*) AS n FROM rollback_bot.audit_log WHERE actor = 'U0DAVE'"
                               " AND outcome = 'refused' AND (action LIKE 'followup%' OR action = 'prevention')"
                               ).fetchone()["n"]
        assert refused == 3 and box.services.followups.prevention(inc.id) == []

        # Assign…: the requester gives the retraining to Dave (a users_select in a modal); Dave gets a DM
        press(box, "U0ALICE", "followup_assign", board, retrain.id)
        view = opened_view(box, "followup_assign_modal")
        assert any(b.get("element", {}).get("type") == "users_select" for b in view["blocks"])
        empty = box.sender.view_submission(user_id="U0ALICE", callback_id="followup_assign_modal",
                                           state_values={"followup_owner_block": {"owner": {
                                               "type": "users_select", "selected_user": None}}},
                                           private_metadata=view["private_metadata"])
        assert "errors" in empty.body and item(box, inc, "retrain").owner is None
        r = box.sender.view_submission(user_id="U0ALICE", callback_id="followup_assign_modal",
                                       state_values={"followup_owner_block": {"owner": {
                                           "type": "users_select", "selected_user": "U0DAVE"}}},
                                       private_metadata=view["private_metadata"])
        assert r.status == 200 and not r.body
        updated_board(box, "<@U0DAVE>")
        dm = standin.dm_channel("U0DAVE")
        standin.wait_for("chat.postMessage", lambda c: c.body.get("channel") == dm
                         and "made you the owner" in c.body.get("text", ""))
        # an owner is one of the incident's people now: Dave may complete his item
        board = board_message(box, card)
        press(box, "U0DAVE", "followup_done", board, retrain.id)
        updated_board(box, "~Retrain growth_momentum_large")
        done = item(box, inc, "retrain")
        assert done.state == "done" and done.completed_by == "U0DAVE" and done.completed_at == clock.now

        # Done needs the facts: no prevention measure yet, no root cause recorded yet
        board = board_message(box, card)
        press(box, "U0CAROL", "followup_done", board, prevention.id)
        ephemeral(box, "U0CAROL", "Write at least one prevention measure first")
        press(box, "U0CAROL", "followup_done", board, root.id)
        ephemeral(box, "U0CAROL", "Record the root cause first")
        assert item(box, inc, "prevention").state == "open" and item(box, inc, "root_cause").state == "open"
        # Dave owns a follow-up now, so he is one of the incident's people: he may add the root cause
        click(box, "U0DAVE", "add_root_cause", standin.message(CHANNEL, card.ts))
        view = opened_view(box, "root_cause_modal")
        r = box.sender.view_submission(user_id="U0DAVE", callback_id="root_cause_modal",
                                       state_values={"root_cause_block": {"text": "The price feed changed units."}},
                                       private_metadata=view["private_metadata"])
        assert r.status == 200 and not r.body
        press(box, "U0CAROL", "followup_done", board_message(box, card), root.id)
        updated_board(box, "~Investigate the root cause")

        # Add prevention measure: a modal; an empty text is refused in the modal; then it is in the report
        press(box, "U0BOB", "add_prevention", board, inc.id)
        view = opened_view(box, "prevention_modal")
        bad = box.sender.view_submission(user_id="U0BOB", callback_id="prevention_modal",
                                         state_values={"prevention_block": {"text": "   "}},
                                         private_metadata=view["private_metadata"])
        assert "prevention_block" in bad.body
        r = box.sender.view_submission(user_id="U0BOB", callback_id="prevention_modal",
                                       state_values={"prevention_block": {"text": "Alert when live IC < 50% of\n"
                                                                                  "metadata for 3 days."}},
                                       private_metadata=view["private_metadata"])
        assert r.status == 200 and not r.body
        updated_board(box, "1 prevention measure(s) written")
        press(box, "U0CAROL", "followup_done", board_message(box, card), prevention.id)
        updated_board(box, "~Identify prevention measures")

        report = report_text(box, inc, tmp_path)
        prevention_md = report[report.index("## Prevention\n"):report.index("\n## ", report.index("## Prevention\n"))]
        assert "- Alert when live IC < 50% of\n  metadata for 3 days. (Bob (@bob)," in prevention_md
        assert "- [x] 10. Prevention measures identified (1 measure(s) in the Prevention section)" in report
        table = report[report.index("## Follow-ups\n"):]
        assert "| Investigate the root cause of growth_momentum_large's failure | Carol (@carol) |" in table
        assert "The price feed changed units." in report[report.index("## Root cause"):]
        assert "done by Dave (@dave)" in table and "| unassigned |" in table
        assert "Prevention measure added | Bob (@bob)" in report  # the Actions table

        # /rollback followups: one incident's items, every open item, and bad input
        reply = box.command("U0DAVE", f"followups {inc.ref}")
        listed = dumps(box.responses(reply.response_key)[0]["blocks"])
        assert "Investigate the root cause" in listed and "~Retrain" in listed
        reply = box.command("U0DAVE", "followups")
        listed = dumps(box.responses(reply.response_key)[0]["blocks"])
        assert "Enhanced monitoring" in listed and "Retrain" not in listed and "Investigate" not in listed
        assert f"INC-{inc.id}" in listed
        reply = box.command("U0DAVE", "followups nonsense")
        assert "Usage: `/rollback followups [INCIDENT]`" in box.responses(reply.response_key)[0]["text"]
        reply = box.command("U0DAVE", "followups INC-999")
        assert "There is no incident INC-999" in box.responses(reply.response_key)[0]["text"]


def test_overdue_followups_are_reminded_once_across_two_processes(settings, db, standin, world, conn):
    clock = new_clock()
    with box_with(settings, db, standin, clock) as box, box_with(settings, db, standin, clock) as other:
        card, inc = run_to_monitoring(box)
        board = board_message(box, card)
        root = item(box, inc, "root_cause")
        press(box, "U0CAROL", "followup_take", board, root.id)
        updated_board(box, "<@U0CAROL>")
        carol = standin.dm_channel("U0CAROL")

        def to_carol():
            return [m for m in standin.messages(carol) if "overdue by" in m.text]

        def in_thread():
            return [m for m in standin.thread(CHANNEL, card.ts) if "overdue by" in m.text]

        box.run_worker()
        assert not to_carol() and not in_thread(), "nothing is overdue yet"
        # T+2 h 05: the root cause is overdue; both processes run their workers at once, Carol is told once
        clock.at(minutes=2 * 60 + 5)
        runs = [threading.Thread(target=b.run_worker) for b in (box, other)]
        for t in runs:
            t.start()
        for t in runs:
            t.join()
        box.settle()
        other.settle()
        assert len(to_carol()) == 1 and "your follow-up of INC-1 is overdue by 5 min" in to_carol()[0].text
        assert "Investigate the root cause" in to_carol()[0].text and not in_thread()
        marked = board_message(box, card)  # the message in the thread marks the item overdue
        assert ":alarm_clock: *overdue*" in dumps(marked.blocks) and "1 overdue" in marked.text
        # the reminder job run again (as if its worker died after telling Carol) tells nobody twice
        with box.services.db.transaction() as c:
            c.execute("INSERT INTO rollback_bot.jobs (kind, incident_id, payload, run_at) VALUES"
                      " ('followup_due', %s, %s, %s)", (inc.id, Jsonb({"followup": root.id}), clock.now))
        assert other.run_worker() >= 1
        assert len(to_carol()) == 1 and item(box, inc, "root_cause").reminders == 1

        # T+25 h: enhanced monitoring is overdue and nobody owns it: the thread is told
        clock.at(hours=25)
        other.run_worker()
        assert len(in_thread()) == 1 and "nobody owns" in in_thread()[0].text
        assert "Enhanced monitoring" in in_thread()[0].text and len(to_carol()) == 1
        # a day after the first reminder, Carol again (a root cause is recorded by now: she is told so); a failed
        # delivery is released and retried
        with box.services.db.transaction() as c:
            c.execute("UPDATE rollback_bot.incidents SET root_cause = 'feed changed units' WHERE id = %s", (inc.id,))
        clock.at(hours=26, minutes=10)
        standin.fail_next("conversations.open", error="user_not_found")
        box.run_worker()
        assert len(to_carol()) == 1 and item(box, inc, "root_cause").reminders == 1
        clock.advance(minutes=1)
        box.run_worker()
        assert len(to_carol()) == 2 and item(box, inc, "root_cause").reminders == 2
        assert "A root cause is recorded: press *Done*" in to_carol()[1].text
        assert "A root cause is recorded" not in to_carol()[0].text

        # a done item is not reminded; an open one is, every day
        box.services.followups.complete(followup_id=root.id, by="U0CAROL", operator=True)
        clock.at(hours=60)
        box.run_worker()
        assert len(to_carol()) == 2 and len(in_thread()) == 2
        reminded = [s for s in box.services.engine.steps(inc.id)
                    if s.step == "followup" and s.detail.get("action") == "reminded"]
        assert len(reminded) == 4 and item(box, inc, "monitoring").reminders == 2


def test_a_failed_rollback_gets_followups_and_a_break_glass_one_posts_in_the_channel(settings, db, standin, world):
    clock = new_clock()
    with box_with(settings, db, standin, clock, fault_hook=corrupt_after_restore(world.models_dir / MODEL)) as box:
        card = request(box)
        click(box, "U0BOB", "rollback_approve", card)
        standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
        for _ in range(3):
            box.run_worker()
        inc = box.services.engine.list_incidents()[0]
        assert inc.state == "failed"
        kinds = [i.kind for i in box.services.followups.items(inc.id)]
        assert sorted(kinds) == ["checklist", "prevention", "retrain", "root_cause"], "no monitoring after a failure"
        assert board_message(box, card).thread_ts == card.ts
    with box_with(settings, db, standin, clock) as box:
        target = box.services.registry.recommend("value_small").backup.name
        done = box.services.engine.break_glass(model="value_small", backup=target, reason="slack down", by="ops")
        assert done.state == "monitoring"
        assert box.app.progress.flush(20)  # its first Slack update posted its card (core.slack_outbox)
        box.run_worker()
        top = [m for m in standin.messages(CHANNEL) if m.text.startswith(f"Follow-ups of {done.ref}")]
        assert len(top) == 1 and top[0].thread_ts == box.services.engine.get(done.id).message_ts  # in its thread


def home_of(box, user, needle=""):
    """``user``'s App Home as last published, once it holds ``needle``."""
    box.standin.wait_for("views.publish", lambda c: c.body.get("user_id") == user and needle in dumps(c.body))
    return box.standin.home_view(user)


def followup_sections(home):
    """The texts under App Home's two follow-up headers: (the viewer's, the unassigned)."""
    blocks = home["blocks"]
    heads = [i for i, b in enumerate(blocks) if b["type"] == "header"
             and b["text"]["text"] in ("Your follow-ups", "Unassigned follow-ups")]
    assert len(heads) == 2, [b.get("text") for b in blocks]
    return tuple(dumps(blocks[i + 1]) for i in heads)


def test_app_home_shows_the_viewers_and_the_unassigned_followups_due_as_configured(settings, db, standin, world):
    clock = new_clock()
    configured = settings.model_copy(update={"followup_root_cause_hours": 1, "followup_monitoring_hours": 12,
                                             "followup_retrain_hours": 30, "followup_checklist_hours": 100,
                                             "followup_prevention_hours": 50})
    with box_with(configured, db, standin, clock) as box:
        card, inc = run_to_monitoring(box)
        due = {i.kind: i.due_at - inc.created_at for i in box.services.followups.items(inc.id)}
        assert due == {"root_cause": HOUR, "monitoring": 12 * HOUR, "retrain": 30 * HOUR, "checklist": 100 * HOUR,
                       "prevention": 50 * HOUR}
        root, retrain = item(box, inc, "root_cause"), item(box, inc, "retrain")
        # Carol takes the retraining, then the investigation, through Slack
        press(box, "U0CAROL", "followup_take", board_message(box, card), retrain.id)
        updated_board(box, "<@U0CAROL>")
        press(box, "U0CAROL", "followup_take", board_message(box, card), root.id)
        box.standin.wait_for("chat.update", lambda c: dumps(c.body.get("blocks")).count("<@U0CAROL>") == 2)
        box.settle()
        # T+1 h 10: the investigation is overdue under FOLLOWUP_ROOT_CAUSE_HOURS=1, and Carol is reminded
        clock.at(hours=1, minutes=10)
        box.run_worker()
        carol = standin.dm_channel("U0CAROL")
        assert [m.text for m in standin.messages(carol) if "overdue by" in m.text]

        assert box.sender.app_home_opened("U0CAROL").status == 200
        mine, nobody = followup_sections(home_of(box, "U0CAROL", "Your follow-ups"))
        # hers, overdue first; the unassigned ones, the soonest due first (by the configured delays)
        assert mine.index("Investigate the root cause") < mine.index("Retrain") and "overdue by" in mine
        assert f"INC-{inc.id}" in mine and "Enhanced monitoring" not in mine
        assert nobody.index("Enhanced monitoring") < nobody.index("prevention measures") < nobody.index("checklist")
        assert "Retrain" not in nobody and "Investigate" not in nobody
        assert box.sender.app_home_opened("U0DAVE").status == 200
        mine, nobody = followup_sections(home_of(box, "U0DAVE", "Your follow-ups"))
        assert "No open follow-up is yours." in mine and "Enhanced monitoring" in nobody

        # a follow-up taken in the thread re-publishes the homes of those who look at it
        press(box, "U0BOB", "followup_take", board_message(box, card), item(box, inc, "monitoring").id)
        updated_board(box, "<@U0BOB>")
        assert box.app.home_publisher.flush(20)
        mine, nobody = followup_sections(home_of(box, "U0DAVE", "Your follow-ups"))
        assert "Enhanced monitoring" not in nobody and "prevention measures" in nobody
