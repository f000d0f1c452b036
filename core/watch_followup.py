"""The follow-up of the 24-hour watch (``core.followups``' ``monitoring`` item), settled by the watch itself.

The bot does the runbook's enhanced monitoring (``core.watch``). When the watch completes (its last check made and
its summary journaled), its follow-up is marked done by ``rollback-bot`` in the same transaction, the journal
entry noting the watch's summary, so its owner is not reminded of work the bot did. A watch that ended badly
(a check found trouble, the incident needs attention, or checks were missed because no bot process ran) leaves
the item open for a person to judge: the follow-ups message says so, with the summary (``watch_outcome``, read by
the Slack layer). A watch that stopped
early (another rollback took the model over) settles nothing.

``settle`` is idempotent and is called from both ends: by the watch's last check, and by ``FollowUps.create``
(a watch that ended before the follow-ups were created, e.g. with a short window or a bot that was down).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import psycopg

from core.followups import FollowUp, for_incident
from core.incidents import Incident, journal
from core.repository import audit, complete_open_followup_of_kind, find
from core.watchview import watch_summary

__all__ = ["BOT", "KIND", "WatchOutcome", "settle", "watch_outcome"]

log = logging.getLogger("rollback_bot.followups")

BOT = "rollback-bot"
KIND = "monitoring"


@dataclass(frozen=True)
class WatchOutcome:
    ok: bool  # completed with every check made, no trouble found, and the incident not needing attention
    summary: str  # the watch's summary (``core.watchview.watch_summary``)
    why_open: str | None  # why the follow-up is left to a person (None when ok)


def watch_outcome(incident: Incident) -> WatchOutcome | None:
    """How the incident's 24-hour watch ended; None while it runs, when it stopped early, or without a watch."""
    w = (incident.plan or {}).get("watch") or {}
    if not w.get("ended") or w.get("stopped"):
        return None
    trouble = sum(1 for c in w.get("checks") or [] if not c.get("ok"))
    missed = len(w.get("missed") or [])
    why = []
    if trouble:
        why.append(f"{trouble} check(s) found trouble")
    if missed:  # no bot process ran then: the bot did not do that part of the work
        why.append(f"{missed} check(s) missed")
    if incident.state == "needs_attention":
        why.append(f"{incident.ref} needs attention")
    return WatchOutcome(ok=not why, summary=watch_summary(w, ref=incident.ref),
                        why_open="; ".join(why) if why else None)


def settle(conn: psycopg.Connection, incident_id: int, *, now: datetime) -> FollowUp | None:
    """In the caller's transaction: mark the incident's open ``monitoring`` follow-up done by the bot when its
    watch completed well. Returns the item so completed (None: nothing to do, or left open)."""
    inc = find(conn, incident_id)
    if inc is None:
        return None
    outcome = watch_outcome(inc)
    if outcome is None:
        return None
    if not outcome.ok:
        log.info("%s: the 24-hour watch ended badly (%s): its follow-up is left open", inc.ref, outcome.why_open)
        return None
    done = complete_open_followup_of_kind(conn, inc.id, KIND, by=BOT, at=now)
    if done is None:
        return None  # not created yet (``FollowUps.create`` settles it then), or done already
    item = next(i for i in for_incident(conn, inc.id) if i.id == done)
    journal(conn, incident_id=inc.id, step="followup", actor=BOT, at=now,
            detail={"kind": KIND, "action": "done", "followup": item.id, "note": outcome.summary})
    audit(conn, actor=BOT, action="followup_done", outcome="ok", at=now, incident_id=inc.id, followup=item.id,
          kind=KIND, note="the 24-hour watch completed")
    log.info("%s: the 24-hour watch completed; its follow-up %s is done", inc.ref, item.id)
    return item
