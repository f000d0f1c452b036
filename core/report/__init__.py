"""The incident report: Markdown rendered from an incident and its journal, and its files.

    render.py     ``render_report`` (the Markdown) and ``summary_line``
    text.py       formatting: UTC times, spans, table cells, what each journal step says
    nextsteps.py  "Prevention and next steps", from what actually happened
    files.py      ``write_report`` / ``find_report`` / ``write_chart``: the files under INCIDENTS_DIR
    reports.py    ``Reports`` (render and save from the database) and ``add_root_cause``

The runbook's timeline and targets are core.timeline's, its ten-item checklist core.checklist's; both are
re-exported here. Steps written outside the engine (``report``, ``notify``, ``monitor``, ``escalate``,
``target_missed``, ``root_cause``, ``followups``, ``followup``, ``prevention``) are added with ``journal``; their
names never collide with the engine's state names. Follow-ups and prevention measures live in core.followups.
"""

from __future__ import annotations

from core.checklist import CHECKLIST, CHECKLIST_KEYS, ChecklistItem, checklist
from core.incidents import journal
from core.report.files import ReportError, find_report, write_chart, write_report
from core.report.render import render_report, summary_line
from core.report.reports import Reports, add_root_cause
from core.report.text import as_utc, human_span
from core.timeline import TARGET_CHECK_DELAY, TARGETS, TargetStatus, milestone_times, target_status

__all__ = [
    "CHECKLIST",
    "CHECKLIST_KEYS",
    "TARGETS",
    "TARGET_CHECK_DELAY",
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
