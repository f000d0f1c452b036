"""The runbook's "overfitted model" quick fix: retrain with RETRAIN_COMMAND into a new ``backup_retrain_*``
candidate. Production is never touched: deploying the candidate is an ordinary approved rollback.

How one approved retrain runs (``core.fixes.run_fix`` calls ``retrain``)::

    MODELS_DIR/{model}/.retrain_XXXX/          a fresh hidden folder (mkdtemp), passed as {output_dir}
        RETRAIN_COMMAND runs                   no shell, core.process's scrubbed environment, a session of its
                                               own, RETRAIN_TIMEOUT_MINUTES (then its process group is killed);
                                               its last lines are handed to ``on_output`` as it goes
        validation                             the pre-flight checks of a backup (core.registry, core.fileguard):
                                               metadata.json parses, model.json is a regular file that loads with
                                               xgboost, its features match metadata.json and exist in the view
        owner/group/mode like its siblings     core.fileattrs, before the final name shows it
    MODELS_DIR/{model}/backup_retrain_{YYYY-MM-DD_HH-MM-SS}/   one atomic rename

A command that fails, hangs or writes something invalid leaves nothing behind: its folder is removed and the
message says why.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from core.atomicfile import seal_folder
from core.fileattrs import folder_attrs
from core.modelio import backup_file_attrs, sibling_backups
from core.platform import feature_columns
from core.process import run_command
from core.registry import ModelRegistry, validate_name

__all__ = ["OUTPUT_EVENT", "PLACEHOLDERS", "RETRAIN_PREFIX", "RetrainOutcome", "check_command", "command_for", "default_start_date",
           "deploy_command", "retrain"]

PLACEHOLDERS = ("model", "strategy", "marketcap", "start_date", "output_dir")
RETRAIN_PREFIX = "backup_retrain_"
DEFAULT_DAYS_BACK = 365  # start date when the diagnostics saw no regime change
OUTPUT_EVENT = "retrain_output"  # the step event that carries the command's last lines while it runs
OUTPUT_EVERY_SECONDS = 2.0  # the thread's output message is updated at most this often
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]*)\}")


def check_command(argv: list[str]) -> list[str]:
    """RETRAIN_COMMAND must be a non-empty argument list, know only PLACEHOLDERS and pass ``{output_dir}``."""
    if not argv or not all(isinstance(a, str) for a in argv) or not argv[0].strip():
        raise ValueError("must be a JSON list of strings, the program first")
    unknown = sorted({m for a in argv for m in _PLACEHOLDER.findall(a)} - set(PLACEHOLDERS))
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}; known: "
                         + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
    if not any("{output_dir}" in a for a in argv):
        raise ValueError("must pass {output_dir}, the folder the new model is written into")
    return argv


def command_for(argv: list[str], values: dict[str, str]) -> list[str]:
    """The argument list with each placeholder replaced (once, left to right: a value is never re-expanded)."""
    return [_PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), a) for a in argv]


def default_start_date(regime: Any, today: date) -> date:
    """The training window's start: the regime change the diagnostics found, else DEFAULT_DAYS_BACK days back."""
    if regime is not None and getattr(regime, "verdict", "") == "regime change" and getattr(regime, "recent", None):
        return regime.recent[0]
    return today - timedelta(days=DEFAULT_DAYS_BACK)


def deploy_command(model: str, backup: str) -> str:
    return f"/rollback start {model} {backup} deploy the retrained model --confirm"


@dataclass(frozen=True)
class RetrainOutcome:
    ok: bool
    message: str
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


class _Follower:
    """Hands the command's last lines to ``on_output`` at most every OUTPUT_EVERY_SECONDS, and once at the end."""

    def __init__(self, on_output: Callable[[list[str], bool], None] | None, keep: int = 15) -> None:
        self.on_output, self.keep = on_output, keep
        self.lines: list[str] = []
        self.last = 0.0
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            self.lines = (self.lines + [text[:300]])[-self.keep:]
            now = time.monotonic()
            if self.on_output is None or now - self.last < OUTPUT_EVERY_SECONDS:
                return
            self.last = now
            lines = list(self.lines)
        self.on_output(lines, True)

    def done(self) -> None:
        if self.on_output is not None:
            self.on_output(list(self.lines), False)


