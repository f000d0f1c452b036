"""The incident report: Markdown rendered from an incident and its journal (never a template with blanks).

Everything in the report is derived from the ``rollback_bot.incidents`` row and its ``rollback_bot.steps``
journal; Slack formatting is a view over this Markdown, made elsewhere.

The runbook's recovery timeline (minutes after the incident opened, ``created_at``)::

    T+2   trading halted        the ``halt`` step finished ok
    T+5   rolled back           the ``record`` step finished ok (the backup is production in the deployment log)
    T+7   model verified        the ``verify`` step finished ok
    T+10  trading resumed       the ``resume`` step finished (ok, or with a warning)
    T+30  stability confirmed   the first clean check of the enhanced monitoring (``stable``, core.watch)
    T+2h  root cause identified a ``root_cause`` step (a person's "Add root cause")
    T+24h enhanced monitoring   the 24-hour watch's last check and summary (``watch_end``)

The last three are followed after the incident resolves (monitoring goes on for 24 hours; the root cause is
owed either way); a check that ran on time counts at the time it was due.

The runbook's ten-item checklist, ticked from the journal::

    1  Problem identified and rollback requested with a reason   a ``requested`` step and a reason
    2  Trading halted                                            ``halt`` ok
    3  No trades executed after the halt                         ``verify_halt`` ok (a warning means trades)
    4  Emergency backup of the current model taken               ``emergency_backup`` ok
    5  Backup restored into production                           ``restore`` ok
    6  Deployment log updated                                    ``record`` ok
    7  Restored model verified                                   ``verify`` ok
    8  Trading resumed                                           ``resume`` ok or warning
    9  Logs monitored after the resume                           ``monitor`` finished (ok or warning)
    10 Incident report written and stakeholders notified         a ``report`` step ok and a ``notify`` step
                                                                 ok or skipped (no stakeholders configured)

For a manual halt (kind ``halt``) items 3 to 7 and 9 do not apply. Steps written outside the engine
(``report``, ``notify``, ``monitor``, ``escalate``, ``target_missed``, ``root_cause``) are added with
``journal``; their names never collide with the engine's state names.

Files: ``write_report`` saves ``INC-{id}-{model or kind}-{YYYYMMDD}.md`` under INCIDENTS_DIR, rewriting the
same incident's file atomically as it moves on. The first line of every file is a marker naming the incident
and the instant it opened, so a file of another incident with the same number (e.g. after a database was
rebuilt) is never overwritten: the new report gets a ``-2`` suffix instead. A symlink at the destination is
refused.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

from core.engine import Engine
from core.errors import RollbackError, UnknownIncident
from core.incidents import RUNBOOK_TARGETS, Incident, Step, audit, journal
from core.modelio import fsync_dir
from core.timeline import reached_at, target_label
from core.watchview import watch_report_lines
from core.prerollback import report_section as before_approval_section

__all__ = [
    "CHECKLIST",
    "TARGETS",
    "ChecklistItem",
    "ReportError",
    "Reports",
    "TargetStatus",
    "add_root_cause",
    "as_utc",
    "checklist",
    "find_report",
    "human_span",
    "journal",
    "milestone_times",
    "render_report",
    "summary_line",
    "target_status",
    "write_chart",
    "write_report",
]


class ReportError(RollbackError):
    """The report file cannot be written where it belongs (e.g. a symlink sits at the destination)."""


# --------------------------------------------------------------------------------------------- journal


def add_root_cause(conn: psycopg.Connection, *, incident_id: int, text: str, by: str, at: datetime) -> None:
    """The "Add root cause" modal: append a person's text to the incident's root cause, journaled and audited."""
    text = (text or "").strip()
    if not text:
        raise ReportError("The root cause text is empty.")
    row = conn.execute(
        "UPDATE rollback_bot.incidents SET root_cause = CASE WHEN coalesce(root_cause, '') = '' THEN %s"
        " ELSE root_cause || E'\\n\\n' || %s END, updated_at = %s WHERE id = %s RETURNING id",
        (text[:8000], text[:8000], at, incident_id),
    ).fetchone()
    if row is None:
        raise UnknownIncident(f"There is no incident INC-{incident_id}.")
    journal(conn, incident_id=incident_id, step="root_cause", actor=by, at=at, detail={"chars": len(text)})
    audit(conn, at=at, actor=by, action="root_cause", outcome="ok", incident_id=incident_id, chars=len(text))


# ------------------------------------------------------------------------------------ timeline & checklist

#: Runbook targets, in order: (name, minutes after opening, label, journal step that reaches it).
TARGETS: list[tuple[str, int, str, str]] = [
    ("halted", RUNBOOK_TARGETS["halted"], "Trading halted", "halt"),
    ("rolled_back", RUNBOOK_TARGETS["rolled_back"], "Rolled back (deployment log updated)", "record"),
    ("verified", RUNBOOK_TARGETS["verified"], "Restored model verified", "verify"),
    ("resumed", RUNBOOK_TARGETS["resumed"], "Trading resumed", "resume"),
    ("stable", RUNBOOK_TARGETS["stable"], "Monitoring confirms stability", "stable"),
    ("root_cause", RUNBOOK_TARGETS["root_cause"], "Root cause identified", "root_cause"),
    ("watched", RUNBOOK_TARGETS["watched"], "24-hour enhanced monitoring completed", "watch_end"),
]
#: Targets reached by a scheduled check (core.watch) due at the deadline itself: a check that ran within this
#: grace of its time counts at the time it was due, and the escalation timer runs this much after the deadline
#: (so the check due at the same moment is looked at first).
TARGET_CHECK_DELAY = {"stable": timedelta(minutes=5), "watched": timedelta(minutes=5)}
# Targets still followed after the incident closed (unless it was denied, cancelled or superseded).
_AFTER_CLOSE = frozenset({"stable", "root_cause", "watched"})
_DONE = ("ok", "warning")


def _finished(steps: list[Step], name: str, outcomes: tuple[str, ...] = ("ok",)) -> Step | None:
    """The first step called ``name`` that finished with one of ``outcomes``."""
    for s in steps:
        if s.step == name and s.finished_at is not None and s.outcome in outcomes:
            return s
    return None


def milestone_times(incident: Incident, steps: list[Step]) -> dict[str, datetime | None]:
    """When each runbook target was reached (None: not yet, or never)."""
    halt = _finished(steps, "halt")
    record = _finished(steps, "record")
    verify = _finished(steps, "verify")
    resume = _finished(steps, "resume", _DONE)
    stable = _finished(steps, "stable")
    cause = _finished(steps, "root_cause")
    watched = _finished(steps, "watch_end", _DONE)
    return {
        "halted": halt.finished_at if halt else incident.halted_at,
        "rolled_back": record.finished_at if record else None,
        "verified": verify.finished_at if verify else None,
        "resumed": resume.finished_at if resume else (incident.resumed_at if incident.kind == "rollback" else None),
        "stable": reached_at(stable) if stable else None,
        "root_cause": cause.finished_at if cause else None,
        "watched": reached_at(watched) if watched else None,
    }


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
    for name, minutes, label, _ in TARGETS:
        deadline = incident.created_at + timedelta(minutes=minutes)
        at = reached[name]
        if incident.kind != "rollback" and name != "halted":
            status = "not applicable"
        elif name in ("resumed", "stable", "watched") and incident.keep_halted and at is None:
            status = "not applicable"  # trading was kept halted on request
        elif at is not None:
            status = "met" if at <= deadline else "missed"
        elif not incident.is_open and not _followed_after_close(incident, name):
            status = "not reached"
        else:
            status = "overdue" if now >= deadline else "pending"
        out.append(TargetStatus(name, label, minutes, deadline, at, status))
    return out


def _followed_after_close(incident: Incident, name: str) -> bool:
    """A closed incident still owes its root cause, and a resumed one its 24 hours of monitoring."""
    if name not in _AFTER_CLOSE or incident.state in ("denied", "cancelled", "superseded"):
        return False
    if name == "watched" and ((incident.plan or {}).get("watch") or {}).get("stopped"):
        return False  # the model was handed to a later rollback, which has its own watch
    return name == "root_cause" or incident.resumed_at is not None


@dataclass(frozen=True)
class ChecklistItem:
    number: int
    text: str
    done: bool
    note: str = ""
    applicable: bool = True


CHECKLIST: list[str] = [
    "Problem identified and rollback requested with a reason",
    "Trading halted",
    "No trades executed after the halt",
    "Emergency backup of the current model taken",
    "Backup restored into production",
    "Deployment log updated",
    "Restored model verified",
    "Trading resumed",
    "Logs monitored after the resume",
    "Incident report written and stakeholders notified",
]


def checklist(incident: Incident, steps: list[Step]) -> list[ChecklistItem]:
    """The runbook's ten items, ticked from the journal (see the module docstring)."""
    rollback = incident.kind == "rollback"
    items: list[ChecklistItem] = []

    def add(done: bool, note: str = "", applicable: bool = True) -> None:
        n = len(items) + 1
        items.append(ChecklistItem(n, CHECKLIST[n - 1], done and applicable, note, applicable))

    requested = any(s.step == "requested" for s in steps) if rollback else True
    add(requested and bool(incident.reason.strip()), "" if incident.reason.strip() else "no reason recorded")
    add(_finished(steps, "halt") is not None or (not rollback and incident.halted_at is not None))
    vh = _finished(steps, "verify_halt", _DONE)
    vh_note = ""
    if vh is not None and vh.outcome == "warning":
        vh_note = f"{vh.detail.get('trades_after_halt', '?')} trade(s) executed after the halt"
    add(vh is not None and vh.outcome == "ok", vh_note, rollback)
    eb = _finished(steps, "emergency_backup")
    add(eb is not None, str(eb.detail.get("backup", "")) if eb else "", rollback)
    add(_finished(steps, "restore") is not None, "", rollback)
    add(_finished(steps, "record") is not None, "", rollback)
    verify_failed = any(s.step == "verify" and s.outcome == "failed" for s in steps)
    add(_finished(steps, "verify") is not None, "verification failed" if verify_failed else "", rollback)
    resume = _finished(steps, "resume", _DONE)
    resumed = resume is not None or (not rollback and incident.resumed_at is not None)
    r_note = ""
    if resume is not None and resume.detail.get("still_held_by"):
        r_note = "trading still halted by " + ", ".join(resume.detail["still_held_by"])
        resumed = False
    elif incident.keep_halted and resume is None and incident.state == "verified":
        r_note = "kept halted on request; an approver resumes"
    add(resumed, r_note)
    monitor = _finished(steps, "monitor", _DONE)
    add(monitor is not None, "with findings" if monitor is not None and monitor.outcome == "warning" else "",
        rollback)
    report = _finished(steps, "report")
    notified = _finished(steps, "notify", ("ok", "skipped"))
    failed_notes = sum(1 for s in steps if s.step == "notify" and s.outcome == "failed")
    parts = []
    if report is None:
        parts.append("report not yet written")
    if notified is None:
        parts.append("stakeholders not yet notified")
    if failed_notes:
        parts.append(f"{failed_notes} notification(s) failed")
    add(report is not None and notified is not None, "; ".join(parts))
    return items


