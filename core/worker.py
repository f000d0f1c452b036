"""The background worker: runs queued jobs, expires stale requests, and recovers interrupted rollbacks.

Jobs live in ``rollback_bot.jobs`` and are claimed with ``FOR UPDATE SKIP LOCKED`` and a lease, so with two
bot processes on one database each job runs once, and a job whose process died is picked up again when its
lease runs out. The worker wakes at once on ``NOTIFY rollback_bot_jobs`` (sent in the transaction that
queues a job) and otherwise polls.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import psycopg

from core.engine import JOBS_CHANNEL, Engine
from core.errors import DatabaseUnavailable

log = logging.getLogger("rollback_bot.worker")

JobHandler = Callable[[dict], None]


class Worker:
    def __init__(self, engine: Engine, *, poll_seconds: float = 1.0, lease_seconds: float = 300.0,
                 recover_every_seconds: float = 30.0) -> None:
        self.engine = engine
        self.db = engine.db
        self.poll_seconds = poll_seconds
        self.lease = timedelta(seconds=lease_seconds)
        self.recover_every = recover_every_seconds
        self.handlers: dict[str, JobHandler] = {
            "execute": lambda job: self.engine.execute(job["incident_id"]),
            "monitor_end": self._monitor_end,
        }
        self.periodic: list[Callable[[], None]] = [self.engine.expire_requests]
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: threading.Thread | None = None

    def on(self, kind: str, handler: JobHandler) -> None:
        self.handlers[kind] = handler

    # ----------------------------------------------------------------------------------- one pass

    def claim(self) -> dict | None:
        now = self.engine.clock()
        with self.db.transaction() as conn:
            job = conn.execute(
                "SELECT * FROM rollback_bot.jobs WHERE done_at IS NULL AND run_at <= %s"
                " AND (locked_until IS NULL OR locked_until < %s) AND kind = ANY(%s)"
                " ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
                (now, now, list(self.handlers)),
            ).fetchone()
            if job is None:
                return None
            conn.execute(
                "UPDATE rollback_bot.jobs SET locked_by = %s, locked_until = %s, attempts = attempts + 1 WHERE id = %s",
                (self.engine.owner, now + self.lease, job["id"]),
            )
        return job

    def run_job(self, job: dict) -> None:
        try:
            self.handlers[job["kind"]](job)
        except (DatabaseUnavailable, psycopg.OperationalError) as exc:
            log.warning("job %s (%s) hit a database error, will retry: %s", job["id"], job["kind"], exc)
            self._release(job, str(exc), delay=2.0)
            return
        except Exception as exc:  # noqa: BLE001 - a failing job is recorded and retried with back-off
            log.exception("job %s (%s) failed", job["id"], job["kind"])
            if job["attempts"] + 1 >= 5:
                self._finish(job, error=f"gave up: {exc}")
            else:
                self._release(job, str(exc), delay=2.0 ** (job["attempts"] + 1))
            return
        self._finish(job)

    def _finish(self, job: dict, error: str | None = None) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE rollback_bot.jobs SET done_at = %s, locked_until = NULL, last_error = %s WHERE id = %s",
                (self.engine.clock(), error, job["id"]),
            )

    def _release(self, job: dict, error: str, delay: float) -> None:
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    "UPDATE rollback_bot.jobs SET locked_until = NULL, last_error = %s, run_at = %s WHERE id = %s",
                    (error[:2000], self.engine.clock() + timedelta(seconds=delay), job["id"]),
                )
        except DatabaseUnavailable:
            pass  # the lease runs out by itself

    def run_due(self, limit: int = 100) -> int:
        """Run every job that is due now (tests and the demo call this with a controlled clock)."""
        n = 0
        while n < limit:
            job = self.claim()
            if job is None:
                break
            self.run_job(job)
            n += 1
        return n

    def tick(self) -> None:
        for task in self.periodic:
            try:
                task()
            except Exception:  # noqa: BLE001 - periodic work must not stop the worker
                log.exception("periodic task failed")
        self.run_due()

    # ----------------------------------------------------------------------------------- the loop

    def _monitor_end(self, job: dict) -> None:
        inc = self.engine.get(job["incident_id"])
        if inc.state == "monitoring":
            self.engine.resolve(incident_id=inc.id, note="monitoring window ended")

    def start(self) -> Worker:
        self._thread = threading.Thread(target=self._loop, name="rollback-worker", daemon=True)
        self._listener = threading.Thread(target=self._listen, name="rollback-listen", daemon=True)
        self._thread.start()
        self._listener.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(10)

    def _loop(self) -> None:
        lower_thread_priority()
        last_recover = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_recover >= self.recover_every:
                    self.engine.recover()
                    last_recover = time.monotonic()
                self.tick()
            except Exception:  # noqa: BLE001 - e.g. the database is restarting; try again shortly
                log.exception("worker pass failed")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self.db.connect(autocommit=True)
                try:
                    conn.execute(f"LISTEN {JOBS_CHANNEL}")
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self._wake.set()
                finally:
                    conn.close()
            except Exception:  # noqa: BLE001
                if self._stop.wait(1.0):
                    return


WORK_NICENESS = 10


def lower_process_priority() -> None:
    """Lower this whole process's CPU priority (the work process of `serve`). Where the kernel shares CPU time
    between sessions first (Linux "autogroup", on by default on many systems), a process's nice value only
    counts within its session, and the work process has a session of its own: its group is lowered as well."""
    try:
        os.nice(WORK_NICENESS)
    except OSError:
        pass
    try:
        with open("/proc/self/autogroup", "w") as group:  # absent without autogroup
            group.write(str(WORK_NICENESS))
    except OSError:
        pass


def lower_thread_priority() -> None:
    """Lower this thread's CPU priority (Linux: per thread), so a thread acking a Slack request is scheduled
    first whenever both want a CPU: background work never makes the 3-second acknowledgement wait."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORK_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: only the priority is lost
        pass
