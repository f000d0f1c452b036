"""The bot under another account: one rollback (or one file copy) in a process of its own.

Run by tests/core/test_fileattrs.py as a real subprocess from the project root, as root or under ``setpriv`` as
another user::

    python -m tests.fileattrs_child rollback --db URL --models DIR --incidents DIR --model NAME --backup NAME
        [--corrupt-after-restore | --quick-fix]
    python -m tests.fileattrs_child copy SRC DST

The outcome is one JSON line on stdout: the incident's state and error, or the error a copy raised.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("rollback")
    run.add_argument("--db", required=True)
    run.add_argument("--models", required=True, type=Path)
    run.add_argument("--incidents", required=True, type=Path)
    run.add_argument("--model", required=True)
    run.add_argument("--backup", required=True)
    run.add_argument("--corrupt-after-restore", action="store_true")
    run.add_argument("--quick-fix", action="store_true")
    copy = sub.add_parser("copy")
    copy.add_argument("src", type=Path)
    copy.add_argument("dst", type=Path)
    args = parser.parse_args(argv)

    from core import fixes
    from core.db import Database
    from core.errors import RollbackError
    from core.modelio import atomic_copy
    from bot.compose import build_services
    from core.settings import Settings

    if args.command == "copy":
        try:
            atomic_copy(args.src, args.dst)
        except (RollbackError, OSError) as exc:
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
            return 0
        print(json.dumps({"error": None}))
        return 0

    settings = Settings(_env_file=None, database_url=args.db, models_dir=args.models, incidents_dir=args.incidents,
                        monitor_minutes=30, watchdog_every_minutes=0)
    db = Database(settings.database_dsn(), min_size=1, max_size=4).open()

    def fault(label: str) -> None:
        if args.corrupt_after_restore and label == "after:restoring":
            path = args.models / args.model / "model.json"
            path.write_bytes(path.read_bytes()[:-50])

    try:
        services = build_services(settings, db, fault_hook=fault)
        engine = services.engine
        if args.quick_fix:
            with db.transaction() as conn:
                proposal = fixes.propose_model_restore(services.registry, conn, model=args.model, engine=engine)
            assert proposal is not None and proposal.backup, proposal
            inc, _ = fixes.request_restore(engine, proposal, "U0ALICE")
        else:
            inc, _ = engine.request_rollback(model=args.model, backup=args.backup, reason="file rights test",
                                             requested_by="U0ALICE")
        engine.approve(incident_id=inc.id, approver="U0BOB")
        done = engine.execute(inc.id)
        print(json.dumps({"state": done.state, "error": done.error, "backup": done.target_backup,
                          "emergency_backup": done.emergency_backup, "euid": os.geteuid()}))
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
