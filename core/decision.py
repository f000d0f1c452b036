"""The end of a person's decision on an incident (take over, accept, proceed anyway, abandon): once its
transaction is over, a refusal is audited (in a transaction of its own) and raised; otherwise the new state is
told to the listeners."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import RollbackError
from core.incidents import Event, Incident

if TYPE_CHECKING:  # pragma: no cover
    from core.engine import Engine

__all__ = ["settle"]


def settle(engine: Engine, refusal: RollbackError | None, new: Incident | None, *, actor: str, action: str,
           incident_id: int, with_error: bool = False) -> Incident:
    """Raise ``refusal`` after auditing it as ``action`` refused, or publish ``new``'s state (``with_error``: and
    its error) and return it."""
    if refusal is not None:
        engine.audit(None, actor=actor, action=action, outcome="refused", incident_id=incident_id,
                     reason=str(refusal))
        raise refusal
    assert new is not None, "a decision that was not refused has a new state"
    engine.publish(Event("state", new, error=new.error if with_error else None))
    return new
