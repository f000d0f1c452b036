"""Shared helpers for the benchmarks: a database of their own, a generated world in a temporary folder, timing.

A benchmark never touches the database named by ``DATABASE_URL`` (the generated world REPLACES the platform's
tables): it uses ``BENCH_DATABASE_URL`` when given, else the database ``rollback_bot_bench`` on the project's
private local cluster (``bot.devtools.localpg.ensure``, which starts or creates the cluster when needed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

BENCH_DB = "rollback_bot_bench"
# Platform tables a benchmark changes; restored from a snapshot by ``BenchWorld.reset``.
MUTABLE_PLATFORM = ("model_deployment_log", "clients", "client_settings", "trades")
BOT_TABLES = (
    "steps", "audit_log", "halt_holders", "saved_client_settings", "trading_halts", "jobs", "deliveries", "incidents",
)
SNAPSHOT_SCHEMA = "bench_snapshot"


def database_url(environ: dict[str, str] | None = None) -> str:
    """``BENCH_DATABASE_URL``, else the bench database on the local cluster (provisioned if needed)."""
    env = os.environ if environ is None else environ
    url = env.get("BENCH_DATABASE_URL")
    if url:
        return url
    from bot.devtools import localpg

    return localpg.ensure(databases=(BENCH_DB,)).url(BENCH_DB)


@dataclass
class BenchWorld:
    """A generated platform world (``bot.devtools.demo_world``) in a temporary folder and the bench database."""

    url: str
    root: Path
    world: Any  # bot.devtools.demo_world.World

    @property
    def models_dir(self) -> Path:
        return self.world.models_dir

    def settings(self, **overrides: Any):
        from core.settings import Settings

        values = dict(_env_file=None, database_url=self.url, models_dir=self.models_dir,
                      incidents_dir=self.root / "incidents")
        values.update(overrides)
        return Settings(**values)

    def connect(self, **kwargs: Any) -> psycopg.Connection:
        from psycopg.rows import dict_row

        kwargs.setdefault("row_factory", dict_row)
        return psycopg.connect(self.url, **kwargs)

    def snapshot(self) -> None:
        """Remember the platform rows as they are now; ``reset`` brings them back."""
        with self.connect() as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SNAPSHOT_SCHEMA}")
            for table in MUTABLE_PLATFORM:
                conn.execute(f"DROP TABLE IF EXISTS {SNAPSHOT_SCHEMA}.{table}")
                conn.execute(f"CREATE TABLE {SNAPSHOT_SCHEMA}.{table} AS SELECT * FROM public.{table}")

    def clear_bot_tables(self) -> None:
        with self.connect() as conn:
            for table in BOT_TABLES:
                conn.execute(f"DELETE FROM rollback_bot.{table}")

    def reset(self) -> None:
        """The bot's tables emptied and the platform rows of the last ``snapshot`` restored."""
        self.clear_bot_tables()
        with self.connect() as conn:
            for table in MUTABLE_PLATFORM[::-1]:
                conn.execute(f"DELETE FROM public.{table}")
            for table in MUTABLE_PLATFORM:
                conn.execute(f"INSERT INTO public.{table} SELECT * FROM {SNAPSHOT_SCHEMA}.{table}")

    @contextlib.contextmanager
    def services(self, **kwargs: Any) -> Iterator[Any]:
        """A ``core.services.Services`` over this world, its pool closed on exit."""
        from core.db import Database
        from bot.compose import build_services

        settings = self.settings()
        db = Database(settings.database_dsn(), max_size=settings.db_pool_max).open()
        try:
            yield build_services(settings, db, **kwargs)
        finally:
            db.close()


@contextlib.contextmanager
def bench_world(*, size: str = "test", seed: int = 7, url: str | None = None) -> Iterator[BenchWorld]:
    """Build the world (market, feature view, clients, trained models) and the bot's schema; the temporary
    folder is removed on exit."""
    from bot.devtools import demo_world
    from core.db import migrate

    url = url or database_url()
    root = Path(tempfile.mkdtemp(prefix="rollback-bench-"))
    try:
        with psycopg.connect(url) as conn:
            world = demo_world.build_world(conn, root / "models", size=size, seed=seed)
        migrate(url)
        bw = BenchWorld(url=url, root=root, world=world)
        bw.clear_bot_tables()  # rows of an earlier run
        bw.snapshot()
        yield bw
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- timing


class Stopwatch:
    """``with sw: ...`` adds one sample (seconds) to ``sw.samples``."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.samples: list[float] = []
        self._t0 = 0.0

    def __enter__(self) -> Stopwatch:
        self._t0 = self.clock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.samples.append(self.clock() - self._t0)


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """A plain text table, columns left-aligned, for benchmark reports."""
    cells = [list(map(str, headers))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
