"""Stakeholder notifications that do not need Slack: e-mail at each milestone. The milestones worth telling and
what each says are core.milestones' (re-exported here).

E-mail goes out from the background worker (job ``notify_email``, one per incident and milestone), never
from inside a rollback: ``Mailer.on_event`` only queues. ``EmailNotifier.send`` retries transient failures
(connection refused/reset, timeouts, a dropped connection, 4xx replies) with tenacity and then raises
``NotificationFailed``; the job handler journals the outcome (step ``notify``) and hands a failure to the
``on_failed`` callback (the Slack layer reports it in the thread). A failed e-mail never fails the rollback.
The end milestones (resolved, failed, closed) carry the incident report as an attachment.

SMTP URLs: ``smtp://[user:password@]host[:port]`` (plain, port 25), ``smtp+starttls://…`` (STARTTLS, port 587),
``smtps://…`` (TLS from the start, port 465). The password is never logged nor put in an error message.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential
from tenacity.wait import wait_base

from core.engine import Engine, enqueue
from core.errors import ConfigError, RollbackError
from core.incidents import Incident, journal
from core.milestones import END_MILESTONES, HEADLINES, MILESTONES, Notice, headline, milestone_of, notice
from core.report import Reports, find_report

__all__ = [
    "END_MILESTONES",
    "HEADLINES",
    "MILESTONES",
    "Attachment",
    "Delivery",
    "EmailNotifier",
    "Mailer",
    "Notice",
    "fresh_report",
    "headline",
    "NotificationFailed",
    "SmtpTarget",
    "is_transient",
    "milestone_of",
    "notice",
    "parse_smtp_url",
    "record_notification",
]

log = logging.getLogger("rollback_bot.notify")

Attachment = tuple[str, bytes, str]  # (file name, content, MIME type)


class NotificationFailed(RollbackError):
    """A notification could not be delivered after its retries (the rollback goes on regardless)."""


def record_notification(conn: Any, *, incident_id: int, channel: str, milestone: str, at: datetime,
                        ok: bool | None, recipients: int | None = None, error: str | None = None,
                        actor: str = "rollback-bot") -> None:
    """Journal one notification (``ok=None``: skipped, nobody to tell) in the caller's transaction."""
    outcome = "skipped" if ok is None else ("ok" if ok else "failed")
    journal(conn, incident_id=incident_id, step="notify", actor=actor, at=at, outcome=outcome,
            detail={"channel": channel, "milestone": milestone, "recipients": recipients}, error=error)


# ------------------------------------------------------------------------------------------------ e-mail


@dataclass(frozen=True)
class SmtpTarget:
    scheme: str  # "smtp" | "smtps" | "smtp+starttls"
    host: str
    port: int
    username: str | None
    password: str | None

    @property
    def where(self) -> str:
        """host:port, for messages (never the credentials)."""
        return f"{self.host}:{self.port}"


_DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


def parse_smtp_url(url: str) -> SmtpTarget:
    """Parse ``smtp://``, ``smtp+starttls://`` or ``smtps://`` URLs; errors never echo the password."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConfigError("SMTP_URL is malformed: expected smtp://host:port") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ConfigError("SMTP_URL is malformed: the scheme must be smtp, smtp+starttls or smtps")
    if not parts.hostname:
        raise ConfigError("SMTP_URL is malformed: no host")
    return SmtpTarget(
        scheme=scheme,
        host=parts.hostname,
        port=port or _DEFAULT_PORTS[scheme],
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def is_transient(exc: BaseException) -> bool:
    """Worth another try: no connection, a dropped connection, a timeout, or a 4xx reply."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(400 <= c < 500 for c in codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    if isinstance(exc, smtplib.SMTPException):  # e.g. SMTPNotSupportedError: a configuration problem
        return False
    if isinstance(exc, ssl.SSLCertVerificationError):
        return False
    return isinstance(exc, (OSError, TimeoutError))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        msg = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"{exc.smtp_code} {' '.join(msg.split())}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "recipients refused: " + ", ".join(f"{r} ({c})" for r, (c, _) in exc.recipients.items())
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class Delivery:
    recipients: list[str]
    refused: dict[str, str]  # recipient -> reply, for recipients the server refused while others were accepted
    attempts: int


