"""A runbook step's journal rows (``rollback_bot.steps``) and the helpers every step shares.

A step opens its row when it starts (``begin``) and closes it (``finish``) either on its own or, when it
succeeds, in the same transaction as the state change that records it (``finish_in``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from core import repository as repo
from core.incidents import Incident

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["begin", "clean_temporaries", "done", "finish", "finish_in"]


def begin(engine: Engine, inc: Incident, step: str, actor: str) -> int:
    """The journal row of a step that starts now; its id."""
    with engine.db.transaction() as conn:
        # A step's start row only counts attempts: if a power loss ate it, the (idempotent) step just runs again
        # with one attempt fewer on record. So it need not wait for the WAL flush; every state change still does.
        conn.execute("SET LOCAL synchronous_commit = off")
        return repo.start_step(conn, inc.id, step, actor, at=engine.clock())


def finish(engine: Engine, step_id: int, outcome: str, detail: dict | None = None, error: str | None = None) -> None:
    """Close a step's row in a transaction of its own (a step that failed, or that changes no state)."""
    with engine.db.transaction() as conn:
        finish_in(engine, conn, step_id, outcome, detail, error)


def finish_in(engine: Engine, conn: psycopg.Connection, step_id: int, outcome: str, detail: dict | None = None,
              error: str | None = None) -> None:
    """Close a step's row in the caller's transaction (with the state change that records the step)."""
    repo.finish_step(conn, step_id, outcome, detail, error, at=engine.clock())


def done(engine: Engine, conn: psycopg.Connection, incident_id: int, step: str, actor: str, *, outcome: str = "ok",
         detail: dict | None = None, error: str | None = None) -> None:
    """A journal row for something that happened at once (requested, approved, expired, …)."""
    repo.journal(conn, incident_id=incident_id, step=step, actor=actor, at=engine.clock(), outcome=outcome,
                 detail=detail, error=error)


def clean_temporaries(folder: Path) -> None:
    """Remove leftovers of an interrupted atomic write (never visible under a real name)."""
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
