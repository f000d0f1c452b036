"""How a button click is taken and answered, once for every listener module.

- ``acking``: the click is acked at once and its work runs afterwards (``Deps.later``); a click that opens a
  form gets its loading view at once (``Deps.later_modal``, handlers/loading.py), and the work fills it in.
- ``first_delivery``: Slack retries a click it thinks was lost; the work is done for the first delivery only
  (claimed in PostgreSQL, so across processes).
- ``whisper``: an answer for the person who clicked alone: the click's ``response_url``, else an ephemeral
  message in its channel, and a DM when that fails (handlers/replies.py ``tell_privately``).
- ``answer``: in the form's loading view when there is one (the person is looking at it), else whispered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slack_bolt import Ack
from slack_sdk import WebClient

from handlers import loading as modal
from handlers.deps import Deps
from handlers.replies import tell_privately

__all__ = ["acking", "answer", "channel_of", "clicked_id", "first_delivery", "whisper"]


def clicked_id(body: dict) -> int | None:
    """The id a button carries as its value (an incident's, a follow-up's); None when it carries none."""
    try:
        return int(body["actions"][0]["value"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def channel_of(body: dict) -> str | None:
    """The channel the click came from (a message's), if any."""
    return (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")


def first_delivery(deps: Deps, body: dict) -> bool:
    """True for the first delivery of this click (Slack may deliver it again); claimed once across processes."""
    action = (body.get("actions") or [{}])[0]
    return deps.services.claim_delivery(f"action:{body.get('trigger_id')}:{action.get('action_ts')}")


def whisper(client: WebClient, body: dict, text: str) -> None:
    """To the person who clicked alone: response_url, else ephemeral in the channel; a DM if that fails."""
    tell_privately(client, body["user"]["id"], text, response_url=body.get("response_url"), channel=channel_of(body))


def answer(client: WebClient, body: dict, loading: dict | None, text: str, kind: str) -> None:
    """In the loading view when there is one (the person is looking at it), else whispered."""
    if not modal.tell(client, loading, text, kind=kind):
        whisper(client, body, text)


def acking(deps: Deps, work: Callable[..., Any], *, urgent: bool = False,
           opens: str | None = None) -> Callable[..., None]:
    """A listener that acks the click at once and does ``work(body=, client=)`` after it (``urgent``: on the
    decisions lane); for a click that ``opens`` a form (a kind of handlers/loading.py), the form's loading view
    opens at once (unless ``serve`` opened it already) and ``work`` also gets ``loading=`` to fill in."""
    deps.work(work)

    def listener(ack: Ack, body: dict, client: WebClient, context: dict) -> None:
        ack()
        if opens and body.get("trigger_id"):
            deps.later_modal(work, kind=opens, trigger_id=body["trigger_id"], client=client,
                             loading=context.get("loading"), body=body)
        else:
            deps.later(work, urgent=urgent, body=body, client=client)

    listener.__name__ = f"on_{work.__name__}"
    return listener
