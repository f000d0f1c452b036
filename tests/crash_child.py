"""A bot process to be killed: run a rollback (or a restart's recovery) and SIGKILL itself at one fault label.

Run by tests/core/test_crash.py as a real subprocess, from the project root::

    python -m tests.crash_child --db URL --models DIR --incidents DIR --model NAME --backup NAME \\
        --kill-at LABEL [--mode run|recover] [--corrupt-after-restore] [--read-only-at LABEL]

``--mode run`` requests, approves (a second person) and executes a rollback; ``--mode recover`` does what a
restarted bot does, ``engine.recover()``; ``--mode deny`` requests and denies, ``--mode expire`` requests and lets
the approval window pass (the worker's expiry), ``--mode jobs`` runs the jobs that are due (a bare worker: an
approved rollback's ``execute``, then its diagnostics…) until none is left. ``--kill-at`` is a label the engine passes to its fault hook
(``before:halting``, ``restored:model.json``, ...) or ``copy:N``: the N-th file copy (1-based) writes half its
bytes, then the process is killed, leaving a partly written temporary file behind. Exit status 0 means the
label was never reached; a kill shows as -SIGKILL.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm_copy_kill(n: int) -> None:
    """Kill the process half-way through the n-th file copy done by core.modelio."""
    original = shutil.copyfileobj
    seen = {"n": 0}

    def copy(fsrc, fdst, length=0):  # noqa: ANN001 - shutil's signature
        seen["n"] += 1
        if seen["n"] == n:
            data = fsrc.read()
            fdst.write(data[: len(data) // 2])
            fdst.flush()
            os.fsync(fdst.fileno())
            _die()
        return original(fsrc, fdst, length) if length else original(fsrc, fdst)

    shutil.copyfileobj = copy  # only in this throw-away process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--models", required=True, type=Path)
    parser.add_argument("--incidents", required=True, type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--backup", required=True)
    parser.add_argument("--kill-at", required=True)
    parser.add_argument("--mode", choices=("run", "recover", "deny", "expire", "jobs"), default="run",
                        help="deny: request, then an approver denies; expire: request, then the approval window"
                             " passes and the worker's expiry runs")
    parser.add_argument("--corrupt-after-restore", action="store_true",
                        help="truncate the restored model.json at after:restoring, so verification fails")
    parser.add_argument("--read-only-at", default=None, metavar="LABEL",
                        help="make the model's folder read-only (0555) at this fault label")
    args = parser.parse_args(argv)

    from core.db import Database
    from bot.compose import build_services
    from core.settings import Settings

    if args.kill_at.startswith("copy:"):
        _arm_copy_kill(int(args.kill_at.split(":", 1)[1]))

    def fault(label: str) -> None:
        if args.corrupt_after_restore and label == "after:restoring":
            path = args.models / args.model / "model.json"
            path.write_bytes(path.read_bytes()[:-50])
        if label == args.read_only_at:
            os.chmod(args.models / args.model, 0o555)
        if label == args.kill_at:
            _die()

    settings = Settings(_env_file=None, database_url=args.db, models_dir=args.models,
                        incidents_dir=args.incidents, monitor_minutes=30, halt_quiet_seconds=0)
    db = Database(settings.database_dsn(), min_size=1, max_size=4).open()
    try:
        services = build_services(settings, db, fault_hook=fault)
        engine = services.engine
        if args.mode == "run":
            inc, _ = engine.request_rollback(model=args.model, backup=args.backup, reason="crash test",
                                             requested_by="U0ALICE")
            engine.approve(incident_id=inc.id, approver="U0BOB")
            engine.execute(inc.id)
        elif args.mode in ("deny", "expire"):
            inc, _ = engine.request_rollback(model=args.model, backup=args.backup, reason="crash test",
                                             requested_by="U0ALICE")
            if args.mode == "deny":
                engine.deny(incident_id=inc.id, user="U0BOB", note="not this one")
            else:
                from datetime import timedelta

                from core.incidents import utcnow

                engine.clock = lambda: utcnow() + timedelta(hours=1)  # past the approval window
                engine.expire_requests()
        elif args.mode == "jobs":
            while services.worker.run_due():
                pass
        else:
            engine.recover()
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
