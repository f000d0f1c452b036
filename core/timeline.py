"""An incident's checklist, derived from its journal, with each milestone's time against the runbook's targets.

The runbook promises T+2 min halted, T+5 rolled back, T+7 verified, T+10 resumed, T+30 monitoring confirms
stability, T+2 h root cause identified, T+24 h enhanced monitoring completed, counted from the moment the
incident opened (the request). The minutes are ``core.incidents.RUNBOOK_TARGETS``, read here and by the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from core.incidents import RUNBOOK_TARGETS as T, Incident, Step

# (key, label, journal step that completes it, runbook target in minutes)
MILESTONES: tuple[tuple[str, str, str, int | None], ...] = (
    ("requested", "Rollback requested", "requested", None),
    ("approved", "Approved by a second person", "approved", None),
    ("preflight", "Target passed pre-flight", "preflight", None),
    ("halted", "Automated trading halted", "halt", T["halted"]),
    ("no_trades", "No trades after the halt", "verify_halt", None),
    ("backup", "Emergency backup taken", "emergency_backup", None),
    ("restored", "Backup restored (atomic)", "restore", None),
    ("rolled_back", "Rollback recorded in model_deployment_log", "record", T["rolled_back"]),
    ("verified", "Model verified (load, checksum, prediction)", "verify", T["verified"]),
    ("resumed", "Trading resumed with each client's own settings", "resume", T["resumed"]),
    ("stable", "Monitoring confirms stability", "stable", T["stable"]),
    ("monitored", "Logs monitored", "monitor", None),
    ("root_cause", "Root cause identified", "root_cause", T["root_cause"]),
    ("resolved", "Incident resolved", "resolved", None),
    ("watched", "24-hour enhanced monitoring completed", "watch_end", T["watched"]),
)


_FIRST_COUNTS = frozenset({"root_cause"})


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
    latest: dict[str, Step] = {}
    for s in steps:
        if s.step not in latest or s.step not in _FIRST_COUNTS:
            latest[s.step] = s  # the last attempt of a step counts (a root cause: the first one added)
    out = []
    for key, label, step_name, target in MILESTONES:
        s = latest.get(step_name)
        done_at = reached_at(s) if s else None
        elapsed = (done_at - incident.created_at).total_seconds() if done_at else None
        out.append(Milestone(key, label, done_at, s.outcome if s else None, target, elapsed))
    return out


def fmt_elapsed(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"T+{seconds:.1f}s"
    if seconds >= 3600:
        return f"T+{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"T+{int(seconds // 60)}m{int(seconds % 60):02d}s"
