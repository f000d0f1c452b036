"""Render what the Slack stand-in holds as a person reads Slack: who said what, buttons as ``[Approve]``,
threads indented, ephemeral answers marked as only visible to one person."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable
from typing import Any

EMOJI = {
    ":white_check_mark:": "✔", ":x:": "✘", ":white_medium_square:": "☐", ":warning:": "⚠",
    ":octagonal_sign:": "⛔", ":hourglass_flowing_sand:": "⏳", ":floppy_disk:": "💾",
    ":arrows_counterclockwise:": "🔄", ":ledger:": "📒", ":mag:": "🔍", ":arrow_forward:": "▶",
    ":pause_button:": "⏸", ":eyes:": "👀", ":large_green_circle:": "🟢", ":red_circle:": "🔴",
    ":no_entry_sign:": "🚫", ":no_entry:": "⛔", ":heavy_multiplication_x:": "✖", ":rewind:": "⏪",
    ":star:": "★", ":rotating_light:": "🚨", ":bell:": "🔔", ":chart_with_downwards_trend:": "📉",
    ":page_facing_up:": "📄", ":telephone_receiver:": "📞", ":email:": "✉", ":stethoscope:": "🩺",
    ":dog:": "🐕",
    ":dart:": "🎯", ":globe_with_meridians:": "🌐", ":grey_question:": "❔", ":ballot_box_with_check:": "☑",
    ":clipboard:": "📋", ":alarm_clock:": "⏰", ":checkered_flag:": "🏁", ":memo:": "📝", ":sos:": "🆘",
    ":money_with_wings:": "💸", ":watch:": "⌚", ":link:": "🔗", ":sweep:": "🧹", ":arrow_right_hook:": "↪",
}
_MENTION = re.compile(r"<([@#!])([A-Z0-9^|a-z_\-]+)(?:\|([^>]*))?>")
_LINK = re.compile(r"<(https?://[^|>]+)(?:\|([^>]*))?>")


def plain(text: str, names: Callable[[str], str]) -> str:
    def mention(m: re.Match) -> str:
        kind, ident, label = m.group(1), m.group(2), m.group(3)
        if label:
            return ("@" if kind == "@" else "#") + label
        if kind == "@":
            return "@" + names(ident)
        if kind == "#":
            return "#" + names(ident)
        return "@" + ident.split("^")[-1]

    text = _MENTION.sub(mention, text)
    text = _LINK.sub(lambda m: m.group(2) or m.group(1), text)
    for code, symbol in EMOJI.items():
        text = text.replace(code, symbol)
    text = re.sub(r"(?<![\w`])\*([^*\n]+)\*(?!\w)", r"\1", text)  # *bold*
    text = re.sub(r"(?<![\w`])_([^_\n]+)_(?!\w)", r"\1", text)  # _italic_
    return html.unescape(text)


def _text(obj: Any) -> str:
    if isinstance(obj, dict):
        return obj.get("text", "")
    return str(obj or "")


def render_blocks(blocks: Iterable[dict], names: Callable[[str], str]) -> list[str]:
    out: list[str] = []
    for b in blocks:
        kind = b.get("type")
        if kind == "header":
            out.append(f"【 {plain(_text(b.get('text')), names)} 】")
        elif kind == "section":
            if b.get("text"):
                out.extend(plain(_text(b["text"]), names).splitlines())
            fields = [plain(_text(f), names).splitlines() for f in b.get("fields") or []]
            if fields:
                width = max(len(line) for col in fields for line in col) + 3
                for i in range(0, len(fields), 2):
                    pair = fields[i : i + 2]
                    depth = max(len(c) for c in pair)
                    for row in range(depth):
                        cells = [(c[row] if row < len(c) else "") for c in pair]
                        out.append("".join(cell.ljust(width) for cell in cells).rstrip())
        elif kind == "context":
            out.append("  " + " ".join(plain(_text(e), names) for e in b.get("elements") or []))
        elif kind == "divider":
            out.append("─" * 40)
        elif kind == "actions":
            out.append(" ".join(f"[{plain(_text(e.get('text')), names)}]" for e in b.get("elements") or []))
        elif kind == "image":
            out.append(f"[image: {b.get('alt_text', '')}]")
    return out


def render_message(who: str, text: str, blocks: list[dict] | None, names: Callable[[str], str],
                   indent: str = "") -> str:
    lines = render_blocks(blocks, names) if blocks else plain(text, names).splitlines()
    head = f"{indent}{who}:"
    body = [f"{indent}  │ {line}" for line in lines] or [f"{indent}  │"]
    return "\n".join([head] + body)
