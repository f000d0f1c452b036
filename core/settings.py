"""Settings, read once at the entry point (pydantic-settings: environment variables or a `.env` file).

Nothing else in the code base reads ``os.environ``: the composition root builds a ``Settings`` and hands it
down. ``load_settings(require=...)`` turns a pydantic validation error into a ``ConfigError`` whose message is
one line naming the variable, so start-up stops cleanly instead of with a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.errors import ConfigError

IdList = Annotated[list[str], NoDecode]

# Secrets checked by how they begin: setting -> (the beginnings it may have, what it must be).
SECRET_PREFIXES: dict[str, tuple[tuple[str, ...], str]] = {
    "database_url": (("postgresql://", "postgres://"), "a postgresql:// URL"),
    "slack_bot_token": (("xoxb-",), "a bot token starting with xoxb-"),
    "slack_app_token": (("xapp-",), "an app-level token starting with xapp-"),
}


def _split_ids(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            parsed = json.loads(text)
            if not isinstance(parsed, list):
                raise ValueError("expected a list")
            return [str(v).strip() for v in parsed if str(v).strip()]
        return [part.strip() for part in text.replace(";", ",").replace(" ", ",").split(",") if part.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


def check_events_url(value: str) -> str:
    """PAGERDUTY_EVENTS_URL: the Events API v2 enqueue endpoint, over https (plain http only to this machine,
    for a local stand-in)."""
    parts = urlsplit(value)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and local):
        raise ValueError("must be an https:// URL (http:// only to 127.0.0.1 or localhost)")
    if not parts.path.rstrip("/").endswith("/v2/enqueue") or parts.query or parts.fragment:
        raise ValueError("must be the Events API v2 enqueue endpoint, ending in /v2/enqueue")
    return value.rstrip("/")


class Settings(BaseSettings):
    """Every setting of the bot; names are the environment variables (case-insensitive)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"
    database_url: SecretStr | None = None
    models_dir: Path = Path("./models")
    incidents_dir: Path = Path("./incidents")
    incident_channel: str | None = None
    operators: IdList = Field(default_factory=list)
    approvers: IdList = Field(default_factory=list)
    stakeholders: IdList = Field(default_factory=list)
    stakeholder_emails: IdList = Field(default_factory=list)
    smtp_url: SecretStr | None = None
    # Paged on escalation: primary first, emergency when nobody acknowledges within ESCALATION_ACK_MINUTES.
    primary_contacts: IdList = Field(default_factory=list,
                                     validation_alias=AliasChoices("primary_contacts", "escalation_contacts"))
    emergency_contacts: IdList = Field(default_factory=list)
    escalation_ack_minutes: float = Field(default=15, gt=0)
    pagerduty_routing_key: SecretStr | None = None
    pagerduty_events_url: str = "https://events.pagerduty.com/v2/enqueue"
    escalate_after_minutes: float = Field(default=120, gt=0)
    loss_escalation_threshold: float | None = Field(default=None, ge=0)
    port: int = Field(default=3000, ge=1, le=65535)

    # Beyond the contract's table: operational knobs with safe defaults.
    approval_timeout_minutes: float = Field(default=15, gt=0)
    monitor_minutes: float = Field(default=30, ge=0)
    trades_table: str = "trades"
    trades_time_column: str = "executed_at"
    trading_log: Path | None = None
    trading_stop_command: list[str] | None = None
    trading_stop_timeout_seconds: float = Field(default=30, gt=0)
    training_log: Path | None = None  # may hold {model}, {strategy}, {marketcap}: one log per model
    api_log: Path | None = None  # the platform's API log: error lines in diagnostics and after the resume
    db_pool_max: int = Field(default=10, ge=2, le=100)
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    diagnostics_days: int = Field(default=30, ge=5, le=365)
    monitor_log: Path | None = None  # the log followed after resume (default: TRADING_LOG)
    monitor_every_minutes: float = Field(default=5, gt=0)
    monitor_min_ic: float = 0.0
    email_sender: str = "rollback-bot@localhost"
    watchdog_every_minutes: float = Field(default=60, ge=0)  # 0 turns the watchdog off
    watchdog_ic_threshold: float = 0.01
    watchdog_sharpe_threshold: float = 0.5
    watchdog_days: int = Field(default=20, ge=5, le=365)
    watchdog_min_days: int = Field(default=10, ge=3, le=365)
    watchdog_cooldown_minutes: float = Field(default=1440, ge=0)
    max_model_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)  # a larger model.json is refused
    health_port: int | None = Field(default=None, ge=1, le=65535)  # Socket Mode's /healthz, /metrics (default PORT)
    metrics_addr: str | None = None  # host:port of /metrics on an address of its own
    slack_auth_check_seconds: float = Field(default=60, gt=0)
    # An approved rollback that has not started within this is cancelled, never run late.
    approved_start_timeout_minutes: float = Field(default=10, gt=0)
    # SET LOCAL lock_timeout / statement_timeout on every transaction of a rollback's steps.
    step_lock_timeout_seconds: float = Field(default=10, gt=0, le=3600)
    step_statement_timeout_seconds: float = Field(default=60, gt=0, le=86400)
    # A background job's lease (core/worker.py): kept alive by its worker's heartbeat (every third of it) while
    # the job runs; the job of a worker that died is taken over once it runs out.
    job_lease_seconds: float = Field(default=300, ge=3, le=86400)
    # The swap waits until the trades source has been quiet this long since the halt; past the timeout the
    # halt is "not effective" (paged; an approver other than the requester may proceed anyway).
    halt_quiet_seconds: float = Field(default=3, ge=0)
    halt_quiet_timeout_seconds: float = Field(default=120, gt=0)
    # `/rollback diagnose`, `backups`, `status MODEL`: at most this many per person per minute (all processes).
    heavy_commands_per_minute: int = Field(default=10, ge=1, le=10000)
    enhanced_monitor_hours: float = Field(default=24, gt=0, le=24 * 14)  # the runbook's 24 hours of monitoring
    enhanced_monitor_every_minutes: float = Field(default=30, gt=0)  # ... and its crontab's interval
    # The runbook's "overfitted model" fix: a JSON argument list (no shell) that retrains into {output_dir}.
    retrain_command: list[str] | None = None
    retrain_timeout_minutes: float = Field(default=60, gt=0, le=24 * 60)
    pagerduty_backoff_seconds: float = Field(default=1.5, gt=0)  # first wait before a retry on 429/5xx
    # A read-only query giving the P&L since the incident opened (%(start)s), polled into the loss history.
    pnl_query: str | None = None
    pnl_poll_minutes: float = Field(default=5, gt=0)
    pnl_query_timeout_seconds: float = Field(default=5, gt=0, le=300)
    # When each follow-up of a finished rollback is due, counted from the incident's opening (core/followups.py).
    followup_root_cause_hours: float = Field(default=2, gt=0, le=24 * 365)  # the runbook's "root cause identified"
    followup_monitoring_hours: float = Field(default=24, gt=0, le=24 * 365)
    followup_retrain_hours: float = Field(default=72, gt=0, le=24 * 365)
    followup_checklist_hours: float = Field(default=168, gt=0, le=24 * 365)
    followup_prevention_hours: float = Field(default=168, gt=0, le=24 * 365)

    @field_validator(
        "operators", "approvers", "stakeholders", "stakeholder_emails", "primary_contacts", "emergency_contacts",
        mode="before",
    )
    @classmethod
    def _ids(cls, value: Any) -> list[str]:
        return _split_ids(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("slack_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value if value.endswith("/") else value + "/"

    @field_validator("pagerduty_events_url")
    @classmethod
    def _events_url(cls, value: str) -> str:
        return check_events_url(value)

    @field_validator("pnl_query")
    @classmethod
    def _pnl_query(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return value

    @property
    def escalation_contacts(self) -> list[str]:
        """The older name of PRIMARY_CONTACTS."""
        return self.primary_contacts

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Settings:
        if update and "escalation_contacts" in update:  # the alias holds in code too
            update = {**update, "primary_contacts": update["escalation_contacts"]}
            del update["escalation_contacts"]
        return super().model_copy(update=update, deep=deep)

    @field_validator(*SECRET_PREFIXES)
    @classmethod
    def _secret_prefix(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        prefixes, what = SECRET_PREFIXES[info.field_name]
        if value is not None and not value.get_secret_value().startswith(prefixes):
            raise ValueError(f"must be {what}")
        return value

    @field_validator("trades_table", "trades_time_column")
    @classmethod
    def _identifier(cls, value: str) -> str:
        parts = value.split(".")
        if not 1 <= len(parts) <= 2 or not all(p.replace("_", "a").isalnum() and not p[0].isdigit() for p in parts):
            raise ValueError("must be a plain SQL identifier, optionally schema-qualified")
        return value

    @field_validator("retrain_command")
    @classmethod
    def _retrain_command(cls, value: list[str] | None) -> list[str] | None:
        if not value:
            return None
        from core.retrain import check_command

        check_command(value)
        return value

    @field_validator("enhanced_monitor_every_minutes")
    @classmethod
    def _watch_interval(cls, value: float, info: ValidationInfo) -> float:
        hours = info.data.get("enhanced_monitor_hours")
        if hours is not None and value > hours * 60:
            raise ValueError("must not be longer than ENHANCED_MONITOR_HOURS")
        return value

    @field_validator("metrics_addr")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        host, sep, port = value.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9100")
        return value.strip()

    def metrics_bind(self) -> tuple[str, int] | None:
        """METRICS_ADDR as (host, port), brackets of an IPv6 address removed."""
        if self.metrics_addr is None:
            return None
        host, _, port = self.metrics_addr.rpartition(":")
        return host.strip("[]"), int(port)

    @field_validator("halt_quiet_timeout_seconds")
    @classmethod
    def _quiet_timeout(cls, value: float, info: ValidationInfo) -> float:
        quiet = info.data.get("halt_quiet_seconds")
        if quiet is not None and value <= quiet:
            raise ValueError("must be greater than HALT_QUIET_SECONDS")
        return value

    def require(self, *names: str) -> None:
        """Raise ConfigError naming the first of ``names`` that is unset or empty."""
        for name in names:
            value = getattr(self, name)
            if value is None or value == [] or (isinstance(value, SecretStr) and not value.get_secret_value()):
                raise ConfigError(f"{name.upper()} is required but not set")

    def database_dsn(self) -> str:
        self.require("database_url")
        assert self.database_url is not None
        return self.database_url.get_secret_value()


SERVE_REQUIRED = ("slack_bot_token", "incident_channel", "approvers", "database_url")


def load_settings(*, secrets_dir: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from the environment (and .env); a bad value becomes one ConfigError line.

    ``secrets_dir``: a folder of files named after settings (``SLACK_BOT_TOKEN``, ``database_url``, …), each
    holding one value, as Docker and Compose secrets and Kubernetes secret volumes provide; the environment
    and ``.env`` win over them.
    """
    try:
        return Settings(_secrets_dir=secrets_dir, **overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]).upper() if err.get("loc") else "settings"
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        raise ConfigError(f"{name} is malformed: {msg}") from None
