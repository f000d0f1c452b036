"""The runbook's automated steps in order: which step runs in which state, under which name.

The name is the step's one name everywhere: the journal (``rollback_bot.steps``), the card, the report and the
step modules' ``NAME``. The executor (``core.runbook.executor``) looks a state's step up here; nothing is
reached by building a method name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.incidents import (
    APPROVED,
    BACKING_UP,
    HALTED,
    HALTING,
    RECORDING,
    RESTORING,
    RESUMING,
    REVERTING,
    VERIFYING,
    Incident,
)
from core.runbook import emergency_backup, halt, preflight, record, restore, resume, revert, verify

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["RUNBOOK", "STEP_OF_STATE", "RunbookStep", "step_for"]


@dataclass(frozen=True)
class RunbookStep:
    state: str    # the incident state the step runs in (and leaves when it succeeds)
    name: str     # its one name: journal, card, report
    run: Callable[[Engine, Incident, str], Incident]
    capped: bool  # a step that kills the process MAX_STEP_ATTEMPTS times is not started again


RUNBOOK: tuple[RunbookStep, ...] = (
    RunbookStep(APPROVED, preflight.NAME, preflight.run, capped=False),
    RunbookStep(HALTING, halt.NAME, halt.run, capped=True),
    RunbookStep(HALTED, halt.VERIFY_NAME, halt.verify_halt, capped=True),
    RunbookStep(BACKING_UP, emergency_backup.NAME, emergency_backup.run, capped=True),
    RunbookStep(RESTORING, restore.NAME, restore.run, capped=True),
    RunbookStep(RECORDING, record.NAME, record.run, capped=True),
    RunbookStep(VERIFYING, verify.NAME, verify.run, capped=True),
    RunbookStep(RESUMING, resume.NAME, resume.run, capped=False),   # the model is verified: retried, never undone
    RunbookStep(REVERTING, revert.NAME, revert.run, capped=False),  # the undo itself retries with back-off
)
_BY_STATE = {s.state: s for s in RUNBOOK}
# The journal's name for the step each state runs: what the attempts counter counts.
STEP_OF_STATE = {s.state: s.name for s in RUNBOOK}


def step_for(state: str) -> RunbookStep:
    return _BY_STATE[state]
