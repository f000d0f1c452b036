"""Telling people: stakeholders at every milestone, escalation pages, runbook targets missed, monitoring,
failed e-mails, and the incident report uploaded to the incident's thread.

Thread replies and DMs go through the reporting thread (``SlackProgress.submit``) so they keep their order
with the incident's other messages; a failed notification is reported in the thread and never reaches the
rollback. Escalation pages are sent synchronously so that a page Slack refused is retried by its timer; they
go to the primary contacts, and to the emergency contacts when nobody acknowledges (core.paging).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from slack_sdk import WebClient

from core.auth import is_group
from core.escalation import Breach
from core.incidents import Event, Incident
from core.milestones import headline
from core.monitoring import MonitorCheck, MonitorSummary
from core.paging import Page
from handlers.blocks import esc
from handlers.deps import Deps
from handlers.paging_views import page_blocks
from handlers.progress import SlackProgress

log = logging.getLogger("rollback_bot.notifications")

MILESTONE_ICON = {
    "opened": ":rotating_light:", "halted": ":octagonal_sign:", "rolled_back": ":ledger:", "resumed": ":arrow_forward:",
    "failed": ":red_circle:", "resolved": ":large_green_circle:", "closed": ":heavy_multiplication_x:",
    "needs_attention": ":rotating_light:",
}


def milestone_text(incident: Incident, milestone: str) -> str:
    """The stakeholders' message: the milestone's headline (core.notify, the e-mail's subject) in Slack's markup,
    with the reason when an incident opens and the error when it fails."""
    who = (lambda u: f"<@{esc(u)}>") if incident.source == "slack" else esc
    text = headline(incident, milestone, ref=lambda r: f"*{r}*", code=lambda s: f"`{esc(s)}`", who=who)
    text = f"{MILESTONE_ICON.get(milestone, ':bell:')} {text}."
    if milestone == "opened":
        text += f" Reason: {esc(incident.reason[:300])}"
    elif milestone == "failed":
        text += f" Error: {esc((incident.error or 'see the thread')[:300])}"
    return text


def mention(entry: str) -> str:
    return f"<!subteam^{entry}>" if is_group(entry) else f"<@{entry}>"


class SlackNotifier:
    def __init__(self, client: WebClient, deps: Deps, progress: SlackProgress) -> None:
        self.client = client
        self.deps = deps
        self.progress = progress
        self.settings = deps.services.settings

    # ------------------------------------------------------------------------------- stakeholders

    def milestone(self, incident: Incident, milestone: str) -> None:
        """The stakeholders' Slack message of a milestone, delivered by the Slack lane (handlers/slack_delivery.py:
        queued with the state change, the incident as it was then; its card exists). Once per milestone."""
        inc = self.deps.engine.get(incident.id)
        if not inc.channel or not inc.message_ts:
            raise RuntimeError(f"{inc.ref} has no card to announce {milestone} in")
        if self.deps.services.notified(incident_id=inc.id, channel="slack", milestone=milestone):
            return
        stakeholders = self.settings.stakeholders
        if not stakeholders:
            self.deps.services.record_notification(incident_id=inc.id, channel="slack", milestone=milestone, ok=None)
            return
        text = milestone_text(incident, milestone)  # the incident as it was at this milestone
        errors = []
        try:
            self.progress.reply(inc, f"{' '.join(mention(s) for s in stakeholders)} {text}")
        except Exception as exc:  # noqa: BLE001 - reported below, never raised
            errors.append(f"thread mention: {exc}")
        link = ""
        try:
            link = self.client.chat_getPermalink(channel=inc.channel, message_ts=inc.message_ts).get("permalink", "")
        except Exception as exc:  # noqa: BLE001
            errors.append(f"permalink: {exc}")
        users = [s for s in stakeholders if not is_group(s)]
        for user in users:
            try:
                dm = self.client.conversations_open(users=user)["channel"]["id"]
                self.client.chat_postMessage(channel=dm, text=f"{text}\n{link}".strip())
            except Exception as exc:  # noqa: BLE001
                errors.append(f"DM to <@{user}>: {getattr(exc, 'response', {}) and exc.response.get('error') or exc}")
        self.deps.services.record_notification(
            incident_id=inc.id, channel="slack", milestone=milestone, ok=not errors, recipients=len(users),
            error="; ".join(errors)[:1000] or None,
        )
        if errors:
            self.progress.reply(inc, ":warning: Some stakeholder notifications failed (the rollback goes on): "
                                + esc("; ".join(errors)[:1500]))

    # ------------------------------------------------------------------------------- escalation

    def page(self, incident: Incident, reason: str) -> None:
        """The primary contacts (user groups expanded): a DM each and a mention in the thread, with *Acknowledge*
        while nobody has acknowledged the incident's page."""
        inc = self.deps.engine.get(incident.id)
        page = self.deps.paging.get(inc.id)
        self._page_people(inc, self.settings.primary_contacts, tier="primary",
                          text=f":rotating_light: *Escalation* of {inc.ref}: {esc(reason)}",
                          acknowledgeable=page is not None and page.waiting, unset="(no PRIMARY_CONTACTS configured)")

    def emergency(self, incident: Incident, page: Page) -> None:
        """Nobody acknowledged within ESCALATION_ACK_MINUTES: the emergency contacts, the same way."""
        inc = self.deps.engine.get(incident.id)
        text = (f":rotating_light: *Emergency escalation* of {inc.ref}: nobody acknowledged the page within "
                f"{self.settings.escalation_ack_minutes:g} minutes. {esc(page.reason)}")
        self._page_people(inc, self.settings.emergency_contacts, tier="emergency", text=text, acknowledgeable=True,
                          unset="(no EMERGENCY_CONTACTS configured)")

    def pagerduty_failed(self, incident: Incident, action: str, error: str) -> None:
        self._say(incident, f":warning: PagerDuty did not accept the {action} event of {incident.ref}: {esc(error)}."
                            " It is retried; the Slack pages go on.")

    def _page_people(self, inc: Incident, contacts: list[str], *, tier: str, text: str, acknowledgeable: bool,
                     unset: str) -> None:
        """A DM to each person, a thread mention; who was reached is recorded. Raises only when there was somebody
        to tell and nobody could be told (the page is then retried)."""
        where = f" (<#{inc.channel}>)" if inc.channel else ""
        users: list[str] = []
        failed: dict[str, str] = {}
        for entry in contacts:
            try:
                users += [u for u in self.deps.auth.users_in([entry]) if u not in users]
            except Exception as exc:  # noqa: BLE001 - reported below; the others are still paged
                failed[entry] = _slack_error(exc)
        delivered = []
        for user in users:
            try:
                dm = self.client.conversations_open(users=user)["channel"]["id"]
                self.client.chat_postMessage(channel=dm, text=text + where,
                                             blocks=page_blocks(inc, text + where, acknowledgeable=acknowledgeable))
                delivered.append(user)
            except Exception as exc:  # noqa: BLE001
                failed[user] = _slack_error(exc)
        mentioned = False
        if inc.channel and inc.message_ts:
            who = " ".join(mention(c) for c in contacts) or unset
            try:
                self.client.chat_postMessage(channel=inc.channel, thread_ts=inc.thread_ts or inc.message_ts,
                                             text=f"{who} {text}",
                                             blocks=page_blocks(inc, f"{who} {text}", acknowledgeable=acknowledgeable))
                mentioned = True
            except Exception as exc:  # noqa: BLE001
                failed["thread"] = _slack_error(exc)
        self.deps.paging.record_paged(inc.id, tier=tier, delivered=delivered,
                                               failed={k: v for k, v in failed.items() if k != "thread"})
        if failed and (delivered or mentioned):
            self._say(inc, f":warning: Some of the {tier} contacts could not be paged in Slack: "
                           + esc("; ".join(f"{k}: {v}" for k, v in failed.items())[:1500]))
        if failed and not delivered and not mentioned:
            raise RuntimeError(f"nobody could be paged in Slack: {'; '.join(f'{k}: {v}' for k, v in failed.items())}")

    def breach(self, incident: Incident, breach: Breach) -> None:
        self._say(incident, f":alarm_clock: Runbook target missed: {esc(breach.message)}")

    # ------------------------------------------------------------------------------- monitoring

    def trouble(self, incident: Incident, check: MonitorCheck) -> None:
        lines = "\n".join(f"> {esc(line[:300])}" for line in check.error_lines[:5])
        self._say(incident, ":warning: *Monitoring*: " + esc("; ".join(check.trouble)) + (f"\n{lines}" if lines else ""))

    def summary(self, incident: Incident, summary: MonitorSummary) -> None:
        icon = ":white_check_mark:" if summary.ok else ":warning:"
        self._say(incident, f"{icon} *Logs monitored* for {summary.minutes:.0f} minutes: {esc(summary.text)}")

    def email_failed(self, incident: Incident, milestone: str, exc: Exception) -> None:
        self._say(incident, f":warning: E-mail to stakeholders ({milestone}) failed; the rollback goes on: {esc(exc)}")

    # ------------------------------------------------------------------------------- the report

    def report(self, incident: Incident, event: Event) -> None:
        """A ``report`` step: upload the file to the incident's thread (with a short summary)."""
        d = event.detail
        if not d.get("upload"):
            return
        channel = incident.channel or self.deps.channel
        thread = (incident.thread_ts or incident.message_ts) if incident.channel else None
        path = Path(d["path"])
        comment = (":page_facing_up: Incident report" + (" (again)" if d.get("again") else "")
                   + f": {esc(d.get('summary') or incident.ref)}")
        files = [{"file": str(path), "filename": path.name, "title": f"{incident.ref} incident report"}]
        chart = path.with_suffix(".png")
        if chart.is_file():
            files.append({"file": str(chart), "filename": chart.name, "title": f"{incident.ref} performance chart"})
        self.client.files_upload_v2(file_uploads=files, channel=channel, thread_ts=thread, initial_comment=comment)

    def _say(self, incident: Incident, text: str) -> None:
        inc = self.deps.engine.get(incident.id)
        if inc.channel and inc.message_ts:
            self.progress.submit(lambda: self.progress.reply(inc, text), ref=inc.ref)