# ------------------------------------------------------------------------------------------- formatting


def as_utc(at: datetime) -> datetime:
    """The same instant in UTC (a connection's TimeZone setting must never change a report or a file name)."""
    return at.astimezone(timezone.utc) if at.tzinfo else at.replace(tzinfo=timezone.utc)


def _as_dt(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else value
    except ValueError:
        return None


def _utc(at: datetime | None) -> str:
    return as_utc(at).strftime("%Y-%m-%d %H:%M:%S UTC") if at else "-"


def _hms(at: datetime | None) -> str:
    return as_utc(at).strftime("%H:%M:%S") if at else "-"


def human_span(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h} h {m:02d} min"
    if m:
        return f"{m} min {s:02d} s"
    return f"{s} s"


def _cell(text: Any) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|") or "-"


def _line(text: str | None) -> str:
    return " ".join((text or "").split())


def _money(value: float) -> str:
    return f"{value:,.0f}" if abs(value - round(value)) < 1e-9 else f"{value:,.2f}"


_LABELS = {
    "requested": "Rollback requested", "approved": "Approved", "preflight": "Pre-flight checks",
    "halt": "Trading halted", "verify_halt": "Halt verified", "emergency_backup": "Emergency backup",
    "restore": "Backup restored", "record": "Deployment log updated", "verify": "Model verified",
    "resume": "Trading resumed", "revert": "Original model put back", "error": "Step failed",
    "resolved": "Resolved", "denied": "Denied", "cancelled": "Cancelled", "expired": "Request expired",
    "monitor": "Monitoring summary", "escalate": "Escalated", "target_missed": "Runbook target missed",
    "notify": "Stakeholders notified", "report": "Incident report written", "root_cause": "Root cause added",
    "diagnostics": "Diagnostics run", "files_checked": "Production files checked at resume",
    "needs_attention": "Needs attention", "accepted": "Accepted with a reason",
    "superseded": "Superseded by a follow-up rollback", "stable": "Monitoring confirms stability",
    "watch_end": "Enhanced monitoring summary", "watch_missed": "Monitoring check missed",
    "evidence": "Evidence before approval",
}


def _describe(s: Step) -> str:
    d = s.detail or {}
    text = ""
    if s.step == "requested":
        text = f"target {d.get('backup', '?')}: {d.get('reason', '')}"
    elif s.step == "approved" and d.get("break_glass"):
        text = "break-glass CLI"
    elif s.step == "preflight" and s.outcome == "ok":
        text = f"{len(d.get('checks', []))} checks passed"
    elif s.step == "halt":
        text = f"{d.get('clients', '?')} active client(s)" + (" (joined an existing halt)" if d.get("joined") else "")
        text += " (Halt now, before approval)" if d.get("before_approval") else ""
    elif s.step == "evidence":
        text = str(d.get("verdict") or d.get("note") or "")
    elif s.step == "verify_halt":
        n = d.get("trades_after_halt")
        text = "no trades after the halt" if n == 0 else (f"{n} trade(s) after the halt" if n is not None else "")
    elif s.step == "emergency_backup":
        text = str(d.get("backup", ""))
    elif s.step == "restore":
        text = f"{d.get('from', '?')} copied into production"
    elif s.step == "record":
        text = f"{d.get('version', '?')} is production"
    elif s.step == "verify" and s.outcome == "ok":
        text = (f"checksum matches, loads, predicts on {d.get('rows', '?')} rows of "
                f"{d.get('prediction_day', '?')}")
    elif s.step == "resume":
        text = f"{d.get('restored_clients', 0)} client(s) restored to their own settings"
        if d.get("left_alone"):
            text += f"; left as a person set them: {', '.join(d['left_alone'])}"
        if d.get("still_held_by"):
            text += f"; still halted by {', '.join(d['still_held_by'])}"
        if d.get("trades_during_halt"):
            text += f"; {d['trades_during_halt']} trade(s) during the halt"
    elif s.step == "revert" and d.get("ok") is False:
        text = (f"{d.get('message', 'the revert failed')}; deployment log "
                f"{'reverted' if d.get('deployment_log_reverted') else 'unchanged'}; trading stays halted")
    elif s.step == "revert":
        done = d.get("restored_files", []) + [f"{n} removed" for n in d.get("removed_files", [])]
        text = (f"files restored: {', '.join(done) or 'none needed'}; deployment log "
                f"{'reverted' if d.get('deployment_log_reverted') else 'unchanged'}; trading stays halted")
    elif s.step == "files_checked":
        text = str(d.get("note") or "")
    elif s.step in ("resolved", "denied", "cancelled"):
        text = str(d.get("note") or "")
    elif s.step == "monitor":
        text = str(d.get("summary", ""))
    elif s.step in ("escalate", "target_missed"):
        text = str(d.get("reason") or d.get("message") or "")
    elif s.step == "notify":
        text = f"{d.get('milestone', '?')} by {d.get('channel', '?')}"
        if d.get("recipients") is not None:
            text += f" to {d['recipients']} recipient(s)"
    elif s.step == "report":
        text = str(d.get("file", ""))
    elif s.step == "needs_attention":
        text = ("reopened: " if d.get("reopened") else "") + "; ".join(d.get("reasons") or [])
    elif s.step == "accepted":
        text = str(d.get("reason") or "")
    elif s.step == "superseded":
        text = f"{d.get('by', '?')} rolls back to {d.get('backup', '?')}"
    elif s.step in ("stable", "watch_end", "watch_missed"):
        text = str(d.get("summary") or "")
    elif s.step == "diagnostics":
        text = str(d.get("likely_cause") or (f"{d['findings']} finding(s)" if "findings" in d else ""))
    if s.error:
        text = f"{text}; {s.error}" if text else s.error
    return text


def _summary_of_monitoring(steps: list[Step]) -> str | None:
    monitor = _finished(steps, "monitor", _DONE)
    return str(monitor.detail.get("summary")) if monitor and monitor.detail.get("summary") else None


def _next_steps(incident: Incident, steps: list[Step], targets: list[TargetStatus],
                diagnostics_summary: str | None) -> list[str]:
    """Prevention and next steps, from what actually happened."""
    out: list[str] = []
    rollback = incident.kind == "rollback"
    verify_failed = next((s for s in steps if s.step == "verify" and s.outcome == "failed"), None)
    preflight_failed = next((s for s in steps if s.step == "preflight" and s.outcome == "failed"), None)
    if verify_failed is not None:
        out.append(f"Investigate backup {incident.target_backup}: it failed verification after the restore "
                   f"({_line(verify_failed.error)}). Check its files and choose another backup before trying again.")
    if preflight_failed is not None:
        out.append(f"Backup {incident.target_backup} failed pre-flight ({_line(preflight_failed.error)}): repair it "
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
    after_halt = _finished(steps, "verify_halt", ("warning",))
    resume = _finished(steps, "resume", _DONE)
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
    monitor = _finished(steps, "monitor", ("warning",))
    if monitor is not None:
        out.append("Monitoring after the resume reported trouble (see above): check the restored model and the "
                   "logs again before closing the follow-up.")
    if diagnostics_summary:
        out.append("Follow up the diagnostics findings above (data gaps, missing features, regime change).")
    if rollback and _finished(steps, "record") is not None and incident.state not in ("failed", "revert_failed"):
        out.append(f"Keep {incident.from_version or 'the failed version'} out of production until the cause is "
                   "understood; retrain and evaluate on recent data before redeploying.")
    if not (incident.root_cause or "").strip():
        out.append("Record the root cause (the \"Add root cause\" action).")
    if incident.estimated_loss:
        out.append(f"Confirm the estimated loss of {_money(incident.estimated_loss)} with risk and finance.")
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


# ------------------------------------------------------------------------------------------- rendering


def render_report(*, incident: Incident, steps: list[Step], diagnostics_summary: str | None,
                  halted_clients: int | None = None, now: datetime, monitoring_summary: str | None = None,
                  chart_file: str | None = None, people: Callable[[str], str] | None = None) -> str:
    """The incident report as Markdown, derived from the incident row and its journal.

    ``diagnostics_summary`` defaults to the one stored in the incident's plan (``plan.diagnostics.summary``);
    ``halted_clients`` to the number of active clients the ``halt`` step switched off;
    ``monitoring_summary`` to the summary journaled by the ``monitor`` step; ``chart_file`` (a file name
    next to the report) adds the performance chart as an image. ``people`` turns an actor's id (a Slack user
    id) into a name for readers; ids stay as they are without it.
    """
    inc = incident

    def who(actor: str | None) -> str:
        if not actor or people is None:
            return actor or ""
        try:
            return people(actor)
        except Exception:  # noqa: BLE001 - a name lookup never stops a report
            return actor

    rollback = inc.kind == "rollback"
    if not diagnostics_summary:
        diagnostics_summary = ((inc.plan or {}).get("diagnostics") or {}).get("summary")
    halt = _finished(steps, "halt")
    if halted_clients is None:
        halted_clients = int(halt.detail.get("clients", 0)) if halt else 0
    subject = f"rollback of {inc.model_name}" if rollback else f"{inc.kind} of automated trading"
    md: list[str] = [f"# Incident report {inc.ref}: {subject}", ""]

    facts: list[tuple[str, str]] = [("Date", f"{as_utc(inc.created_at):%Y-%m-%d} (opened {_utc(inc.created_at)})")]
    if rollback:
        facts.append(("Model", inc.model_name or "-"))
        facts.append(("Rollback", f"{inc.from_version or '?'} → {inc.target_backup or '?'}"))
        if inc.emergency_backup:
            facts.append(("Emergency backup", inc.emergency_backup))
    facts += [("Severity", inc.severity), ("State", inc.state), ("Reason", _line(inc.reason) or "-"),
              ("Requested by", f"{who(inc.requested_by)} (via {inc.source})")]
    if inc.approved_by:
        facts.append(("Approved by", f"{who(inc.approved_by)} at {_utc(inc.approved_at)}"))
    elif inc.decided_by:
        facts.append((inc.state.capitalize() + " by", f"{who(inc.decided_by)}: {_line(inc.decision_note)}"))
    follows = (inc.plan or {}).get("follows") or {}
    if follows:
        facts.append(("Follows", f"{follows.get('ref', '?')}, which this rollback follows up (first reported "
                                 f"{_utc(_as_dt(follows.get('first_reported_at')))})"))
    if inc.error:
        facts.append(("Error", _line(inc.error)))
    md += ["| | |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in facts] + [""]

    # Impact
    md += ["## Impact", ""]
    halted_at = milestone_times(inc, steps)["halted"]
    if halted_at:
        until = inc.resumed_at
        span = f"from {_utc(halted_at)} to {_utc(until)} ({human_span(until - halted_at)})" if until \
            else f"since {_utc(halted_at)}, still halted ({human_span(now - halted_at)} so far)"
        md.append(f"- Portfolios halted: {halted_clients} active client(s); automated trading halted {span}.")
    else:
        md.append("- Portfolios halted: none (trading was not halted).")
    if inc.resolved_at:
        md.append(f"- Duration: {_utc(inc.created_at)} → {_utc(inc.resolved_at)} "
                  f"({human_span(inc.resolved_at - inc.created_at)}).")
    else:
        md.append(f"- Duration: opened {_utc(inc.created_at)}, ongoing ({human_span(now - inc.created_at)} so far).")
    if inc.estimated_loss is not None and math.isfinite(inc.estimated_loss):
        md.append(f"- Estimated loss: {_money(inc.estimated_loss)} (as given by the requester).")
    else:
        md.append("- Estimated loss: not given.")
    md.append("")

    # Root cause
    md += ["## Root cause", "", "### Diagnostics", ""]
    md.append(diagnostics_summary.strip() if diagnostics_summary and diagnostics_summary.strip()
              else "No diagnostics summary was recorded.")
    md += ["", "### Analysis", ""]
    md.append(inc.root_cause.strip() if inc.root_cause and inc.root_cause.strip()
              else "Not recorded yet.")
    md.append("")

    if rollback:
        md += before_approval_section(inc)

    if chart_file:
        md += ["## Model performance", "", f"![Daily IC and rolling Sharpe, last 30 days]({chart_file})", ""]

    # Actions
    md += ["## Actions", "", "| Time (UTC) | Action | Actor | Outcome | Detail |", "|---|---|---|---|---|"]
    for s in steps:
        at = s.finished_at or s.started_at
        md.append(f"| {_cell(_utc(at).removesuffix(' UTC'))} | {_cell(_LABELS.get(s.step, s.step))} | "
                  f"{_cell(who(s.actor))} | {_cell(s.outcome)} | {_cell(_describe(s))} |")
    md.append("")

    # Timeline
    targets = target_status(inc, steps, now)
    md += ["## Timeline against the runbook targets", "",
           "| Target | Milestone | Deadline (UTC) | Reached (UTC) | Elapsed | Status |", "|---|---|---|---|---|---|"]
    for t in targets:
        elapsed = f"T+{human_span(t.elapsed)}" if t.elapsed is not None else "-"
        md.append(f"| {target_label(t.minutes)} | {t.label} | {_hms(t.deadline)} | {_hms(t.reached_at)} | {elapsed} | "
                  f"{t.status} |")
    md.append("")

    monitoring = monitoring_summary or _summary_of_monitoring(steps)
    if rollback:
        md += ["## Monitoring after the resume", ""]
        if monitoring:
            md.append(monitoring.strip())
        elif inc.state == "monitoring":
            md.append(f"Under way since {_utc(inc.resumed_at)}.")
        else:
            md.append("Not run (trading was not resumed on the restored model)."
                      if inc.resumed_at is None else "No summary was recorded.")
        restored = (((inc.plan or {}).get("diagnostics") or {}).get("restored") or {}).get("line")
        if restored and inc.state != "failed":
            md += ["", f"{restored.strip()} (measured by the incident's diagnostics)."]
        md.append("")
        watch = watch_report_lines((inc.plan or {}).get("watch"))
        if watch:
            md += ["### Enhanced monitoring (24 hours)", "", *watch, ""]
        attention = (inc.plan or {}).get("attention") or {}
        accepted = (inc.plan or {}).get("accepted") or {}
        if attention:
            md += ["### Needs attention", "",
                   f"Monitoring found trouble ({attention.get('source', '?')}, {attention.get('since', '?')}): "
                   + "; ".join(attention.get("reasons") or []) + "."]
            if accepted:
                md.append(f"Accepted by {who(accepted.get('by'))} at {accepted.get('at', '?')}: "
                          f"{_line(accepted.get('reason'))}")
            md.append("")

    # Checklist
    md += ["## Runbook checklist", ""]
    for item in checklist(inc, steps):
        box = "x" if item.done else " "
        note = f" ({item.note})" if item.note else ""
        if not item.applicable:
            note = " (not applicable)"
        md.append(f"- [{box}] {item.number}. {item.text}{note}")
    md.append("")

    md += ["## Prevention and next steps", ""]
    md += [f"{i}. {text}" for i, text in enumerate(_next_steps(inc, steps, targets, diagnostics_summary), 1)]
    md += ["", f"_Generated by rollback-bot at {_utc(now)} from the incident journal._", ""]
    return "\n".join(md)


def summary_line(incident: Incident, steps: list[Step]) -> str:
    """A one-line summary to post with the report file."""
    items = checklist(incident, steps)
    applicable = [i for i in items if i.applicable]
    done = sum(1 for i in applicable if i.done)
    what = (f"rollback of {incident.model_name} to {incident.target_backup}" if incident.kind == "rollback"
            else f"{incident.kind} of automated trading")
    if incident.resolved_at:
        span = f"closed after {human_span(incident.resolved_at - incident.created_at)}"
    else:
        span = "ongoing"
    return (f"Incident report {incident.ref} ({what}): {incident.state}, {span}; "
            f"checklist {done}/{len(applicable)} done.")


# ------------------------------------------------------------------------------------------------ files

_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def _marker(incident: Incident) -> str:
    return f"<!-- rollback-bot incident {incident.ref} opened {as_utc(incident.created_at).isoformat()} -->"


def _base_name(incident: Incident) -> str:
    slug = _SLUG.sub("_", incident.model_name or incident.kind).strip("._") or incident.kind
    return f"INC-{incident.id}-{slug[:80]}-{as_utc(incident.created_at):%Y%m%d}"


def _first_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        with open(path, "rb") as fh:
            return fh.readline(400).decode("utf-8", "replace").rstrip("\r\n")
    return ""


def find_report(incidents_dir: Path, incident: Incident) -> Path | None:
    """The report file of this incident (never another incident's that shares its number), if written."""
    base = _base_name(incident)
    marker = _marker(incident)
    for n in range(1, 1000):
        path = Path(incidents_dir) / (base + ("" if n == 1 else f"-{n}") + ".md")
        if not path.exists() and not path.is_symlink():
            return None
        if not path.is_symlink() and _first_line(path) == marker:
            return path
    return None


def _destination(incidents_dir: Path, incident: Incident) -> Path:
    base = _base_name(incident)
    marker = _marker(incident)
    for n in range(1, 1000):
        path = incidents_dir / (base + ("" if n == 1 else f"-{n}") + ".md")
        if path.is_symlink():
            raise ReportError(f"Refusing to write {path.name}: it is a symbolic link.")
        if not path.exists() or _first_line(path) == marker:
            return path
    raise ReportError(f"Too many report files named {base}*.md in {incidents_dir}.")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if path.is_symlink():
            raise ReportError(f"Refusing to write {path.name}: it is a symbolic link.")
        os.replace(tmp, path)  # replaces a name, never follows a link
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_report(*, incidents_dir: Path, incident: Incident, markdown: str) -> Path:
    """Save the report as ``INC-{id}-{model or kind}-{YYYYMMDD}.md``; the same incident's file is rewritten
    atomically, another incident's file is never overwritten, and a symlink at the destination is refused."""
    incidents_dir = Path(incidents_dir)
    incidents_dir.mkdir(parents=True, exist_ok=True)
    path = _destination(incidents_dir, incident)
    _atomic_write(path, (_marker(incident) + "\n" + markdown).encode("utf-8"))
    return path


def write_chart(*, report_path: Path, png: bytes) -> Path:
    """Save the performance chart next to its report (same name, ``.png``), atomically."""
    path = Path(report_path).with_suffix(".png")
    if path.is_symlink():
        raise ReportError(f"Refusing to write {path.name}: it is a symbolic link.")
    _atomic_write(path, png)
    return path


# ------------------------------------------------------------------------------------- the composition


class Reports:
    """Render and save an incident's report from the database, for the Slack layer, the mailer and the CLI.

    ``diagnostics`` returns the diagnostics summary of an incident (or None); ``chart`` returns PNG bytes
    of its performance chart (or None). Both are optional and any failure in them is left out of the report
    rather than stopping it.
    """

    def __init__(self, engine: Engine, incidents_dir: Path, *,
                 diagnostics: Callable[[Incident], str | None] | None = None,
                 chart: Callable[[Incident], bytes | None] | None = None,
                 people: Callable[[str], str] | None = None) -> None:
        self.engine = engine
        self.people = people
        self.incidents_dir = Path(incidents_dir)
        self.diagnostics = diagnostics
        self.chart = chart

    def render(self, incident_id: int, *, chart_file: str | None = None) -> tuple[Incident, str]:
        incident = self.engine.get(incident_id)
        steps = self.engine.steps(incident_id)
        summary = None
        if self.diagnostics is not None:
            try:
                summary = self.diagnostics(incident)
            except Exception:  # noqa: BLE001 - the report is written without it
                summary = None
        markdown = render_report(incident=incident, steps=steps, diagnostics_summary=summary,
                                 now=self.engine.clock(), chart_file=chart_file, people=self.people)
        return incident, markdown

    def update(self, incident_id: int, *, actor: str = "rollback-bot") -> Path:
        """(Re)write the report file and, the first time, journal the ``report`` step. Returns the file."""
        incident = self.engine.get(incident_id)
        chart_name = None
        png = None
        if self.chart is not None:
            try:
                png = self.chart(incident)
            except Exception:  # noqa: BLE001 - a chart is a nice-to-have
                png = None
        if png:
            self.incidents_dir.mkdir(parents=True, exist_ok=True)
            chart_name = _destination(self.incidents_dir, incident).with_suffix(".png").name
        incident, markdown = self.render(incident_id, chart_file=chart_name)
        path = write_report(incidents_dir=self.incidents_dir, incident=incident, markdown=markdown)
        if png:
            write_chart(report_path=path, png=png)
        with self.engine.db.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollback_bot.report:' || %s))", (str(incident_id),))
            seen = conn.execute(
                "SELECT 1 FROM rollback_bot.steps WHERE incident_id = %s AND step = 'report' AND outcome = 'ok'",
                (incident_id,),
            ).fetchone()
            if not seen:
                journal(conn, incident_id=incident_id, step="report", actor=actor, at=self.engine.clock(),
                        detail={"file": path.name})
        return path

    def path(self, incident_id: int) -> Path | None:
        return find_report(self.incidents_dir, self.engine.get(incident_id))
