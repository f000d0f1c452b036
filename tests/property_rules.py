"""The property test's rules for money safety under races (issue 13 item 10), added to the engine's state
machine (tests/property_machine.py): reverts that fail and what a person does about them (files put back by hand,
two approvers overriding the resume check), trades that keep coming after the halt (*Proceed anyway*, *Abandon*),
a trades source that goes missing, and a person acting at any moment: halting, resuming, adding, activating or
changing clients, also in the middle of a rollback.
"""

from __future__ import annotations

import errno
import shutil
from collections import Counter

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from core import halt_watch, incidents
from core.errors import FilesMismatch, InvalidTransition, NotAuthorized, PreflightFailed
from core.integrity import file_sums
from core.modelio import MODEL_FILE
from core.revert import REVERT_ATTEMPTS
from tests.helpers import production_rows, trading_halted
from tests.property_clients import PERSON_VALUES, seen
from tests.property_machine import BUSY, Ctx, damage_file

# What a person does: change a client's settings, add a client (None: without a settings row), (de)activate one.
PERSON = st.one_of(
    st.tuples(st.just("change"), st.integers(0, 50), st.sampled_from(PERSON_VALUES)),
    st.tuples(st.just("add"), st.just(0), st.sampled_from((*PERSON_VALUES, None))),
    st.tuples(st.just("activate"), st.integers(0, 50), st.booleans()),
)
# ... and during a rollback, also a manual halt or `/rollback resume`.
MEDDLE = st.one_of(PERSON, st.just(("halt",)), st.just(("resume",)))
QUIET = {"halt_quiet_seconds": 1.0, "halt_quiet_timeout_seconds": 4.0}  # engine-clock seconds, for trades rules


