"""The runbook's timeline: one table of milestones (key, label, journal step, target) read by the card, the
report and escalation, and the one rule for when each was reached.

The runbook promises T+2 min halted, T+5 rolled back, T+7 verified, T+10 resumed, T+30 monitoring confirms
stability, T+2 h root cause identified, T+24 h enhanced monitoring completed, counted from the moment the
incident opened (the request). The minutes are ``core.incidents.RUNBOOK_TARGETS``.

A milestone is reached by the first attempt of its journal step that finished with an outcome that reaches it
(``ok``; also ``warning`` where a warning still completes the step: the resume, the halt check, the monitoring
summary, the 24-hour watch). A scheduled check that ran on time (``detail.due``, core.watch) counts at the time
it was due. Trading halted counts from ``halted_at`` when no ``halt`` step was journaled (a manual halt), and a
rollback's trading resumed from ``resumed_at`` (``/rollback resume``).

The card (handlers/incident_views) shows every milestone with its last attempt's outcome; the report's
"Timeline against the runbook targets" and escalation's timers (core.escalation) use the milestones that have a
target (``TARGETS``, ``target_status``). The runbook's ten-item checklist is in core.checklist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.incidents import RUNBOOK_TARGETS as T, Incident, Step

__all__ = [
    "MILESTONES",
    "TARGETS",
    "TARGET_CHECK_DELAY",
    "Milestone",
    "RunbookMilestone",
    "TargetStatus",
    "first_finished",
    "fmt_elapsed",
    "milestone_times",
    "milestones",
    "reached_at",
    "target_label",
    "target_status",
]

OK = ("ok",)
DONE = ("ok", "warning")


@dataclass(frozen=True)
class RunbookMilestone:
    """One row of the runbook's timeline."""

    key: str
    label: str
    step: str                          # the journal step that completes it
    target: int | None = None          # minutes after the incident opened (None: no target)
    reached_by: tuple[str, ...] = OK   # outcomes of ``step`` that reach it


MILESTONES: tuple[RunbookMilestone, ...] = (
    RunbookMilestone("requested", "Rollback requested", "requested"),
    RunbookMilestone("approved", "Approved by a second person", "approved"),
    RunbookMilestone("preflight", "Target passed pre-flight", "preflight"),
    RunbookMilestone("halted", "Automated trading halted", "halt", T["halted"]),
    RunbookMilestone("no_trades", "No trades after the halt", "verify_halt", None, DONE),
    RunbookMilestone("backup", "Emergency backup taken", "emergency_backup"),
    RunbookMilestone("restored", "Backup restored (atomic)", "restore"),
    RunbookMilestone("rolled_back", "Rollback recorded in model_deployment_log", "record", T["rolled_back"]),
    RunbookMilestone("verified", "Model verified (load, checksum, prediction)", "verify", T["verified"]),
    RunbookMilestone("resumed", "Trading resumed with each client's own settings", "resume", T["resumed"], DONE),
    RunbookMilestone("stable", "Monitoring confirms stability", "stable", T["stable"]),
    RunbookMilestone("monitored", "Logs monitored", "monitor", None, DONE),
    RunbookMilestone("root_cause", "Root cause identified", "root_cause", T["root_cause"]),
    RunbookMilestone("resolved", "Incident resolved", "resolved"),
    RunbookMilestone("watched", "24-hour enhanced monitoring completed", "watch_end", T["watched"], DONE),
)

#: The milestones with a runbook target, in order.
TARGETS: tuple[RunbookMilestone, ...] = tuple(m for m in MILESTONES if m.target is not None)

#: Targets reached by a scheduled check (core.watch) due at the deadline itself: a check that ran within this
#: grace of its time counts at the time it was due, and the escalation timer runs this much after the deadline
#: (so the check due at the same moment is looked at first).
TARGET_CHECK_DELAY = {"stable": timedelta(minutes=5), "watched": timedelta(minutes=5)}

# Targets still followed after the incident closed (unless it was denied, cancelled or superseded).
_AFTER_CLOSE = frozenset({"stable", "root_cause", "watched"})


def target_label(minutes: int, *, unit: str = "") -> str:
    """``T+2`` (``T+2m`` with ``unit="m"``), ``T+30``, and whole hours as ``T+2h``, ``T+24h``."""
    if minutes >= 60 and minutes % 60 == 0:
        return f"T+{minutes // 60}h"
    return f"T+{minutes}{unit}"


