"""The diagnostics report: its sections, the likely cause, and its texts (a plain summary for an incident
report's root cause, Markdown for ``/rollback diagnose``). Every line says what it is about: one version of the
model (performance, drift), the model (its training log), or the whole platform (data quality, regime, system).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from core.diagnostics.common import SEVERITY_ORDER, Finding, day_text, num
from core.diagnostics.dataquality import DataQualitySection
from core.diagnostics.drift import DriftSection
from core.diagnostics.performance import PerformanceSection, perf_line
from core.diagnostics.regime import RegimeSection
from core.diagnostics.system import SystemSection
from core.diagnostics.trainlog import LogScanSection

PLATFORM_WIDE = "all models"


@dataclass(frozen=True)
class DiagnosticsReport:
    model: str
    as_of: date | None
    days: int
    performance: PerformanceSection
    data_quality: DataQualitySection
    log_scan: LogScanSection
    drift: DriftSection
    regime: RegimeSection
    findings: list[Finding]
    elapsed_seconds: float = 0.0
    version: str = "production"        # the version diagnosed (performance and drift are about it)
    version_note: str = ""             # which version that is, and where its files were read
    system: SystemSection = field(default_factory=SystemSection)

    @property
    def version_label(self) -> str:
        return f"{self.version} ({self.version_note})" if self.version_note else self.version

    @property
    def healthy(self) -> bool:
        return not self.findings

    def by_area(self, area: str) -> list[Finding]:
        return [f for f in self.findings if f.area == area]

    def about(self, area: str) -> str:
        """What a finding of ``area`` is about: this version, this model, or every model."""
        return {
            "performance": f"performance of {self.version}",
            "drift": f"drift of {self.version}'s features",
            "log": f"training log of {self.model}",
            "data_quality": f"data quality, {PLATFORM_WIDE}",
            "regime": f"market regime, {PLATFORM_WIDE}",
            "system": f"system-wide, {PLATFORM_WIDE}",
        }.get(area, area.replace("_", " "))

    @property
    def data_issue(self) -> bool:
        dq, pipe = self.data_quality, self.system.pipeline
        return bool(dq.stale or dq.flagged_days or any(dq.null_counts.values()) or dq.missing_weekdays
                    or dq.return_null_total or pipe.bars_behind or pipe.view_behind)

    @property
    def likely_cause(self) -> str:
        """One sentence naming the most likely root cause among the checks' findings."""
        perf = self.performance
        areas = {f.area for f in self.findings}
        v = self.version
        if perf.verdict == "does not load":
            return f"The model file of {v} does not load: restore it from a backup."
        shifted = [f.feature for f in self.drift.shifted]
        regime = self.regime.verdict == "regime change"
        if shifted and regime:
            return (f"A feed or units change in {', '.join(shifted[:3])} (moved for every ticker alike, see drift), or"
                    " an extreme market regime change (also found): check the feed first.")
        if perf.verdict in ("degraded", "below expectations"):
            if shifted:
                return (f"A feed or units change: {', '.join(shifted[:3])} moved for every ticker alike (see drift);"
                        f" {v} is fed inputs it was not trained on.")
            if regime:
                return (f"A market regime change: the relationships {v} learned no longer hold; a model "
                        "trained in a similar regime may do better.")
            if self.data_issue:
                return f"Data-quality problems in the inputs of {v} (see data quality and system)."
            if "drift" in areas:
                return f"Feature drift: the inputs no longer look like the training data of {v}."
            if "log" in areas:
                return f"The training run reported errors or NaNs: {v} itself may be faulty."
            return f"{v} underperforms, but none of the checks explains why."
        if shifted:
            return f"A feed or units change in {', '.join(shifted[:3])} (see drift), not (yet) visible in performance."
        if regime:
            return "A market regime change, not (yet) visible in the model's performance."
        if self.data_issue:
            return "Data-quality problems (see data quality and system); performance is not affected yet."
        if areas:
            return "Some checks raised warnings; performance is as expected."
        return "No anomaly found: performance, data, training log, drift, regime and system are as expected."

    def _log_note(self) -> str | None:
        ls = self.log_scan
        if ls.status in ("missing", "error"):
            return ls.error or ls.status
        return None

    def summary(self) -> str:
        """A few plain-text lines for an incident report's root-cause section."""
        when = f" as of {self.as_of.isoformat()}" if self.as_of else ""
        lines = [f"Diagnostics of {self.model}, version {self.version_label}{when} (last {self.days} trading days):"]
        lines.append(f"- performance of {self.version}: {perf_line(self.performance)}")
        shown = sorted(self.findings, key=lambda f: SEVERITY_ORDER.get(f.severity, 9))
        for f in shown:
            if f.area != "performance":
                lines.append(f"- {f.severity} ({self.about(f.area)}): {f.message}")
        note = self._log_note()
        if note:
            lines.append(f"- training log: {note}")
        if not any(f.area != "performance" for f in shown):
            lines.append("- data, training log, drift, regime and system: nothing unusual")
        lines.append(f"Likely cause: {self.likely_cause}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """A compact Markdown report (``/rollback diagnose MODEL``)."""
        out = [f"### Diagnostics: {self.model}" + (f" (as of {self.as_of.isoformat()})" if self.as_of else "")]
        out.append(f"_Version diagnosed: {self.version_label}_")
        out.append(f"**Likely cause:** {self.likely_cause}")
        if self.findings:
            out.append("")
            for f in sorted(self.findings, key=lambda f: SEVERITY_ORDER.get(f.severity, 9)):
                out.append(f"- **{f.severity}** _{self.about(f.area)}_: {f.message}")
        p = self.performance
        out += ["", f"**Performance** of {self.version} ({p.verdict}): {perf_line(p)}"]
        out.append(self._data_quality_line())
        ls = self.log_scan
        whose = f" of {ls.model}" if ls.per_model else ""
        if ls.status == "ok":
            c = ls.counts
            out.append(f"**Training log**{whose}: {c['error']} error, {c['warning']} warning, {c['nan']} NaN lines"
                       f" in {ls.lines_scanned} lines")
        else:
            out.append(f"**Training log**{whose}: {ls.status}" + (f" ({ls.error})" if ls.error else ""))
        dr = self.drift
        if dr.error:
            out.append(f"**Drift** of {self.version}'s features: could not be checked ({dr.error})")
        else:
            top = ", ".join(f"{f.feature} {f.psi:.2f}" for f in dr.features[:3]) or "n/a"
            shifted = ", ".join(f.feature for f in dr.shifted) or "none"
            out.append(f"**Drift** of {self.version}'s features (PSI vs {dr.reference_source}): {top};"
                       f" level shifts for every ticker: {shifted}")
        rg = self.regime
        out.append(f"**Regime** ({rg.verdict}, {PLATFORM_WIDE}): market vol ratio {num(rg.vol_ratio)}, dispersion"
                   f" ratio {num(rg.dispersion_ratio)}, mean-shift t {num(rg.t_stat)} (recent {rg.recent_days} vs"
                   f" prior {rg.prior_days} days)")
        out.append(self._system_line())
        return "\n".join(out)

    def _data_quality_line(self) -> str:
        dq = self.data_quality
        if dq.error:
            return f"**Data quality** ({PLATFORM_WIDE}): could not be checked ({dq.error})"
        counts = ", ".join(f"{c.day:%m-%d} {c.tickers}{'!' if c.flagged else ''}" for c in dq.ticker_counts)
        nulls = ", ".join(f"{k} {v}" for k, v in dq.null_counts.items() if v) or "none"
        view = "stale" if dq.stale else "current"
        if dq.return_column:
            ret = f"return_1d IS NULL: {dq.return_null_total} row(s) over the last {len(dq.return_nulls)} days"
        else:
            ret = "return_1d: no such column"
        return (f"**Data quality** ({PLATFORM_WIDE}): tickers/day {counts or 'n/a'}; NULLs {nulls}; {ret};"
                f" feature view {view} (view {day_text(dq.view_latest)}, bars {day_text(dq.bars_latest)})")

    def _system_line(self) -> str:
        s = self.system
        db = s.database
        if db.error:
            dbt = f"could not be checked ({db.error})"
        else:
            lag = ""
            if db.standby:
                lag = f", standby replay lag {num(db.replay_lag_seconds, '.0f')} s"
            elif db.standbys:
                lag = (f", {db.standbys} standby(s), replay lag {num(db.standby_lag_seconds, '.0f')} s"
                       if db.lag_visible else f", {db.standbys} standby(s), lag not visible to this role")
            dbt = f"{db.connections}/{db.max_connections} connections, {db.locks_waiting} lock wait(s){lag}"
        api = s.api_log
        apit = (f"{api.counts['error']} error line(s)" if api.status == "ok"
                else api.status + (f" ({api.error})" if api.error else ""))
        p = s.pipeline
        pipe = (f"could not be checked ({p.error})" if p.error else
                f"bars {day_text(p.bars_latest)}, view {day_text(p.view_latest)}, last trading day"
                f" {day_text(p.last_trading_day)}")
        return f"**System** ({PLATFORM_WIDE}): database {dbt}; API log {apit}; data pipeline {pipe}"
