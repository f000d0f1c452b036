"""Issue 7: `rollback-bot console` driven through a pseudo-terminal: one request, one approval."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[2]


class Pty:
    def __init__(self, argv: list[str], env: dict, cwd: Path) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, close_fds=True)
        os.close(slave)
        self.buffer = ""

    def read_until(self, needle: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {needle!r}; got:\n{self.buffer[-3000:]}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    self.buffer += os.read(self.master, 65536).decode("utf-8", "replace")
                except OSError:
                    break
        return self.buffer

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> None:
        try:
            self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.master)


def test_console_request_and_approval(database_url, tmp_path):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS console_under_test WITH (FORCE)")
        conn.execute("CREATE DATABASE console_under_test")
    url = database_url.rsplit("/", 1)[0] + "/console_under_test"
    code = (
        "import sys; from pathlib import Path; from bot.devtools import console; "
        f"sys.exit(console.run(root=Path({str(tmp_path / 'c')!r}), database_url={url!r}))"
    )
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    term = Pty([sys.executable, "-c", code], env, tmp_path)
    try:
        term.read_until("alice> ")
        term.send("/rollback backups growth_momentum_large")
        out = term.read_until("Recommended target")
        target = out.split("/rollback start growth_momentum_large ")[1].split()[0]
        term.send(f"/rollback start growth_momentum_large {target} IC negative since the market turned --confirm")
        term.read_until("[Approve] [Halt now] [Deny]")
        term.send("click Approve")
        term.read_until("You cannot approve your own request")
        term.send("as bob")
        term.read_until("You are now bob")
        term.send("click Approve INC-1")
        term.read_until("Trading resumed")
        term.send("quit")
        term.read_until("bye")
    finally:
        term.close()
    assert term.proc.returncode == 0
    with psycopg.connect(url) as conn:
        state = conn.execute("SELECT state, approved_by FROM rollback_bot.incidents WHERE id = 1").fetchone()
        rows = conn.execute("SELECT version FROM model_deployment_log WHERE model_name = 'growth_momentum_large'"
                            " AND is_production").fetchall()
    assert state == ("monitoring", "U0BOB")
    assert rows == [(target,)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS console_under_test WITH (FORCE)")
