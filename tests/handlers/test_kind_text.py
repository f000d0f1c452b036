"""The Approve dialog and the Deny modal say what will happen, per incident kind (handlers/kind_text.py)."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone

from bot.devtools.block_kit_rules import message_errors, view_errors
from core.fixes import REFRESH_VIEW, REFRESH_VIEW_BLOCKING
from core.incidents import Incident
from handlers import incident_forms as forms
from handlers import incident_views as iv
from handlers.kind_text import KIND_TEXT, text_for

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def incident(**kw) -> Incident:
    values = {f.name: None for f in dataclasses.fields(Incident)}
    values.update(id=7, kind="rollback", model_name="growth_momentum_large", target_backup="backup_2026-10-01",
                  state="requested", reason="IC collapsed", severity="high", keep_halted=False, requested_by="U0ALICE",
                  source="slack", plan={}, created_at=NOW, updated_at=NOW)
    values.update(kw)
    return Incident(**values)


def approve_confirm(inc: Incident) -> dict:
    blocks = iv.incident_card(inc, [])
    assert message_errors(blocks) == []
    return next(e for b in blocks if b["type"] == "actions" for e in b["elements"]
                if e["action_id"] == "rollback_approve")["confirm"]


def test_a_rollback_dialog_says_halt_backup_restore_verify_resume():
    confirm = approve_confirm(incident())
    assert confirm["title"]["text"] == "Approve the rollback?"
    text = confirm["text"]["text"]
    for words in ("Halt automated trading", "emergency backup of growth_momentum_large",
                  "restore backup_2026-10-01", "resumes trading"):
        assert words in text, text
    kept = approve_confirm(incident(keep_halted=True))["text"]["text"]
    assert "stays halted until an approver resumes it" in kept and "resumes trading with" not in kept


def test_a_quick_fix_dialog_says_what_the_fix_does_and_never_none():
    fix = incident(kind="fix", target_backup=None, plan={"fix": REFRESH_VIEW, "label": "Refresh feature view"})
    confirm = approve_confirm(fix)
    assert confirm["title"]["text"] == "Approve the quick fix?"
    text = confirm["text"]["text"]
    assert "Refresh the feature view ml_training_features concurrently" in text
    assert "Trading is not halted" in text and "None" not in text and "restore" not in text
    blocking = approve_confirm(incident(kind="fix", target_backup=None, plan={"fix": REFRESH_VIEW_BLOCKING}))
    assert "locked out while it runs" in blocking["text"]["text"]
    unknown = approve_confirm(incident(kind="fix", model_name=None, target_backup=None, plan={"label": "Reindex"}))
    assert "“Reindex”" in unknown["text"]["text"] and "None" not in json.dumps(unknown)


def test_the_deny_modal_is_titled_and_explained_per_kind():
    for kind, title in (("rollback", "Deny the rollback"), ("fix", "Deny the quick fix")):
        inc = incident(kind=kind, plan={"fix": REFRESH_VIEW} if kind == "fix" else {},
                       target_backup=None if kind == "fix" else "backup_x")
        view = forms.deny_modal(inc, channel="C0INCIDENT", message_ts="1.2")
        assert view_errors(view) == [] and view["title"]["text"] == title
        assert "Approving it would: " + text_for(inc).will(inc).split(":")[0] in json.dumps(view["blocks"])
        assert "None" not in json.dumps(view["blocks"])


def test_a_retrain_dialog_says_it_runs_retrain_command_and_leaves_production_alone():
    inc = incident(kind="fix", target_backup=None, plan={"fix": "retrain", "start_date": "2026-02-02"})
    confirm = approve_confirm(inc)
    assert confirm["title"]["text"] == "Approve the retrain?"
    assert "RETRAIN_COMMAND" in confirm["text"]["text"] and "2026-02-02" in confirm["text"]["text"]
    assert "production is not touched" in confirm["text"]["text"] and "None" not in json.dumps(confirm)
    assert forms.deny_modal(inc, channel=None, message_ts=None)["title"]["text"] == "Deny the retrain"


def test_an_unknown_kind_gets_a_plain_generic_text():
    inc = incident(kind="recalibrate", target_backup=None)
    assert text_for(inc).approve_title == "Approve the request?"
    assert text_for(inc).will(inc) == "Approve INC-7 (recalibrate) as described in its message."
    assert set(KIND_TEXT) == {"rollback", "fix", "retrain"}
    for words in KIND_TEXT.values():
        assert len(words.approve_title) <= 100 and len(words.deny_title) <= 24
