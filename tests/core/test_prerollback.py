"""core/prerollback.py: the runbook's pre-rollback checks, asked by the request form (all required), by
`/rollback start … --confirm` and by `rollback-bot rollback … --confirm`; recorded in the incident and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from core.prerollback import CHECKS
from tests.helpers import checks_ticked, client_settings, production_rows, shown_modal, trading_halted
from tests.e2e.test_slack_flow import CHANNEL, MODEL, target

ROOT = Path(__file__).resolve().parents[2]
KEYS = [c.key for c in CHECKS]


def footprint(conn) -> dict:
    """Everything a request would change: the bot's records, the platform's rows, the halt."""
    n = {t: conn.execute(f"SELECT count(*) AS n FROM rollback_bot.{t}").fetchone()["n"]
         for t in ("incidents", "steps", "audit_log", "jobs", "trading_halts")}
    return {**n, "production": [r["version"] for r in production_rows(conn, MODEL)],
            "clients": client_settings(conn), "halted": trading_halted(conn)}


def posted(standin) -> list:
    return [c for c in standin.calls() if c.method in ("chat.postMessage", "chat.update", "files.upload",
                                                       "files.getUploadURLExternal")]


def form_values(backup: str, checks: dict) -> dict:
    sel = lambda v: {"type": "static_select", "selected_option": {"value": v}}  # noqa: E731
    return {"model_block": {"start_model_select": sel(MODEL)}, "backup_block": {"backup": sel(backup)},
            "reason_block": {"reason": "IC negative for 5 days"}, "severity_block": {"severity": sel("high")},
            "loss_block": {"loss": ""}, **checks}


def test_the_form_asks_every_check_and_refuses_a_submission_without_them(sandbox, world, conn):
    sandbox.command("U0ALICE", f"start {MODEL}")
    view = shown_modal(sandbox.standin, "rollback_start_modal")
    block = next(b for b in view["blocks"] if b.get("block_id") == "checks_block")
    assert block["element"]["type"] == "checkboxes" and not block.get("optional")
    assert [o["value"] for o in block["element"]["options"]] == KEYS
    labels = " ".join(o["text"]["text"] + " " + o["description"]["text"] for o in block["element"]["options"])
    for phrase in ("performance data", "temporary market condition", "better than the current", "trading team"):
        assert phrase in labels
    before = footprint(conn)
    for ticked in ([], KEYS[:3], KEYS[1:]):
        values = form_values(target(sandbox), checks_ticked(ticked) if ticked else {})
        r = sandbox.sender.view_submission(user_id="U0ALICE", callback_id="rollback_start_modal",
                                           state_values=values, private_metadata=json.dumps({"channel": "C0OPS"}))
        assert r.status == 200 and r.json()["response_action"] == "errors"
        assert set(r.json()["errors"]) == {"checks_block"}
        missing = [c.label for c in CHECKS if c.key not in ticked]
        assert all(label in r.json()["errors"]["checks_block"] for label in missing[:2])
    sandbox.settle()
    assert footprint(conn) == before and posted(sandbox.standin) == []
    r = sandbox.sender.view_submission(user_id="U0ALICE", callback_id="rollback_start_modal",
                                       state_values=form_values(target(sandbox), checks_ticked()),
                                       private_metadata=json.dumps({"channel": "C0OPS"}))
    assert r.status == 200 and not r.body
    # C0OPS, where the bot is not a member, refuses the ephemeral answer: it comes as a DM
    sandbox.standin.wait_for("chat.postMessage", lambda c: c.ok and c.body.get("channel") == "U0ALICE"
                             and "INC-1" in c.body.get("text", ""))
    inc = sandbox.services.engine.list_incidents()[0]
    assert inc.plan["confirmations"]["checks"] == KEYS
    assert inc.plan["confirmations"]["by"] == "U0ALICE" and inc.plan["confirmations"]["via"] == "the request form"
    sandbox.settle()
    card = sandbox.standin.message(CHANNEL, inc.message_ts)
    assert "Pre-rollback checks confirmed by <@U0ALICE>" in json.dumps(card.blocks)


def test_start_without_confirm_posts_nothing_and_shows_the_command_with_confirm(sandbox, world, conn):
    backup = target(sandbox)
    before = footprint(conn)
    reply = sandbox.command("U0ALICE", f"start {MODEL} {backup} Sharpe collapsed since Monday")
    body = sandbox.responses(reply.response_key)[0]
    sandbox.settle()
    assert body["response_type"] == "ephemeral"
    shown = json.dumps(body["blocks"])
    assert f"/rollback start {MODEL} {backup} Sharpe collapsed since Monday --confirm" in shown
    for c in CHECKS:
        assert c.label in shown
    assert "Nothing was posted" in body["text"]
    assert posted(sandbox.standin) == [] and footprint(conn) == before
    # the same command with --confirm: posted, and the confirmations recorded
    reply = sandbox.command("U0ALICE", f"start {MODEL} {backup} Sharpe collapsed since Monday --confirm")
    assert "posted in" in sandbox.responses(reply.response_key)[0]["text"]
    inc = sandbox.services.engine.list_incidents()[0]
    assert inc.reason == "Sharpe collapsed since Monday"  # --confirm is not part of the reason
    assert inc.plan["confirmations"]["via"] == "/rollback start --confirm"
    assert inc.plan["confirmations"]["checks"] == KEYS


def test_start_without_confirm_still_refuses_a_wrong_backup_first(sandbox, world, conn):
    reply = sandbox.command("U0ALICE", f"start {MODEL} backup_1999-01-01 reason")
    text = sandbox.responses(reply.response_key)[0]["text"]
    assert "--confirm" not in text and "backup_1999-01-01" in text
    assert footprint(conn)["incidents"] == 0


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=180)


def test_cli_rollback_without_confirm_does_nothing_and_shows_the_command(tmp_path, world, conn, settings, services):
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env |= {"PYTHONPATH": str(ROOT), "DATABASE_URL": settings.database_dsn(), "MODELS_DIR": str(world.models_dir),
            "INCIDENTS_DIR": str(tmp_path / "incidents")}
    backup = world.models[MODEL].backups[0].name
    args = ["rollback", MODEL, "--to", backup, "--reason", "Slack is down; it's losing money", "--by", "oncall-jane"]
    before = footprint(conn)
    files = (world.models_dir / MODEL / "model.json").read_bytes()
    r = run_cli(args, env, tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Nothing was done" in r.stderr and "Traceback" not in r.stderr
    for c in CHECKS:
        assert c.text in r.stderr
    line = r.stderr.strip().splitlines()[-1].strip()
    assert line == (f"rollback-bot rollback {MODEL} --to {backup} --reason 'Slack is down; it'\"'\"'s losing money'"
                    " --by oncall-jane --confirm")
    assert footprint(conn) == before and (world.models_dir / MODEL / "model.json").read_bytes() == files
    r = run_cli([*args, "--confirm", "--yes"], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    inc = conn.execute("SELECT * FROM rollback_bot.incidents").fetchone()
    assert inc["plan"]["confirmations"] | {"at": None} == {
        "by": "oncall-jane", "via": "rollback-bot rollback --confirm", "checks": KEYS, "at": None}
    assert [r["version"] for r in production_rows(conn, MODEL)] == [backup]
    _, report = services.reports.render(inc["id"])  # the CLI leaves the report's job to `serve`: rendered here
    section = report.split("## Before approval", 1)[1].split("\n## ", 1)[0]
    assert "Confirmed by oncall-jane via rollback-bot rollback --confirm" in section and section.count("- [x]") == 4
    assert "Not computed before the request was decided (break-glass CLI: approved at once)." in section
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.jobs WHERE kind = 'evidence'").fetchone()["n"] == 0
