"""The live "trades after the halt" message: one thread reply per incident, updated in place as the count
changes (``halt_trades`` events from ``core.halt_watch``), never a new message per trade."""

from __future__ import annotations

from core import halt_watch
from core.incidents import Event, Incident
from handlers.deps import Deps
from handlers.progress import SlackProgress


def trades_text(d: dict) -> str:
    n, quiet, timeout = d.get("trades", 0), d.get("quiet_seconds", 0), d.get("timeout_seconds", 0)
    phase = d.get("phase")
    if phase == "quiet":
        return (f":white_check_mark: *{n} trade(s) after the halt*, then none for {quiet:g} s: the halt holds now,"
                " so the swap goes ahead.")
    if phase == "not_effective":
        return (f":rotating_light: *{n} trade(s) after the halt*, still coming after {timeout:g} s: the halt is not"
                " effective. The rollback is paused with trading halted and escalation is paged.")
    left = max(0.0, timeout - float(d.get("waited") or 0))
    return (f":warning: *{n} trade(s) after the halt*: the platform did not stop at once. The swap waits until no"
            f" trade for {quiet:g} s (at most {left:.0f} s more, then the halt is declared not effective).")


def register(deps: Deps, progress: SlackProgress) -> None:
    engine = deps.engine

    def show(inc: Incident, event: Event) -> None:
        if not inc.channel or not inc.message_ts:
            return
        text = trades_text(event.detail)
        where = (inc.plan or {}).get("halt_trades_message")
        if where:
            progress.client.chat_update(channel=where["channel"], ts=where["ts"], text=text)
            return
        resp = progress.client.chat_postMessage(channel=inc.channel, thread_ts=inc.thread_ts or inc.message_ts,
                                                text=text)
        halt_watch.remember_trades_message(engine, inc.id, channel=resp["channel"], ts=resp["ts"])

    progress.on_step[halt_watch.TRADES_EVENT] = show
