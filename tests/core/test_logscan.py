"""The one log scanner (core.logscan): monitoring after a resume and the diagnostics judge log lines alike."""

from __future__ import annotations

from pathlib import Path

from core.diagnostics import DiagnosticsConfig, scan_log
from core.diagnostics.system import scan_api_log
from core.logfollow import follow_logs, log_baseline
from core.logscan import kinds_of, scan

LINES = [
    ("2026-01-01 INFO rebalance done, errors=0, error_rate 0.0", ()),
    ("2026-01-01 ERROR could not read shard 3", ("error",)),
    ("level=error msg=\"order rejected\"", ("error",)),
    ("Traceback (most recent call last):", ("error",)),
    ("ValueError: bad input", ("error",)),
    ("xgboost.core.XGBoostError: [12:00:00] bad model", ("error",)),
    ("FATAL lost the database", ("error",)),
    ("2026-01-01 WARNING slow disk", ("warning",)),
    ("UserWarning: feature vol_20d has NaN values", ("warning", "nan")),
    ("epoch 4 loss nan", ("nan",)),
    ("2026-01-01 INFO nanosecond timer ok", ()),
]


def test_what_a_line_is() -> None:
    for line, kinds in LINES:
        assert kinds_of(line) == kinds, line


def test_monitoring_and_the_diagnostics_count_the_same_error_lines(tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    log.write_text("")
    state = log_baseline([log])
    log.write_text("".join(line + "\n" for line, _ in LINES))
    errors = [line for line, kinds in LINES if "error" in kinds]

    followed = follow_logs([log], state, max_lines=50)  # monitoring, after the resume
    section, findings = scan_api_log(log)               # the diagnostics' system check
    training, _ = scan_log(log, config=DiagnosticsConfig(log_last_lines=50))  # the training log check
    assert followed.lines == errors and followed.count == len(errors)
    assert section.counts["error"] == len(errors) and [ln.text for ln in section.last_lines][-5:] == errors[-5:]
    assert training.counts == {"error": len(errors), "warning": 2, "nan": 2}
    assert [ln.text for ln in training.last_lines if "error" in ln.kinds] == errors
    assert findings and f"{len(errors)} error line(s)" in findings[0].message


def test_following_reads_complete_new_lines_and_follows_rotation(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"ERROR old\n")
    start = log.stat().st_size
    with log.open("ab") as fh:
        fh.write(b"info\nTraceback (most recent call last):\n  File x\nValueError: bad \xff\nno errors here\n"
                 b"ERROR yes\nERR")
    got = scan(log, kinds=("error",), offset=start)
    assert [h.text for h in got.hits] == ["Traceback (most recent call last):", "ValueError: bad \ufffd", "ERROR yes"]
    assert got.offset == log.stat().st_size - 3, "the incomplete last line waits for the next look"
    assert scan(log, offset=got.offset, inode=got.inode).hits == []
    log.write_bytes(b"CRITICAL after rotation\n")  # smaller than the offset: rotated
    assert [h.text for h in scan(log, offset=got.offset, inode=got.inode).hits] == ["CRITICAL after rotation"]

    look = follow_logs([tmp_path / "missing.log"], {str(tmp_path / "missing.log"): [5, None]})
    assert look.count == 0 and look.state == {str(tmp_path / "missing.log"): [5, None]}


def test_the_tail_of_a_big_file(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_text("ERROR old failure\n" + "INFO filler line\n" * 2000 + "ERROR recent failure")
    got = scan(log, tail_bytes=4096)
    assert got.truncated and got.counts["error"] == 1 and got.hits[-1].text == "ERROR recent failure"
