"""The incident report as Markdown, rendered from an incident and its journal (never a template with blanks).

Everything in it is derived from the ``rollback_bot.incidents`` row and its ``rollback_bot.steps`` journal; Slack
formatting is a view over this Markdown, made elsewhere. The timeline against the runbook targets is
core.timeline's, the checklist core.checklist's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from core.checklist import checklist
from core.incidents import Incident, Step
from core.prerollback import report_section as before_approval_section
from core.report.nextsteps import monitoring_summary_of, next_steps
from core.report.text import (
    LOSS_SOURCES,
    STEP_LABELS,
    as_datetime,
    as_utc,
    cell,
    describe,
    fmt_hms,
    fmt_utc,
    human_span,
    loss_lines,
    money,
    one_line,
)
from core.timeline import first_finished, milestone_times, target_label, target_status
from core.watchview import watch_report_lines

__all__ = ["render_report", "summary_line"]


def render_report(*, incident: Incident, steps: list[Step], diagnostics_summary: str | None,
                  halted_clients: int | None = None, now: datetime, monitoring_summary: str | None = None,
                  chart_file: str | None = None, people: Callable[[str], str] | None = None,
                  followups: list[Any] | None = None, prevention: list[Any] | None = None,
                  losses: Sequence[Any] | None = None) -> str:
    """The incident report as Markdown, derived from the incident row and its journal.

    ``diagnostics_summary`` defaults to the one stored in the incident's plan (``plan.diagnostics.summary``);
    ``halted_clients`` to the number of active clients the ``halt`` step switched off;
    ``monitoring_summary`` to the summary journaled by the ``monitor`` step; ``chart_file`` (a file name
    next to the report) adds the performance chart as an image. ``people`` turns an actor's id (a Slack user
    id) into a name for readers; ids stay as they are without it. ``followups`` and ``prevention`` are the
    incident's ``core.followups.FollowUp`` items and ``PreventionMeasure`` rows (the Follow-ups and Prevention
    sections). ``losses`` is the estimated loss's history
    (``core.loss.LossEntry``, oldest first): the latest figure and a table of them all.
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
    halt = first_finished(steps, "halt")
    if halted_clients is None:
        halted_clients = int(halt.detail.get("clients", 0)) if halt else 0
    subject = f"rollback of {inc.model_name}" if rollback else f"{inc.kind} of automated trading"
    md: list[str] = [f"# Incident report {inc.ref}: {subject}", ""]

    facts: list[tuple[str, str]] = [("Date", f"{as_utc(inc.created_at):%Y-%m-%d} (opened {fmt_utc(inc.created_at)})")]
    if rollback:
        facts.append(("Model", inc.model_name or "-"))
        facts.append(("Rollback", f"{inc.from_version or '?'} → {inc.target_backup or '?'}"))
        if inc.emergency_backup:
            facts.append(("Emergency backup", inc.emergency_backup))
    facts += [("Severity", inc.severity), ("State", inc.state), ("Reason", one_line(inc.reason) or "-"),
              ("Requested by", f"{who(inc.requested_by)} (via {inc.source})")]
    if inc.approved_by:
        facts.append(("Approved by", f"{who(inc.approved_by)} at {fmt_utc(inc.approved_at)}"))
    elif inc.decided_by:
        facts.append((inc.state.capitalize() + " by", f"{who(inc.decided_by)}: {one_line(inc.decision_note)}"))
    follows = (inc.plan or {}).get("follows") or {}
    if follows:
        facts.append(("Follows", f"{follows.get('ref', '?')}, which this rollback follows up (first reported "
                                 f"{fmt_utc(as_datetime(follows.get('first_reported_at')))})"))
    if inc.error:
        facts.append(("Error", one_line(inc.error)))
    md += ["| | |", "|---|---|"] + [f"| {k} | {cell(v)} |" for k, v in facts] + [""]

    # Impact
    md += ["## Impact", ""]
    halted_at = milestone_times(inc, steps)["halted"]
    if halted_at:
        until = inc.resumed_at
        span = f"from {fmt_utc(halted_at)} to {fmt_utc(until)} ({human_span(until - halted_at)})" if until \
            else f"since {fmt_utc(halted_at)}, still halted ({human_span(now - halted_at)} so far)"
        md.append(f"- Portfolios halted: {halted_clients} active client(s); automated trading halted {span}.")
    else:
        md.append("- Portfolios halted: none (trading was not halted).")
    if inc.resolved_at:
        md.append(f"- Duration: {fmt_utc(inc.created_at)} → {fmt_utc(inc.resolved_at)} "
                  f"({human_span(inc.resolved_at - inc.created_at)}).")
    else:
        md.append(f"- Duration: opened {fmt_utc(inc.created_at)}, ongoing ({human_span(now - inc.created_at)} so far).")
    if losses:
        last = losses[-1]
        md.append(f"- Estimated loss: {money(last.amount)} (the latest of {len(losses)} figures, "
                  f"{fmt_utc(last.recorded_at)}, {LOSS_SOURCES.get(last.source, last.source)}).")
    elif inc.estimated_loss is not None and math.isfinite(inc.estimated_loss):
        md.append(f"- Estimated loss: {money(inc.estimated_loss)} (as given by the requester).")
    else:
        md.append("- Estimated loss: not given.")
    md.append("")
    if losses:
        md += loss_lines(losses, who)

    # Root cause
    md += ["## Root cause", "", "### Diagnostics", ""]
    md.append(diagnostics_summary.strip() if diagnostics_summary and diagnostics_summary.strip()
              else "No diagnostics summary was recorded.")
    md += ["", "### Analysis", ""]
    md.append(inc.root_cause.strip() if inc.root_cause and inc.root_cause.strip()
              else "Not recorded yet.")
    md.append("")

    md += ["## Prevention", ""]
    for m in prevention or []:
        body = "\n  ".join(line.rstrip() for line in m.text.strip().splitlines() if line.strip())
        md.append(f"- {body} ({who(m.added_by)}, {fmt_utc(m.added_at)})")
    if not prevention:
        md.append("No prevention measure written yet (the \"Add prevention measure\" action).")
    md.append("")

    if rollback:
        md += before_approval_section(inc)

    if chart_file:
        md += ["## Model performance", "", f"![Daily IC and rolling Sharpe, last 30 days]({chart_file})", ""]

    # Actions
    md += ["## Actions", "", "| Time (UTC) | Action | Actor | Outcome | Detail |", "|---|---|---|---|---|"]
    for s in steps:
        at = s.finished_at or s.started_at
        md.append(f"| {cell(fmt_utc(at).removesuffix(' UTC'))} | {cell(STEP_LABELS.get(s.step, s.step))} | "
                  f"{cell(who(s.actor))} | {cell(s.outcome)} | {cell(describe(s, who))} |")
    md.append("")

    # Timeline
    targets = target_status(inc, steps, now)
    md += ["## Timeline against the runbook targets", "",
           "| Target | Milestone | Deadline (UTC) | Reached (UTC) | Elapsed | Status |", "|---|---|---|---|---|---|"]
    for t in targets:
        elapsed = f"T+{human_span(t.elapsed)}" if t.elapsed is not None else "-"
        md.append(f"| {target_label(t.minutes)} | {t.label} | {fmt_hms(t.deadline)} | {fmt_hms(t.reached_at)} | {elapsed} | "
                  f"{t.status} |")
    md.append("")

    monitoring = monitoring_summary or monitoring_summary_of(steps)
    if rollback:
        md += ["## Monitoring after the resume", ""]
        if monitoring:
            md.append(monitoring.strip())
        elif inc.state == "monitoring":
            md.append(f"Under way since {fmt_utc(inc.resumed_at)}.")
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
                          f"{one_line(accepted.get('reason'))}")
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

    md += ["## Follow-ups", ""]
    if followups:
        md += ["| Follow-up | Owner | Due (UTC) | State |", "|---|---|---|---|"]
        for f in followups:
            if f.state == "done":
                state = f"done by {who(f.completed_by)} at {fmt_utc(f.completed_at)}"
            else:
                state = f"overdue by {human_span(now - f.due_at)}" if now >= f.due_at else "open"
            md.append(f"| {cell(f.title)} | {cell(who(f.owner) if f.owner else 'unassigned')} | "
                      f"{cell(fmt_utc(f.due_at).removesuffix(' UTC'))} | {cell(state)} |")
    else:
        md.append("None yet (they are created when the rollback finishes)." if rollback and inc.is_open else "None.")
    md.append("")

    md += ["## Prevention and next steps", ""]
    md += [f"{i}. {text}" for i, text in enumerate(next_steps(inc, steps, targets, diagnostics_summary), 1)]
    md += ["", f"_Generated by rollback-bot at {fmt_utc(now)} from the incident journal._", ""]
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