def money_rules(ctx: Ctx, base: type) -> type:
    """``base`` (tests/property_machine.build_machine) with the rules below."""
    check, models = ctx.check, ctx.models

    class MoneyMachine(base):
        def _act(self, action: tuple) -> None:
            """One thing a person does (PERSON, MEDDLE)."""
            kind = action[0]
            seen(f"person: {kind}" + (" during a halt" if trading_halted(check) else ""))
            if kind == "change":
                every = self.clients.clients()
                self.clients.set_settings(every[action[1] % len(every)], action[2])
            elif kind == "add":
                self.clients.add_client(action[2])
            elif kind == "activate":
                every = self.clients.clients()
                self.clients.set_active(every[action[1] % len(every)], action[2])
            elif kind == "halt":
                self.manual_halt()
            else:
                self._try_resume()

        @rule(model=st.sampled_from(models), pick=st.integers(0, 50), file=st.sampled_from(["model.json",
                                                                                           "metadata.json"]),
              times=st.sampled_from([1, 2, REVERT_ATTEMPTS, REVERT_ATTEMPTS]))
        def failed_revert(self, model, pick, file, times):
            """Verification fails and putting the original back fails ``times`` times in a row at ``file``."""
            inc = self._request(model, self._target(model, pick, None))
            if inc is None:
                return
            before = production_rows(check, model)[0]["version"]
            folder = self.models_dir / model
            originals = file_sums(folder)  # the production row's files, or those two approvers resumed on
            fired: Counter = Counter()

            def hook(at: str) -> None:
                if at == "after:restoring":
                    damage_file(self.models_dir / model / MODEL_FILE)
                if at == f"revert:{file}":
                    fired[file] += 1
                    if fired[file] <= times:
                        raise OSError(errno.ENOSPC, "No space left on device (property test)")

            done = self._run(inc.id, hook)
            seen(f"failing revert: {done.state}")
            assert production_rows(check, model)[0]["version"] == before, "the deployment log was not put back"
            assert trading_halted(check), "trading runs after a failed rollback"
            if fired[file] >= REVERT_ATTEMPTS:
                assert done.state == incidents.REVERT_FAILED, (done.state, done.error)
                assert file_sums(folder) != originals, "revert_failed, yet the files are the original"
                assert file in done.error, done.error
                with pytest.raises((FilesMismatch, InvalidTransition)):  # the latter: another rollback under way
                    self.engine.resume_trading(user="U0BOB")
                assert trading_halted(check)
            else:
                assert done.state == incidents.FAILED, (done.state, done.error)
                assert file_sums(folder) == originals, "the original files are not back"

        @precondition(lambda self: incidents.REVERT_FAILED in self.open_states)
        @rule(pick=st.integers(0, 50))
        def fix_files_by_hand(self, pick):
            """A person puts the production row's files back after a failed revert (resume may then close it)."""
            rows = self._incidents(incidents.REVERT_FAILED)
            model = rows[pick % len(rows)]["model_name"]
            folder = self.models_dir / model
            version = production_rows(check, model)[0]["version"]
            for name in ("metadata.json", MODEL_FILE):
                shutil.copyfile(folder / version / name, folder / name)
            seen("files put back by hand after a failed revert")

        @precondition(lambda self: incidents.REVERT_FAILED in self.open_states or self.accepted)
        @rule()
        def override(self):
            """Two approvers resume although some production files do not match their row."""
            mismatched = self._mismatched()
            if not mismatched:
                return
            busy = self._incidents(*BUSY)
            request, _ = self.engine.request_resume_override(user="U0ALICE")
            with pytest.raises(NotAuthorized):
                self.engine.approve_resume_override(incident_id=request.id, approver="U0ALICE")
            try:
                self.engine.approve_resume_override(incident_id=request.id, approver="U0BOB")
            except InvalidTransition:
                assert busy, "the override was refused with no rollback under way"
                seen("override: refused, a rollback under way")
                return
            seen("override: resumed on files that do not match")
            assert not busy, f"resumed while {[(r['id'], r['state']) for r in busy]} were under way"
            for m in mismatched:
                self.accepted[m] = file_sums(self.models_dir / m)
            assert not trading_halted(check) and not self._incidents(incidents.REVERT_FAILED)

        @rule(model=st.sampled_from(models), pick=st.integers(0, 50), keeps_coming=st.booleans())
        def trades_after_the_halt(self, model, pick, keeps_coming):
            """Trades still come after the halt: for a while (the swap waits until they stop), or on and on
            (the rollback pauses as halt_not_effective, nothing swapped, trading halted)."""
            inc = self._request(model, self._target(model, pick, None))
            if inc is None:
                return
            before = self._snapshot()[:2]
            start = self.offset

            def trade() -> None:
                if keeps_coming or (self.offset - start).total_seconds() <= QUIET["halt_quiet_seconds"]:
                    check.execute("INSERT INTO trades (client_id, ticker, side, quantity, price, executed_at)"
                                  " VALUES (%s, 'AAA', 'buy', 1, 1, clock_timestamp())", (self.trader,))

            self.on_sleep = trade
            self.engine.settings = self.base_settings.model_copy(update=QUIET)
            try:
                done = self._run(inc.id)
            finally:
                self.on_sleep, self.engine.settings = None, self.base_settings
            verify = self._steps(inc.id, "verify_halt")[-1]
            seen(f"trades after the halt: {done.state}")
            if keeps_coming:
                assert done.state == incidents.HALT_NOT_EFFECTIVE, (done.state, done.error)
                assert verify.outcome == "failed" and verify.detail["trades_after_halt"] > 0
                assert self._snapshot()[:2] == before and trading_halted(check), "swapped on a halt that is not working"
            else:
                assert done.state == incidents.MONITORING, (done.state, done.error)
                assert verify.outcome == "warning" and verify.detail["trades_after_halt"] > 0, verify

        @precondition(lambda self: incidents.HALT_NOT_EFFECTIVE in self.open_states)
        @rule(pick=st.integers(0, 50), proceed=st.booleans())
        def decide_a_paused_rollback(self, pick, proceed):
            """*Proceed anyway* (an approver other than the requester) or *Abandon* a halt that is not effective."""
            rows = self._incidents(incidents.HALT_NOT_EFFECTIVE)
            inc = rows[pick % len(rows)]
            seen("halt not effective: " + ("proceed anyway" if proceed else "abandon"))
            if proceed:
                with pytest.raises(NotAuthorized):
                    halt_watch.proceed_anyway(self.engine, incident_id=inc["id"], approver="U0ALICE", allowed=True)
                halt_watch.proceed_anyway(self.engine, incident_id=inc["id"], approver="U0CAROL", allowed=True)
                done = self._run(inc["id"])
                assert done.state == incidents.MONITORING, (done.state, done.error)
            else:
                done = halt_watch.abandon(self.engine, incident_id=inc["id"], user="U0ALICE", allowed=True)
                assert done.state == incidents.FAILED and trading_halted(check)

        @rule(model=st.sampled_from(models), pick=st.integers(0, 50), kind=st.sampled_from(["table", "log"]),
              when=st.sampled_from(["request", "approval", "halt"]))
        def trades_source_missing(self, model, pick, kind, when):
            """The trades source goes missing: never read as "0 trades"; refused before the halt, or the rollback
            fails at the halt check with nothing swapped and trading halted."""
            seen(f"trades source missing at the {when}")
            broken = self.base_settings.model_copy(update={"trades_table": "no_such_trades"} if kind == "table"
                                                   else {"trading_log": self.models_dir.parent / "no-such.log"})
            target = self._target(model, pick, None)
            if when == "request":
                if self.engine.open_incident_for(model) is not None:
                    return
                before = self._snapshot()
                self.engine.settings = broken
                try:
                    with pytest.raises(PreflightFailed):
                        self.engine.request_rollback(model=model, backup=target, reason="property test",
                                                     requested_by="U0ALICE")
                finally:
                    self.engine.settings = self.base_settings
                assert self._snapshot() == before, "a refused request changed something"
                return
            inc = self._request(model, target)
            if inc is None:
                return
            before = self._snapshot()
            if when == "approval":
                self.engine.settings = broken
            def hook(at: str) -> None:
                if when == "halt" and at == "before:halted":
                    self.engine.settings = broken

            try:
                done = self._run(inc.id, hook)
            finally:
                self.engine.settings = self.base_settings
            assert done.state == incidents.FAILED, (done.state, done.error)
            assert ("no_such_trades" if kind == "table" else "no-such.log") in done.error, done.error
            assert not self._steps(inc.id, "emergency_backup"), "a swap began without a trades source"
            after = self._snapshot()
            assert after[:2] == before[:2], "files or rows changed"
            if when == "approval":
                assert after[2] == before[2] and not self._steps(inc.id, "halt"), "halted after a refused pre-flight"
            else:
                assert trading_halted(check)

        @rule(actions=st.lists(PERSON, min_size=1, max_size=3))
        def person_acts(self, actions):
            """Clients added, activated or deactivated, their settings changed: halted or not."""
            for action in actions:
                self._act(action)

        @rule(model=st.sampled_from(models), pick=st.integers(0, 50), label=st.sampled_from(ctx.meddle_labels),
              actions=st.lists(MEDDLE, min_size=1, max_size=3), keep_halted=st.sampled_from([False, False, True]))
        def meddled_rollback(self, model, pick, label, actions, keep_halted):
            """A person acts while a rollback runs (at ``label``): halts, resumes, adds or changes clients."""
            inc = self._request(model, self._target(model, pick, None), keep_halted=keep_halted)
            if inc is None:
                return
            fired = []

            def hook(at: str) -> None:
                if at == label and not fired:
                    fired.append(at)
                    for action in actions:
                        self._act(action)

            self._run(inc.id, hook)
            seen("person acts during a rollback" if fired else "person acts after a rollback")
            if not fired:
                for action in actions:
                    self._act(action)
            done = self.engine.get(inc.id)
            if done.state == incidents.RESUMING:
                # `/rollback resume` moved it on from verified while its executor was finishing verification:
                # the executor stopped there; the worker's recovery runs its resume step.
                assert keep_halted and ("resume",) in actions and label == "after:verifying", done.state
                done = self.engine.execute(inc.id)
            if done.state == incidents.MONITORING and keep_halted:
                assert ("resume",) in actions, "a rollback kept halted resumed on its own"
            else:
                want = incidents.VERIFIED if keep_halted else incidents.MONITORING
                assert done.state == want, (done.state, done.error)
            assert production_rows(check, model)[0]["version"] == inc.target_backup

    return MoneyMachine
