"""Job leases (core/worker.py): a job that runs longer than its lease is kept by its worker's heartbeat and runs
once, the job of a worker that died is taken over when its lease runs out, and a claim that lost its lease
neither completes nor releases the claim that took the job over (fencing on the claim's token in ``locked_by``).

Real parts: a real PostgreSQL, two ``Worker`` instances on one database (as two bot processes, or a ``serve``
and a ``work`` process, would be; here in one process, so they share ``Engine.owner``), their real loops.
Nothing waits a fixed time for something to happen: every wait polls the database or an event, with a
generous timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from core.repository import enqueue
from core.worker import Worker

KIND = "lease_test"


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _queue(services) -> int:
    with services.db.transaction() as c:
        enqueue(c, KIND, payload={"what": "a slow job"}, dedupe_key=f"{KIND}:1")
        return c.execute("SELECT id FROM rollback_bot.jobs WHERE dedupe_key = %s", (f"{KIND}:1",)).fetchone()["id"]


def _job(conn, job_id: int) -> dict:
    return conn.execute("SELECT * FROM rollback_bot.jobs WHERE id = %s", (job_id,)).fetchone()


class Passes:
    """Counts a worker's passes (its periodic tasks run once a pass), to wait until it has looked again."""

    def __init__(self, worker: Worker) -> None:
        self.n = 0
        worker.periodic.append(self._tick)

    def _tick(self) -> None:
        self.n += 1


def test_a_job_longer_than_its_lease_runs_once(services, conn) -> None:
    lease = 2.0
    workers = {name: Worker(services.engine, poll_seconds=0.05, lease_seconds=lease, recover_every_seconds=3600)
               for name in ("first", "second")}
    runs: list[str] = []
    lease_extended = threading.Event()
    job_id = _queue(services)

    def slow(name: str, job: dict) -> None:
        runs.append(name)
        claimed_until = _job(conn, job["id"])["locked_until"]
        began = time.monotonic()
        # Run until the lease it was claimed with has run out for a while (three leases), and until the
        # heartbeat has been seen extending it.
        while time.monotonic() - began < 3 * lease or not lease_extended.is_set():
            if _job(conn, job["id"])["locked_until"] > claimed_until:
                lease_extended.set()
            if time.monotonic() - began > 60:
                break
            time.sleep(0.05)

    passes = {}
    for name, w in workers.items():
        w.on(KIND, lambda job, name=name: slow(name, job))
        passes[name] = Passes(w)
    try:
        for w in workers.values():
            w.start()
        _wait_for(lambda: _job(conn, job_id)["done_at"] is not None, "the slow job to finish")
        # Both workers look for due jobs again (several passes each) after it finished: nobody runs it again.
        seen = {name: p.n for name, p in passes.items()}
        _wait_for(lambda: all(passes[name].n >= seen[name] + 3 for name in passes), "both workers' next passes")
    finally:
        for w in workers.values():
            w.stop()
    assert len(runs) == 1, f"the job ran {len(runs)} times: {runs}"
    assert lease_extended.is_set(), "the running job's lease was never extended"
    row = _job(conn, job_id)
    assert row["attempts"] == 1 and row["last_error"] is None and row["locked_until"] is None


def test_the_job_of_a_worker_that_died_is_taken_over_after_its_lease(services, conn) -> None:
    dead = Worker(services.engine, lease_seconds=1, recover_every_seconds=3600)
    alive = Worker(services.engine, poll_seconds=0.05, lease_seconds=1, recover_every_seconds=3600)
    runs: list[str] = []
    dead.on(KIND, lambda job: runs.append("dead"))
    alive.on(KIND, lambda job: runs.append("alive"))
    job_id = _queue(services)
    claimed = dead.claim()  # ... and then its process dies: the job never runs there and nothing beats for it
    assert claimed is not None and claimed["id"] == job_id
    assert alive.run_due() == 0  # leased to the worker that died, until its lease runs out
    try:
        alive.start()
        _wait_for(lambda: _job(conn, job_id)["done_at"] is not None, "the job to be taken over and finished")
    finally:
        alive.stop()
    assert runs == ["alive"]
    row = _job(conn, job_id)
    assert row["attempts"] == 2 and row["locked_by"] != claimed["locked_by"]
    # The worker that died, back too late: its claim keeps nothing alive and completes nothing.
    assert dead.heartbeat(claimed) is False


@pytest.mark.parametrize("outcome", ["finishes", "fails"])
def test_a_claim_that_lost_its_lease_leaves_the_new_claim_alone(services, conn, outcome: str) -> None:
    # The first worker's heartbeat never gets through (as when it cannot reach the database for a whole lease).
    first = Worker(services.engine, lease_seconds=1, heartbeat_seconds=3600, recover_every_seconds=3600)
    second = Worker(services.engine, lease_seconds=1, recover_every_seconds=3600)
    runs: list[str] = []

    def handler(name: str, job: dict) -> None:
        runs.append(name)
        if outcome == "fails" and name == "first":
            raise RuntimeError("the slow job failed late")

    first.on(KIND, lambda job: handler("first", job))
    second.on(KIND, lambda job: handler("second", job))
    job_id = _queue(services)
    old = first.claim()
    assert old is not None
    taken: list[dict] = []

    def take_over() -> bool:
        job = second.claim()
        if job is not None:
            taken.append(job)
        return bool(taken)

    _wait_for(take_over, "the second worker to take the job over once the first claim's lease ran out")
    new = taken[0]
    held = _job(conn, job_id)
    assert held["locked_by"] == new["locked_by"] != old["locked_by"]

    first.run_job(old)  # the first claim's run ends late: it must neither complete nor release the new claim
    row = _job(conn, job_id)
    assert row["done_at"] is None, "a claim that lost its lease marked the job done"
    assert row["locked_by"] == new["locked_by"] and row["locked_until"] == held["locked_until"]
    assert row["run_at"] == held["run_at"] and row["last_error"] is None

    second.run_job(new)  # the claim that holds the lease completes it
    row = _job(conn, job_id)
    assert row["done_at"] is not None and row["last_error"] is None
    assert runs == ["first", "second"]
