"""The property test's own account of what every client's settings must be, kept apart from the bot.

A person may add clients, activate or deactivate them and change their settings at any time, also while trading
is halted. ``ClientModel`` follows those changes and the halts it sees, and says what the platform must show:

* while trading runs, every client has ``expected`` settings: its own, or what a person last set;
* while a halt is held, every client the halt covers (active when it began, or swept in since) is halted, unless
  a person changed it during the halt (then it is as the person set it); every other client is untouched;
* a client that became active during the halt is covered from the next sweep point on (the engine sweeps at each
  step boundary of a rollback holding the halt, the worker on every tick), and until then is untouched.

On resume the bot gives each covered client back the settings it had when the halt covered it, except those a
person changed during the halt: ``expected`` already says so. The model knows the halt only by its id (which
halt is active), never by what the bot saved.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass

import psycopg

EVENTS: Counter = Counter()  # what the examples did, counted (tests/core/test_properties.py prints them)


def seen(what: str) -> None:
    """Count an interleaving that happened. (Hypothesis's own ``event`` statistics are not shown for a state
    machine run inside a test function.)"""
    EVENTS[what] += 1


HALTED_VALUES = (False, True)  # auto_rebalance, require_manual_approval while halted
# What a person may set (the uuid platform's CHECK forbids (true, true)); NULLs are real platforms' data too.
PERSON_VALUES = ((True, False), (False, True), (False, False), (None, None), (True, None), (None, True))
Settings = tuple[bool | None, bool | None]


@dataclass(frozen=True)
class ClientRow:
    active: bool
    settings: Settings | None  # None: the client has no client_settings row


def read_clients(conn: psycopg.Connection) -> dict[str, ClientRow]:
    return {r["id"]: ClientRow(bool(r["active"]), (r["auto_rebalance"], r["require_manual_approval"])
                               if r["has_settings"] else None)
            for r in conn.execute(
                "SELECT c.client_id::text AS id, c.active, s.client_id IS NOT NULL AS has_settings, s.auto_rebalance,"
                " s.require_manual_approval FROM clients c LEFT JOIN client_settings s ON s.client_id = c.client_id")}


def active_halt(conn: psycopg.Connection) -> int | None:
    row = conn.execute("SELECT id FROM rollback_bot.trading_halts WHERE resumed_at IS NULL").fetchone()
    return row["id"] if row else None


class ClientModel:
    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.key_type = conn.execute(
            "SELECT format_type(atttypid, atttypmod) AS t FROM pg_attribute"
            " WHERE attrelid = 'public.clients'::regclass AND attname = 'client_id'").fetchone()["t"]
        self.expected: dict[str, Settings] = {c: r.settings for c, r in read_clients(conn).items()
                                              if r.settings is not None}
        self.halt_id: int | None = None
        self.covered: dict[str, Settings] = {}  # clients the active halt covers -> their settings when it did
        self.changed: set[str] = set()          # covered clients a person changed during the active halt
        self.added = 0
        self.dirty = False  # a person acted since the last sweep point
        self.sync()

    # ----------------------------------------------------------------------------------- what the bot does

    def sync(self) -> None:
        """Take note of a halt that began or ended since the last look. A halt covers every active client with
        settings when it begins, with the settings it has then (those expected: trading was running)."""
        halt = active_halt(self.conn)
        if halt == self.halt_id:
            return
        self.halt_id, self.changed = halt, set()
        rows = read_clients(self.conn) if halt is not None else {}
        self.covered = {c: self.expected[c] for c, r in rows.items() if r.active and r.settings is not None}

    def swept(self) -> None:
        """A sweep point passed: every active client with settings is covered, with its settings of now."""
        if not self.dirty:
            return  # no client became active, or got settings, since the halt began or was last swept
        self.sync()
        self.dirty = False
        if self.halt_id is None:
            return
        for c, r in read_clients(self.conn).items():
            if r.active and r.settings is not None and c not in self.covered:
                self.covered[c] = self.expected[c]  # untouched by the bot until now
                seen("a sweep covered a client added or activated during the halt")

    # ----------------------------------------------------------------------------------- what a person does

    def clients(self) -> list[str]:
        return sorted(read_clients(self.conn))

    def set_settings(self, client: str, value: Settings) -> None:
        self.sync()
        self.dirty = True
        has_row = self.conn.execute(
            "SELECT 1 FROM client_settings WHERE client_id::text = %s", (client,)).fetchone() is not None
        if has_row:
            self.conn.execute("UPDATE client_settings SET auto_rebalance = %s, require_manual_approval = %s"
                              " WHERE client_id::text = %s", (*value, client))
        else:
            self.conn.execute(f"INSERT INTO client_settings (client_id, auto_rebalance, require_manual_approval)"
                              f" VALUES (CAST(%s AS {self.key_type}), %s, %s)", (client, *value))
        self.expected[client] = value
        if self.halt_id is not None and client in self.covered:
            self.changed.add(client)  # the bot leaves it as the person set it
            seen("a person changed a halted client" + (" to the halted values" if value == HALTED_VALUES else ""))

    def add_client(self, value: Settings | None, *, active: bool = True) -> str:
        self.sync()
        self.added += 1
        client = str(uuid.uuid5(uuid.NAMESPACE_URL, f"property-test/{self.added}"))
        self.conn.execute(f"INSERT INTO clients (client_id, name, active) VALUES (CAST(%s AS {self.key_type}),"
                          " %s, %s)", (client, f"Property Fund {self.added}", active))
        if value is not None:
            self.set_settings(client, value)
        return client

    def set_active(self, client: str, active: bool) -> None:
        self.sync()
        self.dirty = True
        self.conn.execute("UPDATE clients SET active = %s WHERE client_id::text = %s", (active, client))

    # ----------------------------------------------------------------------------------- the invariant

    def check(self) -> None:
        self.sync()
        rows = read_clients(self.conn)
        for c, r in rows.items():
            if r.settings is None:
                assert c not in self.expected, f"client {c} lost its settings row"
                continue
            want = self.expected[c]
            if self.halt_id is None:
                assert r.settings == want, (f"trading runs and client {c} has {r.settings}, not its own {want}"
                                            " (or what a person set)")
            elif c in self.covered and c not in self.changed:
                assert r.settings == HALTED_VALUES, (f"halt {self.halt_id} held and client {c} is not halted:"
                                                     f" {r.settings}")
            elif c in self.covered:
                assert r.settings == want, (f"client {c}, changed by a person during the halt, is {r.settings},"
                                            f" not {want}")
            else:
                assert r.settings == want, (f"client {c} is not covered by halt {self.halt_id} (inactive, or active"
                                            " since the last sweep point) yet the bot changed it:"
                                            f" {r.settings} != {want}")
