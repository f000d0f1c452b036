"""App Home: production models with metrics, open incidents and their state, the trading state, recent
rollbacks. Published on ``app_home_opened`` and re-published for recent viewers when an incident changes."""

from __future__ import annotations

import logging

from slack_bolt import Ack, App
from slack_sdk import WebClient
from slack_sdk.models.blocks import DividerBlock, HeaderBlock
from slack_sdk.models.views import View

from core.incidents import Incident
from handlers import blocks as views
from handlers import incident_views as iv
from handlers.deps import Deps
from handlers.ids import Event
from handlers.progress import SlackProgress

log = logging.getLogger("rollback_bot.home")


def home_view(deps: Deps) -> dict:
    services = deps.services
    status_blocks = views.status_blocks(services.status())
    recent = [i for i in services.engine.list_incidents(limit=30) if not i.is_open][:10]
    extra = [DividerBlock().to_dict(), HeaderBlock(text="Recent incidents").to_dict()]
    if recent:
        lines = [
            f"{iv.STATE_EMOJI.get(i.state, '')} *{i.ref}* {views.esc(i.kind)} `{views.esc(i.model_name or '-')}`"
            f" → `{views.esc(i.target_backup or '-')}` · {i.state} · {i.created_at:%Y-%m-%d %H:%M} UTC"
            for i in recent
        ]
        extra.append(views.section("\n".join(lines)).to_dict())
    else:
        extra.append(views.context("No closed incidents yet.").to_dict())
    blocks = (status_blocks + extra)[:100]
    return View(type="home", blocks=blocks).to_dict()


def publish_home(client: WebClient, deps: Deps, user_id: str) -> None:
    client.views_publish(user_id=user_id, view=home_view(deps))


def register(app: App, deps: Deps, progress: SlackProgress) -> None:
    services = deps.services

    def on_event(ack: Ack, event: dict, client: WebClient) -> None:
        ack()
        deps.later(on_home_opened, event=event, client=client, logger=log)

    def on_home_opened(event: dict, client: WebClient, logger: logging.Logger) -> None:
        if event.get("tab", "home") != "home":
            return
        services.home_opened(user_id=event["user"])
        try:
            publish_home(client, deps, event["user"])
        except Exception:  # noqa: BLE001 - a home tab failure must not surface as a retry storm
            logger.exception("could not publish the App Home")

    deps.work(on_home_opened)

    def refresh_viewers(_: Incident) -> None:
        for user in services.recent_home_viewers():
            publish_home(progress.client, deps, user)

    progress.after_change.append(refresh_viewers)
    app.event(Event.APP_HOME_OPENED.value)(on_event)
