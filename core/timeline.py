"""An incident's checklist, derived from its journal, with each milestone's time against the runbook's targets.

The runbook promises T+2 min halted, T+5 rolled back, T+7 verified, T+10 resumed, counted from the moment
the incident opened (the request).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from core.incidents import Incident, Step

# (key, label, journal step that completes it, runbook target in minutes)
MILESTONES: tuple[tuple[str, str, str, int | None], ...] = (
    ("requested", "Rollback requested", "requested", None),
    ("approved", "Approved by a second person", "approved", None),
    ("preflight", "Target passed pre-flight", "preflight", None),
    ("halted", "Automated trading halted", "halt", 2),
    ("no_trades", "No trades after the halt", "verify_halt", None),
    ("backup", "Emergency backup taken", "emergency_backup", None),
    ("restored", "Backup restored (atomic)", "restore", None),
    ("rolled_back", "Rollback recorded in model_deployment_log", "record", 5),
    ("verified", "Model verified (load, checksum, prediction)", "verify", 7),
    ("resumed", "Trading resumed with each client's own settings", "resume", 10),
    ("monitored", "Logs monitored", "monitor", None),
    ("resolved", "Incident resolved", "resolved", None),
)


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
        latest[s.step] = s  # the last attempt of a step counts
    out = []
    for key, label, step_name, target in MILESTONES:
        s = latest.get(step_name)
        done_at = s.finished_at if s else None
        elapsed = (done_at - incident.created_at).total_seconds() if done_at else None
        out.append(Milestone(key, label, done_at, s.outcome if s else None, target, elapsed))
    return out


def fmt_elapsed(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"T+{seconds:.1f}s"
    return f"T+{int(seconds // 60)}m{int(seconds % 60):02d}s"
