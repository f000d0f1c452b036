"""The *Retrain* quick fix (core/retrain.py, handlers/retrain.py): RETRAIN_COMMAND's output lands as a new
backup_retrain_* candidate after validation, never in production. Real PostgreSQL, real XGBoost, a real
command (tests/retrain_script.py), Slack requests signed over HTTP."""

from __future__ import annotations

import json
import stat
import sys
from datetime import date
from pathlib import Path

import pytest

from core import fixes
from core.errors import ConfigError
from core.settings import load_settings
from tests.helpers import shown_modal
from tests.e2e.test_slack_flow import CHANNEL, MODEL, click

SCRIPT = str(Path(__file__).resolve().parents[1] / "retrain_script.py")


def command(mode: str) -> list[str]:
    return [sys.executable, SCRIPT, mode, "{model}", "{start_date}", "{output_dir}"]


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"retrain_command": command("ok"), "retrain_timeout_minutes": 2})


def production(world, conn) -> tuple[bytes, bytes, list]:
    folder = world.models_dir / MODEL
    rows = conn.execute("SELECT * FROM model_deployment_log WHERE model_name = %s ORDER BY deployed_at, version",
                        (MODEL,)).fetchall()
    return (folder / "model.json").read_bytes(), (folder / "metadata.json").read_bytes(), rows


def leftovers(world) -> list[str]:
    return sorted(p.name for p in (world.models_dir / MODEL).iterdir() if p.name.startswith((".retrain_", "backup_retrain_")))


def test_retrain_through_slack_lands_a_backup_and_leaves_production_alone(sandbox, world, conn):
    before = production(world, conn)
    reply = sandbox.command("U0ALICE", f"diagnose {MODEL}")
    body = sandbox.responses(reply.response_key)[0]
    button = next(e for b in body["blocks"] if b["type"] == "actions" for e in b["elements"]
                  if e["text"]["text"] == "Retrain")
    proposed = json.loads(button["value"])["start"]
    sandbox.sender.block_action(user_id="U0ALICE", action_id=button["action_id"], value=button["value"],
                                channel_id="C0OPS", message_ts="1.2")
    view = shown_modal(sandbox.standin, "retrain_modal")  # a loading view at once, filled in
    assert proposed in json.dumps(view["blocks"])  # the default start date, editable in the form
    sandbox.sender.view_submission(
        user_id="U0ALICE", callback_id=view["callback_id"], private_metadata=view["private_metadata"],
        state_values={"retrain_start_block": {"start_date": {"type": "datepicker", "selected_date": "2026-02-02"}},
                      "reason_block": {"reason": "overfitted: live IC collapsed"}})
    sandbox.standin.wait_for("response_url", lambda c: "posted in" in c.body.get("text", ""))  # the click's URL
    card = next(m for m in sandbox.standin.messages(CHANNEL) if not m.is_reply)
    blocks = json.dumps(card.blocks)
    assert "Retrain model" in blocks and "2026-02-02" in blocks and "Approve the retrain?" in blocks
    click(sandbox, "U0ALICE", "rollback_approve", card)
    sandbox.standin.wait_for("response_url", lambda c: "own request" in c.body.get("text", ""))
    sandbox.run_worker()
    assert leftovers(world) == []  # nothing ran before a second person approved
    click(sandbox, "U0BOB", "rollback_approve", card)
    sandbox.standin.wait_for("chat.postMessage", lambda c: "Approved by" in c.body.get("text", ""))
    sandbox.run_worker()
    sandbox.settle()

    new = leftovers(world)
    assert len(new) == 1 and new[0].startswith("backup_retrain_"), new
    backup = world.models_dir / MODEL / new[0]
    assert json.loads((backup / "metadata.json").read_text())["training_start"] == "2026-02-02"
    assert new[0] in [b.name for b in sandbox.services.registry.list_backups(MODEL)]
    assert production(world, conn) == before  # files and model_deployment_log untouched
    sibling = next(p for p in (world.models_dir / MODEL).iterdir() if p.name.startswith("backup_")
                   and not p.name.startswith("backup_retrain_"))
    assert stat.S_IMODE(backup.stat().st_mode) == stat.S_IMODE(sibling.stat().st_mode)
    assert stat.S_IMODE((backup / "model.json").stat().st_mode) == stat.S_IMODE((sibling / "model.json").stat().st_mode)

    thread = [m.text for m in sandbox.standin.thread(CHANNEL, card.ts)]
    deploy = f"/rollback start {MODEL} {new[0]} deploy the retrained model --confirm"
    assert any("Fix done" in t and deploy in t for t in thread), thread
    outputs = [t for t in thread if "Retrain" in t and "last lines" in t]
    assert len(outputs) == 1 and "round 4: ok" in outputs[0] and "done" in outputs[0]  # one message, updated
    fix = next(i for i in sandbox.services.engine.list_incidents() if i.kind == "fix")
    assert fix.state == "resolved" and fix.approved_by == "U0BOB"

    # Deploying it is an ordinary rollback request, with pre-flight, approved by a second person.
    reply = sandbox.command("U0ALICE", deploy.removeprefix("/rollback "))
    sandbox.responses(reply.response_key)
    rollback = sandbox.services.engine.list_incidents()[0]
    assert rollback.kind == "rollback" and rollback.target_backup == new[0] and rollback.state == "requested"
    assert production(world, conn) == before