def reached_at(step: Step) -> datetime | None:
    """When a journaled step reached its milestone: a scheduled check that ran on time (``detail.due``, see
    core.watch) counts at the time it was due; anything else when it finished."""
    due = (step.detail or {}).get("due")
    if due:
        try:
            return datetime.fromisoformat(due)
        except ValueError:
            pass
    return step.finished_at


def first_finished(steps: list[Step], name: str, outcomes: tuple[str, ...] = OK) -> Step | None:
    """The first step called ``name`` that finished with one of ``outcomes``."""
    for s in steps:
        if s.step == name and s.finished_at is not None and s.outcome in outcomes:
            return s
    return None


def milestone_times(incident: Incident, steps: list[Step]) -> dict[str, datetime | None]:
    """When each milestone was reached (None: not yet, or never), by the rule in the module docstring."""
    out: dict[str, datetime | None] = {}
    for m in MILESTONES:
        s = first_finished(steps, m.step, m.reached_by)
        out[m.key] = reached_at(s) if s else None
    if out["halted"] is None:
        out["halted"] = incident.halted_at
    if out["resumed"] is None and incident.kind == "rollback":
        out["resumed"] = incident.resumed_at
    return out


# ------------------------------------------------------------------------------------------------ the card


@dataclass(frozen=True)
class Milestone:
    key: str
    label: str
    done_at: datetime | None
    outcome: str | None  # ok | warning | failed | running | None (not reached)
    target_minutes: int | None
    elapsed_seconds: float | None

    @property
    def done(self) -> bool:
        return self.outcome in ("ok", "warning")

    @property
    def breached(self) -> bool:
        return (
            self.target_minutes is not None
            and self.elapsed_seconds is not None
            and self.elapsed_seconds > self.target_minutes * 60
        )


def milestones(incident: Incident, steps: list[Step]) -> list[Milestone]:
    """Every milestone with its last attempt's outcome (a retried step shows how its retry goes) and the time
    it was reached (for one not reached, the time its last attempt ended)."""
    reached = milestone_times(incident, steps)
    latest: dict[str, Step] = {}
    for s in steps:
        latest[s.step] = s
    out = []
    for m in MILESTONES:
        last = latest.get(m.step)
        outcome = last.outcome if last else ("ok" if reached[m.key] else None)
        done_at = reached[m.key] or (reached_at(last) if last else None)
        elapsed = (done_at - incident.created_at).total_seconds() if done_at else None
        out.append(Milestone(m.key, m.label, done_at, outcome, m.target, elapsed))
    return out


def fmt_elapsed(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"T+{seconds:.1f}s"
    if seconds >= 3600:
        return f"T+{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"T+{int(seconds // 60)}m{int(seconds % 60):02d}s"


# ----------------------------------------------------------------------------- the report and escalation


@dataclass(frozen=True)
class TargetStatus:
    name: str
    label: str
    minutes: int
    deadline: datetime
    reached_at: datetime | None
    status: str  # "met" | "missed" | "overdue" | "pending" | "not reached" | "not applicable"

    @property
    def elapsed(self) -> timedelta | None:
        return self.reached_at - (self.deadline - timedelta(minutes=self.minutes)) if self.reached_at else None


def target_status(incident: Incident, steps: list[Step], now: datetime) -> list[TargetStatus]:
    """Each runbook target against the journal: met / missed (reached late) / overdue (open, past the
    deadline) / pending / not reached (the incident closed first) / not applicable."""
    reached = milestone_times(incident, steps)
    out = []
    for m in TARGETS:
        assert m.target is not None
        deadline = incident.created_at + timedelta(minutes=m.target)
        at = reached[m.key]
        if incident.kind != "rollback" and m.key != "halted":
            status = "not applicable"
        elif m.key in ("resumed", "stable", "watched") and incident.keep_halted and at is None:
            status = "not applicable"  # trading was kept halted on request
        elif at is not None:
            status = "met" if at <= deadline else "missed"
        elif not incident.is_open and not _followed_after_close(incident, m.key):
            status = "not reached"
        else:
            status = "overdue" if now >= deadline else "pending"
        out.append(TargetStatus(m.key, m.label, m.target, deadline, at, status))
    return out


def _followed_after_close(incident: Incident, name: str) -> bool:
    """A closed incident still owes its root cause, and a resumed one its 24 hours of monitoring."""
    if name not in _AFTER_CLOSE or incident.state in ("denied", "cancelled", "superseded"):
        return False
    if name == "watched" and ((incident.plan or {}).get("watch") or {}).get("stopped"):
        return False  # the model was handed to a later rollback, which has its own watch
    return name == "root_cause" or incident.resumed_at is not None
