"""Stakeholder milestones: which engine events are worth telling (``milestone_of``) and what each says
(``HEADLINES``), one wording for the e-mail (``notice``, core.notify) and Slack (handlers/notifications, which
formats the same ``headline``)::

    opened       a rollback was requested (or a manual halt began)
    halted       trading was halted for a rollback
    rolled_back  the backup is in production and the deployment log says so (state ``verifying``)
    resumed      trading resumed on the verified model (state ``monitoring``)
    failed       the rollback failed (original model back, trading halted)
    resolved     monitoring ended, or a manual halt was lifted
    closed       the request was denied or cancelled (or superseded by a follow-up rollback)
    needs_attention  monitoring found the restored model failing too (core.aftercare)

The end milestones (resolved, failed, closed) carry the incident report as an attachment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.incidents import Event, Incident
from core.incidents import as_utc

__all__ = ["END_MILESTONES", "HEADLINES", "MILESTONES", "Notice", "headline", "milestone_of", "notice"]

MILESTONES = ("opened", "halted", "rolled_back", "resumed", "failed", "resolved", "closed", "needs_attention")
END_MILESTONES = frozenset({"failed", "resolved", "closed"})


def milestone_of(event: Event) -> str | None:
    """The stakeholder milestone an engine event marks, if any."""
    if event.kind != "state":
        return None
    inc = event.incident
    if inc.kind == "halt":
        return {"halted": "opened", "resolved": "resolved"}.get(inc.state)
    if inc.kind != "rollback":
        return None
    return {
        "requested": "opened",
        "halted": "halted",
        "verifying": "rolled_back",
        "monitoring": "resumed",
        "failed": "failed",
        "revert_failed": "failed",
        "resolved": "resolved",
        "denied": "closed",
        "cancelled": "closed",
        "needs_attention": "needs_attention",
        "superseded": "closed",
    }.get(inc.state)


@dataclass(frozen=True)
class Notice:
    subject: str
    text: str


#: What each milestone says, in the e-mail's subject and in Slack (formatted there): the one place it is written.
HEADLINES = {
    "opened": "{ref} opened: {what} requested by {by}",
    "halted": "{ref}: automated trading halted for the {what}",
    "rolled_back": "{ref}: {model} rolled back to {target}",
    "resumed": "{ref}: trading resumed on {target}, monitoring under way",
    "failed": "{ref} FAILED: {what}; {after}",
    "resolved": "{ref} resolved: {what}",
    "closed": "{ref} {state}: {what}",
    "needs_attention": "{ref} NEEDS ATTENTION: the {what} to {target} did not resolve the issue",
}


def _plain(value: str) -> str:
    return value


def headline(incident: Incident, milestone: str, *, ref: Callable[[str], str] = _plain,
             code: Callable[[str], str] = _plain, who: Callable[[str], str] = _plain) -> str:
    """The milestone's sentence (``HEADLINES``). ``ref``, ``code`` (model and backup names) and ``who`` (the
    requester) format their values for where it is shown; plain text by default."""
    inc = incident
    what = f"rollback of {code(inc.model_name or '?')}" if inc.kind == "rollback" else "halt of automated trading"
    after = ("the original files could NOT all be put back (the production files are mixed) and trading stays"
             " halted" if inc.state == "revert_failed" else "the original model is in place and trading stays halted")
    return HEADLINES.get(milestone, "{ref}: {milestone}").format(
        ref=ref(inc.ref), what=what, model=code(inc.model_name or "?"), target=code(inc.target_backup or "?"),
        by=who(inc.requested_by or "?"), state=inc.state, after=after, milestone=milestone)


def notice(incident: Incident, milestone: str) -> Notice:
    """Plain text of a stakeholder notification (the e-mail; Slack formats the same ``headline``)."""
    inc = incident
    head = headline(inc, milestone)
    lines = [head + ".", ""]
    lines.append(f"Reason: {' '.join(inc.reason.split())}")
    lines.append(f"Severity: {inc.severity}")
    if inc.kind == "rollback":
        lines.append(f"Model: {inc.model_name} ({inc.from_version or '?'} -> {inc.target_backup or '?'})")
    if inc.estimated_loss is not None:
        lines.append(f"Estimated loss: {inc.estimated_loss:,.0f}")
    if inc.approved_by:
        lines.append(f"Approved by: {inc.approved_by}")
    if inc.error:
        lines.append(f"Error: {' '.join(inc.error.split())}")
    lines.append(f"State: {inc.state} (opened {as_utc(inc.created_at):%Y-%m-%d %H:%M:%S} UTC)")
    if milestone in END_MILESTONES:
        lines += ["", "The incident report is attached."]
    return Notice(subject=" ".join(head.split())[:200], text="\n".join(lines) + "\n")
