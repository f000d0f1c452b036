"""The request form's model and backup menus (``external_select``, handlers/pickers.py and core/picker.py):
options answered in the acknowledgement of signed ``block_suggestion`` requests, for 5,000 models."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from bot.server import needs_only_an_ack
from tests.helpers import checks_ticked, shown_modal

MODEL = "growth_momentum_large"
COUNT = 5000
PREFIX = "scale_"


@pytest.fixture
def many_models(world, conn):
    """5,000 more model folders (a metadata.json each, as bench/scale.py fakes scale: no trained model needed to
    be listed) and their production rows in model_deployment_log."""
    metadata = (world.models_dir / MODEL / "metadata.json").read_bytes()
    names = [f"{PREFIX}{i}" for i in range(COUNT)]
    for name in names:
        folder = world.models_dir / name
        folder.mkdir()
        (folder / "metadata.json").write_bytes(metadata)
    deployed = datetime(2024, 1, 2, 6, 30, tzinfo=timezone.utc)
    with conn.cursor().copy(
        "COPY model_deployment_log (model_name, version, deployed_at, deployed_by, deployment_reason,"
        " is_production, is_rollback, spearman_ic, sharpe_ratio) FROM STDIN"
    ) as copy:
        for name in names:
            copy.write_row((name, "v1", deployed, "ml-pipeline", "scheduled retrain", True, False, 0.03, 1.0))
    return names


def open_form(sandbox) -> dict:
    """`/rollback start` without arguments: the form as Slack shows it (its loading view, filled in)."""
    sandbox.command("U0ALICE", "start")
    return {**shown_modal(sandbox.standin, "rollback_start_modal"), "state": {"values": {}}}


def element(view: dict, block_id: str) -> dict:
    return next(b for b in view["blocks"] if b.get("block_id") == block_id)["element"]


def suggest(sandbox, view: dict, action_id: str, typed: str) -> list[dict]:
    r = sandbox.sender.block_suggestion(user_id="U0ALICE", action_id=action_id, value=typed, view=view)
    assert r.status == 200, r.body
    options = r.json()["options"]
    assert len(options) <= 100
    return options


def values(options: list[dict]) -> list[str]:
    return [o["value"] for o in options]


def choose(view: dict, model: str) -> dict:
    """The form's state once ``model`` is selected in the model menu."""
    state = {"model_block": {"start_model_select": {"type": "external_select",
                                                    "selected_option": {"value": model}}}}
    return {**view, "state": {"values": state}}


def test_the_model_menu_searches_five_thousand_models_as_one_types(sandbox, many_models, world):
    view = open_form(sandbox)
    menu = element(view, "model_block")
    assert menu["type"] == "external_select" and menu["min_query_length"] == 0 and "options" not in menu
    everything = sorted(many_models + [m.name for m in world.models.values()])

    # nothing typed: the first hundred, alphabetically
    assert values(suggest(sandbox, view, "start_model_select", "")) == everything[:100]
    # the whole name first, then names starting with it (shorter first), at most a hundred of 111 matches
    got = values(suggest(sandbox, view, "start_model_select", "scale_42"))
    assert got == ["scale_42"] + [f"scale_42{d}" for d in range(10)] + [f"scale_42{d:02d}" for d in range(89)]
    # case does not matter; a name far down the alphabet is found
    assert values(suggest(sandbox, view, "start_model_select", "SCALE_4999")) == ["scale_4999"]
    # a word inside a name; every typed word must appear
    assert values(suggest(sandbox, view, "start_model_select", "momentum")) == [MODEL]
    assert values(suggest(sandbox, view, "start_model_select", "large growth")) == [MODEL]
    assert values(suggest(sandbox, view, "start_model_select", "small")) == ["value_small"]
    assert suggest(sandbox, view, "start_model_select", "no such model") == []
    # a model added while the bot runs is offered
    (world.models_dir / "carry_mid").mkdir()
    (world.models_dir / "carry_mid" / "metadata.json").write_bytes(b"{}")
    assert values(suggest(sandbox, view, "start_model_select", "carry")) == ["carry_mid"]


def test_the_backup_menu_offers_the_chosen_models_backups_recommended_first(sandbox, many_models, world):
    view = open_form(sandbox)
    assert not any(b.get("block_id") == "backup_block" for b in view["blocks"])
    # choosing a model rebuilds the form with its backup menu, the recommendation pre-selected
    sandbox.sender.block_action(user_id="U0ALICE", action_id="start_model_select", view=choose(view, MODEL),
                                action_type="external_select",
                                action={"selected_option": {"text": {"type": "plain_text", "text": MODEL},
                                                            "value": MODEL}})
    call = sandbox.standin.wait_for("views.update", lambda c: c.ok and any(
        b.get("block_id") == "backup_block" for b in c.response["view"]["blocks"]))[0]
    updated = choose(call.response["view"], MODEL)
    recommended = sandbox.services.registry.recommend(MODEL).backup.name
    menu = element(updated, "backup_block")
    assert menu["type"] == "external_select" and menu["initial_option"]["value"] == recommended
    assert json.loads(updated["private_metadata"])["recommended"] == recommended

    usable = [b.name for b in sandbox.services.registry.list_backups(MODEL) if b.usable]
    options = suggest(sandbox, updated, "backup", "")
    assert values(options)[0] == recommended and options[0]["text"]["text"].startswith("★")
    assert sorted(values(options)) == sorted(usable) and len(usable) > 1
    other = next(n for n in usable if n != recommended)
    assert values(suggest(sandbox, updated, "backup", other)) == [other]
    assert suggest(sandbox, updated, "backup", "backup_1999") == []

    # another model chosen in the form (the update not yet back): its backups, none starred
    elsewhere = choose(updated, "value_small")
    small = [b.name for b in sandbox.services.registry.list_backups("value_small") if b.usable]
    options = suggest(sandbox, elsewhere, "backup", "")
    assert sorted(values(options)) == sorted(small) and not any("★" in o["text"]["text"] for o in options)
    # a scale model has no backups; a name from a forged payload is refused quietly
    assert suggest(sandbox, choose(updated, "scale_7"), "backup", "") == []
    assert suggest(sandbox, choose(updated, "../" + MODEL), "backup", "") == []


def test_a_backup_of_another_model_is_refused_on_submit(sandbox, world):
    import shutil

    source = next(b.path for b in sandbox.services.registry.list_backups("value_small") if b.usable)
    other = "backup_2020-01-06"  # a backup value_small has and growth_momentum_large has not
    shutil.copytree(source, world.models_dir / "value_small" / other)
    assert not (world.models_dir / MODEL / other).exists()
    sel = lambda v: {"type": "external_select", "selected_option": {"value": v}}  # noqa: E731
    r = sandbox.sender.view_submission(
        user_id="U0ALICE", callback_id="rollback_start_modal", private_metadata=json.dumps({"channel": "C0OPS"}),
        state_values={"model_block": {"start_model_select": sel(MODEL)}, "backup_block": {"backup": sel(other)},
                      "reason_block": {"reason": "IC collapsed"}, "severity_block": {"severity": sel("high")},
                      **checks_ticked()})
    assert r.status == 200 and set(r.json()["errors"]) == {"backup_block"}
    assert sandbox.services.engine.list_incidents() == []


def test_suggestions_are_answered_in_the_ack_not_handed_to_the_work_process():
    from urllib.parse import urlencode

    body = urlencode({"payload": json.dumps({"type": "block_suggestion", "action_id": "backup", "value": "b"})})
    assert not needs_only_an_ack(body, "application/x-www-form-urlencoded")
