"""What a person reads in the Approve dialog and the Deny modal, per incident kind: what will happen, in words.

``KIND_TEXT`` is keyed by ``Incident.kind``, or for a quick fix with an entry of its own (the retrain) by the fix's
name; a new kind adds one entry. A kind without an entry gets ``GENERIC``, which names the request and never
invents a plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.fixes import FIXES, REFRESH_VIEW, REFRESH_VIEW_BLOCKING, RETRAIN
from core.incidents import Incident
from core.platform import FEATURE_VIEW

__all__ = ["GENERIC", "KIND_TEXT", "KindText", "text_for"]


@dataclass(frozen=True)
class KindText:
    noun: str                            # "rollback", "quick fix"
    approve_title: str                   # the Approve dialog's title (Slack: at most 100 characters)
    deny_title: str                      # the Deny modal's title (Slack: at most 24 characters)
    will: Callable[[Incident], str]      # what approving it does, in words (the dialog shows at most 300)


def _rollback(inc: Incident) -> str:
    model, target = inc.model_name or "the model", inc.target_backup or "the chosen backup"
    after = ("Trading then stays halted until an approver resumes it." if inc.keep_halted
             else "The bot then verifies it and resumes trading with each client's own settings.")
    return (f"Halt automated trading, take an emergency backup of {model}, and restore {target} in its place. "
            + after)


_FIX_WILL = {
    REFRESH_VIEW: (f"Refresh the feature view {FEATURE_VIEW} concurrently: readers keep reading while it runs. "
                   "Trading is not halted and no model changes."),
    REFRESH_VIEW_BLOCKING: (f"Refresh the feature view {FEATURE_VIEW} without CONCURRENTLY: readers of the view are "
                            "locked out while it runs. Trading is not halted and no model changes."),
}


def _fix(inc: Incident) -> str:
    fix = (inc.plan or {}).get("fix")
    if fix in _FIX_WILL:
        return _FIX_WILL[fix]
    label = (inc.plan or {}).get("label") or FIXES.get(fix or "", "the quick fix")
    return f"Run the quick fix “{label}”. Trading is not halted and no model changes."


def _retrain(inc: Incident) -> str:
    from handlers.retrain import approve_confirm_text

    return approve_confirm_text(inc)


KIND_TEXT: dict[str, KindText] = {
    "rollback": KindText("rollback", "Approve the rollback?", "Deny the rollback", _rollback),
    "fix": KindText("quick fix", "Approve the quick fix?", "Deny the quick fix", _fix),
    RETRAIN: KindText("retrain", "Approve the retrain?", "Deny the retrain", _retrain),
}

GENERIC = KindText("request", "Approve the request?", "Deny the request",
                   lambda inc: f"Approve {inc.ref} ({inc.kind}) as described in its message.")


def text_for(incident: Incident) -> KindText:
    fix = (incident.plan or {}).get("fix") if incident.kind == "fix" else None
    return KIND_TEXT.get(fix or "", None) or KIND_TEXT.get(incident.kind, GENERIC)
