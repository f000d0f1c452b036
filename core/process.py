"""Running a configured command safely: an argument list (never a shell), a scrubbed environment without the
bot's secrets, a session of its own, and a timeout that kills its whole process group.

Used for the trading stop command (``core.trading``) and the retrain command (``core.retrain``).
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The command's whole environment: nothing of the bot's (no Slack token, no database URL or password).
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def scrubbed_env() -> dict[str, str]:
    """A minimal environment: PATH, LANG, HOME and USER of the account the bot runs as."""
    try:
        account = pwd.getpwuid(os.getuid())
        home, user = account.pw_dir, account.pw_name
    except KeyError:
        home, user = "/", str(os.getuid())
    return {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": home or "/", "USER": user, "LOGNAME": user}


@dataclass
class CommandRun:
    returncode: int | None          # None: it did not finish in time (its process group was killed)
    timed_out: bool
    tail: list[str] = field(default_factory=list)   # its last lines of output (stdout and stderr together)
    seconds: float = 0.0


def pid_exists(pid: int) -> bool:
    """True if a process with this pid exists at all, zombies and other users' processes included."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(proc: subprocess.Popen) -> None:
    """Kill the command and everything it started (its session's process group), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group id is the child's pid
    except ProcessLookupError:
        pass
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # a grandchild that left the group still holds the pipes
        proc.kill()
        proc.wait(timeout=5)


def run_command(argv: list[str], *, timeout: float, on_line: Callable[[str], None] | None = None,
                tail_lines: int = 20, cwd: Path | None = None) -> CommandRun:
    """Run ``argv`` (no shell, ``scrubbed_env``, its own session), its stdout and stderr read line by line
    (each line to ``on_line``), at most ``timeout`` seconds: past it the whole process group is killed.
    Raises OSError when it cannot start."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", shell=False, env=scrubbed_env(), start_new_session=True,
                            cwd=cwd)
    tail: deque[str] = deque(maxlen=tail_lines)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if on_line is not None:
                try:
                    on_line(line)
                except Exception:  # noqa: BLE001 - following the output never stops the command
                    pass

    reader = threading.Thread(target=read, name="command-output", daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end_group(proc, reader)
        return CommandRun(None, True, list(tail), time.monotonic() - started)
    reader.join(timeout=5)
    if reader.is_alive():  # a grandchild it left behind still holds the pipe: end the group
        _end_group(proc, reader)
    return CommandRun(proc.returncode, False, list(tail), time.monotonic() - started)


def _end_group(proc: subprocess.Popen, reader: threading.Thread) -> None:
    """Kill the process group while ``reader`` owns the pipe (so not through ``communicate``), then reap."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    reader.join(timeout=5)
