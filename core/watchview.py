"""The 24-hour watch's record (``plan.watch``, kept by ``core.watch``) as text: the one thread message that is
updated after every check, the summary at the end, and the report's section. Pure functions of the record.

The record::

    anchor          ISO time the slots count from (the incident's opening: slot k is due at anchor + k × every)
    every_minutes   the interval (ENHANCED_MONITOR_EVERY_MINUTES)
    slots           how many checks (ENHANCED_MONITOR_HOURS × 60 / every)
    checks          one entry per check made: n, due, at, ok, trouble, ic, rows, days, errors {log: n}, trades
    missed          slots whose time passed by more than one interval while no bot process ran: n, due
    message_ts      the thread message updated after each check
    ended           when the last check was made (the summary is journaled as ``watch_end``)
    stopped         why the watch stopped early (the model was handed to a follow-up rollback, …)
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

__all__ = ["due_at", "watch_message_lines", "watch_report_lines", "watch_summary"]

SHOWN_CHECKS = 8


def _at(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _hm(value: str | datetime | None) -> str:
    at = _at(value) if isinstance(value, str) or value is None else value
    return at.astimezone(timezone.utc).strftime("%H:%M") if at else "?"


def due_at(watch: dict, n: int) -> datetime:
    return _at(watch["anchor"]) + timedelta(minutes=float(watch["every_minutes"]) * n)


def _check_line(c: dict) -> str:
    parts = []
    if c.get("rows"):
        ic = f"{c['ic']:+.3f}" if c.get("ic") is not None else "undefined"
        parts.append(f"IC {ic} on {c['rows']} new row(s) over {c.get('days', 0)} day(s)")
    else:
        parts.append("no new realized returns")
    errors = c.get("errors") or {}
    parts.append(", ".join(f"{n} error line(s) in {name}" for name, n in errors.items()) if errors
                 else "no log configured")
    trades = c.get("trades")
    parts.append("trading running" if trades is None else f"{trades} trade(s) while halted")
    mark = "OK" if c.get("ok") else "TROUBLE"
    late = ""
    due, at = _at(c.get("due")), _at(c.get("at"))
    if due and at and (at - due) > timedelta(minutes=1):
        late = f", ran at {_hm(at)}"
    text = f"#{c['n']} {_hm(due)}{late} {mark}: " + "; ".join(parts)
    if c.get("trouble"):
        text += " — " + "; ".join(c["trouble"])
    return text


def watch_message_lines(watch: dict, *, ref: str) -> list[str]:
    """The thread message (plain text; the Slack layer escapes and styles it): where the watch stands, the
    latest checks, every missed check and every check that found trouble."""
    checks = watch.get("checks") or []
    missed = watch.get("missed") or []
    slots = int(watch.get("slots") or 0)
    last_due = due_at(watch, slots) if watch.get("anchor") and slots else None
    if watch.get("stopped"):
        head = f"Enhanced monitoring of {ref} stopped: {watch['stopped']}"
    elif watch.get("ended"):
        head = f"Enhanced monitoring of {ref} completed: {len(checks)} check(s), {len(missed)} missed"
    else:
        nxt = due_at(watch, (checks[-1]["n"] + 1) if checks else int(watch.get("first") or 1))
        head = (f"Enhanced monitoring of {ref}: {len(checks)} of {slots} check(s) done, every "
                f"{float(watch['every_minutes']):g} min until {last_due:%Y-%m-%d %H:%M} UTC; next at {_hm(nxt)} UTC")
    lines = [head]
    trouble = [c for c in checks if not c.get("ok")]
    if missed:
        lines.append(f"MISSED ({len(missed)}): " + ", ".join(f"#{m['n']} due {_hm(m.get('due'))}" for m in missed)
                     + " — no bot process ran then")
    earlier = [c for c in trouble if c not in checks[-SHOWN_CHECKS:]]
    lines += [_check_line(c) for c in earlier]
    if len(checks) > SHOWN_CHECKS:
        lines.append(f"… {len(checks) - SHOWN_CHECKS - len(earlier)} earlier clean check(s) not shown")
    lines += [_check_line(c) for c in checks[-SHOWN_CHECKS:]]
    return lines


def watch_summary(watch: dict, *, ref: str) -> str:
    """The end of the watch, in one paragraph."""
    checks = watch.get("checks") or []
    missed = watch.get("missed") or []
    trouble = [c for c in checks if not c.get("ok")]
    last = next((c for c in reversed(checks) if c.get("rows")), None)
    hours = float(watch.get("every_minutes") or 0) * int(watch.get("slots") or 0) / 60
    parts = [f"Enhanced monitoring of {ref} ({hours:g} h, every {float(watch.get('every_minutes') or 0):g} min): "
             f"{len(checks)} check(s) made, {len(missed)} missed."]
    if last is not None:
        ic = f"{last['ic']:+.3f}" if last.get("ic") is not None else "undefined"
        parts.append(f"Latest IC {ic} on {last['rows']} new row(s).")
    errors = sum(sum((c.get("errors") or {}).values()) for c in checks)
    parts.append(f"{errors} error line(s) in the logs.")
    parts.append(f"Trouble in {len(trouble)} check(s): " + "; ".join(
        t for c in trouble for t in c.get("trouble") or []) + "." if trouble else "No trouble found.")
    if missed:
        parts.append("Missed checks: " + ", ".join(f"#{m['n']} (due {_hm(m.get('due'))} UTC)" for m in missed) + ".")
    return " ".join(parts)


def watch_report_lines(watch: dict | None) -> list[str]:
    """The report's section: a summary and a table of every check (Markdown)."""
    if not watch or not watch.get("anchor"):
        return []
    checks = watch.get("checks") or []
    missed = watch.get("missed") or []
    lines = []
    if watch.get("stopped"):
        lines.append(f"Stopped early: {watch['stopped']}.")
    state = "completed" if watch.get("ended") else "under way"
    lines.append(f"{state.capitalize()}: {len(checks)} of {watch.get('slots')} check(s) made, every "
                 f"{float(watch['every_minutes']):g} minutes; {len(missed)} missed.")
    if missed:
        lines.append("Missed (no bot process ran within one interval of their time): "
                     + ", ".join(f"#{m['n']} due {_hm(m.get('due'))} UTC" for m in missed) + ".")
    if checks:
        lines += ["", "| # | Due (UTC) | Ran (UTC) | IC on new data | Rows | Error lines | Trades while halted | Result |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in checks:
            ic = f"{c['ic']:+.3f}" if c.get("ic") is not None else "-"
            errors = sum((c.get("errors") or {}).values())
            trades = "-" if c.get("trades") is None else str(c["trades"])
            result = "ok" if c.get("ok") else "trouble: " + " ".join("; ".join(c.get("trouble") or []).split()
                                                                     ).replace("|", "\\|")
            lines.append(f"| {c['n']} | {_hm(c.get('due'))} | {_hm(c.get('at'))} | {ic} | {c.get('rows', 0)} | "
                         f"{errors} | {trades} | {result} |")
    return lines
