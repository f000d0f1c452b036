"""The hand-over from `serve` to its work process (bot/workproc.py): written at once by the submitting thread,
in order through a full pipe, and resent whole to a new child when the old one died in the middle of a line.

The child here is a real process that records every line it reads (one file per process), so what reaches a
work process is read back exactly as it arrived.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
"""


def _recorded(folder: Path) -> dict[int, list[bytes]]:
    return {int(p.stem): p.read_bytes().splitlines(keepends=True) for p in folder.glob("*.lines")}


def _wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _submit_all(wp: WorkProcess, items: list[dict]) -> None:
    """Submit from another thread and require it to return: submitting never waits for the child."""
    thread = threading.Thread(target=lambda: [wp.submit("dispatch", item) for item in items], daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "submit blocked on a work process that is not reading"


@pytest.fixture
def recorder(tmp_path):
    wp = WorkProcess([sys.executable, "-c", RECORDER, str(tmp_path)]).start(supervise_every=3600)
    try:
        yield wp, tmp_path
    finally:
        proc = wp._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        wp.stop(timeout=10)


def test_items_arrive_whole_and_in_order_through_a_full_pipe(recorder):
    wp, folder = recorder
    child = wp._proc
    child.send_signal(signal.SIGSTOP)  # a stalled work process: the pipe fills, the rest waits in the backlog
    items = [{"n": i, "body": f"{i}:" + "x" * 20_000} for i in range(200)]  # about 4 MB, more than the pipe
    _submit_all(wp, items)
    assert wp._backlog, "with the child stopped, part of the items must wait in the backlog"
    child.send_signal(signal.SIGCONT)
    _wait_for(lambda: sum(len(v) for v in _recorded(folder).values()) == len(items), "all items")
    lines = _recorded(folder)[child.pid]
    assert [json.loads(line) for line in lines] == [{"work": "dispatch", **item} for item in items]


def test_a_line_cut_short_by_a_dead_child_is_sent_whole_to_the_next(recorder):
    wp, folder = recorder
    first = wp._proc
    first.send_signal(signal.SIGSTOP)
    items = [{"n": i, "body": "y" * 300_000} for i in range(8)]  # bigger than the pipe: one is cut short
    _submit_all(wp, items)
    head = wp._backlog[0]
    assert 0 < head[1] < len(head[0]), "the first waiting item must be partly written"
    cut = json.loads(head[0])["n"]
    first.kill()
    first.wait()
    wp._wake.set()  # the writer notices the broken pipe and starts a new work process
    _wait_for(lambda: any(pid != first.pid for pid in _recorded(folder)) and not wp._backlog, "the new child")
    second = next(pid for pid in _recorded(folder) if pid != first.pid)
    _wait_for(lambda: len(_recorded(folder)[second]) == len(items) - cut, "the items after the cut")
    received = [json.loads(line)["n"] for line in _recorded(folder)[second]]
    # Lines the dead child had whole in its pipe are lost with it (their Slack requests were acked already);
    # the one it had only part of, and all after it, reach the new child whole and in order.
    assert received == list(range(cut, len(items)))
    assert wp.alive()


def test_stop_hands_over_the_backlog_before_ending_the_input(recorder):
    wp, folder = recorder
    child = wp._proc
    child.send_signal(signal.SIGSTOP)
    items = [{"n": i, "body": "z" * 100_000} for i in range(30)]
    _submit_all(wp, items)
    assert wp._backlog
    threading.Timer(0.5, lambda: child.send_signal(signal.SIGCONT)).start()
    wp.stop(timeout=30)
    assert child.poll() == 0
    assert [json.loads(line)["n"] for line in _recorded(folder)[child.pid]] == list(range(len(items)))


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
