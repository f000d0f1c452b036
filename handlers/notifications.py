"""Telling people: stakeholders at every milestone, escalation pages, runbook targets missed, monitoring,
failed e-mails, and the incident report uploaded to the incident's thread.

Thread replies and DMs go through the reporting thread (``SlackProgress.submit``) so they keep their order
with the incident's other messages; a failed notification is reported in the thread and never reaches the
rollback. Escalation pages are sent synchronously so that a page Slack refused is retried by its timer.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from slack_sdk import WebClient

from core.auth import is_group
from core.escalation import Breach
from core.incidents import Event, Incident
from core.monitoring import MonitorCheck, MonitorSummary
from core.notify import milestone_of
from handlers.blocks import esc
from handlers.deps import Deps
from handlers.progress import SlackProgress

log = logging.getLogger("rollback_bot.notifications")

MILESTONE_TEXT = {
    "opened": ":rotating_light: *{ref} opened*: {what}. Reason: {reason}",
    "halted": ":octagonal_sign: *{ref}*: automated trading halted.",
    "rolled_back": ":ledger: *{ref}*: {model} rolled back to `{target}`; verifying.",
    "resumed": ":arrow_forward: *{ref}*: trading resumed on `{target}`; monitoring for {minutes:g} minutes.",
    "failed": ":red_circle: *{ref} FAILED*: {error}. {after}",
    "resolved": ":large_green_circle: *{ref} resolved*.",
    "closed": ":heavy_multiplication_x: *{ref}* {state}.",
    "needs_attention": ":rotating_light: *{ref} needs attention*: monitoring found `{target}` failing too; see the"
                       " card for the next step.",
}


def mention(entry: str) -> str:
    return f"<!subteam^{entry}>" if is_group(entry) else f"<@{entry}>"


class SlackNotifier:
    def __init__(self, client: WebClient, deps: Deps, progress: SlackProgress) -> None:
        self.client = client
        self.deps = deps
        self.progress = progress
        self.settings = deps.services.settings

    # ------------------------------------------------------------------------------- stakeholders

    def on_state(self, incident: Incident) -> None:
        """An after-change hook of SlackProgress (already on the reporting thread)."""
        milestone = milestone_of(Event("state", incident))
        if milestone is None:
            return
        inc = self.deps.services.engine.get(incident.id)
        if not inc.channel or not inc.message_ts:
            return  # the card is being posted; post_card announces the incident again once it has a thread
        if self.deps.services.notified(incident_id=inc.id, channel="slack", milestone=milestone):
            return
        stakeholders = self.settings.stakeholders
        if not stakeholders:
            self.deps.services.record_notification(incident_id=inc.id, channel="slack", milestone=milestone, ok=None)
            return
        what = f"rollback of `{inc.model_name}` to `{inc.target_backup}`" if inc.kind == "rollback" else "trading halt"
        text = MILESTONE_TEXT[milestone].format(
            ref=inc.ref, what=what, reason=esc(inc.reason[:300]), model=inc.model_name, target=inc.target_backup,
            minutes=self.settings.monitor_minutes, error=esc((incident.error or "see the thread")[:300]),
            state=incident.state,
            after=("The original files could NOT all be put back (the production files are mixed); trading stays"
                   " halted." if incident.state == "revert_failed" else
                   "The original model is in place; trading stays halted."),
        )
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
            self._say(inc, ":warning: Some stakeholder notifications failed (the rollback goes on): "
                           + esc("; ".join(errors)[:1500]))

    # ------------------------------------------------------------------------------- escalation

    def page(self, incident: Incident, reason: str) -> None:
        inc = self.deps.services.engine.get(incident.id)
        contacts = self.settings.escalation_contacts
        text = f":rotating_light: *Escalation* of {inc.ref}: {esc(reason)}"
        for user in [c for c in contacts if not is_group(c)]:
            dm = self.client.conversations_open(users=user)["channel"]["id"]
            self.client.chat_postMessage(channel=dm, text=text + (f" (<#{inc.channel}>)" if inc.channel else ""))
        if inc.channel and inc.message_ts:
            who = " ".join(mention(c) for c in contacts) or "(no ESCALATION_CONTACTS configured)"
            self.client.chat_postMessage(channel=inc.channel, thread_ts=inc.thread_ts or inc.message_ts,
                                         text=f"{who} {text}")

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
        inc = self.deps.services.engine.get(incident.id)
        if inc.channel and inc.message_ts:
            self.progress.submit(lambda: self.progress.reply(inc, text), ref=inc.ref)


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
    deps.services.reports.people = PeopleNames(client)
    progress.after_change.append(n.on_state)
    progress.on_step["report"] = n.report
    deps.services.register_aftercare(on_page=n.page, on_breach=n.breach, on_trouble=n.trouble,
                                     on_summary=n.summary, on_email_failed=n.email_failed)
    return n
