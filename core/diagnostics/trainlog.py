"""Log scans: a model's training log (``TRAINING_LOG``, one per model when it holds ``{model}``,
``{strategy}`` or ``{marketcap}``), and the error lines of any log (the API log of the system check).

Error, warning and NaN lines are counted by the one log scanner (core.logscan: ``ValueError`` and a traceback
count as errors, ``UserWarning`` as a warning, the word nan as NaN) and the last few kept. Only the last
``log_tail_bytes`` of a file are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.diagnostics.common import WARNING, DiagnosticsConfig, Finding
from core.logscan import KINDS, scan

PLACEHOLDERS = ("{model}", "{strategy}", "{marketcap}")


@dataclass(frozen=True)
class LogLine:
    number: int        # 1-based line number in the file (in the part read)
    kinds: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class LogScanSection:
    path: Path | None
    status: str        # "not configured" | "missing" | "ok" | "error"
    counts: dict[str, int] = field(default_factory=lambda: {"error": 0, "warning": 0, "nan": 0})
    last_lines: list[LogLine] = field(default_factory=list)
    lines_scanned: int = 0
    truncated: bool = False   # only the tail of a large file was read
    error: str | None = None
    model: str | None = None  # the model whose log this is, when TRAINING_LOG names one log per model

    @property
    def per_model(self) -> bool:
        return self.model is not None


def split_model_name(model: str) -> tuple[str, str]:
    """``{strategy}_{marketcap}`` -> (strategy, marketcap); a name without ``_`` is all strategy."""
    strategy, sep, marketcap = model.rpartition("_")
    return (strategy, marketcap) if sep and strategy else (model, "")


def training_log_path(template: Path | str | None, model: str) -> Path | None:
    """``TRAINING_LOG`` for ``model``: its ``{model}``, ``{strategy}`` and ``{marketcap}`` replaced (the model
    name was validated, so it adds no path separator)."""
    if template is None:
        return None
    text = str(template)
    strategy, marketcap = split_model_name(model)
    for key, value in (("{model}", model), ("{strategy}", strategy), ("{marketcap}", marketcap)):
        text = text.replace(key, value)
    return Path(text)


def is_per_model(template: Path | str | None) -> bool:
    return template is not None and any(p in str(template) for p in PLACEHOLDERS)


def scan_lines(path: Path, *, config: DiagnosticsConfig = DiagnosticsConfig(),
               kinds: tuple[str, ...] = KINDS, model: str | None = None) -> LogScanSection:
    """Count the lines of ``path``'s tail that are each of ``kinds`` (core.logscan); keep the last few."""
    try:
        got = scan(path, kinds=kinds, tail_bytes=config.log_tail_bytes)
    except FileNotFoundError:
        return LogScanSection(path, "missing", error=f"{path} does not exist", model=model)
    except OSError as exc:
        return LogScanSection(path, "error", error=f"{path} cannot be read ({exc.strerror})", model=model)
    last = [LogLine(h.number, h.kinds, h.text) for h in got.hits[-config.log_last_lines:]] \
        if config.log_last_lines > 0 else []
    return LogScanSection(path, "ok", dict(got.counts), last, got.lines, got.truncated, model=model)


def scan_log(
    path: Path | None, *, config: DiagnosticsConfig = DiagnosticsConfig(), model: str | None = None,
) -> tuple[LogScanSection, list[Finding]]:
    """Count ERROR, WARNING and NaN lines of a training log; keep the last few matching lines. ``model``: the
    log is that model's own (a missing one is then said plainly)."""
    if path is None:
        return LogScanSection(None, "not configured"), []
    section = scan_lines(Path(path), config=config, model=model)
    if section.status == "missing" and model is not None:
        return LogScanSection(section.path, "missing", model=model,
                              error=f"no training log for {model}: {section.path} does not exist"), []
    if section.status != "ok":
        return section, []
    counts, last = section.counts, section.last_lines
    findings: list[Finding] = []
    if counts["error"] or counts["nan"]:
        latest = next((ln for ln in reversed(last) if "error" in ln.kinds or "nan" in ln.kinds), None)
        tail = f"; last: {latest.text[:160]!r}" if latest else ""
        whose = f" of {model}" if model else ""
        findings.append(Finding(WARNING, "log", f"training log{whose} {section.path.name}: {counts['error']} error"
                                f" line(s), {counts['nan']} NaN line(s), {counts['warning']} warning line(s){tail}"))
    return section, findings
