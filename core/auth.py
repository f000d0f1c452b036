"""Who may do what: OPERATORS request, halt and quick-fix; APPROVERS approve (and resume), and may also do what
operators do; STAKEHOLDERS may look (the heavy read-only commands).

Entries are Slack user IDs (``U…``/``W…``) or user-group IDs (``S…``). Group membership comes from a
resolver the caller supplies (the Slack layer uses ``usergroups.users.list``) and is cached briefly.
Fail closed: an empty OPERATORS list means only approvers operate (never everyone); an empty APPROVERS list
means nobody may approve.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

GroupResolver = Callable[[str], Iterable[str]]


def is_group(entry: str) -> bool:
    return entry.startswith("S")


class Authorizer:
    def __init__(
        self,
        *,
        operators: list[str],
        approvers: list[str],
        stakeholders: list[str] | None = None,
        resolve_group: GroupResolver | None = None,
        ttl_seconds: float = 60.0,
    ) -> None:
        self.operators = list(operators)
        self.approvers = list(approvers)
        self.stakeholders = list(stakeholders or [])
        self._resolve = resolve_group
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def _members(self, group: str) -> frozenset[str]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(group)
            if hit and now - hit[0] < self._ttl:
                return hit[1]
        members = frozenset(self._resolve(group)) if self._resolve else frozenset()
        with self._lock:
            self._cache[group] = (now, members)
        return members

    def _in(self, user: str, entries: list[str]) -> bool:
        if not user or not entries:
            return False
        if user in entries:
            return True
        return any(is_group(e) and user in self._members(e) for e in entries)

    def is_operator(self, user: str) -> bool:
        """Listed in OPERATORS, or an approver. With OPERATORS unset: approvers only (fail closed)."""
        return self._in(user, self.operators) or self.is_approver(user)

    def is_approver(self, user: str) -> bool:
        return self._in(user, self.approvers)

    def is_stakeholder(self, user: str) -> bool:
        return self._in(user, self.stakeholders)

    def may_look(self, user: str) -> bool:
        """The heavy read-only commands (`diagnose`, `backups`, `status MODEL`): operators, approvers, stakeholders."""
        return self.is_operator(user) or self.is_stakeholder(user)
