"""Plain-text renderings of service-layer values for the break-glass CLI."""

from __future__ import annotations

import math

from core.services import BackupsReport, StatusReport


def _num(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def status(report: StatusReport) -> str:
    out = []
    if report.trading_halted:
        out.append(f"TRADING HALTED since {report.halted_since:%Y-%m-%d %H:%M:%S %Z}: {report.halt_reason or ''}")
    else:
        out.append("Automated trading is running.")
    rows = []
    for m in report.models:
        d = m.deployment
        rows.append(
            [
                m.name,
                d.version if d else "-",
                f"{d.deployed_at:%Y-%m-%d %H:%M}" if d else "-",
                (d.deployed_by or "-") if d else "-",
                _num(d.spearman_ic if d else None, 4),
                _num(d.sharpe_ratio if d else None, 2),
                "; ".join(m.problems),
            ]
        )
    out.append(_table(["model", "version", "deployed_at", "deployed_by", "spearman_ic", "sharpe", "problems"], rows))
    if report.incidents:
        out.append("Open incidents:")
        out += [f"  INC-{i.id} {i.kind} {i.model_name or '-'} {i.state} (by {i.requested_by})" for i in report.incidents]
    else:
        out.append("No open incidents.")
    if report.doctor is not None:
        run = report.doctor
        out.append(f"Platform check ({run.source}, {run.at:%Y-%m-%d %H:%M %Z}): {run.summary()}")
        out += [f"  {c.line()}" for c in run.problems]
    return "\n".join(out)


def backups(report: BackupsReport) -> str:
    rec = report.recommendation.backup
    p = report.production
    out = [
        f"Model {report.model}: production {report.deployment.version if report.deployment else '?'}"
        f" trained {p.training_date or 'n/a'} IC {_num(p.spearman_ic, 4)} Sharpe {_num(p.sharpe_ratio, 2)}"
    ]
    rows = []
    for b in report.backups:
        note = "; ".join(b.problems) or report.recommendation.rejected.get(b.name, "")
        live = report.recommendation.live.get(b.name)
        if live is not None:
            note = f"last {live.days}d IC {_num(live.spearman_ic, 4)} Sharpe {_num(live.sharpe_ratio, 2)}"
        rows.append(
            [
                ("* " if rec and b.name == rec.name else "  ") + b.name,
                str(b.training_date or "-"),
                _num(b.spearman_ic, 4),
                _num(b.sharpe_ratio, 2),
                note,
            ]
        )
    out.append(_table(["backup", "training_date", "spearman_ic", "sharpe", "note"], rows))
    if rec:
        out.append(f"Recommended target: {rec.name} ({report.recommendation.rule}).")
    else:
        out.append("No backup qualifies as a rollback target.")
    return "\n".join(out)
