"""The hand-over from `serve` to its work process (bot/workproc.py): written at once by the submitting thread,
in order through a full pipe, and resent whole to a new child when the old one died in the middle of a line.

The child here is a real process that records every line it reads (one file per process, named after its pid,
created when it starts) and marks when its input ended, so what reaches a work process is read back exactly as
it arrived. The tests reach the child only as any other process could: by the pid it reports, through /proc.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from bot.workproc import WorkProcess
from core import worker

RECORDER = r"""
import os, sys
from pathlib import Path
out = Path(sys.argv[1]) / f"{os.getpid()}.lines"
with open(out, "ab") as f:
    for line in sys.stdin.buffer:
        f.write(line)
        f.flush()
out.with_suffix(".done").touch()
"""


def _recorded(folder: Path) -> dict[int, list[bytes]]:
    return {int(p.stem): p.read_bytes().splitlines(keepends=True) for p in folder.glob("*.lines")}


def _wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _state(pid: int) -> str | None:
    """The process's state letter from /proc (``Z`` for a zombie), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _is_running(pid: int) -> bool:
    return _state(pid) not in (None, "Z")


def _new_child(folder: Path, known: set[int] = frozenset()) -> int:
    """The pid of the next work process, as it reports itself once started."""
    found: list[int] = []

    def started() -> bool:
        found[:] = [pid for pid in _recorded(folder) if pid not in known]
        return bool(found)

    _wait_for(started, "a work process to start")
    assert len(found) == 1, found
    pid = found[0]
    assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(os.getpid()), \
        "the work process is a child of the process that started it"
    return pid


def _bytes_waiting_in_input(pid: int) -> int:
    """How many bytes sit unread in the process's standard input (a pipe), seen through /proc/<pid>/fd/0."""
    fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NONBLOCK)
    try:
        count = array.array("i", [0])
        fcntl.ioctl(fd, termios.FIONREAD, count)
        return count[0]
    finally:
        os.close(fd)


def _submit_all(wp: WorkProcess, items: list[dict]) -> None:
    """Submit from another thread and require it to return: submitting never waits for the child."""
    thread = threading.Thread(target=lambda: [wp.submit("dispatch", item) for item in items], daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "submit blocked on a work process that is not reading"


def _stalled_with(wp: WorkProcess, folder: Path, items: list[dict]) -> tuple[int, int]:
    """Stop the work process, submit ``items``; return its pid and the bytes that reached its pipe."""
    child = _new_child(folder)
    os.kill(child, signal.SIGSTOP)  # a stalled work process: the pipe fills, the rest has to wait in serve
    _submit_all(wp, items)
    in_pipe = _bytes_waiting_in_input(child)
    assert not _recorded(folder)[child], "a stopped work process read nothing"
    assert 0 < in_pipe < sum(len(item["body"]) for item in items), "part of the items must wait outside the pipe"
    return child, in_pipe


@pytest.fixture
def recorder(tmp_path):
    wp = WorkProcess([sys.executable, "-c", RECORDER, str(tmp_path)]).start(supervise_every=3600)
    try:
        yield wp, tmp_path
    finally:
        for pid in _recorded(tmp_path):
            if _is_running(pid):
                os.kill(pid, signal.SIGCONT)
        wp.stop(timeout=10)


def test_items_arrive_whole_and_in_order_through_a_full_pipe(recorder):
    wp, folder = recorder
    items = [{"n": i, "body": f"{i}:" + "x" * 20_000} for i in range(200)]  # about 4 MB, more than the pipe
    child, _ = _stalled_with(wp, folder, items)
    os.kill(child, signal.SIGCONT)
    _wait_for(lambda: sum(len(v) for v in _recorded(folder).values()) == len(items), "all items")
    lines = _recorded(folder)[child]
    assert [json.loads(line) for line in lines] == [{"work": "dispatch", **item} for item in items]
    assert wp.alive()


def test_a_line_cut_short_by_a_dead_child_is_sent_whole_to_the_next(recorder):
    wp, folder = recorder
    items = [{"n": i, "body": "y" * 300_000} for i in range(8)]  # bigger than the pipe: one is cut short
    first, in_pipe = _stalled_with(wp, folder, items)
    os.kill(first, signal.SIGKILL)
    # The writer notices the broken pipe by itself and starts a new work process.
    second = _new_child(folder, known={first})

    def got_the_last() -> bool:
        lines = _recorded(folder)[second]
        return bool(lines) and lines[-1].endswith(b"\n") and json.loads(lines[-1])["n"] == len(items) - 1

    _wait_for(got_the_last, "the last item at the new work process")
    assert not _is_running(first)
    lines = _recorded(folder)[second]
    line_bytes = len(lines[0])  # every item's line is as long
    cut = in_pipe // line_bytes
    assert in_pipe % line_bytes, "the dead child's pipe must have ended in the middle of a line"
    received = [json.loads(line)["n"] for line in lines]
    # Lines the dead child had whole in its pipe are lost with it (their Slack requests were acked already);
    # the one it had only part of, and all after it, reach the new child whole and in order.
    assert received == list(range(cut, len(items)))
    assert wp.alive()


def test_stop_hands_over_the_backlog_before_ending_the_input(recorder):
    wp, folder = recorder
    items = [{"n": i, "body": "z" * 100_000} for i in range(30)]
    child, _ = _stalled_with(wp, folder, items)
    threading.Timer(0.5, lambda: os.kill(child, signal.SIGCONT)).start()
    wp.stop(timeout=30)
    assert (folder / f"{child}.done").exists(), "the work process must end because its input ended"
    assert _state(child) is None, "stop returns once the work process has exited"
    assert [json.loads(line)["n"] for line in _recorded(folder)[child]] == list(range(len(items)))


def test_the_work_process_gives_way_to_the_acks(tmp_path):
    """`rollback-bot work` lowers its own priority, and that of its session where the kernel groups by session."""
    script = (
        "import os\nfrom core.worker import lower_process_priority\nlower_process_priority()\n"
        "print(os.getpriority(os.PRIO_PROCESS, 0))\n"
        "print(open('/proc/self/autogroup').read().split()[-1] if os.path.exists('/proc/self/autogroup') else '-')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2], start_new_session=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    nice, group = out.stdout.split()
    assert int(nice) >= worker.WORK_NICENESS
    if group != "-":
        assert int(group) == worker.WORK_NICENESS


def test_serve_and_work_take_their_startup_heap_out_of_the_collectors_way():
    """After `freeze_startup_heap` a full collection no longer walks the modules and app built at start."""
    script = (
        "import gc\nimport bot.app, core.services, handlers.commands\n"
        "from bot.__main__ import freeze_startup_heap\n"
        "freeze_startup_heap()\nprint(gc.get_freeze_count(), len(gc.get_objects()))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    frozen, tracked = map(int, out.stdout.split())
    assert frozen > 10_000 and tracked < frozen / 10, (frozen, tracked)
