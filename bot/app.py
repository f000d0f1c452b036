"""The composition root for Slack: ``build_app(settings, services)`` wires listeners onto a Bolt ``App``."""

from __future__ import annotations

import logging
from collections.abc import Callable

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from bot.observability import InstrumentedWebClient, Metrics, counting
from core.auth import Authorizer
from core.watchdog import Proposal
from core.services import Services
from core.settings import Settings
from handlers import (actions, attention, commands, errors, evidence, followups, halt_trades, home, notifications,
                      paging, pickers, retrain, views)
from handlers.deps import Deps, RemoteSubmit, work_pool
from handlers.progress import SlackProgress
from handlers.slack_delivery import SlackDelivery, lane

log = logging.getLogger("rollback_bot")


def build_client(settings: Settings, metrics: Metrics | None = None) -> WebClient:
    """The Web API client: slack_sdk's own retry handlers for 429 (Retry-After), 5xx and connection resets,
    counted into the metrics; API errors are counted too."""
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    client = InstrumentedWebClient(
        token=token,
        base_url=settings.slack_api_url,
        timeout=10,
        retry_handlers=[
            counting(ConnectionErrorRetryHandler, metrics, "connection", max_retry_count=2),
            counting(RateLimitErrorRetryHandler, metrics, "rate_limited", max_retry_count=3),
            counting(ServerErrorRetryHandler, metrics, "server_error", max_retry_count=2),
        ],
    )
    client.metrics = metrics
    return client


def build_authorizer(settings: Settings, client: WebClient) -> Authorizer:
    def members(group: str) -> list[str]:
        return list(client.usergroups_users_list(usergroup=group).get("users") or [])

    return Authorizer(operators=settings.operators, approvers=settings.approvers, stakeholders=settings.stakeholders,
                      resolve_group=members)


def build_app(settings: Settings, services: Services, *, client: WebClient | None = None,
              remote: RemoteSubmit | None = None) -> App:
    """A Bolt App that acks before doing slow work (process_before_response; work on the app's own pool)."""
    secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
    metrics = Metrics()
    metrics.watch(services.engine)
    client = client or build_client(settings, metrics)
    app = App(
        client=client,
        signing_secret=secret,
        request_verification_enabled=secret is not None,
        token_verification_enabled=False,
        process_before_response=True,
        logger=logging.getLogger("rollback_bot.bolt"),
    )
    executor = work_pool()
    deps = Deps(services=services, auth=build_authorizer(settings, client), executor=executor, remote=remote,
                engine=services.engine, followups=services.followups, paging=services.paging, loss=services.loss,
                registry=services.registry, reports=services.reports, worker=services.worker)
    progress = SlackProgress(client, deps)
    services.engine.subscribe(progress)
    app.progress = progress  # type: ignore[attr-defined] - tests and the demo flush it
    app.metrics = metrics  # type: ignore[attr-defined] - served at GET /metrics
    app.deps = deps  # type: ignore[attr-defined] - the work process runs deps.works
    notifier = notifications.register(client, deps, progress)
    # The Slack lane: delivers the Slack updates queued with each state change (core.slack_outbox), in order,
    # on a thread of its own (never behind a running rollback); stopped by ``progress.close()``. Under `serve`
    # (``remote``: the work is done by the work process) it runs in the work process, never in the acking one.
    progress.lane = lane(services.engine)
    progress.lane.on("slack", SlackDelivery(progress, notifier.milestone))
    halt_trades.register(deps, progress)
    followups.register(app, client, deps, progress)
    services.register_fix_runner()
    services.register_watchdog(watchdog_poster(services, deps, progress))
    errors.register(app)
    commands.register(app, deps, progress)
    actions.register(app, deps, progress)
    attention.register(app, deps, progress)
    evidence.register(app, deps, progress)
    retrain.register(app, deps, progress)
    views.register(app, deps, progress)
    pickers.register(app, deps)
    home.register(app, deps, progress)
    paging.register(app, deps, progress)
    if remote is None:
        progress.lane.start()
    return app


def watchdog_poster(services: Services, deps: Deps, progress: SlackProgress) -> Callable[[Proposal], None]:
    """The watchdog proposes, people decide: a prefilled rollback request in the incident channel."""

    def propose(p: Proposal) -> None:
        if not p.recommended:
            progress.client.chat_postMessage(
                channel=deps.channel,
                text=f":dog: Watchdog: {p.model} " + "; ".join(p.reasons) + ". No backup qualifies as a target;"
                     f" see `/rollback backups {p.model}` and `/rollback diagnose {p.model}`.",
            )
            return
        inc, _ = services.engine.request_rollback(
            model=p.model, backup=p.recommended, reason=p.reason_text, requested_by="rollback-bot watchdog",
            source="watchdog", channel=deps.channel,
        )
        progress.post_card(inc)

    return propose
