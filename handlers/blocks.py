"""Block Kit views: pure functions from service-layer values to ``slack_sdk.models`` blocks.

slack_sdk checks section text (3000), button text (75), header (150) and action counts when blocks are
serialised; it does not check a message's 50-block limit or a field's 2000 characters, so ``finish`` and
``_field`` do.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from enum import Enum
from datetime import datetime

from slack_sdk.models.blocks import (
    Block,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    SectionBlock,
)

from core.registry import BackupInfo
from core.services import BackupsReport, StatusReport

MAX_BLOCKS = 50
MAX_FIELD = 2000
MAX_SECTION = 3000


def esc(text: object) -> str:
    """Escape text for Slack mrkdwn (&, <, >), so user input can never form links or mentions."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def num(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if digits == 4 else f"{value:.{digits}f}"


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "n/a"


def mrkdwn_from_markdown(text: str) -> str:
    """Slack's mrkdwn from the Markdown that core renders (reports, diagnostics): escape, then restyle."""
    out = []
    for line in esc(text).splitlines():
        stripped = line.lstrip("#").strip() if line.startswith("#") else None
        if stripped is not None:
            out.append(f"*{stripped}*")
            continue
        line = re.sub(r"\*\*(.+?)\*\*", r"*\1*", line)
        if line.startswith("- "):
            line = "• " + line[2:]
        out.append(line)
    return "\n".join(out)


def md(text: str) -> MarkdownTextObject:
    return MarkdownTextObject(text=clip(text, MAX_SECTION))


def _field(text: str) -> MarkdownTextObject:
    return MarkdownTextObject(text=clip(text, MAX_FIELD))


def section(text: str) -> SectionBlock:
    return SectionBlock(text=md(text))


def context(text: str) -> ContextBlock:
    return ContextBlock(elements=[md(text)])


def form(callback: Enum, title: str, blocks: Sequence[Block], *, meta: dict, submit: str = "Save",
         close: str = "Cancel") -> dict:
    """A modal form: its callback id (``handlers.ids.View``), title, buttons, and the metadata its submission reads
    back (``private_metadata``)."""
    from slack_sdk.models.views import View

    return View(type="modal", callback_id=callback.value, title=title, submit=submit, close=close,
                private_metadata=json.dumps(meta), blocks=list(blocks)).to_dict()


def finish(blocks: Sequence[Block], *, more_hint: str = "") -> list[dict]:
    """Serialise, cutting to Slack's 50-block message limit with a note of how much was left out."""
    blocks = list(blocks)
    if len(blocks) > MAX_BLOCKS:
        hidden = len(blocks) - (MAX_BLOCKS - 1)
        blocks = blocks[: MAX_BLOCKS - 1] + [context(f"…and {hidden} more blocks not shown. {more_hint}".strip())]
    return [b.to_dict() for b in blocks]


# ------------------------------------------------------------------------------------------ views


HELP = (
    "*`/rollback` — emergency model rollback*\n"
    "• `/rollback status [MODEL]` — production models, their metrics, open incidents, trading state"
    " (with MODEL: its backups, and its performance chart in a DM)\n"
    "• `/rollback backups MODEL` — a model's backups with metrics and a recommended target\n"
    "• `/rollback start [MODEL [BACKUP]] [reason…] --confirm` — request a rollback (a second person approves);"
    " `--confirm` says the runbook's pre-rollback checks hold (without it: the checklist; with arguments missing:"
    " a form)\n"
    "• `/rollback halt [reason…]` / `/rollback resume` — stop / restart automated trading\n"
    "• `/rollback incidents` — open and recent incidents\n"
    "• `/rollback report INCIDENT` — post an incident's report again\n"
    "• `/rollback followups [INCIDENT]` — open follow-ups (owner, due date), or one incident's\n"
    "• `/rollback loss INCIDENT AMOUNT` — update an incident's estimated loss (kept with its history)\n"
    "• `/rollback diagnose MODEL` — root-cause diagnostics\n"
    "• `/rollback doctor` — check the platform against what a rollback needs (approvers)\n"
    "• `/rollback help` — this text"
)


def help_blocks() -> list[dict]:
    return finish([section(HELP)])


