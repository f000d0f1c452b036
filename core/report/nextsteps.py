"""The report's "Prevention and next steps": what to do next, from what actually happened."""

from __future__ import annotations

from datetime import timedelta

from core.incidents import Incident, Step
from core.report.text import human_span, money, one_line
from core.timeline import DONE, TargetStatus, first_finished, target_label

__all__ = ["monitoring_summary_of", "next_steps"]


def monitoring_summary_of(steps: list[Step]) -> str | None:
    monitor = first_finished(steps, "monitor", DONE)
    return str(monitor.detail.get("summary")) if monitor and monitor.detail.get("summary") else None


def next_steps(incident: Incident, steps: list[Step], targets: list[TargetStatus],
                diagnostics_summary: str | None) -> list[str]:
    """Prevention and next steps, from what actually happened."""
    out: list[str] = []
    rollback = incident.kind == "rollback"
    verify_failed = next((s for s in steps if s.step == "verify" and s.outcome == "failed"), None)
    preflight_failed = next((s for s in steps if s.step == "preflight" and s.outcome == "failed"), None)
    if verify_failed is not None:
        out.append(f"Investigate backup {incident.target_backup}: it failed verification after the restore "
                   f"({one_line(verify_failed.error)}). Check its files and choose another backup before trying again.")
    if preflight_failed is not None:
        out.append(f"Backup {incident.target_backup} failed pre-flight ({one_line(preflight_failed.error)}): repair it "
                   "or choose another backup.")
    if incident.error and "stop command" in incident.error:
        out.append("The trading stop command failed: check the trading service before the next halt.")
    if rollback and incident.state == "revert_failed":
        files = ((incident.plan or {}).get("revert") or {}).get("files") or {}
        where = ", ".join(f"{name} is {what}" for name, what in files.items()) or "see the revert step"
        out.append(f"URGENT: the original files could not all be put back ({where}). Trading stays halted. Copy "
                   f"the original files back from {incident.emergency_backup or 'the emergency backup'} by hand, "
                   "then `/rollback resume` checks them against the production row; resuming on mixed files needs "
                   "two different approvers to override.")
    if rollback and incident.state == "failed" and incident.halted_at is not None and incident.resumed_at is None:
        out.append(f"Trading stays halted and {incident.from_version or 'the original model'} is back in production:"
                   " a person decides whether to retry the rollback with another backup or to resume trading.")
    after_halt = first_finished(steps, "verify_halt", ("warning",))
    resume = first_finished(steps, "resume", DONE)
    during = resume.detail.get("trades_during_halt") if resume else None
    if after_halt is not None or during:
        n = after_halt.detail.get("trades_after_halt") if after_halt is not None else during
        out.append(f"The platform did not honour the halt: {n} trade(s) executed after it. Find out why (a process "
                   "that ignores client_settings, a missing stop command) before relying on the halt again.")
    if resume is not None and resume.detail.get("left_alone"):
        out.append("Settings of " + ", ".join(resume.detail["left_alone"]) + " were changed by a person during the"
                   " halt and were left as set: confirm them with their owners.")
    if resume is not None and resume.detail.get("still_held_by"):
        out.append("Trading is still halted by " + ", ".join(resume.detail["still_held_by"])
                   + ": resume once those are settled.")
    if rollback and incident.state in ("denied", "cancelled") and (incident.plan or {}).get("early_halt"):
        out.append("Trading stays halted since the Halt now before approval: a request that was not approved does"
                   " not resume it. An approver resumes with `/rollback resume` once the desk agrees.")
    if incident.state == "verified":
        out.append("Trading stays halted at the requester's wish: an approver resumes it once the model is checked.")
    missed = [t for t in targets if t.status in ("missed", "overdue")]
    if missed:
        what = ", ".join(f"{t.label.lower()} ({target_label(t.minutes)})" for t in missed)
        text = f"Runbook targets missed: {what}. Review what delayed them"
        if incident.approved_at and incident.approved_at - incident.created_at > timedelta(minutes=2):
            text += f"; the approval alone took {human_span(incident.approved_at - incident.created_at)}"
        out.append(text + ".")
    monitor = first_finished(steps, "monitor", ("warning",))
    if monitor is not None:
        out.append("Monitoring after the resume reported trouble (see above): check the restored model and the "
                   "logs again before closing the follow-up.")
    if diagnostics_summary:
        out.append("Follow up the diagnostics findings above (data gaps, missing features, regime change).")
    if rollback and first_finished(steps, "record") is not None and incident.state not in ("failed", "revert_failed"):
        out.append(f"Keep {incident.from_version or 'the failed version'} out of production until the cause is "
                   "understood; retrain and evaluate on recent data before redeploying.")
    if not (incident.root_cause or "").strip():
        out.append("Record the root cause (the \"Add root cause\" action).")
    if incident.estimated_loss:
        out.append(f"Confirm the estimated loss of {money(incident.estimated_loss)} with risk and finance.")
    if incident.state == "needs_attention":
        why = "; ".join(((incident.plan or {}).get("attention") or {}).get("reasons") or []) or "see the journal"
        out.insert(0, f"The rollback did not resolve the issue ({why}). Roll back to another backup, halt trading, "
                      "or have an approver accept it with a written reason.")
    superseded_by = (incident.plan or {}).get("superseded_by") or {}
    if incident.state == "superseded" and superseded_by:
        out.insert(0, f"Followed up by {superseded_by.get('ref')} (rollback to {superseded_by.get('backup')}): see "
                      "its report.")
    missed_checks = ((incident.plan or {}).get("watch") or {}).get("missed") or []
    if missed_checks:
        out.append(f"{len(missed_checks)} enhanced monitoring check(s) were missed while the bot was down: find out "
                   "why it stopped, and look at that time's logs by hand.")
    if not out:
        out.append("No follow-up found in the journal.")
    return out
