"""What a person is told when the platform's database does not answer: what failed, since when (as this
process saw it: ``Database.down_since``, the first failure since it last answered), and the runbook's checks,
to make by hand while the bot cannot (every command needs the database)."""

from __future__ import annotations

from datetime import datetime, timezone

from core.errors import DatabaseUnavailable


def database_checks(target: str | None) -> list[str]:
    """The runbook's system checks, by hand (the bot cannot run them without the database)."""
    where = target or "the DATABASE_URL host"
    host, _, rest = where.partition(":")
    port = rest.split("/", 1)[0]
    ready = f"pg_isready -h {host}" + (f" -p {port}" if port else "")
    return [
        f"Is PostgreSQL up? `{ready}` from this host; on the database host `systemctl status postgresql` and the"
        " server log.",
        "Disk space on the database host (`df -h` on the data directory): a full disk stops PostgreSQL.",
        "Connections: when max_connections is reached new clients are refused; as an administrator"
        " `SELECT count(*) FROM pg_stat_activity` against `SHOW max_connections`, and locks waiting in `pg_locks`.",
        f"Network, firewall, DNS and credentials between this bot's host and {where} (DATABASE_URL changed? password"
        " rotated?); after a failover, is DATABASE_URL still pointing at the primary, and is replication caught up?",
        "The platform's API log (API_LOG) for error lines, e.g. `grep -iE 'error|exception' api.log | tail`.",
        "The data pipeline once the database is back: the latest date of daily_bars and of ml_training_features.",
        "Meanwhile the bot can neither halt, roll back nor resume trading (each needs the database): if trading must"
        " stop now, use the trading platform's own controls and tell the desk.",
    ]


def _ago(since: datetime, now: datetime) -> str:
    secs = max(0, int((now - since).total_seconds()))
    if secs < 120:
        return f"{secs} s"
    if secs < 7200:
        return f"{secs // 60} min"
    return f"{secs // 3600} h {secs % 3600 // 60} min"


def outage_text(exc: DatabaseUnavailable, *, now: datetime | None = None) -> str:
    """A clear answer instead of a generic error: what failed, since when, and what to check by hand."""
    now = now or datetime.now(timezone.utc)
    target = getattr(exc, "target", None)
    reason = getattr(exc, "reason", None) or str(exc)
    since = getattr(exc, "since", None)
    what = "The platform database does not answer" + (f" (PostgreSQL at {target})" if target else "")
    when = (f" since {since.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC ({_ago(since, now)} ago, as this bot"
            " process saw it)") if since else ""
    lines = [f"{what}{when}: {reason}. Nothing was done.", "Check by hand (the runbook's checks):"]
    lines += [f"• {item}" for item in database_checks(target)]
    return "\n".join(lines)