def _slack_error(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return str((response.get("error") if response is not None else None) or exc)[:300]


class PeopleNames:
    """Slack user ids as names for reports ("Alice Smith (@alice)"), from users.info, cached."""

    def __init__(self, client: WebClient) -> None:
        self.client = client
        self._cache: dict[str, str] = {}

    def __call__(self, ident: str) -> str:
        if not re.fullmatch(r"[UW][A-Z0-9]{2,20}", ident or ""):
            return ident
        if ident not in self._cache:
            try:
                user = self.client.users_info(user=ident)["user"]
                real = (user.get("real_name") or user.get("profile", {}).get("real_name") or "").strip()
                name = user.get("name") or ident
                self._cache[ident] = f"{real} (@{name})" if real else f"@{name}"
            except Exception:  # noqa: BLE001 - the id itself is still a correct answer
                return ident
        return self._cache[ident]


def register(client: WebClient, deps: Deps, progress: SlackProgress) -> SlackNotifier:
    n = SlackNotifier(client, deps, progress)
    deps.reports.people = PeopleNames(client)
    progress.on_step["report"] = n.report
    deps.services.register_aftercare(on_page=n.page, on_breach=n.breach, on_trouble=n.trouble,
                                     on_summary=n.summary, on_email_failed=n.email_failed,
                                     on_emergency=n.emergency, on_pagerduty_failed=n.pagerduty_failed)
    return n
