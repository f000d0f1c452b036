"""The report's formatting: times in UTC, spans, Markdown cells, and what each journal step says in the
report's Actions table (``STEP_LABELS``, ``describe``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from core.incidents import Step, as_utc

__all__ = [
    "FOLLOWUP_KINDS",
    "LOSS_SOURCES",
    "STEP_LABELS",
    "as_datetime",
    "as_utc",
    "cell",
    "describe",
    "fmt_hms",
    "fmt_utc",
    "human_span",
    "loss_lines",
    "money",
    "one_line",
]


def as_datetime(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else value
    except ValueError:
        return None


def fmt_utc(at: datetime | None) -> str:
    return as_utc(at).strftime("%Y-%m-%d %H:%M:%S UTC") if at else "-"


def fmt_hms(at: datetime | None) -> str:
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


def cell(text: Any) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|") or "-"


def one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def money(value: float) -> str:
    return f"{value:,.0f}" if abs(value - round(value)) < 1e-9 else f"{value:,.2f}"


STEP_LABELS = {
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
    "followups": "Follow-ups created", "followup": "Follow-up", "prevention": "Prevention measure added",
    "loss": "Estimated loss updated", "acknowledge": "Page acknowledged", "pnl_query": "P&L query",
}


FOLLOWUP_KINDS = {"root_cause": "root-cause investigation", "monitoring": "enhanced monitoring",
                   "retrain": "retraining", "checklist": "deployment checklist update",
                   "prevention": "prevention measures"}


LOSS_SOURCES = {"request": "given with the request", "slack": "Slack", "cli": "command line",
                 "pnl_query": "PNL_QUERY"}
MAX_LOSS_ROWS = 100


def loss_lines(losses: Sequence[Any], who: Callable[[str | None], str]) -> list[str]:
    """The estimated loss over time (``core.loss.LossEntry`` rows, oldest first), newest figures kept."""
    shown = list(losses)[-MAX_LOSS_ROWS:]
    md = ["### Estimated loss over time", "", "| Time (UTC) | Estimated loss | Source | By |", "|---|---|---|---|"]
    for e in shown:
        source = LOSS_SOURCES.get(e.source, e.source)
        if e.source == "pnl_query" and (e.detail or {}).get("pnl") is not None:
            source += f" (P&L {money(e.detail['pnl'])})"
        md.append(f"| {cell(fmt_utc(e.recorded_at).removesuffix(' UTC'))} | {money(e.amount)} | {cell(source)} | "
                  f"{cell(who(e.recorded_by))} |")
    if len(losses) > len(shown):
        md.append(f"\n_{len(losses) - len(shown)} earlier figures not shown._")
    return md + [""]


def describe(s: Step, who: Callable[[str], str] = str) -> str:
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
        if d.get("tier") == "emergency":
            text = f"emergency contacts: {text}"
    elif s.step == "loss" and d.get("amount") is not None:
        was = f"{money(d['previous'])} → " if d.get("previous") is not None else ""
        text = f"{was}{money(d['amount'])} ({LOSS_SOURCES.get(d.get('source'), d.get('source'))})"
    elif s.step == "acknowledge":
        text = "the emergency contacts had been paged" if d.get("emergency_paged") else "before the emergency tier"
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
    elif s.step == "followups":
        text = ", ".join(FOLLOWUP_KINDS.get(k, k) for k in d.get("kinds") or [])
    elif s.step == "followup":
        text = f"{FOLLOWUP_KINDS.get(d.get('kind'), d.get('kind', '?'))} {d.get('action', '')}".strip()
        if d.get("action") in ("assigned", "reminded") and d.get("owner"):
            text += f" ({'to' if d['action'] == 'assigned' else 'owner'} {who(d['owner'])})"
    if s.error:
        text = f"{text}; {s.error}" if text else s.error
    return text

