"""The runbook's ten-item checklist, ticked from an incident's journal (the report's "Runbook checklist").

::

    1  Problem identified and rollback requested with a reason   a ``requested`` step and a reason
    2  Trading halted, no trade after the halt                   ``halt`` ok and ``verify_halt`` ok (a warning
                                                                 means trades)
    3  Emergency backup of the current model taken               ``emergency_backup`` ok
    4  Backup restored and the deployment log updated            ``restore`` ok and ``record`` ok
    5  Restored model verified                                   ``verify`` ok
    6  Trading resumed                                           ``resume`` ok or warning
    7  Logs monitored after the resume                           ``monitor`` finished (ok or warning)
    8  Incident report written and stakeholders notified         a ``report`` step ok and a ``notify`` step
                                                                 ok or skipped (no stakeholders configured)
    9  Root-cause analysis initiated                             a root cause recorded, or the root-cause
                                                                 follow-up assigned or done (``followup``)
    10 Prevention measures identified                            a ``prevention`` step (a measure written into
                                                                 the report's Prevention section)

For a manual halt (kind ``halt``) items 3 to 5 and 7 do not apply, and item 2 is the halt alone. The journal
steps are the runbook timeline's (core.timeline); the keys of items 1 to 7 are its milestone keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.incidents import Incident, Step
from core.timeline import DONE, first_finished

__all__ = ["CHECKLIST", "CHECKLIST_KEYS", "ChecklistItem", "checklist"]


@dataclass(frozen=True)
class ChecklistItem:
    """One of the runbook's items, named by its key (its number and text follow from it)."""

    key: str
    done: bool
    note: str = ""
    applicable: bool = True

    @property
    def number(self) -> int:
        return CHECKLIST_KEYS.index(self.key) + 1

    @property
    def text(self) -> str:
        return CHECKLIST[self.number - 1]


CHECKLIST: list[str] = [
    "Problem identified and rollback requested with a reason",
    "Trading halted, no trade after the halt",
    "Emergency backup of the current model taken",
    "Backup restored and the deployment log updated",
    "Restored model verified",
    "Trading resumed",
    "Logs monitored after the resume",
    "Incident report written and stakeholders notified",
    "Root-cause analysis initiated",
    "Prevention measures identified",
]
CHECKLIST_KEYS: list[str] = ["requested", "halted", "backup", "rolled_back", "verified", "resumed", "monitored",
                             "reported", "root_cause", "prevention"]


def checklist(incident: Incident, steps: list[Step]) -> list[ChecklistItem]:
    """The runbook's ten items, ticked from the journal (see the module docstring)."""
    rollback = incident.kind == "rollback"
    items: list[ChecklistItem] = []

    def add(done: bool, note: str = "", applicable: bool = True) -> None:
        items.append(ChecklistItem(CHECKLIST_KEYS[len(items)], done and applicable, note, applicable))

    requested = any(s.step == "requested" for s in steps) if rollback else True
    add(requested and bool(incident.reason.strip()), "" if incident.reason.strip() else "no reason recorded")
    halted = first_finished(steps, "halt") is not None or (not rollback and incident.halted_at is not None)
    vh = first_finished(steps, "verify_halt", DONE)
    vh_note = ""
    if vh is not None and vh.outcome == "warning":
        vh_note = f"{vh.detail.get('trades_after_halt', '?')} trade(s) executed after the halt"
    add(halted and (not rollback or (vh is not None and vh.outcome == "ok")), vh_note)
    eb = first_finished(steps, "emergency_backup")
    add(eb is not None, str(eb.detail.get("backup", "")) if eb else "", rollback)
    restored = first_finished(steps, "restore") is not None
    recorded = first_finished(steps, "record") is not None
    add(restored and recorded, "restored, deployment log not yet updated" if restored and not recorded else "",
        rollback)
    verify_failed = any(s.step == "verify" and s.outcome == "failed" for s in steps)
    add(first_finished(steps, "verify") is not None, "verification failed" if verify_failed else "", rollback)
    resume = first_finished(steps, "resume", DONE)
    resumed = resume is not None or (not rollback and incident.resumed_at is not None)
    r_note = ""
    if resume is not None and resume.detail.get("still_held_by"):
        r_note = "trading still halted by " + ", ".join(resume.detail["still_held_by"])
        resumed = False
    elif incident.keep_halted and resume is None and incident.state == "verified":
        r_note = "kept halted on request; an approver resumes"
    add(resumed, r_note)
    monitor = first_finished(steps, "monitor", DONE)
    add(monitor is not None, "with findings" if monitor is not None and monitor.outcome == "warning" else "",
        rollback)
    report = first_finished(steps, "report")
    notified = first_finished(steps, "notify", ("ok", "skipped"))
    failed_notes = sum(1 for s in steps if s.step == "notify" and s.outcome == "failed")
    parts = []
    if report is None:
        parts.append("report not yet written")
    if notified is None:
        parts.append("stakeholders not yet notified")
    if failed_notes:
        parts.append(f"{failed_notes} notification(s) failed")
    add(report is not None and notified is not None, "; ".join(parts))
    # 9 and 10: facts people add after the rollback (core.followups)
    investigation = [s for s in steps if s.step == "followup" and s.outcome == "ok"
                     and (s.detail or {}).get("kind") == "root_cause"
                     and (s.detail or {}).get("action") in ("assigned", "done")]
    if (incident.root_cause or "").strip():
        add(True, "root cause recorded")
    elif investigation:
        add(True, "investigation " + ("done" if investigation[-1].detail.get("action") == "done" else "assigned"))
    else:
        add(False, "no root cause recorded and the investigation is not assigned")
    measures = sum(1 for s in steps if s.step == "prevention" and s.outcome == "ok")
    add(measures > 0, f"{measures} measure(s) in the Prevention section" if measures else
        "none written into the Prevention section yet")
    return items
