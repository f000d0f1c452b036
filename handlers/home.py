"""App Home: production models, open incidents and the trading state, refreshed when opened."""

from __future__ import annotations

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.models.views import View

from core.services import Services
from handlers import blocks as views
from handlers.ids import Event


def home_view(services: Services) -> dict:
    blocks = views.status_blocks(services.status())
    return View(type="home", blocks=blocks[:100]).to_dict()


def publish_home(client: WebClient, services: Services, user_id: str) -> None:
    client.views_publish(user_id=user_id, view=home_view(services))


def register(app: App, services: Services) -> None:
    def ack_event(ack) -> None:
        ack()

    def on_home_opened(event: dict, client: WebClient, logger) -> None:
        if event.get("tab", "home") != "home":
            return
        try:
            publish_home(client, services, event["user"])
        except Exception:  # noqa: BLE001 - a home tab failure must not surface as a retry storm
            logger.exception("could not publish the App Home")

    app.event(Event.APP_HOME_OPENED.value)(ack=ack_event, lazy=[on_home_opened])
