"""Fencing: a rollback executor touches model files only while it provably still holds its incident's lock.

The executor holds a session-level advisory lock on the incident for the whole run (``Engine.execute``). If
its PostgreSQL session ends (a restart, a network cut, ``pg_terminate_backend``), the lock is released and a
second process may take the rollback over, while the first may not have noticed yet. So each executor takes a
*fencing token* when it gets the lock (``rollback_bot.executor_fences``: the token goes up by one with every
new holder), and right before every file operation it checks, in one query on the session holding the lock,
that the lock is still granted to that session and the token is still its own (``Fence.check``). A process
that lost the lock stops there (``LostLock``) with the files untouched; the incident is left as it was for
the process that holds the lock now, or for recovery.

Why session advisory locks, and so why a transaction-mode pooler (e.g. PgBouncer ``pool_mode = transaction``)
is not supported: the lock belongs to the server session, and such a pooler hands a client's statements to
whichever server session is free, so the lock, and this check, would not be the executor's.
"""

from __future__ import annotations

import psycopg

from core import repository as repo
from core.errors import DatabaseUnavailable

__all__ = ["Fence", "LostLock"]


class LostLock(DatabaseUnavailable):
    """This process no longer holds the rollback's lock: it must not touch the model files."""


class Fence:
    def __init__(self, conn: psycopg.Connection, *, key: int, incident_id: int, token: int) -> None:
        self.conn = conn
        self.key = key
        self.incident_id = incident_id
        self.token = token

    @classmethod
    def take(cls, conn: psycopg.Connection, *, key: int, incident_id: int, owner: str) -> Fence:
        """Right after ``pg_try_advisory_lock(key)`` succeeded on ``conn`` (autocommit): a new, higher token."""
        token = repo.take_fence_token(conn, incident_id, owner[:200])
        return cls(conn, key=key, incident_id=incident_id, token=token)

    def check(self, what: str) -> None:
        """Raise LostLock unless this session still holds the lock and the token is still ours."""
        try:
            held, token = repo.fence_state(self.conn, key=self.key, incident_id=self.incident_id)
        except psycopg.Error:
            raise LostLock(f"INC-{self.incident_id}: the connection holding this rollback's lock is gone; stopping"
                           f" before {what} without touching any file (recovery or the process holding the lock"
                           " now takes over)") from None
        if not held or token != self.token:
            who = "another process took the rollback over" if token != self.token else "the lock was released"
            raise LostLock(f"INC-{self.incident_id}: this process no longer holds the rollback's lock ({who});"
                           f" stopping before {what} without touching any file")
