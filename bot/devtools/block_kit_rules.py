"""Slack's Block Kit limits, checked on the JSON a Web API call carries, as Slack checks them.

``message_errors(blocks)`` and ``view_errors(view)`` return Slack-style messages (``[ERROR] must be less than
3001 characters [json-pointer:/blocks/0/text/text]``); an empty list means Slack would accept the payload.
The Slack stand-in answers ``invalid_blocks`` (messages) or ``invalid_arguments`` (views) when there are any.

slack_sdk's Block Kit objects check some of these when serialised, but not a message's 50 blocks, a section
field's 2000 characters, nor anything built as a plain dict: the stand-in checks all of them on the wire.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LIMITS", "message_errors", "view_errors"]

LIMITS = {
    "message_blocks": 50,
    "view_blocks": 100,  # modal and home
    "message_text": 40_000,
    "block_id": 255,
    "action_id": 255,
    "section_text": 3000,
    "section_fields": 10,
    "field_text": 2000,
    "header_text": 150,
    "context_elements": 10,
    "actions_elements": 25,
    "button_text": 75,
    "button_value": 2000,
    "url": 3000,
    "confirm_title": 100,
    "confirm_text": 300,
    "confirm_button": 30,
    "placeholder": 150,
    "options": 100,
    "choice_options": 10,  # checkboxes, radio buttons
    "option_text": 75,
    "option_value": 150,
    "label": 2000,
    "hint": 2000,
    "input_length": 3000,
    "image_alt": 2000,
    "text": 3000,  # any other text object
    "view_title": 24,
    "view_button": 24,  # submit, close
    "private_metadata": 3000,
    "callback_id": 255,
    "external_id": 255,
}

_BLOCK_TYPES = {"section", "divider", "header", "context", "actions", "input", "image", "rich_text", "file",
                "video", "markdown"}
_SELECTS = {"static_select", "multi_static_select", "external_select", "multi_external_select", "users_select",
            "multi_users_select", "conversations_select", "multi_conversations_select", "channels_select",
            "multi_channels_select"}


class _Checker:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, pointer: str, message: str) -> None:
        self.errors.append(f"[ERROR] {message} [json-pointer:{pointer}]")

    def length(self, pointer: str, value: Any, limit_name: str) -> None:
        limit = LIMITS[limit_name]
        if isinstance(value, str) and len(value) > limit:
            self.error(pointer, f"must be less than {limit + 1} characters")

    def count(self, pointer: str, items: Any, limit_name: str, *, minimum: int = 0) -> None:
        limit = LIMITS[limit_name]
        if not isinstance(items, list):
            if items is not None:
                self.error(pointer, "must be an array")
            elif minimum:
                self.error(pointer, "missing required field")
            return
        if len(items) > limit:
            self.error(pointer, f"no more than {limit} items allowed")
        if len(items) < minimum:
            self.error(pointer, f"must provide at least {minimum} items")

    def text(self, pointer: str, obj: Any, limit_name: str = "text", *, plain: bool = False,
             required: bool = True) -> None:
        if obj is None:
            if required:
                self.error(pointer, "missing required field")
            return
        if not isinstance(obj, dict):
            self.error(pointer, "must be a text object")
            return
        kind = obj.get("type")
        if kind not in ("plain_text", "mrkdwn") or (plain and kind != "plain_text"):
            self.error(pointer + "/type", "must be plain_text" if plain else "must be plain_text or mrkdwn")
        value = obj.get("text")
        if not isinstance(value, str) or not value:
            self.error(pointer + "/text", "must be more than 0 characters")
            return
        self.length(pointer + "/text", value, limit_name)

    # ------------------------------------------------------------------------------------------- blocks

    def blocks(self, pointer: str, blocks: Any, limit_name: str) -> None:
        self.count(pointer, blocks, limit_name)
        for i, block in enumerate(blocks if isinstance(blocks, list) else []):
            self.block(f"{pointer}/{i}", block)

    def block(self, p: str, block: Any) -> None:
        if not isinstance(block, dict):
            self.error(p, "must be an object")
            return
        kind = block.get("type")
        if kind not in _BLOCK_TYPES:
            self.error(p + "/type", f"unsupported type: {kind}")
            return
        self.length(p + "/block_id", block.get("block_id"), "block_id")
        if kind == "section":
            if block.get("text") is None and block.get("fields") is None:
                self.error(p, "must provide either text or fields")
            self.text(p + "/text", block.get("text"), "section_text", required=False)
            self.count(p + "/fields", block.get("fields"), "section_fields")
            for i, f in enumerate(block.get("fields") or []):
                self.text(f"{p}/fields/{i}", f, "field_text")
            if block.get("accessory") is not None:
                self.element(p + "/accessory", block["accessory"])
        elif kind == "header":
            self.text(p + "/text", block.get("text"), "header_text", plain=True)
        elif kind == "context":
            self.count(p + "/elements", block.get("elements"), "context_elements", minimum=1)
            for i, e in enumerate(block.get("elements") or []):
                if isinstance(e, dict) and e.get("type") == "image":
                    self.length(f"{p}/elements/{i}/alt_text", e.get("alt_text"), "image_alt")
                else:
                    self.text(f"{p}/elements/{i}", e)
        elif kind == "actions":
            self.count(p + "/elements", block.get("elements"), "actions_elements", minimum=1)
            for i, e in enumerate(block.get("elements") or []):
                self.element(f"{p}/elements/{i}", e)
        elif kind == "input":
            self.text(p + "/label", block.get("label"), "label", plain=True)
            self.text(p + "/hint", block.get("hint"), "hint", plain=True, required=False)
            if block.get("element") is None:
                self.error(p + "/element", "missing required field")
            else:
                self.element(p + "/element", block["element"])
        elif kind == "image":
            self.length(p + "/image_url", block.get("image_url"), "url")
            self.length(p + "/alt_text", block.get("alt_text"), "image_alt")
            self.text(p + "/title", block.get("title"), plain=True, required=False)

    def element(self, p: str, element: Any) -> None:
        if not isinstance(element, dict):
            self.error(p, "must be an object")
            return
        kind = element.get("type")
        self.length(p + "/action_id", element.get("action_id"), "action_id")
        self.text(p + "/placeholder", element.get("placeholder"), "placeholder", plain=True, required=False)
        if element.get("confirm") is not None:
            self.confirm(p + "/confirm", element["confirm"])
        if kind == "button":
            self.text(p + "/text", element.get("text"), "button_text", plain=True)
            self.length(p + "/value", element.get("value"), "button_value")
            self.length(p + "/url", element.get("url"), "url")
            if element.get("style") not in (None, "primary", "danger"):
                self.error(p + "/style", "must be one of primary, danger")
        elif kind in _SELECTS or kind in ("overflow", "checkboxes", "radio_buttons"):
            limit = "choice_options" if kind in ("checkboxes", "radio_buttons") else "options"
            self.count(p + "/options", element.get("options"), limit)
            for i, option in enumerate(element.get("options") or []):
                self.option(f"{p}/options/{i}", option)
            for key in ("initial_option",):
                if element.get(key) is not None:
                    self.option(f"{p}/{key}", element[key])
            for i, option in enumerate(element.get("initial_options") or []):
                self.option(f"{p}/initial_options/{i}", option)
        elif kind in ("plain_text_input", "number_input"):
            for key in ("max_length", "min_length"):
                value = element.get(key)
                if isinstance(value, int) and value > LIMITS["input_length"]:
                    self.error(f"{p}/{key}", f"must be less than {LIMITS['input_length'] + 1}")
            self.length(p + "/initial_value", element.get("initial_value"), "input_length")

    def option(self, p: str, option: Any) -> None:
        if not isinstance(option, dict):
            self.error(p, "must be an object")
            return
        self.text(p + "/text", option.get("text"), "option_text")
        value = option.get("value")
        if not isinstance(value, str) or not value:
            self.error(p + "/value", "must be more than 0 characters")
        self.length(p + "/value", value, "option_value")
        self.text(p + "/description", option.get("description"), "option_text", required=False)

    def confirm(self, p: str, confirm: Any) -> None:
        if not isinstance(confirm, dict):
            self.error(p, "must be an object")
            return
        self.text(p + "/title", confirm.get("title"), "confirm_title", plain=True)
        self.text(p + "/text", confirm.get("text"), "confirm_text")
        self.text(p + "/confirm", confirm.get("confirm"), "confirm_button", plain=True)
        self.text(p + "/deny", confirm.get("deny"), "confirm_button", plain=True)


def message_errors(blocks: Any, *, text: Any = None) -> list[str]:
    """What Slack refuses in a message's ``blocks`` (and top-level ``text``)."""
    check = _Checker()
    if blocks not in (None, "", []):
        check.blocks("/blocks", blocks, "message_blocks")
    check.length("/text", text, "message_text")
    return check.errors


def view_errors(view: Any) -> list[str]:
    """What Slack refuses in a modal or home ``view``."""
    check = _Checker()
    if not isinstance(view, dict):
        return ["[ERROR] must be an object [json-pointer:/view]"]
    kind = view.get("type")
    if kind not in ("modal", "home"):
        check.error("/view/type", "must be modal or home")
    check.blocks("/view/blocks", view.get("blocks") if view.get("blocks") is not None else [], "view_blocks")
    check.length("/view/private_metadata", view.get("private_metadata"), "private_metadata")
    check.length("/view/callback_id", view.get("callback_id"), "callback_id")
    check.length("/view/external_id", view.get("external_id"), "external_id")
    if kind == "modal":
        check.text("/view/title", view.get("title"), "view_title", plain=True)
        check.text("/view/submit", view.get("submit"), "view_button", plain=True, required=False)
        check.text("/view/close", view.get("close"), "view_button", plain=True, required=False)
        has_input = any(isinstance(b, dict) and b.get("type") == "input" for b in view.get("blocks") or [])
        if has_input and not view.get("submit"):
            check.error("/view/blocks", "must define `submit` to use an `input` block in modals")
    return check.errors
