"""The Slack side of `rollback-bot doctor`: the Slack checks core cannot make, the view of a run, and the run at
`serve` start whose problems are posted to the incident channel."""

from __future__ import annotations

import logging
from collections.abc import Callable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.models.blocks import Block, HeaderBlock

from core.doctor import Check, DoctorRun
from handlers.blocks import context, esc, finish, section, when

log = logging.getLogger("rollback_bot.doctor")


def _error(exc: Exception) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error") or exc.response.status_code)
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def slack_checks(client: WebClient, channel: str | None) -> Callable[[], list[Check]]:
    """Slack auth (auth.test) and the bot's membership of INCIDENT_CHANNEL (conversations.info)."""

    def run() -> list[Check]:
        try:
            auth = client.auth_test()
        except (SlackApiError, SlackClientError, OSError) as exc:
            why = _error(exc)
            fix = ("the bot token was revoked or is wrong: reinstall the app to the workspace and set SLACK_BOT_TOKEN"
                   if why in ("invalid_auth", "token_revoked", "not_authed", "account_inactive")
                   else "check SLACK_API_URL and that this host reaches Slack")
            return [Check("Slack auth", False, f"auth.test failed: {why}", fix, area="slack"),
                    Check("Slack channel", False, "not checked: Slack auth failed", "fix Slack auth first",
                          area="slack")]
        who = f"{auth.get('user') or auth.get('user_id')} in {auth.get('team') or auth.get('team_id')}"
        checks = [Check("Slack auth", True, f"the bot token works ({who})", area="slack")]
        if not channel:
            return checks + [Check("Slack channel", False, "INCIDENT_CHANNEL is not set",
                                   "set INCIDENT_CHANNEL to the incident channel's ID", area="slack")]
        try:
            info = client.conversations_info(channel=channel)
        except (SlackApiError, SlackClientError, OSError) as exc:
            why = _error(exc)
            fix = ("add the channels:read and groups:read scopes (manifest.yml) and reinstall the app"
                   if why == "missing_scope" else f"set INCIDENT_CHANNEL to a channel ID the bot can see ({why})")
            return checks + [Check("Slack channel", False, f"conversations.info for {channel} failed: {why}", fix,
                                   area="slack")]
        ch = info.get("channel") or {}
        name = f"#{ch['name']} ({channel})" if ch.get("name") else channel
        if ch.get("is_archived"):
            return checks + [Check("Slack channel", False, f"{name} is archived",
                                   "unarchive it or set INCIDENT_CHANNEL to the live incident channel", area="slack")]
        if not ch.get("is_member"):
            return checks + [Check("Slack channel", False, f"the bot is not a member of {name}",
                                   "invite it: `/invite @rollback-bot` in that channel", area="slack")]
        return checks + [Check("Slack channel", True, f"the bot is a member of {name}", area="slack")]

    return run


def doctor_blocks(run: DoctorRun) -> list[dict]:
    icon = ":white_check_mark:" if run.ok else ":stethoscope:"
    blocks: list[Block] = [HeaderBlock(text="rollback-bot doctor"),
                           context(f"{icon} {run.summary()} · {when(run.at)} · {esc(run.source)}")]
    lines = [f"{':white_check_mark:' if c.ok else ':x:'} {esc(c.reason)}" for c in run.checks]
    chunk: list[str] = []
    for line in lines:
        if sum(len(x) + 1 for x in chunk) + len(line) > 2900:
            blocks.append(section("\n".join(chunk)))
            chunk = []
        chunk.append(line)
    if chunk:
        blocks.append(section("\n".join(chunk)))
    return finish(blocks)


def problems_text(run: DoctorRun, *, at_start: bool = False) -> str:
    head = ("rollback-bot doctor at start found" if at_start else "rollback-bot doctor found") + \
        f" {run.summary()}; a rollback may fail until they are fixed:"
    return ":stethoscope: " + head + "\n" + "\n".join(f"• {esc(c.reason)}" for c in run.problems[:30])


def at_start(services, client: WebClient, *, start_id: str) -> DoctorRun | None:
    """The run at `serve` start (once per start, across its work process's restarts): kept for `/rollback status`,
    and its problems posted to INCIDENT_CHANNEL."""
    if not services.claim_delivery(f"doctor:{start_id}"):
        return None
    channel = services.settings.incident_channel
    run = services.doctor(source="serve start", chat=slack_checks(client, channel))
    if run.ok:
        log.info("doctor at start: %s", run.summary())
        return run
    for check in run.problems:
        log.warning("doctor at start: %s", check.reason)
    if channel:
        try:
            client.chat_postMessage(channel=channel, text=problems_text(run, at_start=True))
        except (SlackApiError, SlackClientError, OSError) as exc:
            log.error("the doctor's problems could not be posted to %s: %s", channel, _error(exc))
    return run
