"""Assertions about the platform's state shared by the engine tests."""

from __future__ import annotations

import time
from pathlib import Path

from core.modelio import sha256_file


def production_rows(conn, model: str) -> list[dict]:
    return conn.execute(
        "SELECT * FROM model_deployment_log WHERE model_name = %s AND is_production", (model,)
    ).fetchall()


def client_settings(conn) -> dict[str, tuple]:
    return {
        r["client_id"]: (r["auto_rebalance"], r["require_manual_approval"])
        for r in conn.execute("SELECT client_id, auto_rebalance, require_manual_approval FROM client_settings")
    }


def trading_halted(conn) -> bool:
    return conn.execute("SELECT halted FROM rollback_bot.trading_state").fetchone()["halted"]


def files_equal(a: Path, b: Path) -> bool:
    return all(sha256_file(a / f) == sha256_file(b / f) for f in ("model.json", "metadata.json"))


def assert_consistent(conn, models_dir: Path, model: str) -> str:
    """Exactly one production row, and it names the files on disk. Returns the production version."""
    rows = production_rows(conn, model)
    assert len(rows) == 1, rows
    version = rows[0]["version"]
    assert files_equal(models_dir / model, models_dir / model / version), f"files on disk are not {version}"
    return version


class Clock:
    """A controllable clock for the engine (``engine.clock = clock``): tests move time, never sleep."""

    def __init__(self, start):
        self.start = self.now = start

    def __call__(self):
        return self.now

    def at(self, **kw):
        """Set the time to the start plus ``kw`` (``timedelta`` arguments)."""
        from datetime import timedelta

        self.now = self.start + timedelta(**kw)
        return self.now

    def advance(self, **kw):
        from datetime import timedelta

        self.now += timedelta(**kw)
        return self.now


def corrupt_after_restore(model_dir: Path):
    """A fault hook for the engine: the restored model.json is truncated right after the restore step, so
    verification must fail (and the rollback revert)."""

    def hook(label: str) -> None:
        if label == "after:restoring":
            path = model_dir / "model.json"
            path.write_bytes(path.read_bytes()[:-50])

    return hook


def shown_modal(standin, callback_id: str, *, timeout: float = 10.0) -> dict:
    """The modal ``callback_id`` as the person sees it (id and hash included). A form opens as a loading view at
    once and is filled in with ``views.update`` (handlers/loading.py); this waits for that update."""
    [call, *_] = standin.wait_for(
        "views.update", lambda c: c.ok and c.response["view"]["callback_id"] == callback_id, timeout=timeout)
    return standin.view(call.response["view"]["id"])


def submit_shown_modal(box, user: str, callback_id: str, state_values: dict):
    """``user`` submits the modal ``callback_id`` once it is shown (``shown_modal``) with ``state_values``; the
    response to the submission."""
    view = shown_modal(box.standin, callback_id)
    return box.sender.view_submission(user_id=user, callback_id=callback_id, state_values=state_values,
                                      private_metadata=view["private_metadata"])


def checks_ticked(keys=None) -> dict:
    """The request form's pre-rollback checks block, as Slack submits it: ``keys`` ticked (default: all)."""
    from core.prerollback import CHECKS

    keys = [c.key for c in CHECKS] if keys is None else keys
    return {"checks_block": {"checks": {"type": "checkboxes", "selected_options": [{"value": k} for k in keys]}}}


def whispered(standin, user: str, needle: str, *, count: int = 1, timeout: float = 10.0) -> list:
    """The private answers to ``user`` holding ``needle`` (an ephemeral ``response_url`` post or
    ``chat.postEphemeral``), once at least ``count`` of them arrived."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in standin.ephemerals(user) if needle in e.text]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{user} was not told {needle!r} {count}×: {[e.text for e in standin.ephemerals(user)]}")
        time.sleep(0.02)
