"""The rollback engine's state machine for the property test (tests/core/test_properties.py explains what it checks).

``build_machine(ctx)`` makes the ``RuleBasedStateMachine`` for one platform world: the world's state, the rules of
rollbacks, crashes, restarts, overlapping rollbacks, halts and resumes, the worker and time, and the invariants;
tests/property_rules.py adds the rules of money safety under races. Each example starts from a fresh copy of the
world and runs a short random program of those rules; the invariants are checked after each.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from tenacity import wait_none

from core import halt_watch, incidents
from core.errors import Conflict, FilesMismatch, InvalidTransition, PreflightFailed
from core.integrity import file_sums
from core.modelio import MODEL_FILE, sha256_file
from core.revert import REVERT_ATTEMPTS
from core.services import Services
from core.worker import Worker
from tests.helpers import client_settings, files_equal, production_rows, trading_halted
from tests.property_clients import ClientModel, seen

# States between the halt and the end of verification: trading must be halted, the rollback must hold it.
HOLDING = frozenset({incidents.HALTED, incidents.BACKING_UP, incidents.RESTORING, incidents.RECORDING,
                     incidents.VERIFYING, incidents.VERIFIED, incidents.REVERTING})
# Open states in which trading must stay halted by the rollback too: the halt did not work, or the files are mixed.
HALTED_OPEN = HOLDING | {incidents.HALT_NOT_EFFECTIVE, incidents.REVERT_FAILED}
# `/rollback resume` is refused while one of these is under way.
BUSY = (incidents.RUNNABLE - {incidents.RESUMING}) | {incidents.HALT_NOT_EFFECTIVE}
# Damage to a rollback's target: None (a good backup), three kinds that pre-flight must refuse, a backup that is
# replaced after approval (the second pre-flight must refuse it), and the restored file damaged before verifying.
PREFLIGHT_DAMAGE = ("truncated_model", "bad_metadata", "renamed_feature")
DAMAGE = (None, None, None, *PREFLIGHT_DAMAGE, "changed_after_approval", "damaged_after_restore")
class Crash(BaseException):
    """A simulated crash of the bot process at a fault label."""


def damage_file(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-50])


@dataclass
class Stats:
    examples: int = 0  # examples run to the end (teardown)
    steps: int = 0     # rules run


@dataclass
class Ctx:
    """What every example of one world shares."""
    check: psycopg.Connection             # the test's own checks and a person's changes
    models: list[str]
    labels: list[str]                     # every fault label of a rollback's paths
    fresh: Callable[[], tuple[Path, Services]]
    initial_sha: dict[str, str]           # each model's model.json when the world was built
    good_sha: dict[str, set[str]]         # each model's model.json of every backup when the world was built
    stats: Stats = field(default_factory=Stats)

    @property
    def meddle_labels(self) -> list[str]:  # labels of a rollback that succeeds
        return [label for label in self.labels if "revert" not in label]


def build_machine(ctx: Ctx) -> type[RuleBasedStateMachine]:
    check, models, labels = ctx.check, ctx.models, ctx.labels

    class RollbackMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.models_dir, self.services = ctx.fresh()
            self.engine = self.services.engine
            self.base_settings = self.engine.settings
            self.offset = timedelta(0)
            self.engine.clock = lambda: incidents.utcnow() + self.offset
            self.engine.sleep = self._sleep            # the quiet wait moves the clock, never waits
            self.engine.revert_wait = wait_none()      # a failing revert is retried at once
            self.engine.fault = self._fault
            self.extra: Callable[[str], None] | None = None   # a rule's own fault hook
            self.on_sleep: Callable[[], None] | None = None   # a rule's trades during the quiet wait
            # The engine's own jobs (execute, monitor_end) and the worker's sweep: reports, charts and diagnostics
            # are jobs of other parts, tested on their own, and would take most of each example's time.
            self.worker = Worker(self.engine)
            self.worker.periodic.append(lambda: halt_watch.sweep(self.engine))
            self.clients = ClientModel(check)
            self.trader = check.execute("SELECT client_id FROM clients WHERE active ORDER BY client_id::text"
                                        " LIMIT 1").fetchone()["client_id"]
            self.bad: set[str] = set()
            self.n = 0
            self.accepted: dict[str, dict] = {}  # model -> the mismatching files two approvers resumed on
            self.open_states: set[str] = set()   # states of open rollbacks, as of the last invariant check
            self.refusal_seen: set[tuple] = set()

        def teardown(self) -> None:
            ctx.stats.examples += 1

        # ---------------------------------------------------------------------------------- helpers

        def _fault(self, label: str) -> None:
            if label.startswith("before:") and label.split(":", 1)[1] in halt_watch.HELD_STATES:
                self.clients.swept()  # the engine has just swept the halt's clients (a sweep point)
            if self.extra is not None:
                self.extra(label)

        def _sleep(self, seconds: float) -> None:
            self.offset += timedelta(seconds=seconds)
            if self.on_sleep is not None:
                self.on_sleep()

        def _run(self, incident_id: int, hook: Callable[[str], None] | None = None) -> incidents.Incident:
            self.extra = hook
            try:
                return self.engine.execute(incident_id)
            finally:
                self.extra = None

        def _target(self, model: str, pick: int, damage: str | None) -> str:
            folder = self.models_dir / model
            # an emergency backup of files two approvers resumed on (a damaged model.json) is no target either
            good = sorted(p.name for p in folder.iterdir()
                          if p.is_dir() and p.name.startswith("backup_") and p.name not in self.bad
                          and (not p.name.startswith("backup_emergency_")
                               or sha256_file(p / MODEL_FILE) in ctx.good_sha[model]))
            name = good[pick % len(good)]
            if damage in PREFLIGHT_DAMAGE or damage == "changed_after_approval":
                self.n += 1
                copy = f"backup_zz_{damage}_{self.n}"
                shutil.copytree(folder / name, folder / copy)
                self.bad.add(copy)
                meta_path = folder / copy / "metadata.json"
                if damage == "truncated_model":
                    damage_file(folder / copy / MODEL_FILE)
                elif damage == "bad_metadata":
                    meta_path.write_text('{"training_date": "2026-01-01", "performance": {}')
                elif damage == "renamed_feature":
                    meta = json.loads(meta_path.read_text())
                    meta["features"][0] = "no_such_feature"
                    meta_path.write_text(json.dumps(meta))
                name = copy
            return name

        def _snapshot(self) -> tuple:
            files = {m: file_sums(self.models_dir / m) for m in models}
            rows = {m: [r["version"] for r in production_rows(check, m)] for m in models}
            return files, rows, trading_halted(check), client_settings(check)

        def _incidents(self, *states: str) -> list[dict]:
            return check.execute("SELECT * FROM rollback_bot.incidents WHERE kind = 'rollback' AND state = ANY(%s)"
                                 " ORDER BY id", (list(states),)).fetchall()

        def _mismatched(self) -> list[str]:
            """Models whose files are not their production row's (what `/rollback resume` refuses on)."""
            return [m for m in models if not files_equal(
                self.models_dir / m, self.models_dir / m / production_rows(check, m)[0]["version"])]

        def _steps(self, incident_id: int, step: str) -> list:
            return [s for s in self.engine.steps(incident_id) if s.step == step]

        def _request(self, model: str, target: str, *, keep_halted: bool = False) -> incidents.Incident | None:
            """Request and approve; None when pre-flight or the one-open-rollback rule refuses (checked here)."""
            open_before = self.engine.open_incident_for(model)
            if open_before is not None and open_before.state == incidents.MONITORING:
                self.time_passes()  # the earlier rollback's monitoring window ends first
                open_before = self.engine.open_incident_for(model)
            before = self._snapshot()
            try:
                inc, _ = self.engine.request_rollback(model=model, backup=target, reason="property test",
                                                      requested_by="U0ALICE", keep_halted=keep_halted)
            except Conflict:
                assert open_before is not None, "Conflict without an open rollback"
                return None
            except PreflightFailed:
                assert target in self.bad, f"a good backup {target} failed pre-flight"
                assert self._snapshot() == before, "a refused pre-flight changed something"
                return None
            assert open_before is None, f"a second open rollback of {model}"
            assert target not in self.bad or "changed_after_approval" in target, f"{target} passed pre-flight"
            self.engine.approve(incident_id=inc.id, approver="U0BOB")
            return inc

        def _try_resume(self) -> bool:
            """`/rollback resume`: refused while a rollback is under way or the files do not match; otherwise
            every holder but rollbacks still open lets go."""
            open_rows = self._incidents(*(incidents.RUNNABLE | {incidents.HALT_NOT_EFFECTIVE, incidents.VERIFIED,
                                                                 incidents.REVERT_FAILED}))
            busy = [(r["id"], r["state"]) for r in open_rows if r["state"] in BUSY]
            # a rollback resuming (or kept halted) right now, run by an executor other than this resume, keeps
            # holding the halt until its own resume step
            elsewhere = [r["id"] for r in open_rows if r["state"] in (incidents.RESUMING, incidents.VERIFIED)]
            mismatched = self._mismatched()
            try:
                self.engine.resume_trading(user="U0BOB")
            except InvalidTransition:
                assert busy, "resume refused with no rollback under way"
                seen("resume: refused, a rollback under way")
                return False
            except FilesMismatch as exc:
                assert not busy and mismatched, f"resume refused on files that match: {exc}"
                seen("resume: refused, files do not match")
                return False
            seen("resume: resumed")
            assert not busy, f"resumed while {busy} were under way"
            assert not mismatched, f"resumed on files that are not their production row's: {mismatched}"
            assert not trading_halted(check) or elsewhere, "trading still halted after a resume"
            assert not self._incidents(incidents.VERIFIED, incidents.REVERT_FAILED)
            return True

        # ------------------------------------------------------------------------------------ rules

        @rule(model=st.sampled_from(models), pick=st.integers(0, 50), damage=st.sampled_from(DAMAGE),
              keep_halted=st.sampled_from([False, False, False, True]))
        def rollback(self, model, pick, damage, keep_halted):
            target = self._target(model, pick, damage)
            inc = self._request(model, target, keep_halted=keep_halted)
            if inc is None:
                return
            before = production_rows(check, model)[0]["version"]
            before_halted = trading_halted(check)
            def hook(label: str) -> None:
                if damage == "damaged_after_restore" and label == "after:restoring":
                    damage_file(self.models_dir / model / MODEL_FILE)

            if damage == "changed_after_approval":
                other = next(p for p in sorted((self.models_dir / model).iterdir())
                             if p.is_dir() and p.name.startswith("backup_") and p.name not in self.bad
                             and sha256_file(p / MODEL_FILE) != inc.target_sha256)
                shutil.copyfile(other / MODEL_FILE, self.models_dir / model / target / MODEL_FILE)
            done = self._run(inc.id, hook)
            seen(f"rollback: {done.state}")
            version = production_rows(check, model)[0]["version"]
            if damage == "changed_after_approval":
                assert done.state == incidents.FAILED and "changed on disk" in done.error, (done.state, done.error)
                assert version == before and trading_halted(check) == before_halted, "nothing may change"
                shutil.rmtree(self.models_dir / model / target)
            elif damage == "damaged_after_restore":
                assert done.state == incidents.FAILED and "Verification failed" in done.error, (done.state,
                                                                                                 done.error)
                assert version == before and trading_halted(check), "original back, trading halted"
            else:
                expected = incidents.VERIFIED if keep_halted else incidents.MONITORING
                assert done.state == expected, (done.state, done.error)
                assert version == target

        @rule(model=st.sampled_from(models), pick=st.integers(0, 50), label=st.sampled_from(labels),
              damaged=st.booleans())
        def crash(self, model, pick, label, damaged):
            """A rollback whose process dies at ``label`` (left for a restart to finish or undo)."""
            inc = self._request(model, self._target(model, pick, None))
            if inc is None:
                return

            def hook(seen: str) -> None:
                if damaged and seen == "after:restoring":
                    damage_file(self.models_dir / model / MODEL_FILE)
                if seen == label:
                    raise Crash(label)

            try:
                self._run(inc.id, hook)
            except Crash:
                pass  # the process "died"; the incident waits for a restart

        @rule(label=st.none() | st.sampled_from(labels))
        def restart(self, label):
            """A restarted bot recovers interrupted rollbacks (and may itself die at ``label``)."""
            def hook(seen: str) -> None:
                if seen == label:
                    raise Crash(label)

            self.extra = hook
            try:
                self.engine.recover()
            except Crash:
                return  # died again while recovering
            finally:
                self.extra = None
            left = self._incidents(*incidents.RUNNABLE)
            assert not left, f"recover() left {[(r['id'], r['state']) for r in left]}"

        @rule(first=st.sampled_from(models), label=st.sampled_from(labels), pick=st.integers(0, 50),
              b_fails=st.sampled_from([None, None, "verify", "revert"]))
        def interleaved(self, first, label, pick, b_fails):
            """Two models' rollbacks at once: the second runs whole while the first is at ``label``; the second
            may fail verification (and be undone), and its undoing may fail too."""
            second = next(m for m in models if m != first)
            # Both models' earlier monitoring ends first: time passing between A's approval and its run would
            # (rightly) cancel A (APPROVED_START_TIMEOUT_MINUTES). Time passing may finish an interrupted rollback
            # (the worker runs its job), which then monitors in turn: a second pass ends that.
            for _ in range(3):
                if not any((o := self.engine.open_incident_for(m)) is not None and o.state == incidents.MONITORING
                           for m in (first, second)):
                    break
                self.time_passes()
            a = self._request(first, self._target(first, pick, None))
            if a is None:
                return
            b = self._request(second, self._target(second, pick, None))
            got: dict[str, Any] = {}
            fired: Counter = Counter()

            def b_hook(at: str) -> None:
                if b_fails and at == "after:restoring":
                    damage_file(self.models_dir / second / MODEL_FILE)
                if b_fails == "revert" and at == "revert:model.json":
                    fired[at] += 1
                    raise OSError(errno.EIO, "Input/output error (property test)")

            def run_b() -> None:
                folder = self.models_dir / second
                got["b_before"] = file_sums(folder)  # what B's revert must put back
                got["b"] = self._run(b.id, b_hook)
                got["b_after"] = file_sums(folder)

            def a_hook(at: str) -> None:
                if at == label and b is not None and "b" not in got:
                    run_b()
                    self.extra = a_hook
                    got["a"] = self.engine.get(a.id).state
                    got["halted"] = trading_halted(check)

            done = self._run(a.id, a_hook)
            assert done.state == incidents.MONITORING, (done.state, done.error)
            if b is None:
                return
            if "a" in got:
                # B let go of its halt; A, still between halt and resume, keeps trading halted.
                if got["a"] in HOLDING:
                    assert got["halted"], f"B resumed trading while A was {got['a']}"
            else:  # the label was not on this path (e.g. restored: when the file was already equal)
                run_b()
            seen(f"overlapping rollbacks: the second {got['b'].state}" + (" mid-way" if "a" in got else ""))
            want = {None: incidents.MONITORING, "verify": incidents.FAILED, "revert": incidents.REVERT_FAILED}[b_fails]
            # B's revert has nothing to copy back (so its failing copy is never reached) when the model.json in
            # place before B was already the bytes B's damage leaves: B's own target cut short the same way, left
            # there by an earlier failed revert of a rollback to the same backup that two approvers then resumed
            # on. The revert rightly succeeds: the files before B are in place, trading stays halted, and
            # `/rollback resume` keeps refusing them (tests/core/test_overlap_regression.py).
            target_bytes = (self.models_dir / second / b.target_backup / MODEL_FILE).read_bytes()
            damaged = hashlib.sha256(target_bytes[:-50]).hexdigest()  # as damage_file leaves it
            nothing_to_copy = b_fails == "revert" and got["b_before"][MODEL_FILE] == damaged
            if nothing_to_copy:
                want = incidents.FAILED
                seen("overlapping rollbacks: the second's revert had nothing to copy back")
            assert got["b"].state == want, (got["b"].state, got["b"].error)
            if b_fails:
                assert trading_halted(check), "trading runs after B failed"
            if want == incidents.FAILED:
                assert got["b_after"] == got["b_before"], "B failed, yet its model's files are not those before B"
            if b_fails == "revert":
                assert fired["revert:model.json"] == (0 if nothing_to_copy else REVERT_ATTEMPTS), fired

        @rule()
        def manual_halt(self):
            self.engine.halt_trading(user="U0CAROL", reason="manual halt")
            assert trading_halted(check)

        @rule()
        def resume(self):
            self._try_resume()

        @rule()
        def worker_tick(self):
            """The worker's pass: expired requests, the halt sweep, due jobs."""
            self.worker.tick()
            self.clients.swept()

        @rule()
        def time_passes(self):
            """The monitoring window ends (the worker's jobs run, with the clock moved on)."""
            self.offset += timedelta(minutes=31)
            self.worker.run_due()
            window = timedelta(minutes=self.services.settings.monitor_minutes)
            for r in self._incidents(incidents.MONITORING):  # only those that reached monitoring just now may remain
                assert r["resumed_at"] > self.engine.clock() - window, f"INC-{r['id']} still monitoring"

        # ------------------------------------------------------------------------------- invariants

        def _accepted(self, model: str) -> bool:
            """The files in place are those two approvers resumed on (an override), unchanged since."""
            return self.accepted.get(model) == file_sums(self.models_dir / model)

        @invariant()
        def one_production_row_per_model(self):
            ctx.stats.steps += 1
            for m in models:
                rows = production_rows(check, m)
                assert len(rows) == 1, f"{m}: {len(rows)} production rows"

        @invariant()
        def production_row_is_the_file_on_disk(self):
            """Unless a swap of that model is under way, or its revert failed (and then resume is refused), or two
            approvers resumed on these very files."""
            open_rows = check.execute("SELECT id, state, model_name FROM rollback_bot.incidents WHERE kind = 'rollback'"
                                      " AND state <> ALL(%s)", (list(incidents.CLOSED),)).fetchall()
            self.open_states = {r["state"] for r in open_rows}
            swapping = {r["model_name"] for r in open_rows if r["state"] in incidents.SWAP_STATES}
            mixed = {r["model_name"]: r["id"] for r in open_rows if r["state"] == incidents.REVERT_FAILED}
            for m in models:
                if m in swapping:
                    continue
                version = production_rows(check, m)[0]["version"]
                if files_equal(self.models_dir / m, self.models_dir / m / version) or self._accepted(m):
                    continue
                assert m in mixed, f"{m} is not {version}"
                key = (mixed[m], json.dumps(file_sums(self.models_dir / m), sort_keys=True))
                if key not in self.refusal_seen:  # once per failed revert and files
                    with pytest.raises((FilesMismatch, InvalidTransition)):
                        self.engine.resume_trading(user="U0BOB")
                    self.refusal_seen.add(key)

        @invariant()
        def trading_halted_while_a_swap_is_under_way(self):
            """... or while a halt is not effective, or a revert failed; and each such rollback holds the halt."""
            holding = self._incidents(*HALTED_OPEN)
            if holding:
                assert trading_halted(check), f"trading runs during {[(r['id'], r['state']) for r in holding]}"
                holders = {r["holder"] for r in check.execute(
                    "SELECT holder FROM rollback_bot.halt_holders h JOIN rollback_bot.trading_halts t"
                    " ON t.id = h.halt_id WHERE t.resumed_at IS NULL")}
                for r in holding:
                    assert f"incident:{r['id']}" in holders, f"INC-{r['id']} ({r['state']}) does not hold the halt"

        @invariant()
        def trading_never_runs_on_an_unverified_model(self):
            if trading_halted(check):
                return
            verified = {r["sha"] for r in check.execute(
                "SELECT s.detail->>'sha256' AS sha FROM rollback_bot.steps s WHERE s.step = 'verify'"
                " AND s.outcome = 'ok'")}
            for m in models:
                sha = sha256_file(self.models_dir / m / MODEL_FILE)
                assert sha == ctx.initial_sha[m] or sha in verified or self._accepted(m), \
                    f"trading runs on an unverified {m}"

        @invariant()
        def each_client_as_it_should_be(self):
            """Halted while a halt is held (after a sweep point); its own settings back on resume; a client a
            person changed during the halt as the person set it (tests/property_clients.py)."""
            self.clients.check()

        @invariant()
        def no_swap_without_a_checked_halt(self):
            """A swap begins only after the trades source was read and found quiet (a missing source is never
            "0 trades"), or after an approver chose *Proceed anyway*."""
            unchecked = check.execute(
                "SELECT i.id FROM rollback_bot.incidents i WHERE i.kind = 'rollback' AND EXISTS (SELECT 1 FROM"
                " rollback_bot.steps s WHERE s.incident_id = i.id AND s.step = 'emergency_backup') AND NOT EXISTS"
                " (SELECT 1 FROM rollback_bot.steps s WHERE s.incident_id = i.id AND (s.step = 'proceed_anyway' OR"
                " (s.step = 'verify_halt' AND s.outcome IN ('ok', 'warning') AND s.detail ? 'trades_after_halt'"
                " AND coalesce(s.detail->>'source', '') <> '' AND s.detail->>'source' NOT LIKE 'none%')))"
            ).fetchall()
            assert not unchecked, f"swaps without a checked halt: {[r['id'] for r in unchecked]}"

    return RollbackMachine