def _validate(registry: ModelRegistry, conn: psycopg.Connection, folder: Path) -> str | None:
    """Why the command's output is not a usable backup (the pre-flight checks of a rollback target), or None."""
    for entry in os.scandir(folder):
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return f"{entry.name} is not a regular file"
    info = registry._info(folder.name, folder)
    return registry.unusable_reason(info, features=feature_columns(conn))


def retrain(
    conn: psycopg.Connection, registry: ModelRegistry, *, command: list[str] | None, timeout_seconds: float,
    model: str, start_date: date, now: datetime, on_output: Callable[[list[str], bool], None] | None = None,
) -> RetrainOutcome:
    """Run RETRAIN_COMMAND for ``model`` and land its output as a new backup; never raises for a failed run."""
    if not command:
        return RetrainOutcome(False, "RETRAIN_COMMAND is not set: there is no retrain command to run.")
    validate_name(model, "model")
    model_dir = registry.model_dir(model)
    strategy, _, marketcap = model.rpartition("_")
    out = Path(tempfile.mkdtemp(prefix=".retrain_", dir=model_dir))
    argv = command_for(command, {"model": model, "strategy": strategy or model, "marketcap": marketcap,
                                 "start_date": start_date.isoformat(), "output_dir": str(out)})
    follower = _Follower(on_output)
    started = time.monotonic()
    try:
        try:
            run = run_command(argv, timeout=timeout_seconds, on_line=follower.line, tail_lines=15, cwd=model_dir)
        except OSError as exc:
            return RetrainOutcome(False, f"The retrain command could not start: {exc.strerror} ({argv[0]}).")
        finally:
            follower.done()
        detail = {"start_date": start_date.isoformat(), "output_tail": run.tail[-5:]}
        last = f" Last output: {run.tail[-1].strip()[:200]}" if run.tail and run.tail[-1].strip() else ""
        if run.timed_out:
            return RetrainOutcome(False, f"The retrain command did not finish within {timeout_seconds / 60:g} min"
                                         f" (RETRAIN_TIMEOUT_MINUTES); its process group was killed and its output"
                                         f" removed. Production is untouched.{last}", run.seconds, detail)
        if run.returncode != 0:
            return RetrainOutcome(False, f"The retrain command exited with {run.returncode}; its output was removed."
                                         f" Production is untouched.{last}", run.seconds, detail)
        problem = _validate(registry, conn, out)
        if problem:
            return RetrainOutcome(False, f"The retrained model was refused and removed: {problem}. Production is"
                                         " untouched.", run.seconds, detail)
        name = f"{RETRAIN_PREFIX}{now:%Y-%m-%d_%H-%M-%S}"
        final = model_dir / name
        if final.exists() or final.is_symlink():
            return RetrainOutcome(False, f"{name} already exists; the retrained model was removed. Try again.",
                                  run.seconds, detail)
        siblings = sibling_backups(model_dir, "")  # owner, group and mode of the model's backups
        seal_folder(out, final, folder=folder_attrs(model_dir, like=siblings[:1]),
                    attrs_of=lambda name: backup_file_attrs(model_dir, name, siblings=siblings))
        out = final  # landed: nothing to remove
        info = registry.backup(model, name)
        detail.update(backup=name, deploy=deploy_command(model, name), spearman_ic=info.spearman_ic,
                      sharpe_ratio=info.sharpe_ratio, training_date=str(info.training_date))
        return RetrainOutcome(
            True,
            f"Retrained {model} from {start_date.isoformat()} in {time.monotonic() - started:.0f} s: new candidate"
            f" {name} (IC {info.spearman_ic:.4f}, Sharpe {info.sharpe_ratio:.2f}) passed validation. Production is"
            f" untouched. To deploy it (an ordinary approved rollback, with pre-flight): `{detail['deploy']}`",
            run.seconds, detail)
    except Exception as exc:  # noqa: BLE001 - said plainly; the output folder is removed below
        return RetrainOutcome(False, f"The retrained model could not be landed as a backup: {exc}. Production is"
                                     " untouched.", time.monotonic() - started)
    finally:
        if out.name.startswith(".retrain_"):
            shutil.rmtree(out, ignore_errors=True)
