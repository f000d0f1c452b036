"""`rollback-bot doctor`: everything a rollback will need from the platform, checked before anyone needs it.

A run is a list of ``Check`` values, one line each (ok, or the problem and its fix):

* the database (``core.doctor_checks``): the platform's tables, their columns and types, the connecting role's
  privileges, the feature view's unique index and the right to refresh it, the bot's own schema;
* the trades source the halt is verified against (``TRADES_TABLE`` / ``TRADES_TIME_COLUMN``, ``TRADING_LOG``);
* ``MODELS_DIR`` and each production model: rights, the files load, the features exist, the checksums match
  the backup of the production version;
* Slack (auth, membership of ``INCIDENT_CHANNEL``), when configured: core knows nothing of Slack, so those
  checks come in as a callable (``chat``) from the Slack layer.

The same checks guard a rollback: ``refuse_if_not_ready`` (called by the engine's pre-flight, before anything
is halted) raises ``PreflightFailed`` with the doctor's own line for each check a rollback of that model needs.
Runs are kept in ``rollback_bot.doctor_results`` so ``/rollback status`` shows the latest from any process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg

from core import repository as repo
from core.errors import DatabaseUnavailable, PreflightFailed

__all__ = [
    "ChatChecks",
    "Check",
    "DoctorRun",
    "latest_run",
    "preflight_reason",
    "refuse_if_not_ready",
    "rollback_blockers",
    "run_doctor",
    "store_run",
]

KEEP_RUNS = 200  # older runs are deleted when a new one is stored


@dataclass(frozen=True)
class Check:
    """One line of the doctor: what was checked, whether it is fine, and if not, what to do."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    area: str = "database"        # database | trades | models | slack
    rollback: bool = False        # a rollback needs it: pre-flight refuses while it fails
    model: str | None = None      # about one model only (pre-flight looks at the model being rolled back)

    @property
    def reason(self) -> str:
        """The problem and its fix, as the doctor prints it and pre-flight quotes it."""
        return f"{self.name}: {self.detail}" + (f" — fix: {self.fix}" if self.fix and not self.ok else "")

    def line(self) -> str:
        return f"{'ok' if self.ok else 'PROBLEM':<8} {self.reason}"


@dataclass(frozen=True)
class DoctorRun:
    checks: tuple[Check, ...]
    at: datetime
    source: str
    stored: bool = field(default=False, compare=False)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def summary(self) -> str:
        n = len(self.problems)
        if not n:
            return f"all {len(self.checks)} checks passed"
        return f"{n} problem{'s' if n != 1 else ''} in {len(self.checks)} checks"


ChatChecks = Callable[[], Sequence[Check]]
Connect = Callable[..., psycopg.Connection]


def run_doctor(settings, connect: Connect, *, source: str, at: datetime,
               chat: ChatChecks | None = None, models_dir: Path | None = None) -> DoctorRun:
    """Every check, in order: database, trades source, models, Slack. Never raises for a broken platform."""
    from core import doctor_checks as dc
    from core import doctor_files as df

    models_dir = Path(models_dir or settings.models_dir)
    checks: list[Check] = []
    try:
        conn = connect(autocommit=True)
    except DatabaseUnavailable as exc:
        checks.append(Check("database", False, str(exc), "check DATABASE_URL and that PostgreSQL is running"))
        conn = None
    if conn is not None:
        with conn:
            who = conn.execute("SELECT current_user AS role, current_setting('server_version') AS v").fetchone()
            checks.append(Check("database", True, f"PostgreSQL {who['v']} answers; connected as {who['role']}"))
            checks += _guarded("database", lambda: dc.database_checks(conn, settings))
            checks.append(df.models_dir_check(models_dir))
            checks += _guarded("production models", lambda: df.production_model_checks(conn, models_dir),
                               area="models")
    else:
        checks += df.trades_log_checks(settings)
        checks.append(df.models_dir_check(models_dir))
    if chat is not None:
        checks += list(chat())
    return DoctorRun(tuple(checks), at, source)


def _guarded(name: str, run: Callable[[], list[Check]], *, area: str = "database") -> list[Check]:
    """A check that could not run is a problem, never a silent pass."""
    try:
        return run()
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [Check(name, False, f"could not be checked: {first}", "fix the error above and run the doctor again",
                      area=area)]


# ------------------------------------------------------------------------------------------ pre-flight


def rollback_blockers(conn: psycopg.Connection, settings, *, models_dir: Path, model: str) -> list[Check]:
    """The failing checks a rollback of ``model`` needs (cheap: catalog queries and ``os.access``; no model is
    loaded, so a production model that does not load, the usual reason to roll back, never blocks one)."""
    from core import doctor_checks as dc
    from core import doctor_files as df

    # settings None: a caller without settings (core.fixes without an engine) skips the trades source
    checks = dc.database_checks(conn, settings, for_rollback=True)
    checks.append(df.models_dir_check(models_dir))
    checks.append(df.model_folder_rights(models_dir, model))
    return [c for c in checks if not c.ok and c.rollback and c.model in (None, model)]


def preflight_reason(model: str, blockers: Sequence[Check]) -> str:
    return (f"Pre-flight refused the rollback of {model}; nothing was halted or changed. "
            + " ".join(f"{c.reason}." for c in blockers)
            + " (`rollback-bot doctor` checks the whole platform.)")


def refuse_if_not_ready(conn: psycopg.Connection, settings, *, models_dir: Path, model: str) -> None:
    """Raise PreflightFailed, quoting the doctor's lines, when the platform cannot carry a rollback of ``model``."""
    blockers = rollback_blockers(conn, settings, models_dir=models_dir, model=model)
    if blockers:
        raise PreflightFailed(preflight_reason(model, blockers))


# ------------------------------------------------------------------------------------------ storage


def store_run(conn: psycopg.Connection, run: DoctorRun) -> DoctorRun:
    """Keep the run (in the caller's transaction) so `/rollback status` shows it from any process."""
    repo.insert_doctor_run(conn, at=run.at, source=run.source[:200], ok=run.ok,
                           checks=[asdict(c) for c in run.checks], keep=KEEP_RUNS)
    return DoctorRun(run.checks, run.at, run.source, stored=True)


def latest_run(conn: psycopg.Connection) -> DoctorRun | None:
    row = repo.latest_doctor_run(conn)
    if row is None:
        return None
    known = set(Check.__dataclass_fields__)
    checks = tuple(Check(**{k: v for k, v in c.items() if k in known}) for c in row["checks"])
    return DoctorRun(checks, row["run_at"], row["source"], stored=True)
