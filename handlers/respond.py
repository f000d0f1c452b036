"""How a button click is taken and answered, once for every listener module.

- ``acking``: the click is acked at once and its work runs afterwards (``Deps.later``); a click that opens a
  form gets its loading view at once (``Deps.later_modal``, handlers/loading.py), and the work fills it in.
- ``first_delivery``: Slack retries a click it thinks was lost; the work is done for the first delivery only
  (claimed in PostgreSQL, so across processes).
- ``whisper``: an answer for the person who clicked alone: the click's ``response_url``, else an ephemeral
  message in its channel, and a DM when that fails (handlers/replies.py ``tell_privately``).
- ``answer``: in the form's loading view when there is one (the person is looking at it), else whispered.
- ``once_per_click``: the work of a button that names one thing (an incident, a follow-up) by its value: done
  for the first delivery only, a refusal or an error whispered to the person who clicked.
- ``require_operator``: a person outside OPERATORS is refused (audited) with one sentence.
- ``submitted``: a form with one field, checked and recorded in the ack; what is wrong is shown under the field.
- ``post_for_approval`` and ``tell_submitter``: a request made from a click or a form is posted for a second
  person to approve, and the person is told where (or why not) privately.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack
from slack_sdk import WebClient

from handlers import loading as modal
from core.errors import NotAuthorized, RollbackError
from handlers.deps import Deps
from handlers.errors import describe
from handlers.ids import Block
from handlers.replies import tell_privately

if TYPE_CHECKING:
    from core.incidents import Incident
    from handlers.progress import SlackProgress

__all__ = ["acking", "answer", "channel_of", "clicked_id", "first_delivery", "once_per_click", "post_for_approval",
           "require_operator", "submitted", "tell_submitter", "whisper"]


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


Act = Callable[[int, str, dict, WebClient], None]


def once_per_click(deps: Deps, act: Act) -> Callable[[dict, WebClient], None]:
    """Work for a button whose value names one thing: ``act(thing_id, user, body, client)`` runs for the first
    delivery of the click; a button naming nothing is ignored; what ``act`` raises is whispered to the person
    (a refusal as it is, anything else with an error id)."""

    @functools.wraps(act)
    def work(body: dict, client: WebClient) -> None:
        thing_id = clicked_id(body)
        if thing_id is None or not first_delivery(deps, body):
            return
        try:
            act(thing_id, body["user"]["id"], body, client)
        except Exception as exc:  # noqa: BLE001 - the person is told why (or an error id); nothing more is done
            whisper(client, body, f":no_entry: {describe(exc)}" if isinstance(exc, RollbackError) else describe(exc))

    return work


def require_operator(deps: Deps, user: str, *, action: str, to: str, incident_id: int | None = None) -> None:
    """Raise NotAuthorized ("Only operators may ``to`` (OPERATORS).") for a person outside OPERATORS, audited as a
    refused ``action``."""
    if not deps.auth.is_operator(user):
        deps.engine.audit(None, actor=user, action=action, outcome="refused", incident_id=incident_id,
                                   reason="not an operator")
        raise NotAuthorized(f"Only operators may {to} (OPERATORS).")


def submitted(ack: Ack, body: dict, block: Block, action: str, record: Callable[[Any, dict, str], None], *,
              empty: str | None, key: str = "value") -> bool:
    """A submitted form's one field (``block``, ``action``; its ``key``, text stripped): left empty, ``empty`` is
    shown under it (None: ``record`` judges); else ``record(value, meta, user)`` runs in the ack (``meta``: the
    form's private_metadata), and a refusal is shown under the field. True when the form was accepted."""
    meta = json.loads(body["view"].get("private_metadata") or "{}")
    value = ((body["view"]["state"]["values"].get(block.value) or {}).get(action) or {}).get(key)
    value = value.strip() if isinstance(value, str) else value
    if not value and empty is not None:
        ack(response_action="errors", errors={block.value: empty})
        return False
    try:
        record(value, meta, body["user"]["id"])
    except (RollbackError, KeyError, ValueError) as exc:  # a refusal, or a form whose metadata is not ours
        ack(response_action="errors", errors={block.value: str(exc)[:150]})
        return False
    ack()
    return True


def post_for_approval(deps: Deps, progress: SlackProgress, request: Callable[[], Incident],
                      label: Callable[[Incident], str] = lambda inc: inc.ref) -> str:
    """Make a request (``request()``: a rollback, a quick fix), post its card in INCIDENT_CHANNEL; what to tell
    the person: where it is, or why nothing was posted (the refusal, or an error id)."""
    try:
        inc = progress.post_card(request())
        return f"{label(inc)} posted in <#{deps.channel}> for a second person to approve."
    except Exception as exc:  # noqa: BLE001 - the person is told why; nothing was changed
        return f":no_entry: {describe(exc)}"


def tell_submitter(client: WebClient, body: dict, text: str) -> None:
    """The answer to a form's submission, for the person alone: through the response_url and channel the form was
    opened from (kept in its private_metadata), else a DM."""
    meta = json.loads(body["view"].get("private_metadata") or "{}")
    tell_privately(client, body["user"]["id"], text, response_url=meta.get("response_url"), channel=meta.get("channel"))
