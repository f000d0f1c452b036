"""core.process.pid_exists: the one "does this pid exist" check (bot.metrics_dir, the local PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from core.process import pid_exists


def test_pid_exists_for_a_live_process_and_a_zombie_but_not_for_a_reaped_one():
    assert pid_exists(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # exited but not yet reaped: a zombie still exists
        with open(f"/proc/{child.pid}/stat", "rb") as fh:
            if fh.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                break
        time.sleep(0.02)
    assert pid_exists(child.pid)
    child.wait()
    assert not pid_exists(child.pid)