def error_blocks(message: str) -> list[dict]:
    return finish([section(f":warning: {esc(message)}")])


def status_blocks(report: StatusReport) -> list[dict]:
    blocks: list[Block] = [HeaderBlock(text="Production models")]
    if report.trading_halted:
        blocks.append(
            section(
                f":octagonal_sign: *Automated trading is HALTED* since {when(report.halted_since)}"
                f" — {esc(report.halt_reason or 'no reason given')}"
            )
        )
    else:
        blocks.append(context(":large_green_circle: Automated trading is running."))
    blocks += _doctor_blocks(report)  # near the top: never cut by the 50-block limit
    if not report.models:
        blocks.append(section("No production models found in `model_deployment_log` or MODELS_DIR."))
    if len(report.models) > DETAILED_MODELS:
        blocks += _compact_models(report)
    for m in (report.models if len(report.models) <= DETAILED_MODELS else []):
        dep = m.deployment
        files = m.production_files
        title = f"*{esc(m.name)}*"
        if dep:
            title += f"  version `{esc(dep.version)}`" + ("  _(rollback)_" if dep.is_rollback else "")
        fields = [
            _field(f"*Deployed*\n{when(dep.deployed_at) if dep else 'n/a'}"),
            _field(f"*By*\n{esc(dep.deployed_by or 'n/a') if dep else 'n/a'}"),
            _field(f"*Spearman IC*\n{num(dep.spearman_ic if dep else None, 4)}"),
            _field(f"*Sharpe*\n{num(dep.sharpe_ratio if dep else None, 2)}"),
        ]
        if files and files.training_date:
            fields.append(_field(f"*Trained*\n{files.training_date.isoformat()}"))
        blocks.append(SectionBlock(text=md(title), fields=fields))
        if m.problems:
            blocks.append(context(":warning: " + esc("; ".join(m.problems))))
    blocks.append(DividerBlock())
    if report.incidents:
        lines = [
            f"• *INC-{i.id}* {esc(i.kind)} `{esc(i.model_name or '-')}` — {esc(i.state)} (by <@{esc(i.requested_by)}>)"
            for i in report.incidents
        ]
        blocks.append(section("*Open incidents*\n" + "\n".join(lines[:30])))
    else:
        blocks.append(context("No open incidents."))
    return finish(blocks, more_hint="Use `/rollback status` in the App Home for the full list.")


def _doctor_blocks(report: StatusReport) -> list[Block]:
    """The latest `rollback-bot doctor` run: its problems, or one line saying all passed."""
    run = report.doctor
    if run is None:
        return []
    where = f"{when(run.at)}, {esc(run.source)}"
    if run.ok:
        return [context(f":white_check_mark: Platform check: {run.summary()} ({where}).")]
    lines = "\n".join(f"• {esc(c.reason)}" for c in run.problems[:12])
    return [section(f":stethoscope: *Platform check: {run.summary()}* ({where}); a rollback may fail until they are"
                    f" fixed (`/rollback doctor` checks again):\n{lines}")]


DETAILED_MODELS = 12
COMPACT_PER_SECTION = 12
COMPACT_SECTIONS = 40


def _compact_models(report: StatusReport) -> list[Block]:
    """Many models: one line each, a dozen per section, with a count of what did not fit."""
    lines = []
    for m in report.models:
        dep = m.deployment
        line = f"*{esc(m.name)}*"
        if dep:
            line += (f" `{esc(dep.version)}` · {dep.deployed_at:%Y-%m-%d} by {esc(dep.deployed_by or 'n/a')}"
                     f" · IC {num(dep.spearman_ic, 4)} · Sharpe {num(dep.sharpe_ratio, 2)}")
        if m.problems:
            line += " :warning:"
        lines.append(clip(line, 240))
    out: list[Block] = []
    shown = COMPACT_PER_SECTION * COMPACT_SECTIONS
    for i in range(0, min(len(lines), shown), COMPACT_PER_SECTION):
        out.append(section("\n".join(lines[i : i + COMPACT_PER_SECTION])))
    if len(lines) > shown:
        out.append(context(f"…and {len(lines) - shown} more models; `rollback-bot status` lists them all."))
    problems = sum(1 for m in report.models if m.problems)
    if problems:
        out.append(context(f":warning: {problems} models have problems; `/rollback backups MODEL` shows details."))
    return out