@pytest.mark.parametrize(("mode", "said"), [
    ("fail", "exited with 3"),
    ("hang", "did not finish within"),
    ("bad", "refused and removed"),
])
def test_a_failed_retrain_leaves_nothing_and_says_why(services, world, conn, mode, said):
    before = production(world, conn)
    inc = services.request_fix(fix=fixes.RETRAIN, requested_by="U0ALICE", model=MODEL, start_date=date(2026, 1, 5))
    fixes.approve_fix(services.db, incident_id=inc.id, approver="U0BOB", enqueue_run=False)
    seen: list[tuple[list[str], bool]] = []
    pids: list[int] = []

    def output(_inc, lines, running):
        seen.append((lines, running))

    runner = fixes.RetrainRunner(services.registry, command(mode), 120.0, output)
    if mode == "hang":
        folder = world.models_dir / MODEL
        real_output = output

        def output(_inc, lines, running):  # noqa: F811 - remember the child the hanging command started
            for p in folder.glob(".retrain_*/child.pid"):
                pids.append(int(p.read_text()))
            real_output(_inc, lines, running)

        runner = fixes.RetrainRunner(services.registry, command(mode), 3.0, output)
    outcome = fixes.run_fix(services.db, incident_id=inc.id, retrainer=runner)
    assert outcome.incident.state == "failed" and said in outcome.incident.error, outcome.incident.error
    assert "Production is untouched" in outcome.incident.error
    assert leftovers(world) == [] and production(world, conn) == before
    assert seen and seen[-1][1] is False and any("retraining" in line for line in seen[-1][0])
    if mode == "bad":
        assert "model.json" in outcome.incident.error
    if mode == "hang":
        assert pids, "the hanging command's child was not seen"
        stat_file = Path(f"/proc/{pids[0]}/stat")  # its whole process group was killed: gone, or a zombie
        assert not stat_file.exists() or stat_file.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_retrain_command_gets_no_secrets(services, world, conn, monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret-of-the-bot")
    monkeypatch.setenv("DATABASE_URL", "postgresql://bot:password@db/platform")
    inc = services.request_fix(fix=fixes.RETRAIN, requested_by="U0ALICE", model=MODEL, start_date=date(2026, 1, 5))
    fixes.approve_fix(services.db, incident_id=inc.id, approver="U0BOB", enqueue_run=False)
    runner = fixes.RetrainRunner(services.registry, command("env"), 60.0)
    outcome = fixes.run_fix(services.db, incident_id=inc.id, retrainer=runner)
    assert outcome.incident.state == "resolved", outcome.incident.error
    backup = world.models_dir / MODEL / outcome.incident.plan["result"]["backup"]
    captured = json.loads((backup / "env.json").read_text())
    assert set(captured) <= {"PATH", "LANG", "HOME", "USER", "LOGNAME"}


def test_retrain_setting_and_its_requests_are_checked(services, world, settings, monkeypatch):
    monkeypatch.setenv("RETRAIN_COMMAND", '["/bin/train", "{model}"]')
    with pytest.raises(ConfigError, match=r"RETRAIN_COMMAND is malformed: must pass \{output_dir\}"):
        load_settings(_env_file=None)
    monkeypatch.setenv("RETRAIN_COMMAND", '["/bin/train", "{output_dir}", "{password}"]')
    with pytest.raises(ConfigError, match=r"RETRAIN_COMMAND is malformed: unknown placeholder \{password\}"):
        load_settings(_env_file=None)
    monkeypatch.setenv("RETRAIN_COMMAND", '["/bin/train", "--out", "{output_dir}"]')
    ok = load_settings(_env_file=None)
    assert ok.retrain_command == ["/bin/train", "--out", "{output_dir}"]
    with pytest.raises(fixes.UnknownFix, match="future"):
        services.request_fix(fix=fixes.RETRAIN, requested_by="U0ALICE", model=MODEL, start_date=date(2999, 1, 1))
    report = services.diagnose(model=MODEL)
    assert services.retrain_start(report) is not None
    services.settings = settings.model_copy(update={"retrain_command": None})
    assert services.retrain_start(report) is None  # no Retrain button without RETRAIN_COMMAND


def test_default_start_date_is_the_regime_change_else_a_year_back():
    from types import SimpleNamespace

    from core.retrain import command_for, default_start_date

    today = date(2026, 11, 30)
    change = SimpleNamespace(verdict="regime change", recent=(date(2026, 10, 1), date(2026, 11, 27)))
    assert default_start_date(change, today) == date(2026, 10, 1)
    calm = SimpleNamespace(verdict="no regime change", recent=(date(2026, 10, 1), date(2026, 11, 27)))
    assert default_start_date(calm, today) == date(2025, 11, 30)
    # values are put in once, never expanded again
    assert command_for(["t", "--m={model}", "{output_dir}"], {"model": "{output_dir}", "output_dir": "/x"}) == \
        ["t", "--m={output_dir}", "/x"]
