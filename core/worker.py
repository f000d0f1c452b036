"""The background worker: runs queued jobs, expires stale requests, and recovers interrupted rollbacks.

Jobs live in ``rollback_bot.jobs`` and are claimed with ``FOR UPDATE SKIP LOCKED`` and a lease, so with two
bot processes on one database each job runs once, and a job whose process died is picked up again when its
lease runs out. The worker wakes at once on ``NOTIFY rollback_bot_jobs`` (sent in the transaction that
queues a job) and otherwise polls.

Leases are fenced. Each claim writes its own token into ``locked_by`` (this process, this worker, this claim),
so two workers in one process, or one worker claiming the same job again, never pass for each other. While a
job runs, a heartbeat thread extends ``locked_until`` every ``heartbeat_seconds`` (default: a third of the
lease) for as long as ``locked_by`` is still this claim's token: a job that runs longer than its lease (a slow
diagnostics run, a long retrain, an upload under Slack's rate limits) is not claimed and run a second time,
while the job of a worker that died (no heartbeat) is taken over once its lease runs out. A job's completion or
release only counts while its claim still holds the lease: a worker that lost it (its heartbeat could not reach
the database for a whole lease, and another worker took the job over) logs so and leaves the other claim alone.

A *lane* is a second worker in the same process for some kinds only (``standard=False``: no ``execute``, no
expiry, no recovery), so that those jobs never wait behind a running rollback: the Slack app starts one for the
Slack updates (handlers/slack_delivery.py). Kinds in ``ordered`` are claimed in order per incident: only an
incident's oldest undone job of that kind is claimable, even while an earlier one is held by another process,
so they run one at a time and in the order they were queued (core.slack_outbox).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import psycopg

from core import repository as repo
from core.engine import JOBS_CHANNEL, Engine
from core.errors import DatabaseUnavailable

log = logging.getLogger("rollback_bot.worker")

JobHandler = Callable[[dict], None]


class Worker:
    def __init__(self, engine: Engine, *, poll_seconds: float = 1.0, lease_seconds: float = 300.0,
                 recover_every_seconds: float = 30.0, heartbeat_seconds: float | None = None,
                 standard: bool = True, ordered: Iterable[str] = (), clock: Callable[[], datetime] | None = None,
                 max_attempts: int = 5, max_backoff_seconds: float | None = None, name: str = "rollback-worker",
                 ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.engine = engine
        self.db = engine.db
        self.poll_seconds = poll_seconds
        self.lease = timedelta(seconds=lease_seconds)
        self.heartbeat_seconds = heartbeat_seconds if heartbeat_seconds is not None else lease_seconds / 3
        self.recover_every = recover_every_seconds if standard else None
        self.ordered = list(ordered)
        self._clock = clock  # None: the engine's clock (a lane of real-time deliveries passes its own)
        self.max_attempts = max_attempts
        self.max_backoff = max_backoff_seconds
        self.name = name
        self.handlers: dict[str, JobHandler] = {
            "execute": lambda job: self.engine.execute(job["incident_id"]),
            "monitor_end": self._monitor_end,
        } if standard else {}
        self.periodic: list[Callable[[], None]] = [self.engine.expire_requests] if standard else []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: threading.Thread | None = None

    def on(self, kind: str, handler: JobHandler) -> None:
        self.handlers[kind] = handler

    def now(self) -> datetime:
        return self._clock() if self._clock is not None else self.engine.clock()

    # ----------------------------------------------------------------------------------- one pass

    def claim(self, *, incident_id: int | None = None, kinds: list[str] | None = None,
              first_attempt_only: bool = False) -> dict | None:
        """Lease the next due job of this worker's kinds (or of ``kinds``, some of them; of one incident, if given;
        never tried yet, if ``first_attempt_only``), or None."""
        now = self.now()
        with self.db.transaction() as conn:
            job = repo.next_due_job(conn, now=now, kinds=list(self.handlers) if kinds is None else kinds,
                                    ordered=self.ordered, incident_id=incident_id,
                                    first_attempt_only=first_attempt_only)
            if job is None:
                return None
            return self.take(conn, job, now)

    def take(self, conn: psycopg.Connection, job: dict, now: datetime) -> dict:
        """Lease a job selected ``FOR UPDATE`` in ``conn``'s transaction to a new claim of this worker: the job
        as it was selected, with ``locked_by`` the claim's token (what ``run_job`` fences on)."""
        token = f"{self.engine.owner}/{uuid.uuid4().hex[:12]}"
        repo.lease_job(conn, job["id"], token=token, until=now + self.lease)
        return {**job, "locked_by": token}

    def heartbeat(self, job: dict) -> bool:
        """Extend the lease of a claimed job, only while this claim still holds it. False: it does not (done, or
        taken over by another claim after the lease ran out)."""
        with self.db.transaction() as conn:
            return repo.extend_lease(conn, job["id"], token=job["locked_by"], until=self.now() + self.lease)

    def _keep_alive(self, job: dict, done: threading.Event) -> None:
        while not done.wait(self.heartbeat_seconds):
            try:
                if not self.heartbeat(job):
                    log.warning("job %s (%s): lease lost (claim %s no longer holds it); the job keeps running here"
                                " but will not be marked done by this claim", job["id"], job["kind"], job["locked_by"])
                    return
            except Exception as exc:  # noqa: BLE001 - e.g. the database is restarting: try again at the next beat
                log.warning("job %s (%s): lease heartbeat failed, will try again: %s", job["id"], job["kind"], exc)

    def run_job(self, job: dict) -> None:
        done = threading.Event()
        beat = threading.Thread(target=self._keep_alive, args=(job, done), name=f"rollback-lease-{job['id']}",
                                daemon=True)
        beat.start()
        try:
            failure = self._call(job)
        finally:  # the heartbeat stops before the outcome is recorded (fenced: it counts only if still held)
            done.set()
            beat.join(10)
        if failure is None:
            self._finish(job)
        elif isinstance(failure, (DatabaseUnavailable, psycopg.OperationalError)):
            self._release(job, str(failure), delay=2.0)
        elif job["attempts"] + 1 >= self.max_attempts:
            self._finish(job, error=f"gave up: {failure}")
        else:
            delay = 2.0 ** (job["attempts"] + 1)
            self._release(job, str(failure), delay=min(delay, self.max_backoff) if self.max_backoff else delay)

    def _call(self, job: dict) -> Exception | None:
        try:
            self.handlers[job["kind"]](job)
        except (DatabaseUnavailable, psycopg.OperationalError) as exc:
            log.warning("job %s (%s) hit a database error, will retry: %s", job["id"], job["kind"], exc)
            return exc
        except Exception as exc:  # noqa: BLE001 - a failing job is recorded and retried with back-off
            log.exception("job %s (%s) failed", job["id"], job["kind"])
            return exc
        return None

    def _finish(self, job: dict, error: str | None = None) -> None:
        with self.db.transaction() as conn:
            held = repo.finish_job(conn, job["id"], token=job["locked_by"], at=self.now(), error=error)
        if not held:
            self._lost(job, "finished")

    def _release(self, job: dict, error: str, delay: float) -> None:
        try:
            with self.db.transaction() as conn:
                held = repo.release_job(conn, job["id"], token=job["locked_by"], error=error,
                                        run_at=self.now() + timedelta(seconds=delay))
        except DatabaseUnavailable:
            return  # the lease runs out by itself
        if not held:
            self._lost(job, "failed")

    def _lost(self, job: dict, what: str) -> None:
        log.warning("job %s (%s) %s after its claim %s lost the lease (taken over or done elsewhere): not recorded"
                    " by this claim", job["id"], job["kind"], what, job["locked_by"])

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
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._listener = threading.Thread(target=self._listen, name=f"{self.name}-listen", daemon=True)
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
                if self.recover_every is not None and time.monotonic() - last_recover >= self.recover_every:
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