def _backup_line(b: BackupInfo, recommended: str | None) -> str:
    mark = " :star: *recommended*" if b.name == recommended else ""
    if b.metadata is None:
        return f"`{esc(b.name)}` — :warning: {esc('; '.join(b.problems) or 'unreadable')}"
    text = (
        f"`{esc(b.name)}`{mark}\ntrained {b.training_date}  ·  IC {num(b.spearman_ic, 4)}"
        f"  ·  Sharpe {num(b.sharpe_ratio, 2)}"
    )
    if b.problems:
        text += f"\n:warning: {esc('; '.join(b.problems))}"
    return text


def backups_blocks(report: BackupsReport) -> list[dict]:
    prod = report.production
    rec = report.recommendation.backup
    blocks: list[Block] = [HeaderBlock(text=clip(f"Backups of {report.model}", 150))]
    dep = report.deployment
    blocks.append(
        section(
            f"*Production*: `{esc(dep.version) if dep else 'unknown'}`  trained {prod.training_date or 'n/a'}"
            f"  ·  IC {num(prod.spearman_ic, 4)}  ·  Sharpe {num(prod.sharpe_ratio, 2)}"
        )
    )
    if rec:
        blocks.append(
            section(
                f":star: *Recommended target: `{esc(rec.name)}`* — Sharpe {num(rec.sharpe_ratio, 2)},"
                f" IC {num(rec.spearman_ic, 4)}\n_Rule: {esc(report.recommendation.rule)}._\n"
                f"Request it with `/rollback start {esc(report.model)} {esc(rec.name)} <reason> --confirm`"
            )
        )
    else:
        blocks.append(section(":warning: *No backup qualifies as a rollback target.*"))
    blocks.append(DividerBlock())
    if not report.backups:
        blocks.append(section("This model has no `backup_*` folders."))
    shown = report.backups[:40]
    for b in shown:
        line = _backup_line(b, rec.name if rec else None)
        live = report.recommendation.live.get(b.name)
        if live is not None:
            line += f"\nlast {live.days} days: IC {num(live.spearman_ic, 4)}  ·  Sharpe {num(live.sharpe_ratio, 2)}"
        reason = report.recommendation.rejected.get(b.name)
        if reason and not b.problems:
            line += f"\n_not a candidate: {esc(reason)}_"
        blocks.append(section(line))
    if len(report.backups) > len(shown):
        blocks.append(context(f"…and {len(report.backups) - len(shown)} older backups not shown."))
    return finish(blocks)


def diagnostics_blocks(report, *, offer_fixes: bool = True, retrain_from=None) -> list[dict]:
    """``/rollback diagnose MODEL``: the compact report, and quick-fix buttons where they apply (*Retrain* when
    RETRAIN_COMMAND is set: ``retrain_from`` is the proposed start date of the training data)."""
    from slack_sdk.models.blocks import ActionsBlock, ButtonElement

    from handlers.ids import Action

    blocks: list[Block] = [HeaderBlock(text=clip(f"Diagnostics of {report.model}", 150))]
    body = mrkdwn_from_markdown("\n".join(report.to_markdown().splitlines()[1:]))
    for i in range(0, len(body), MAX_SECTION - 100):
        blocks.append(section(body[i : i + MAX_SECTION - 100]))
    buttons = []
    if offer_fixes and report.data_quality.stale:
        buttons.append(ButtonElement(text="Refresh feature view", action_id=Action.FIX_REFRESH_VIEW.value,
                                     value=report.model))
    if offer_fixes and report.performance.loads is False:
        buttons.append(ButtonElement(text="Restore corrupt model file", action_id=Action.FIX_RESTORE_MODEL.value,
                                     value=report.model, style="danger"))
    if offer_fixes and retrain_from is not None:
        from handlers.retrain import retrain_button

        buttons.append(retrain_button(report.model, retrain_from))
    if buttons:
        blocks.append(ActionsBlock(elements=buttons))
        blocks.append(context("Quick fixes that change the platform are approved by a second person, like a rollback."))
    blocks.append(context(f"Computed in {report.elapsed_seconds:.2f} s."))
    return finish(blocks)