"""Which OAuth scope each Slack Web API method needs, and which scopes ``manifest.yml`` grants the bot.

The Slack stand-in (bot/devtools/slack_standin.py) answers ``missing_scope`` to a call whose scope the manifest does not
declare, as Slack does for an app installed from that manifest. ``METHOD_SCOPES`` lists every method the
stand-in answers; a method missing from it is a mistake in the stand-in, not a free pass.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["MANIFEST", "METHOD_SCOPES", "manifest_scopes", "needed_scopes"]

MANIFEST = Path(__file__).resolve().parents[2] / "manifest.yml"

# method -> the scopes any one of which allows it (Slack's "Required scopes" per method, bot tokens);
# () means no scope is needed. conversations.info is decided per channel type in ``needed_scopes``.
METHOD_SCOPES: dict[str, tuple[str, ...]] = {
    "auth.test": (),
    "chat.postMessage": ("chat:write",),
    "chat.update": ("chat:write",),
    "chat.delete": ("chat:write",),
    "chat.postEphemeral": ("chat:write",),
    "chat.getPermalink": (),
    "views.open": (),
    "views.push": (),
    "views.update": (),
    "views.publish": (),
    "conversations.open": ("im:write", "mpim:write", "channels:manage", "groups:write"),
    "conversations.info": ("channels:read", "groups:read", "im:read", "mpim:read"),
    "conversations.join": ("channels:join",),
    "users.info": ("users:read",),
    "usergroups.users.list": ("usergroups:read",),
    "files.getUploadURLExternal": ("files:write",),
    "files.completeUploadExternal": ("files:write",),
    "apps.connections.open": (),  # an app-level token's method (connections:write), not the bot token's
}

_INFO_SCOPE = {"public": "channels:read", "private": "groups:read", "im": "im:read"}


def needed_scopes(method: str, *, channel_kind: str | None = None) -> tuple[str, ...]:
    """The scopes any one of which allows ``method`` (``conversations.info``: for a channel of that kind)."""
    if method == "conversations.info" and channel_kind in _INFO_SCOPE:
        return (_INFO_SCOPE[channel_kind],)
    return METHOD_SCOPES[method]


def manifest_scopes(path: Path = MANIFEST) -> frozenset[str]:
    """The bot scopes under ``oauth_config: scopes: bot:`` of an app manifest (YAML block list).

    Only that list is read (a full YAML parser is not a dependency of the bot); a manifest where it cannot be
    found raises ``ValueError`` rather than granting nothing or everything silently.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    path_so_far: list[tuple[int, str]] = []
    scopes: list[str] = []
    list_indent: int | None = None
    for raw in lines:
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        text = line.strip()
        if list_indent is not None:
            if text.startswith("- ") and indent >= list_indent:
                scopes.append(text[2:].strip().strip("'\""))
                continue
            list_indent = None
        key = re.fullmatch(r"([A-Za-z_]+):\s*(.*)", text)
        if key is None:
            continue
        while path_so_far and path_so_far[-1][0] >= indent:
            path_so_far.pop()
        path_so_far.append((indent, key.group(1)))
        if [k for _, k in path_so_far] == ["oauth_config", "scopes", "bot"]:
            inline = key.group(2).strip()
            if inline.startswith("["):
                scopes += [s.strip().strip("'\"") for s in inline.strip("[]").split(",") if s.strip()]
            else:
                list_indent = indent
    if not scopes:
        raise ValueError(f"{path}: no bot scopes under oauth_config.scopes.bot")
    return frozenset(scopes)