# Headers up to SMTP's line limit stay on one line: the default 78-column folding breaks a long subject
# right after "Subject:", which some readers show with a leading space.
_POLICY = email_policy.default.clone(max_line_length=998)


def _clean_header(text: str) -> str:
    return " ".join(str(text).split())


class EmailNotifier:
    """Sends one e-mail with attachments through SMTP (stdlib smtplib), retrying transient failures."""

    def __init__(self, smtp_url: str, sender: str, recipients: Sequence[str], *, attempts: int = 3,
                 wait: wait_base | None = None, timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.target = parse_smtp_url(smtp_url)
        self.sender = sender
        self.recipients = [r.strip() for r in recipients if r and r.strip()]
        self.attempts = max(1, attempts)
        self.wait = wait if wait is not None else wait_exponential(multiplier=1, min=1, max=20)
        self.timeout = timeout
        self.ssl_context = ssl_context

    def __repr__(self) -> str:  # never shows the password
        return f"EmailNotifier({self.target.scheme}://{self.target.where}, {len(self.recipients)} recipient(s))"

    def message(self, subject: str, body: str, attachments: Sequence[Attachment] = ()) -> EmailMessage:
        msg = EmailMessage(policy=_POLICY)
        msg["Subject"] = _clean_header(subject)
        msg["From"] = _clean_header(self.sender)
        msg["To"] = ", ".join(_clean_header(r) for r in self.recipients)
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = make_msgid(domain="rollback-bot")
        msg.set_content(body)
        for filename, data, mimetype in attachments:
            maintype, _, subtype = (mimetype or "application/octet-stream").partition("/")
            msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                               filename=Path(filename).name)
        return msg

    def _connect(self) -> smtplib.SMTP:
        t = self.target
        context = self.ssl_context or ssl.create_default_context()
        if t.scheme == "smtps":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(t.host, t.port, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(t.host, t.port, timeout=self.timeout)
        try:
            smtp.ehlo()
            if t.scheme == "smtp+starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if t.username:
                smtp.login(t.username, t.password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _send_once(self, msg: EmailMessage) -> dict:
        smtp = self._connect()
        try:
            refused = smtp.send_message(msg, from_addr=self.sender, to_addrs=self.recipients)
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()
        return refused

    def send(self, subject: str, body: str, attachments: Sequence[Attachment] = ()) -> Delivery:
        """Deliver to every recipient; ``NotificationFailed`` after ``attempts`` tries or a permanent error."""
        if not self.recipients:
            raise NotificationFailed("No e-mail recipients are configured.")
        msg = self.message(subject, body, attachments)
        tries = 0
        try:
            for attempt in Retrying(stop=stop_after_attempt(self.attempts), wait=self.wait,
                                    retry=retry_if_exception(is_transient), reraise=True):
                with attempt:
                    tries = attempt.retry_state.attempt_number
                    if tries > 1:
                        log.info("retrying e-mail via %s (attempt %d)", self.target.where, tries)
                    refused = self._send_once(msg)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one domain error
            why = _reason(exc)
            log.warning("e-mail via %s failed after %d attempt(s): %s", self.target.where, tries, why)
            raise NotificationFailed(
                f"E-mail to {len(self.recipients)} recipient(s) via {self.target.where} failed after {tries} "
                f"attempt(s): {why}"
            ) from None
        shown = {r: f"{c} {m.decode('utf-8', 'replace') if isinstance(m, bytes) else m}"
                 for r, (c, m) in refused.items()}
        return Delivery(recipients=list(self.recipients), refused=shown, attempts=tries)


# ------------------------------------------------------------------------------------------ the mailer


def fresh_report(reports: Reports) -> Callable[[Incident, str], list[Attachment]]:
    """Attachments for ``Mailer``: at the end milestones, bring the report (and its chart) up to date, then
    attach it; nothing at the other milestones."""

    def files(incident: Incident, milestone: str) -> list[Attachment]:
        if milestone not in END_MILESTONES:
            return []
        path = reports.update(incident.id)
        out: list[Attachment] = [(path.name, path.read_bytes(), "text/markdown")]
        chart = path.with_suffix(".png")
        if chart.is_file() and not chart.is_symlink():
            out.append((chart.name, chart.read_bytes(), "image/png"))
        return out

    return files


EMAIL_JOB = "notify_email"
ReportAttachments = Callable[[Incident, str], list[Attachment]]
FailureCallback = Callable[[Incident, str, NotificationFailed], None]


class Mailer:
    """Queues an e-mail per incident milestone and sends it from the worker.

    ``attachments(incident, milestone)`` returns what to attach; by default, at the end milestones, the
    report file found under ``incidents_dir`` (and its chart). Pass a function that brings the report up
    to date first (e.g. ``Reports.update``) so the attachment is never stale.
    """

    def __init__(self, engine: Engine, notifier: EmailNotifier, *, incidents_dir: Path | None = None,
                 attachments: ReportAttachments | None = None) -> None:
        self.engine = engine
        self.notifier = notifier
        self.incidents_dir = Path(incidents_dir) if incidents_dir else None
        self.attachments = attachments or self._report_files
        self.on_failed: FailureCallback | None = None

    @staticmethod
    def queue(conn: Any, *, incident_id: int, milestone: str) -> None:
        enqueue(conn, EMAIL_JOB, incident_id=incident_id, payload={"milestone": milestone},
                dedupe_key=f"notify-email:{incident_id}:{milestone}")

    def register(self, worker: Any, *, on_failed: FailureCallback | None = None) -> None:
        """Install the job handler on ``worker``. The e-mails are queued with each state change, in its
        transaction (``core.outbox.email_job``)."""
        self.on_failed = on_failed
        worker.on(EMAIL_JOB, self.handle)

    def _report_files(self, incident: Incident, milestone: str) -> list[Attachment]:
        if milestone not in END_MILESTONES or self.incidents_dir is None:
            return []
        path = find_report(self.incidents_dir, incident)
        if path is None:
            return []
        out: list[Attachment] = [(path.name, path.read_bytes(), "text/markdown")]
        chart = path.with_suffix(".png")
        if chart.is_file() and not chart.is_symlink():
            out.append((chart.name, chart.read_bytes(), "image/png"))
        return out

    def handle(self, job: dict) -> None:
        """Job handler: send, journal the outcome, report a failure; never raises for a failed delivery."""
        milestone = str(job["payload"].get("milestone", ""))
        incident = self.engine.get(job["incident_id"])
        text = notice(incident, milestone)
        try:
            files = self.attachments(incident, milestone)
        except Exception as exc:  # noqa: BLE001 - send without the attachment rather than not at all
            log.warning("%s: no attachment for %s: %s", incident.ref, milestone, exc)
            files = []
        try:
            delivery = self.notifier.send(text.subject, text.text, files)
        except NotificationFailed as exc:
            with self.engine.db.transaction() as conn:
                record_notification(conn, incident_id=incident.id, channel="email", milestone=milestone,
                                    at=self.engine.clock(), ok=False, recipients=len(self.notifier.recipients),
                                    error=str(exc))
            if self.on_failed is not None:
                try:
                    self.on_failed(incident, milestone, exc)
                except Exception:  # noqa: BLE001 - reporting the failure must not fail the job
                    log.exception("%s: reporting a failed e-mail failed", incident.ref)
            return
        with self.engine.db.transaction() as conn:
            record_notification(conn, incident_id=incident.id, channel="email", milestone=milestone,
                                at=self.engine.clock(), ok=True, recipients=len(delivery.recipients),
                                error=("refused: " + ", ".join(delivery.refused)) if delivery.refused else None)
