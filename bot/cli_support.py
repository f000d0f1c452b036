"""What the CLI's commands share: exit codes, the database default and building the services."""

from __future__ import annotations

from pydantic import SecretStr

from core.errors import ConfigError
from core.settings import Settings

EXIT_USAGE = 2
EXIT_FAILED = 1


def settings_with_database(settings: Settings, *, ensure_local: bool) -> Settings:
    """DATABASE_URL defaults to the project's private local cluster (see bot/devtools/localpg.py)."""
    if settings.database_url is not None:
        return settings
    from bot.devtools import localpg

    if ensure_local:
        url = localpg.ensure().url("rollback_bot")
    else:
        local = localpg.cluster()
        url = local.url("rollback_bot") if local.port is not None and local.is_running() else None
        if url is None:
            raise ConfigError(
                "DATABASE_URL is not set and no local PostgreSQL cluster is running (`make demo` starts one)"
            )
    return settings.model_copy(update={"database_url": SecretStr(url)})


def build_services(settings: Settings, *, migrate_first: bool = True, wait: bool = True):
    from core.db import Database, migrate
    from bot.compose import build_services as compose

    dsn = settings.database_dsn()
    if migrate_first:
        migrate(dsn)
    db = Database(dsn, max_size=settings.db_pool_max).open(wait=wait)
    return compose(settings, db)
