"""The runbook's pre-rollback checks (steps 1 to 3), asked of the requester before a rollback request is posted.

Before anyone rolls a model back the runbook has the requester make sure of four things::

    problem_confirmed   the problem is confirmed with performance data or monitoring, not a hunch
    not_temporary       it is not a temporary market condition (a move every model would suffer)
    backup_verified     the target backup is verified: its metrics are better than the current model's
    stakeholders_aware  stakeholders are notified: the trading team knows a rollback is coming

The request form asks them as required checkboxes; `/rollback start … --confirm` and
`rollback-bot rollback … --confirm` confirm all four at once (without `--confirm` nothing is posted or changed:
the answer is this checklist and the same command with `--confirm` appended). What was confirmed, by whom, how and
when is kept in the incident's ``plan["confirmations"]`` and shown on the card and in the report. A request nobody
confirmed (the watchdog's proposal, a quick fix) says so.

Plain values only: no Slack here.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "CHECKS",
    "CONFIRM_FLAG",
    "Check",
    "cli_prompt",
    "command_with_confirm",
    "confirmation_lines",
    "confirmed",
    "missing",
    "plain_checklist",
    "report_section",
    "split_confirm",
]

CONFIRM_FLAG = "--confirm"


@dataclass(frozen=True)
class Check:
    key: str
    label: str        # at most 75 characters (a Slack option's text)
    detail: str       # at most 75 characters (its description)

    @property
    def text(self) -> str:
        return f"{self.label}: {self.detail}"


CHECKS: tuple[Check, ...] = (
    Check("problem_confirmed", "Problem confirmed with performance data or monitoring",
          "IC, Sharpe, P&L or the monitoring show it; not a hunch"),
    Check("not_temporary", "Not a temporary market condition",
          "the model is at fault, not a market-wide move that will pass"),
    Check("backup_verified", "Target backup verified",
          "its metrics are better than the current model's"),
    Check("stakeholders_aware", "Stakeholders notified",
          "the trading team knows a rollback is coming"),
)
_BY_KEY = {c.key: c for c in CHECKS}


def missing(keys: Iterable[str] | None) -> list[Check]:
    """The checks not among ``keys`` (unknown keys are ignored)."""
    given = set(keys or ())
    return [c for c in CHECKS if c.key not in given]


def confirmed(*, by: str, via: str, at: datetime, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """What goes into ``plan["confirmations"]``: every check confirmed (``keys`` defaults to all of them).
    Raises ValueError when one is missing: a request is never recorded as confirmed when it was not."""
    keys = [c.key for c in CHECKS] if keys is None else list(keys)
    lacking = missing(keys)
    if lacking:
        raise ValueError("not confirmed: " + ", ".join(c.label for c in lacking))
    return {"by": by, "via": via, "at": at.isoformat(), "checks": [c.key for c in CHECKS]}


def split_confirm(args: list[str]) -> tuple[list[str], bool]:
    """The words of a command without ``--confirm``, and whether it was given."""
    rest = [a for a in args if a != CONFIRM_FLAG]
    return rest, len(rest) != len(args)


def plain_checklist(bullet: str = "-") -> str:
    return "\n".join(f"{bullet} {c.text}" for c in CHECKS)


def command_with_confirm(words: Iterable[str]) -> str:
    """A command line, with ``--confirm`` appended (once)."""
    words = [w for w in words if w != CONFIRM_FLAG]
    return " ".join([*words, CONFIRM_FLAG])


def cli_prompt(argv: list[str]) -> str:
    """`rollback-bot rollback` without ``--confirm``: the checklist and the same command to run."""
    line = shlex.join([w for w in argv if w != CONFIRM_FLAG] + [CONFIRM_FLAG])
    return ("Nothing was done. Before a break-glass rollback, confirm the runbook's pre-rollback checks:\n"
            f"{plain_checklist('  [ ]')}\n"
            "When all of them hold, run the same command with --confirm:\n"
            f"  {line}")


def confirmation_lines(plan: dict | None) -> list[str]:
    """Markdown lines for the report: the pre-rollback checks as confirmed (or not) at request time."""
    record = (plan or {}).get("confirmations")
    if not record:
        return ["Not confirmed by a person at request time (a proposal by the watchdog or a quick fix); the approver"
                " decided without the requester's pre-rollback checks."]
    lines = [f"Confirmed by {record.get('by', '?')} via {record.get('via', '?')} at {record.get('at', '?')}:"]
    done = set(record.get("checks") or ())
    for c in CHECKS:
        lines.append(f"- [{'x' if c.key in done else ' '}] {c.text}")
    return lines


def report_section(incident: Any) -> list[str]:
    """The report's "Before approval" section of a rollback: the requester's checks, the evidence the approver
    had, and a halt before approval."""
    from core.evidence import summary_lines
    from core.halt_now import early_halt

    plan = incident.plan or {}
    md = ["## Before approval", "", "### Pre-rollback checks", ""]
    md += confirmation_lines(plan)
    md += ["", "### Evidence", ""]
    if plan.get("evidence") or incident.state == "requested":
        md += [f"- {line}" for line in summary_lines(plan.get("evidence"))]
    else:
        md.append("Not computed before the request was decided" + (" (break-glass CLI: approved at once)."
                                                                    if incident.source == "cli" else "."))
    halt = early_halt(incident)
    if halt:
        md += ["", f"Trading was halted before approval by {halt.get('by')} at {halt.get('at')} (*Halt now*); the"
                   " rollback joined that halt."
               if incident.approved_by else
               f"Trading was halted before approval by {halt.get('by')} at {halt.get('at')} (*Halt now*)."]
    return md + [""]
