"""Paging that wakes people: the primary contacts first, the emergency contacts when nobody acknowledges within
ESCALATION_ACK_MINUTES, and PagerDuty alongside Slack.

The state lives in PostgreSQL, so two bot processes act as one and a restart forgets nothing::

    rollback_bot.pages     one row per paged incident: why, when, the emergency tier's due time, who
                           acknowledged and when, when it closed, the last event PagerDuty accepted
    rollback_bot.page_log  who was paged and how (each Slack DM, each PagerDuty event), delivered or not

Its life, driven by jobs (``rollback_bot.jobs``, each with a dedupe key, so each exists once)::

    start        an incident's first escalation (core.escalation calls it before telling anyone, so Slack being
                 down never keeps a page from PagerDuty): the page row, job ``page_emergency`` at paged_at +
                 ESCALATION_ACK_MINUTES (``page-emergency:{id}``), job ``pagerduty`` (``pagerduty:{id}:trigger``)
    acknowledge  *Acknowledge* pressed: once (a conditional update; a second press is told who was first); the
                 emergency tier will not fire; job ``pagerduty`` (acknowledge)
    emergency    job ``page_emergency``: unless acknowledged or closed, claimed (emergency_paged_at), the emergency
                 contacts told (``on_emergency``) and journaled; a failure to tell releases the claim and the job
                 is retried
    close        the incident resolved, was denied or cancelled: job ``pagerduty`` (resolve). A failed rollback
                 keeps its page: trading stays halted until a person has looked (and resolves it in PagerDuty)
    pagerduty    job ``pagerduty``: brings PagerDuty up to the page (trigger → acknowledge → resolve), one process
                 at a time per incident (advisory lock), recording what PagerDuty accepted (``pagerduty_sent``);
                 a failure is told once per event (``on_pagerduty_failed``) and retried by the next job the
                 failed one queues (back-off doubling up to 5 minutes, for as long as PagerDuty refuses); while
                 another process holds the lock, the job looks again 5 s later. No sweep.

PagerDuty's dedup key is per incident: ``rollback-bot/INC-{id}/{opened, UTC}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from core import repository as repo, slack_outbox
from core.engine import Engine, enqueue
from core.errors import Conflict, InvalidTransition, NotAuthorized
from core.escalation import claim_once
from core.incidents import CANCELLED, DENIED, RESOLVED, Event, Incident, journal
from core.pagerduty import PagerDuty, PagerDutyFailed

__all__ = ["ACK_STEP", "EMERGENCY_JOB", "PAGERDUTY_JOB", "Page", "Paging", "dedup_key"]

log = logging.getLogger("rollback_bot.paging")

EMERGENCY_JOB = "page_emergency"
PAGERDUTY_JOB = "pagerduty"
ACK_STEP = "acknowledge"
CLOSING = frozenset({RESOLVED, DENIED, CANCELLED})
_ORDER = ("none", "trigger", "acknowledge", "resolve")
BUSY_SECONDS = 5.0  # another process holds the incident's PagerDuty lock: look again after this
MAX_RETRY_SECONDS = 300.0  # the longest wait between two tries while PagerDuty refuses


@dataclass(frozen=True)
class Page:
    incident_id: int
    dedup_key: str
    reason: str
    paged_at: datetime
    emergency_due_at: datetime
    emergency_paged_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    closed_at: datetime | None
    pagerduty_sent: str
    pagerduty_error: str | None

    @property
    def waiting(self) -> bool:
        """Nobody acknowledged it yet and the incident has not closed."""
        return self.acknowledged_at is None and self.closed_at is None

    @property
    def pagerduty_due(self) -> list[str]:
        """The PagerDuty events still to send, in order."""
        sent = _ORDER.index(self.pagerduty_sent)
        if self.closed_at is not None:
            return ["resolve"] if 0 < sent < _ORDER.index("resolve") else []
        want = _ORDER.index("acknowledge" if self.acknowledged_at is not None else "trigger")
        return list(_ORDER[sent + 1 : want + 1])


def dedup_key(incident: Incident) -> str:
    return f"rollback-bot/{incident.ref}/{incident.created_at.strftime('%Y%m%dT%H%M%SZ')}"


class Paging:
    def __init__(self, engine: Engine, *, ack_minutes: float, pagerduty: PagerDuty | None = None) -> None:
        self.engine = engine
        self.db = engine.db
        self.ack = timedelta(minutes=ack_minutes)
        self.pagerduty = pagerduty
        self.on_emergency: Callable[[Incident, Page], None] | None = None
        self.on_pagerduty_failed: Callable[[Incident, str, str], None] | None = None

    def register(self, worker: Any, *, on_emergency: Callable[[Incident, Page], None] | None = None,
                 on_pagerduty_failed: Callable[[Incident, str, str], None] | None = None) -> None:
        self.on_emergency = on_emergency
        self.on_pagerduty_failed = on_pagerduty_failed
        worker.on(EMERGENCY_JOB, self._emergency_job)
        worker.on(PAGERDUTY_JOB, self._pagerduty_job)

    # ------------------------------------------------------------------------------------------- reading

    def get(self, incident_id: int, conn: psycopg.Connection | None = None) -> Page | None:
        if conn is None:
            with self.db.transaction() as c:
                return self.get(incident_id, c)
        row = repo.page_row(conn, incident_id)
        return Page(**row) if row else None

    def log(self, incident_id: int) -> list[dict]:
        with self.db.transaction() as conn:
            return repo.page_log_rows(conn, incident_id)

    # ------------------------------------------------------------------------------------------- changes

    def start(self, incident: Incident, reason: str) -> Page:
        """The incident's page (idempotent: only its first escalation starts one)."""
        now = self.engine.clock()
        with self.db.transaction() as conn:
            closed = self.engine.get(incident.id, conn).state in CLOSING  # e.g. denied before the page's job ran
            row = repo.insert_page(conn, incident_id=incident.id, dedup_key=dedup_key(incident), reason=reason[:2000],
                                   paged_at=now, emergency_due_at=now + self.ack, closed_at=now if closed else None)
            if row is None or closed:
                return Page(**row) if row else self.get(incident.id, conn)
            enqueue(conn, EMERGENCY_JOB, incident_id=incident.id, run_at=now + self.ack,
                    dedupe_key=f"page-emergency:{incident.id}")
            if self.pagerduty is not None:
                enqueue(conn, PAGERDUTY_JOB, incident_id=incident.id, run_at=now,
                        dedupe_key=f"pagerduty:{incident.id}:trigger")
        return Page(**row)

    def record_paged(self, incident_id: int, *, tier: str, delivered: list[str], failed: dict[str, str]) -> None:
        """Who the Slack layer paged (user ids), and whom it could not reach (id → error)."""
        with self.db.transaction() as conn:
            for user in delivered:
                self._log(conn, incident_id, tier, "slack", user, True)
            for user, error in failed.items():
                self._log(conn, incident_id, tier, "slack", user, False, error)

    def acknowledge(self, *, incident_id: int, user: str, allowed: bool) -> Page:
        """*Acknowledge* pressed by ``user``: once; the emergency tier then never fires."""
        inc = self.engine.get(incident_id)
        if not allowed:
            self.engine.audit(None, actor=user, action="acknowledge", outcome="refused", incident_id=incident_id,
                              reason="not a contact, operator or approver")
            raise NotAuthorized("Only the escalation contacts, operators and approvers may acknowledge a page.")
        now = self.engine.clock()
        with self.db.transaction() as conn:
            row = repo.acknowledge_page(conn, incident_id, by=user, at=now)
            if row is None:
                page = self.get(incident_id, conn)
                if page is None:
                    raise InvalidTransition(f"{inc.ref} has not been paged: there is nothing to acknowledge.")
                if page.acknowledged_at is not None:
                    raise Conflict(f"{inc.ref} was already acknowledged by {page.acknowledged_by} at "
                                   f"{page.acknowledged_at:%H:%M:%S} UTC.")
                raise Conflict(f"{inc.ref} is {inc.state}: its page was resolved.")
            page = Page(**row)
            detail = {"by": user, "emergency_paged": page.emergency_paged_at is not None,
                      "after_seconds": round((now - page.paged_at).total_seconds())}
            journal(conn, incident_id=incident_id, step=ACK_STEP, actor=user, at=now, detail=detail)
            repo.queue_report_refresh(conn, incident_id, why=ACK_STEP)  # the report shows who acknowledged
            self.engine.audit(conn, actor=user, action="acknowledge", outcome="ok", incident_id=incident_id)
            if self.pagerduty is not None:
                enqueue(conn, PAGERDUTY_JOB, incident_id=incident_id, run_at=now,
                        dedupe_key=f"pagerduty:{incident_id}:acknowledge")
            queued = slack_outbox.queue_event(self.engine, conn, self.engine.get(incident_id, conn), ACK_STEP, detail)
        self.engine.publish(Event("step", self.engine.get(incident_id), ACK_STEP, detail, queued=queued))
        return page

    def close(self, incident_id: int) -> Page | None:
        """The incident closed: its page is resolved (in PagerDuty too)."""
        with self.db.transaction() as conn:
            return self.close_in(conn, incident_id)

    def close_in(self, conn: psycopg.Connection, incident_id: int) -> Page | None:
        now = self.engine.clock()
        row = repo.close_page(conn, incident_id, at=now)
        if row is not None and self.pagerduty is not None:
            enqueue(conn, PAGERDUTY_JOB, incident_id=incident_id, run_at=now,
                    dedupe_key=f"pagerduty:{incident_id}:resolve")
        return Page(**row) if row else None

    def close_with_state(self, conn: psycopg.Connection, inc: Incident) -> None:
        """Outbox follow-up (core.outbox, added by bot/compose.py): an incident that closes resolves its page in
        the transaction that closes it, whichever process closes it."""
        if inc.state in CLOSING:
            self.close_in(conn, inc.id)

    # ------------------------------------------------------------------------------------------- jobs

    def _emergency_job(self, job: dict) -> None:
        incident_id = job["incident_id"]
        now = self.engine.clock()
        with self.db.transaction() as conn:
            row = repo.claim_emergency_page(conn, incident_id, at=now)
        if row is None:
            return  # acknowledged, closed, or told already
        page = Page(**row)
        inc = self.engine.get(incident_id)
        reason = (f"{inc.ref}: nobody acknowledged the page within {self.ack.total_seconds() / 60:g} minutes "
                  f"({page.reason})")
        try:
            if self.on_emergency is not None:
                self.on_emergency(inc, page)
        except Exception as exc:
            with self.db.transaction() as conn:
                repo.unclaim_emergency_page(conn, incident_id, claimed_at=now)
                self.engine.audit(conn, actor="rollback-bot", action="escalate", outcome="failed",
                                  incident_id=incident_id, tier="emergency", error=str(exc)[:500])
            raise
        with self.db.transaction() as conn:
            journal(conn, incident_id=incident_id, step="escalate", actor="rollback-bot", at=self.engine.clock(),
                    detail={"reason": reason, "tier": "emergency"})
            repo.queue_report_refresh(conn, incident_id, why="page-emergency")  # the report shows the page
            self.engine.audit(conn, actor="rollback-bot", action="escalate", outcome="ok", incident_id=incident_id,
                              tier="emergency", reason=reason)
            queued = slack_outbox.queue_event(self.engine, conn, self.engine.get(incident_id, conn), "escalate",
                                              {"reason": reason, "tier": "emergency"})
        log.info("%s", reason)
        self.engine.publish(Event("step", self.engine.get(incident_id), "escalate",
                                  {"reason": reason, "tier": "emergency"}, queued=queued))

    def _pagerduty_job(self, job: dict) -> None:
        if self.pagerduty is None:
            return
        incident_id = job["incident_id"]
        with self.db.transaction() as lock:
            held = lock.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s)) AS ok",
                                (f"rollback_bot.pagerduty:{incident_id}",)).fetchone()["ok"]
            if not held:  # another process is sending this incident's events: look again shortly
                self._again(job, seconds=BUSY_SECONDS)
                return
            for _ in range(len(_ORDER)):
                page = self.get(incident_id)
                if page is None or not page.pagerduty_due:
                    return
                if not self._send(self.engine.get(incident_id), page, page.pagerduty_due[0]):
                    retry = int((job.get("payload") or {}).get("retry") or 0)
                    self._again(job, seconds=min(2.0 ** (retry + 1), MAX_RETRY_SECONDS), retry=retry + 1)
                    return

    def _again(self, job: dict, *, seconds: float, retry: int = 0) -> None:
        """The next ``pagerduty`` job of the incident, ``seconds`` from now, queued by this one (once per job): a
        page PagerDuty lags behind is retried for as long as it does (back-off up to MAX_RETRY_SECONDS), with no
        give-up and no sweep."""
        with self.db.transaction() as conn:
            enqueue(conn, PAGERDUTY_JOB, incident_id=job["incident_id"], payload={"retry": retry},
                    run_at=self.engine.clock() + timedelta(seconds=seconds),
                    dedupe_key=f"pagerduty:{job['incident_id']}:after:{job['id']}")

    def _send(self, inc: Incident, page: Page, action: str) -> bool:
        """Send one event; True when PagerDuty accepted it. A refusal is recorded and told once per event."""
        details = {"incident": inc.ref, "model": inc.model_name, "state": inc.state, "severity": inc.severity,
                   "estimated_loss": inc.estimated_loss, "opened": inc.created_at.isoformat(), "reason": page.reason}
        try:
            self.pagerduty.send(action, page.dedup_key, **({"summary": page.reason, "source": "rollback-bot",
                                                           "severity": inc.severity, "details": details}
                                                          if action == "trigger" else {}))
        except PagerDutyFailed as exc:
            error = str(exc)
            now = self.engine.clock()
            with self.db.transaction() as conn:
                repo.set_pagerduty_error(conn, inc.id, error[:1000])
                self._log(conn, inc.id, self._tier(page), "pagerduty", action, False, error)
                self.engine.audit(conn, actor="rollback-bot", action="pagerduty", outcome="failed",
                                  incident_id=inc.id, event=action, error=error[:500])
                first = claim_once(conn, f"pagerduty-failed:{inc.id}:{action}", incident_id=inc.id, at=now)
            if first and self.on_pagerduty_failed is not None:
                try:
                    self.on_pagerduty_failed(inc, action, error)
                except Exception:  # noqa: BLE001 - telling about it must not stop the retries
                    log.exception("%s: could not report a PagerDuty failure", inc.ref)
            return False
        with self.db.transaction() as conn:
            repo.set_pagerduty_sent(conn, inc.id, action=action, previous=page.pagerduty_sent)
            self._log(conn, inc.id, self._tier(page), "pagerduty", action, True)
            self.engine.audit(conn, actor="rollback-bot", action="pagerduty", outcome="ok", incident_id=inc.id,
                              event=action)
        return True

    @staticmethod
    def _tier(page: Page) -> str:
        return "emergency" if page.emergency_paged_at is not None else "primary"

    def _log(self, conn: psycopg.Connection, incident_id: int, tier: str, channel: str, recipient: str, ok: bool,
             error: str | None = None) -> None:
        repo.log_page(conn, incident_id=incident_id, tier=tier, channel=channel, recipient=recipient,
                      at=self.engine.clock(), ok=ok, error=error[:1000] if error else None)
