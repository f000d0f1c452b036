"""The rollback engine: a persisted, journaled state machine for runbook steps 2 to 6.

The states and their allowed moves are in ``core.incidents``.

Rules kept here, not in the Slack layer:

* Every transition is checked against ``core.incidents.TRANSITIONS`` with a conditional UPDATE
  (``WHERE state = %s``), so two processes (or two clicks) can never both make the same move.
* Each step is journaled in ``rollback_bot.steps`` (start, end, actor, outcome, error) and is idempotent:
  after a crash it can simply run again. Database changes of a step commit in the same transaction as the
  state change that records them.
* Execution holds a session-level advisory lock on the incident: a second process cannot run the same
  rollback, and when a process dies PostgreSQL releases the lock, so ``recover()`` elsewhere (or after a
  restart) can take over. The partial unique index on ``incidents`` keeps one open rollback per model.
* Trading never resumes on a model that was not verified: ``_resume`` re-checks the journal and the file's
  checksum before it lets go of the halt.
* Verification loads the model in place with xgboost. The parse is most of a rollback's machine time, so once
  trading is halted it starts on a thread from the approved backup's bytes. Verification uses that result
  only when the file in place has the same checksum (``_parse_ahead``).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from core import access, aftercare, halt_watch, integrity, revert, trading
from core import repository as repo
from core import resume as resume_mod
from core.db import Database, step_limits
from core.doctor import refuse_if_not_ready
from core.errors import (
    BackupCorrupt,
    Conflict,
    DatabaseUnavailable,
    InvalidTransition,
    NotAuthorized,
    PreflightFailed,
    RollbackError,
    VerificationFailed,
    clean_text,
)
from core.fencing import Fence, LostLock
from core.incidents import (
    APPROVED,
    BACKING_UP,
    CANCELLED,
    DENIED,
    FAILED,
    HALTED,
    HALTING,
    MONITORING,
    RECORDING,
    REQUESTED,
    RESOLVED,
    RESTORING,
    RESUMING,
    REVERT_FAILED,
    REVERTING,
    RUNNABLE,
    STEP_OF_STATE,
    SWAP_STATES,
    VERIFIED,
    VERIFYING,
    Event,
    Incident,
    Listener,
    PreflightReport,
    Step,
    already_decided,
    audit,
    journal,
    utcnow,
)
from core.logctx import incident_context
from core.modelio import (
    METADATA_FILE,
    MODEL_FILE,
    MODEL_FILES,
    atomic_copy,
    copy_folder_atomically,
    load_booster,
    load_booster_if_identical,
    predict,
    read_metadata,
    sha256_file,
)
from core.platform import feature_columns, feature_rows
from core.registry import EMERGENCY_PREFIX, ModelRegistry, validate_name
from core.settings import Settings

log = logging.getLogger("rollback_bot.engine")

MAX_STEP_ATTEMPTS = 3
# Once trading is halted, the approved backup's model is parsed while these steps run (Engine._parse_ahead),
# on threads shared by every engine of the process (started on first use).
PARSE_AHEAD_STATES = frozenset({HALTED, BACKING_UP, RESTORING, RECORDING})
_PARSER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="model-parse")
FaultHook = Callable[[str], None]


def no_fault(_: str) -> None:
    return None


class Engine:
    """Drives rollbacks; shared by the Slack app, the worker, the break-glass CLI and the demo."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        registry: ModelRegistry,
        *,
        clock: Callable[[], datetime] = utcnow,
        fault_hook: FaultHook = no_fault,
    ) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.clock = clock
        self.sleep: Callable[[float], None] = time.sleep  # the quiet wait after the halt (tests move the clock)
        self.fault = fault_hook
        self.listeners: list[Listener] = []
        # Transactional outbox (core.outbox): writers of the follow-up jobs a state change implies, called in the
        # state change's own transaction.
        self.follow_ups: list[Callable[[psycopg.Connection, Incident], None]] = []
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._parsing: dict[int, Future] = {}  # incident id -> the approved backup's model, parsed ahead
        self._fences: dict[int, Fence] = {}  # incident id -> this process's lock on it (core.fencing)
        self.revert_wait = revert.DEFAULT_WAIT  # back-off between attempts to put the original files back

    # ---------------------------------------------------------------------------------------- events

    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def publish(self, event: Event) -> None:
        """Tell every listener about something that happened outside the engine's own steps."""
        self._emit(event)

    def _emit(self, event: Event) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a listener (Slack, e-mail) must never break a rollback
                log.exception("event listener failed for %s", event.incident.ref)

    # ---------------------------------------------------------------------------------------- reading

    def get(self, incident_id: int, conn: psycopg.Connection | None = None, *, lock: bool = False) -> Incident:
        if conn is None:
            with self.db.transaction() as c:
                return repo.get(c, incident_id, lock=lock)
        return repo.get(conn, incident_id, lock=lock)

    def open_incident_for(self, model: str) -> Incident | None:
        """The model's open rollback that blocks a new request (one that needs attention does not: a follow-up
        rollback is how it gets fixed, see core.aftercare)."""
        with self.db.transaction() as conn:
            return repo.open_rollback_for(conn, model)

    def steps(self, incident_id: int) -> list[Step]:
        with self.db.transaction() as conn:
            return repo.steps(conn, incident_id)

    def list_incidents(self, *, open_only: bool = False, limit: int = 20) -> list[Incident]:
        with self.db.transaction() as conn:
            return repo.list_incidents(conn, open_only=open_only, limit=limit)

    # ---------------------------------------------------------------------------------------- audit

    def audit(self, conn: psycopg.Connection | None, *, actor: str, action: str, outcome: str,
              incident_id: int | None = None, **detail: Any) -> None:
        if conn is None:
            with self.db.transaction() as c:
                audit(c, actor=actor, action=action, outcome=outcome, incident_id=incident_id, **detail)
        else:
            audit(conn, actor=actor, action=action, outcome=outcome, incident_id=incident_id, **detail)

    # ------------------------------------------------------------------------------------ pre-flight

    def preflight(self, *, model: str, backup: str) -> PreflightReport:
        """Check a target before anything changes: it loads, its metadata parses, its features exist in
        ``ml_training_features`` and a prediction on the latest rows is finite and not constant."""
        validate_name(model, "model")
        validate_name(backup, "backup")
        self._refuse_if_platform_not_ready(model)
        folder = self.registry.backup_dir(model, backup)
        checks: list[str] = []
        try:
            meta = read_metadata(folder)
            checks.append("metadata.json parses")
            booster = load_booster(folder / MODEL_FILE, max_bytes=self.registry.max_model_bytes)
            checks.append("model.json loads with xgboost")
        except BackupCorrupt as exc:
            raise PreflightFailed(f"Backup {backup} of {model} fails pre-flight: {exc}") from None
        if booster.num_features() != len(meta.features):
            raise PreflightFailed(
                f"Backup {backup} of {model} fails pre-flight: the model expects {booster.num_features()} features,"
                f" metadata lists {len(meta.features)}."
            )
        if booster.feature_names and list(booster.feature_names) != list(meta.features):
            raise PreflightFailed(
                f"Backup {backup} of {model} fails pre-flight: the model's feature names differ from metadata.json."
            )
        with self.db.transaction() as conn:
            available = feature_columns(conn)
            missing = [f for f in meta.features if f not in available]
            if missing:
                raise PreflightFailed(
                    f"Backup {backup} of {model} fails pre-flight: ml_training_features lacks "
                    f"{', '.join(missing[:8])}."
                )
            checks.append("features match ml_training_features")
            checks.append(self._check_trades_source(conn, f"A rollback of {model} fails pre-flight"))
            day, _, rows = feature_rows(conn, meta.features)
        self._check_prediction(booster, meta.features, rows, what=f"Backup {backup} of {model} fails pre-flight")
        checks.append(f"prediction on {len(rows)} rows of {day} is finite and varies")
        return PreflightReport(
            model=model,
            backup=backup,
            sha256=sha256_file(folder / MODEL_FILE),
            training_date=meta.training_date.isoformat(),
            spearman_ic=meta.performance.spearman_ic,
            sharpe_ratio=meta.performance.sharpe_ratio,
            features=list(meta.features),
            prediction_day=day.isoformat() if day else None,
            prediction_rows=len(rows),
            checks=checks,
        )

    def _refuse_if_platform_not_ready(self, model: str) -> None:
        """What `rollback-bot doctor` checks that this rollback needs (tables, privileges, the trades source, the
        model's folder): PreflightFailed quoting the doctor's lines, before anything is halted."""
        with self.db.transaction() as conn:
            refuse_if_not_ready(conn, self.settings, models_dir=self.registry.models_dir, model=model)

    @staticmethod
    def _check_prediction(booster: Any, features: list[str], rows: list, *, what: str) -> None:
        import numpy as np

        if len(rows) < 2:
            raise PreflightFailed(f"{what}: ml_training_features has no recent rows to predict on.")
        preds = np.asarray(predict(booster, features, rows), dtype=float)
        if not np.all(np.isfinite(preds)):
            raise PreflightFailed(f"{what}: the prediction on recent rows has non-finite values.")
        if float(np.std(preds)) <= 0.0:
            raise PreflightFailed(f"{what}: the prediction on recent rows is constant ({preds[0]:.6g}).")

    # -------------------------------------------------------------------------------------- requests

    def request_rollback(
        self,
        *,
        model: str,
        backup: str,
        reason: str,
        requested_by: str,
        severity: str = "high",
        estimated_loss: float | None = None,
        keep_halted: bool = False,
        source: str = "slack",
        channel: str | None = None,
        confirmations: dict | None = None,
    ) -> tuple[Incident, PreflightReport]:
        """Open a rollback request after pre-flight. A second open request for the model is a Conflict.
        ``confirmations``: the requester's pre-rollback checks (``core.prerollback.confirmed``), kept in the plan."""
        reason = clean_text(reason)
        requested_by = clean_text(requested_by, 200)
        if not reason:
            raise PreflightFailed("A reason is required for a rollback.")
        if estimated_loss is not None and (not math.isfinite(estimated_loss) or estimated_loss < 0):
            raise PreflightFailed("The estimated loss must be a non-negative number.")
        validate_name(model, "model")
        existing = self.open_incident_for(model)
        if existing:
            raise Conflict(
                f"{model} already has an open rollback, {existing.ref} ({existing.state}, requested by "
                f"{existing.requested_by}); nothing new was posted."
            )
        # What is approved is what runs: both files' checksums are pinned here, around the pre-flight that
        # read them, and checked again before the halt, at the restore and at verification.
        target_dir = self.registry.backup_dir(model, backup)
        before = integrity.file_sums(target_dir)
        report = self.preflight(model=model, backup=backup)
        pinned = integrity.file_sums(target_dir)
        if pinned != before or pinned[MODEL_FILE] != report.sha256:
            raise PreflightFailed(f"Backup {backup} of {model} changed while it was being checked; nothing was"
                                  " changed. Request it again.")
        current = self.registry.production(model)
        current_info = {
            "training_date": current.training_date.isoformat() if current.training_date else None,
            "spearman_ic": current.spearman_ic,
            "sharpe_ratio": current.sharpe_ratio,
            "problems": list(current.problems),
        }
        now = self.clock()
        with self.db.transaction() as conn:
            prod = conn.execute(
                "SELECT version FROM model_deployment_log WHERE model_name = %s AND is_production "
                "ORDER BY deployed_at DESC LIMIT 1",
                (model,),
            ).fetchone()
            follows = aftercare.follow_up_of(conn, model)
            try:
                incident = repo.insert_incident(
                    conn, kind="rollback", model_name=model, target_backup=backup,
                    from_version=prod["version"] if prod else None, state=REQUESTED, reason=reason[:2000],
                    severity=severity, estimated_loss=estimated_loss, keep_halted=keep_halted,
                    requested_by=requested_by, source=source, channel=channel, target_sha256=report.sha256,
                    plan={"preflight": report.__dict__, "current": current_info, "pinned": pinned,
                          **({"follows": follows} if follows else {}),
                          **({"confirmations": confirmations} if confirmations else {})},
                    created_at=now, updated_at=now,
                    expires_at=now + timedelta(minutes=self.settings.approval_timeout_minutes),
                )
            except psycopg.errors.UniqueViolation:
                conn.rollback()
                other = self.open_incident_for(model)
                ref = other.ref if other else "another request"
                raise Conflict(f"{model} already has an open rollback, {ref}; nothing new was posted.") from None
            self.write_follow_ups(conn, incident)
            self._journal_done(conn, incident.id, "requested", requested_by, detail={"backup": backup, "reason": reason})
            self.audit(conn, actor=requested_by, action="request", outcome="ok", incident_id=incident.id,
                       model=model, backup=backup)
        self._emit(Event("state", incident))
        return incident, report

    def approve(self, *, incident_id: int, approver: str, allowed: bool = True) -> Incident:
        """Two-person rule and exactly-once: the first valid approval wins, every other is told who acted."""
        with self.db.transaction() as conn:
            inc = self.get(incident_id, conn, lock=True)
            refusal = None
            if inc.kind != "rollback":
                refusal = InvalidTransition(f"{inc.ref} is a {inc.kind} incident, not a rollback request.")
            elif inc.state != REQUESTED:
                refusal = already_decided(inc)
            elif access.is_unclaimed_proposal(inc):
                refusal = NotAuthorized("The watchdog proposed this rollback: a person takes it over as requester"
                                        " (*Take over*), then a different approver approves it.")
            elif approver == inc.requested_by:
                refusal = NotAuthorized("You cannot approve your own request: a second person must approve it.")
            elif not allowed:
                refusal = NotAuthorized("Only approvers may approve a rollback.")
            elif inc.expires_at is not None and self.clock() > inc.expires_at:
                repo.cancel_request(conn, incident_id, at=self.clock())
                self._journal_done(conn, incident_id, "expired", "rollback-bot", outcome="skipped")
                refusal = InvalidTransition(f"{inc.ref} expired before it was approved; request it again.")
            if refusal is not None:
                conn.commit()
                self.audit(None, actor=approver, action="approve", outcome="refused", incident_id=incident_id,
                           reason=str(refusal))
                raise refusal
            now = self.clock()
            row = conn.execute(
                "UPDATE rollback_bot.incidents SET state = 'approved', approved_by = %s, decided_by = %s,"
                " approved_at = %s, updated_at = %s WHERE id = %s AND state = 'requested' RETURNING *",
                (approver, approver, now, now, incident_id),
            ).fetchone()
            incident = Incident(**row)
            self._journal_done(conn, incident_id, "approved", approver)
            self.audit(conn, actor=approver, action="approve", outcome="ok", incident_id=incident_id)
            superseded = aftercare.supersede(conn, incident, at=now)
            enqueue(conn, "execute", incident_id=incident_id, dedupe_key=f"execute:{incident_id}")
        for old in superseded:
            self._emit(Event("state", old))
        self._emit(Event("state", incident))
        return incident

    def deny(self, *, incident_id: int, user: str, note: str, allowed: bool = True) -> Incident:
        with self.db.transaction() as conn:
            inc = self.get(incident_id, conn, lock=True)
            if inc.kind != "rollback":
                refusal: RollbackError | None = InvalidTransition(f"{inc.ref} is not a rollback request.")
            elif not allowed:
                refusal = NotAuthorized("Only approvers or the requester may deny a rollback.")
            elif inc.state != REQUESTED:
                refusal = already_decided(inc)
            else:
                refusal = None
            if refusal:
                conn.commit()
                self.audit(None, actor=user, action="deny", outcome="refused", incident_id=incident_id,
                           reason=str(refusal))
                raise refusal
            now = self.clock()
            new_state = CANCELLED if user == inc.requested_by else DENIED
            incident = repo.decide_request(conn, incident_id, state=new_state, user=user, note=clean_text(note), at=now)
            self._journal_done(conn, incident_id, new_state, user, detail={"note": clean_text(note)})
            self.audit(conn, actor=user, action="deny", outcome="ok", incident_id=incident_id, note=clean_text(note))
        self._emit(Event("state", incident))
        return incident

    def expire_requests(self) -> list[Incident]:
        """Cancel requests whose approval window has passed, and approved rollbacks that did not start within
        APPROVED_START_TIMEOUT_MINUTES (run by the worker)."""
        now = self.clock()
        with self.db.transaction() as conn:
            rows = repo.cancel_expired(conn, at=now)
            for r in rows:
                self._journal_done(conn, r["id"], "expired", "rollback-bot", outcome="skipped")
            late = repo.cancel_not_started(conn, at=now, approved_before=now - self._start_timeout(),
                                           note=self._not_started_note())
            for r in late:
                self._journal_done(conn, r["id"], "expired", "rollback-bot", outcome="skipped",
                                   detail={"note": self._not_started_note()})
            rows += late
        out = [Incident(**r) for r in rows]
        for inc in out:
            self._emit(Event("state", inc))
        return out

    def set_message(self, incident_id: int, *, channel: str, message_ts: str, thread_ts: str | None = None) -> None:
        with self.db.transaction() as conn:
            repo.set_message(conn, incident_id, channel=channel, message_ts=message_ts, thread_ts=thread_ts)

    # ------------------------------------------------------------------------------------- journal

    def _journal_start(self, conn: psycopg.Connection, incident_id: int, step: str, actor: str) -> int:
        return repo.start_step(conn, incident_id, step, actor, at=self.clock())

    def _journal_finish(self, conn: psycopg.Connection, step_id: int, outcome: str, detail: dict | None = None,
                        error: str | None = None) -> None:
        repo.finish_step(conn, step_id, outcome, detail, error, at=self.clock())

    def _journal_done(self, conn: psycopg.Connection, incident_id: int, step: str, actor: str, *,
                      outcome: str = "ok", detail: dict | None = None, error: str | None = None) -> None:
        journal(conn, incident_id=incident_id, step=step, actor=actor, at=self.clock(), outcome=outcome,
                detail=detail, error=error)

    def _attempt_counts(self, incident_id: int) -> dict[str, int]:
        """How many times each journal step of the incident was started."""
        with self.db.transaction() as conn:
            return repo.attempt_counts(conn, incident_id)

    def _move(self, conn: psycopg.Connection, inc: Incident, new: str, **columns: Any) -> Incident:
        """Checked, conditional state change inside the caller's transaction."""
        moved = repo.move(conn, inc, new, at=self.clock(), **columns)
        self.write_follow_ups(conn, moved)
        return moved

    def write_follow_ups(self, conn: psycopg.Connection, inc: Incident) -> None:
        """Queue the follow-up jobs of ``inc``'s new state in the caller's transaction (core.outbox)."""
        for write in self.follow_ups:
            write(conn, inc)

    # ------------------------------------------------------------------------------------- execute

    def lock_key(self, incident_id: int) -> int:
        return 0x524F4C4C0000 + incident_id  # "ROLL" namespace

    def execute(self, incident_id: int, *, actor: str = "rollback-bot") -> Incident:
        """Run the incident from its current state as far as it goes without a person. Safe to call again."""
        lock_conn = self.db.connect(autocommit=True)
        try:
            got = lock_conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (self.lock_key(incident_id),)).fetchone()
            if not got["ok"]:
                return self.get(incident_id)  # another process is running it
            self._fences[incident_id] = Fence.take(lock_conn, key=self.lock_key(incident_id),
                                                   incident_id=incident_id, owner=self.owner)
            with incident_context(f"INC-{incident_id}"):
                return self._run(incident_id, actor, lock_conn)
        finally:
            self._fences.pop(incident_id, None)
            lock_conn.close()  # releases the advisory lock

    def _fence(self, inc: Incident, what: str) -> None:
        """Right before a file operation: this process still holds the incident's lock (core.fencing)."""
        fence = self._fences.get(inc.id)
        if fence is None:
            raise LostLock(f"{inc.ref}: this process does not hold the rollback's lock; refusing {what}")
        fence.check(what)

    def _run(self, incident_id: int, actor: str, lock_conn: psycopg.Connection | None = None) -> Incident:
        try:
            # Every transaction of the steps runs with SET LOCAL lock_timeout and statement_timeout.
            with step_limits(self.settings.step_lock_timeout_seconds, self.settings.step_statement_timeout_seconds):
                return self._run_steps(self.get(incident_id), actor, lock_conn)
        finally:
            self._parsing.pop(incident_id, None)

    def _parse_ahead(self, inc: Incident) -> None:
        """Parsing a large model.json is most of a rollback's machine time, and the halt, backup, restore and
        record steps mostly wait for PostgreSQL and the disk. So once trading is halted (the halt itself never
        shares the CPU with it), the approved backup's model is parsed on a thread of its own (xgboost parses
        outside Python's lock). Verification uses it only if the file in place has the checksum of the bytes
        that were parsed; otherwise it loads the file in place."""
        if (inc.kind != "rollback" or inc.state not in PARSE_AHEAD_STATES or not inc.target_sha256
                or inc.id in self._parsing):
            return
        try:
            source = self.registry.backup_dir(inc.model_name, inc.target_backup) / MODEL_FILE
        except RollbackError:
            return  # the backup is gone or unusable: the steps themselves say so
        self._parsing[inc.id] = _PARSER.submit(load_booster_if_identical, source, inc.target_sha256,
                                               max_bytes=self.registry.max_model_bytes)

    def _parsed_ahead(self, incident_id: int) -> Any:
        """The model `_parse_ahead` parsed for this incident, waiting for it if need be; None if there is none."""
        parsing = self._parsing.pop(incident_id, None)
        if parsing is None:
            return None
        try:
            return parsing.result()
        except Exception:  # noqa: BLE001 - only an optimisation: verification loads the file in place instead
            log.exception("INC-%s: parsing the approved model ahead failed", incident_id)
            return None

    def _run_steps(self, inc: Incident, actor: str, lock_conn: psycopg.Connection | None) -> Incident:
        incident_id = inc.id
        # Attempts by earlier runs: no state repeats within one run, so one read at the start is enough.
        attempts = self._attempt_counts(incident_id)
        while inc.state in RUNNABLE:
            step = inc.state
            if lock_conn is not None:
                _still_locked(lock_conn)  # a restarted PostgreSQL dropped our lock: another process may take over
            if (step not in (APPROVED, REVERTING, RESUMING)
                    and attempts.get(STEP_OF_STATE[step], 0) >= MAX_STEP_ATTEMPTS):
                inc = self._fail_or_revert(inc, f"step '{step}' was interrupted {MAX_STEP_ATTEMPTS} times")
                continue
            handler = getattr(self, f"_step_{step}")
            if step in halt_watch.HELD_STATES:
                halt_watch.sweep(self)  # clients activated or added while the halt is held are halted too
            self._parse_ahead(inc)
            self.fault(f"before:{step}")
            try:
                inc = handler(inc, actor)
            except (DatabaseUnavailable, psycopg.OperationalError):
                raise  # transient: leave the state as it is; the step runs again when the database is back
            except Exception as exc:  # noqa: BLE001 - every failure is journaled and handled below
                message = str(exc) if isinstance(exc, RollbackError) else f"{type(exc).__name__}: {exc}"
                log.warning("%s step %s failed: %s", inc.ref, step, message)
                current = self.get(incident_id)
                if current.state != step:
                    inc = current
                    continue
                inc = self._fail_or_revert(current, message)
            self.fault(f"after:{step}")
        return inc

    def _fail_or_revert(self, inc: Incident, message: str) -> Incident:
        with self.db.transaction() as conn:
            inc = self.get(inc.id, conn, lock=True)
            if inc.state in SWAP_STATES and inc.state != REVERTING:
                new = self._move(conn, inc, REVERTING, error=message[:2000])
            elif inc.state in (APPROVED, HALTING, HALTED, MONITORING):
                new = self._move(conn, inc, FAILED, error=message[:2000])
            elif inc.state == REVERTING:
                # Reverting itself failed: stop, keep trading halted, say what is in place; a person must look.
                new = self._move(conn, inc, REVERT_FAILED, error=(
                    (inc.error or "") + f"; revert failed: {message}; {self._files_now(inc)}")[:2000])
            else:  # resuming: the model is verified; retry later rather than undo a good rollback
                raise RollbackError(message)
            self._journal_done(conn, inc.id, "error", "rollback-bot", outcome="failed", error=message[:2000])
        self._emit(Event("state", new, error=message))
        return new

    def _begin(self, inc: Incident, step: str, actor: str) -> int:
        with self.db.transaction() as conn:
            # A step's start row only counts attempts: if a power loss ate it, the (idempotent) step just runs
            # again with one attempt fewer on record. So it need not wait for the WAL flush; every state
            # change still does.
            conn.execute("SET LOCAL synchronous_commit = off")
            return self._journal_start(conn, inc.id, step, actor)

    def _finish(self, step_id: int, outcome: str, detail: dict | None = None, error: str | None = None) -> None:
        with self.db.transaction() as conn:
            self._journal_finish(conn, step_id, outcome, detail, error)

    # -- approved: pre-flight again, right before the first change ----------------------------------

    def _start_timeout(self) -> timedelta:
        return timedelta(minutes=self.settings.approved_start_timeout_minutes)

    def _not_started_note(self) -> str:
        return (f"approved but not started within {self.settings.approved_start_timeout_minutes:g} minutes"
                " (APPROVED_START_TIMEOUT_MINUTES): cancelled rather than run late; request it again")

    def _step_approved(self, inc: Incident, actor: str) -> Incident:
        if inc.approved_at is not None and self.clock() - inc.approved_at > self._start_timeout():
            with self.db.transaction() as conn:
                new = self._move(conn, self.get(inc.id, conn, lock=True), CANCELLED,
                                 decision_note=self._not_started_note())
                self._journal_done(conn, inc.id, "expired", actor, outcome="skipped",
                                   detail={"note": self._not_started_note()})
                self.audit(conn, actor=actor, action="execute", outcome="refused", incident_id=inc.id,
                           reason=self._not_started_note())
            self._emit(Event("state", new))
            return new
        sid = self._begin(inc, "preflight", actor)
        try:
            checks = self._recheck_target(inc)
        except RollbackError as exc:
            self._finish(sid, "failed", error=str(exc))
            with self.db.transaction() as conn:
                new = self._move(conn, self.get(inc.id, conn, lock=True), FAILED, error=str(exc)[:2000])
            self._emit(Event("state", new, error=str(exc)))
            return new
        self._finish(sid, "ok", {"checks": checks})
        with self.db.transaction() as conn:
            new = self._move(conn, self.get(inc.id, conn, lock=True), HALTING)
        self._emit(Event("state", new))
        return new

    def _recheck_target(self, inc: Incident) -> list[str]:
        """Pre-flight again right before the halt. When model.json still has the bytes that passed pre-flight
        at request time, loading it again proves nothing new (and takes most of a second for a large model):
        check the checksum, the metadata's features and the feature view instead."""
        self._refuse_if_platform_not_ready(inc.model_name)
        what = f"Backup {inc.target_backup} of {inc.model_name} fails pre-flight"
        folder = self.registry.backup_dir(inc.model_name, inc.target_backup)
        try:
            sha = sha256_file(folder / MODEL_FILE)
        except OSError as exc:
            raise PreflightFailed(f"{what}: {MODEL_FILE} cannot be read ({exc.strerror}).") from None
        if inc.target_sha256 and sha != inc.target_sha256:
            raise PreflightFailed(f"{what}: it changed on disk after the request; nothing was changed.")
        pinned_meta = integrity.pins_of(inc).get(METADATA_FILE)
        if pinned_meta and integrity.file_sums(folder)[METADATA_FILE] != pinned_meta:
            raise PreflightFailed(f"{what}: its metadata.json changed on disk after the request; nothing was changed.")
        checked = (inc.plan or {}).get("preflight") or {}
        if not inc.target_sha256 or not checked.get("features"):
            return self.preflight(model=inc.model_name, backup=inc.target_backup).checks
        try:
            meta = read_metadata(folder)
        except BackupCorrupt as exc:
            raise PreflightFailed(f"{what}: {exc}") from None
        if list(meta.features) != list(checked["features"]):
            raise PreflightFailed(f"{what}: the features in metadata.json changed after the request.")
        with self.db.transaction() as conn:
            available = feature_columns(conn)
            trades = self._check_trades_source(conn, f"A rollback of {inc.model_name} fails pre-flight")
        missing = [f for f in meta.features if f not in available]
        if missing:
            raise PreflightFailed(f"{what}: ml_training_features lacks {', '.join(missing[:8])}.")
        return ["model.json is the file that passed pre-flight (sha256)", "metadata.json parses, same features",
                "features match ml_training_features", trades]

    def _check_trades_source(self, conn: psycopg.Connection, what: str) -> str:
        """The trades source the halt is verified against can be read; fail closed before anything changes."""
        if not trading.has_trades_source(self.settings):
            return "no trade source (TRADES_TABLE=none): trades after the halt will not be checked"
        problem = trading.trades_source_problem(conn, self.settings)
        if problem:
            raise PreflightFailed(f"{what}: {problem}; nothing was changed.")
        return "the trades source can be read"

    # -- halting: client settings saved and halted, halt flag set, in one transaction ----------------

    def _step_halting(self, inc: Incident, actor: str) -> Incident:
        sid = self._begin(inc, "halt", actor)
        with self.db.transaction() as conn:
            cur = self.get(inc.id, conn, lock=True)
            result = trading.halt(conn, holder=f"incident:{inc.id}", actor=inc.approved_by or actor,
                                  reason=f"{inc.ref} rollback of {inc.model_name}: {inc.reason}"[:500])
            detail = {"halt_id": result.halt_id, "clients": result.clients, "joined": result.joined}
            new = self._move(conn, cur, HALTED, halted_at=result.halted_at,
                             plan={**cur.plan, "halt_id": result.halt_id})
            self._journal_finish(conn, sid, "ok", detail)
        self._emit(Event("step", new, "halt", detail))
        self._emit(Event("state", new))
        return new

    # -- halted: stop command, verify no trades after the halt, then take the emergency backup -------

    def _step_halted(self, inc: Incident, actor: str) -> Incident:
        sid = self._begin(inc, "verify_halt", actor)
        try:
            note = trading.run_stop_command(self.settings.trading_stop_command,
                                            self.settings.trading_stop_timeout_seconds)
        except RollbackError as exc:
            self._finish(sid, "failed", error=str(exc))
            raise
        try:
            watch = halt_watch.wait_for_quiet(self, inc)  # until no trade for HALT_QUIET_SECONDS, or the timeout
        except RollbackError as exc:
            self._finish(sid, "failed", error=str(exc))
            raise
        detail = {**watch.detail, "stop_command": note}
        if not watch.quiet:
            return halt_watch.not_effective(self, inc, sid, detail)
        n = watch.trades
        if n:
            self._finish(sid, "warning", detail, error=f"{n} trade(s) executed after the halt")
        else:
            self._finish(sid, "ok", detail)
        self._emit(Event("step", inc, "verify_halt", detail))
        name = inc.emergency_backup or self._emergency_name(inc)
        with self.db.transaction() as conn:
            new = self._move(conn, self.get(inc.id, conn, lock=True), BACKING_UP, emergency_backup=name)
        self._emit(Event("state", new))
        return new

    def _emergency_name(self, inc: Incident) -> str:
        folder = self.registry.model_dir(inc.model_name)
        base = f"{EMERGENCY_PREFIX}{self.clock():%Y-%m-%d_%H-%M-%S}"
        name, n = base, 1
        while (folder / name).exists():
            n += 1
            name = f"{base}_{n}"
        return name

    # -- backing_up: copy the current model into backup_emergency_*/ (appears complete or not at all) -

    def _step_backing_up(self, inc: Incident, actor: str) -> Incident:
        sid = self._begin(inc, "emergency_backup", actor)
        folder = self.registry.model_dir(inc.model_name)
        dest = folder / inc.emergency_backup
        self._fence(inc, "removing temporary files")
        _clean_temporaries(folder)
        present = [folder / f for f in MODEL_FILES if (folder / f).is_file()]
        if not dest.exists():
            self._fence(inc, "the emergency backup")
            try:
                # What exists is backed up as it is (a corrupt or missing model.json included).
                copy_folder_atomically(present, dest)
            except OSError as exc:
                raise RollbackError(
                    f"The emergency backup into {inc.emergency_backup} failed ({exc.strerror or exc}); the production"
                    " files are unchanged and trading stays halted."
                ) from None
        sums = {f: (sha256_file(dest / f) if (dest / f).is_file() else None) for f in MODEL_FILES}
        detail = {"backup": inc.emergency_backup, "model_sha256": sums[MODEL_FILE],
                  "missing": [f for f in MODEL_FILES if sums[f] is None]}
        with self.db.transaction() as conn:
            cur = self.get(inc.id, conn, lock=True)
            new = self._move(conn, cur, RESTORING, plan={**cur.plan, "original_sha256": sums[MODEL_FILE],
                                                         "original_metadata_sha256": sums[METADATA_FILE]})
            self._journal_finish(conn, sid, "ok", detail)
        self._emit(Event("step", new, "emergency_backup", detail))
        self._emit(Event("state", new))
        return new

    # -- restoring: atomic replace of both files ------------------------------------------------------

    def _step_restoring(self, inc: Incident, actor: str) -> Incident:
        sid = self._begin(inc, "restore", actor)
        folder = self.registry.model_dir(inc.model_name)
        source = self.registry.backup_dir(inc.model_name, inc.target_backup)
        pins = integrity.pins_of(inc)
        self._fence(inc, "removing temporary files")
        _clean_temporaries(folder)  # a copy interrupted by a crash in an earlier attempt
        integrity.check_pins(source, pins, what=f"Backup {inc.target_backup} changed on disk after approval")
        for name in (METADATA_FILE, MODEL_FILE):
            dst, src = folder / name, source / name
            if (dst.is_symlink() or not dst.exists()  # a link in place is replaced by a plain file
                    or dst.stat().st_size != src.stat().st_size  # differ: no need to hash
                    or sha256_file(dst) != sha256_file(src)):
                self._fence(inc, f"restoring {name}")
                atomic_copy(source / name, folder / name)
                self.fault(f"restored:{name}")
        detail = {"from": inc.target_backup, "sha256": inc.target_sha256}
        with self.db.transaction() as conn:
            new = self._move(conn, self.get(inc.id, conn, lock=True), RECORDING)
            self._journal_finish(conn, sid, "ok", detail)
        self._emit(Event("step", new, "restore", detail))
        self._emit(Event("state", new))
        return new

    # -- recording: one transaction, old rows un-marked BEFORE the new row is inserted ----------------

    def _step_recording(self, inc: Incident, actor: str) -> Incident:
        sid = self._begin(inc, "record", actor)
        meta = read_metadata(self.registry.backup_dir(inc.model_name, inc.target_backup))
        with self.db.transaction() as conn:
            cur = self.get(inc.id, conn, lock=True)
            # Serialise writers of this model's deployment rows.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollback_bot.deploy:' || %s))", (inc.model_name,))
            previous = conn.execute(
                "SELECT version, deployed_at FROM model_deployment_log WHERE model_name = %s AND is_production",
                (inc.model_name,),
            ).fetchall()
            conn.execute(
                "UPDATE model_deployment_log SET is_production = false WHERE model_name = %s AND is_production",
                (inc.model_name,),
            )
            deployed_at = self.clock()
            by = inc.requested_by if not inc.approved_by else f"{inc.requested_by} (approved by {inc.approved_by})"
            conn.execute(
                "INSERT INTO model_deployment_log (model_name, version, deployed_at, deployed_by, deployment_reason,"
                " is_production, is_rollback, spearman_ic, sharpe_ratio) VALUES (%s, %s, %s, %s, %s, true, true, %s, %s)",
                (inc.model_name, inc.target_backup, deployed_at, by[:200], f"{inc.ref}: {inc.reason}"[:2000],
                 meta.performance.spearman_ic, meta.performance.sharpe_ratio),
            )
            prev = [{"version": r["version"], "deployed_at": r["deployed_at"].isoformat()} for r in previous]
            new = self._move(conn, cur, VERIFYING, deployed_at=deployed_at, previous_rows=prev)
            self._journal_finish(conn, sid, "ok", {"version": inc.target_backup, "previous": prev})
        self._emit(Event("step", new, "record", {"version": inc.target_backup}))
        self._emit(Event("state", new))
        return new

    # -- verifying: the file in place loads, is the target, has sane metadata, predicts ---------------

    def _step_verifying(self, inc: Incident, actor: str) -> Incident:
        sid = self._begin(inc, "verify", actor)
        try:
            detail = self.verify_in_place(inc, parsed=self._parsed_ahead(inc.id))
        except RollbackError as exc:
            self._finish(sid, "failed", error=str(exc))
            raise VerificationFailed(f"Verification failed: {exc}") from None
        with self.db.transaction() as conn:
            cur = self.get(inc.id, conn, lock=True)
            new = self._move(conn, cur, VERIFIED if cur.keep_halted else RESUMING,
                             plan={**cur.plan, "verified_sha256": detail["sha256"]})
            self._journal_finish(conn, sid, "ok", detail)
        self._emit(Event("step", new, "verify", detail))
        self._emit(Event("state", new))
        return new

    def verify_in_place(self, inc: Incident, *, parsed: Any = None) -> dict:
        """The model in place is the approved backup, loads with xgboost, has sane metadata and predicts.
        ``parsed``: that backup's model parsed from bytes with the approved checksum (``_parse_ahead``); the
        file in place having the same checksum, it is the same model, and it is not parsed a second time."""
        folder = self.registry.model_dir(inc.model_name)
        sha = sha256_file(folder / MODEL_FILE)
        if sha != inc.target_sha256:
            raise VerificationFailed("the model file in place is not the approved backup (checksum differs)")
        pinned_meta = integrity.pins_of(inc).get(METADATA_FILE)
        if pinned_meta and integrity.file_sums(folder)[METADATA_FILE] != pinned_meta:
            raise VerificationFailed("metadata.json in place is not the one approved at request time (checksum"
                                     " differs)")
        try:
            meta = read_metadata(folder)
            booster = parsed if parsed is not None else load_booster(folder / MODEL_FILE,
                                                                     max_bytes=self.registry.max_model_bytes)
        except BackupCorrupt as exc:
            raise VerificationFailed(str(exc)) from None
        if not pinned_meta:  # requested before metadata.json was pinned: compare with the backup's
            target_meta = read_metadata(self.registry.backup_dir(inc.model_name, inc.target_backup))
            if meta.model_dump() != target_meta.model_dump():
                raise VerificationFailed("metadata.json in place differs from the backup's")
        self._check_feature_order(inc, booster, list(meta.features))
        with self.db.transaction() as conn:
            available = feature_columns(conn)
            missing = [f for f in meta.features if f not in available]
            if missing:
                raise VerificationFailed(f"ml_training_features lacks {', '.join(missing[:8])}")
            day, _, rows = feature_rows(conn, meta.features)
        self._check_prediction(booster, meta.features, rows, what="Verification")
        return {"sha256": sha, "prediction_day": day.isoformat() if day else None, "rows": len(rows),
                "training_date": meta.training_date.isoformat(),
                "parsed": "ahead, from identical bytes" if parsed is not None else "from the file in place"}

    @staticmethod
    def _check_feature_order(inc: Incident, booster: Any, features: list[str]) -> None:
        """Pre-flight's feature checks, again on the files in place: the model's features are metadata.json's, in
        the same order, and the ones checked at request time."""
        if booster.num_features() != len(features):
            raise VerificationFailed(f"the model expects {booster.num_features()} features, metadata.json lists"
                                     f" {len(features)}")
        if booster.feature_names and list(booster.feature_names) != features:
            raise VerificationFailed("the model's feature names or their order differ from metadata.json")
        checked = ((inc.plan or {}).get("preflight") or {}).get("features")
        if checked and list(checked) != features:
            raise VerificationFailed("the features in metadata.json, or their order, differ from those checked at"
                                     " request time")

    # -- resuming: only a verified model, each client's own settings back ------------------------------

    def _step_resuming(self, inc: Incident, actor: str) -> Incident:
        sid = self._begin(inc, "resume", actor)
        self._assert_verified(inc)
        with self.db.transaction() as conn:
            cur = self.get(inc.id, conn, lock=True)
            trades = trading.trades_after(conn, cur.halted_at, table=self.settings.trades_table,
                                          time_column=self.settings.trades_time_column,
                                          log_path=self.settings.trading_log) if cur.halted_at else 0
            result = trading.release(conn, holder=f"incident:{inc.id}", actor=actor)
            now = self.clock()
            new = self._move(conn, cur, MONITORING, resumed_at=now)
            detail = {"resumed": result.resumed, "restored_clients": result.restored,
                      "left_alone": result.left_alone, "still_held_by": result.remaining_holders,
                      "trades_during_halt": trades}
            self._journal_finish(conn, sid, "warning" if trades else "ok", detail,
                                 error=f"{trades} trade(s) executed during the halt" if trades else None)
            enqueue(conn, "monitor_end", incident_id=inc.id, dedupe_key=f"monitor_end:{inc.id}",
                    run_at=now + timedelta(minutes=self.settings.monitor_minutes))
        self._emit(Event("step", new, "resume", detail))
        self._emit(Event("state", new))
        return new

    def _assert_verified(self, inc: Incident) -> None:
        with self.db.transaction() as conn:
            ok = repo.step_succeeded(conn, inc.id, "verify")
        folder = self.registry.model_dir(inc.model_name)
        if not ok or sha256_file(folder / MODEL_FILE) != inc.target_sha256:
            raise VerificationFailed("refusing to resume trading: the model in place was not verified")

    def resume_verified(self, *, incident_id: int, actor: str) -> Incident:
        """For a rollback that was asked to keep trading halted: an approver resumes it."""
        with self.db.transaction() as conn:
            inc = self.get(incident_id, conn, lock=True)
            if inc.state != VERIFIED:
                raise InvalidTransition(f"{inc.ref} is {inc.state}, not waiting to resume.")
            new = self._move(conn, inc, RESUMING)
        self._emit(Event("state", new))
        return self.execute(incident_id, actor=actor)

    # -- monitoring → resolved -------------------------------------------------------------------------

    def resolve(self, *, incident_id: int, actor: str = "rollback-bot", note: str | None = None) -> Incident:
        with self.db.transaction() as conn:
            inc = self.get(incident_id, conn, lock=True)
            if inc.state == RESOLVED:
                return inc
            new = self._move(conn, inc, RESOLVED)
            self._journal_done(conn, incident_id, "resolved", actor, detail={"note": note} if note else None)
        self._emit(Event("state", new))
        return new

    # -- reverting: original model back, deployment log back, trading stays halted ---------------------

    def _step_reverting(self, inc: Incident, actor: str) -> Incident:
        sid = self._begin(inc, "revert", actor)
        folder = self.registry.model_dir(inc.model_name)
        self._fence(inc, "removing temporary files")
        _clean_temporaries(folder)  # a copy interrupted by a crash in an earlier attempt
        # Each file back to the original (core.revert), retried with back-off; the outcome names what is in place.
        outcome = revert.put_back(
            folder, self._originals(inc, folder), folder / inc.emergency_backup if inc.emergency_backup else None,
            original_label=f"original ({inc.from_version or 'before ' + inc.ref})",
            target=(f"target {inc.target_backup}", integrity.pins_of(inc)),
            fence=lambda what: self._fence(inc, what), fault=self.fault, wait=self.revert_wait)
        with self.db.transaction() as conn:
            cur = self.get(inc.id, conn, lock=True)
            reverted_log = False
            if cur.deployed_at is not None:
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollback_bot.deploy:' || %s))", (inc.model_name,))
                ours = conn.execute(
                    "UPDATE model_deployment_log SET is_production = false WHERE model_name = %s AND version = %s"
                    " AND deployed_at = %s AND is_rollback AND is_production",
                    (inc.model_name, inc.target_backup, cur.deployed_at),
                ).rowcount
                if ours:
                    for prev in cur.previous_rows or []:
                        conn.execute(
                            "UPDATE model_deployment_log SET is_production = true WHERE model_name = %s AND version = %s"
                            " AND deployed_at = %s",
                            (inc.model_name, prev["version"], datetime.fromisoformat(prev["deployed_at"])),
                        )
                    reverted_log = True
            detail = {"ok": outcome.ok, "restored_files": outcome.restored, "removed_files": outcome.removed,
                      "attempts": outcome.attempts, "files": outcome.files, "message": outcome.message,
                      "deployment_log_reverted": reverted_log, "trading": "stays halted"}
            plan = {**cur.plan, "revert": {"ok": outcome.ok, "message": outcome.message, "files": outcome.files}}
            if outcome.ok:
                new = self._move(conn, cur, FAILED, plan=plan)
            else:  # the files are mixed: open, trading halted, escalated; resume refuses until they are fixed
                new = self._move(conn, cur, REVERT_FAILED, plan=plan, error=(
                    (cur.error + "; " if cur.error else "") + outcome.message[0].upper() + outcome.message[1:]
                    + ". Trading stays halted.")[:2000])
            self._journal_finish(conn, sid, "ok" if outcome.ok else "failed", detail,
                                 error=None if outcome.ok else outcome.message[:2000])
        self._emit(Event("step", new, "revert", detail))
        self._emit(Event("state", new, error=new.error))
        return new

    def _originals(self, inc: Incident, folder: Path) -> integrity.Sums | None:
        return integrity.originals_of(inc, folder / inc.emergency_backup if inc.emergency_backup else None)

    def _files_now(self, inc: Incident) -> str:
        """Which version each production file of ``inc``'s model is now (for a failure message)."""
        try:
            folder = self.registry.model_dir(inc.model_name)
            known = [(f"original ({inc.from_version or 'before ' + inc.ref})", self._originals(inc, folder) or {}),
                     (f"target {inc.target_backup}", integrity.pins_of(inc))]
            files = integrity.describe(folder, integrity.file_sums(folder), known)
        except (OSError, RollbackError) as exc:
            return f"the production files could not be read ({exc})"
        return "production files now: " + ", ".join(f"{name} is {what}" for name, what in files.items())

    # ------------------------------------------------------------------------------------- recovery

    def recover(self, *, actor: str = "rollback-bot (recovery)") -> list[Incident]:
        """Finish or undo every rollback left mid-way by a crash (those whose executor's lock is gone)."""
        with self.db.transaction() as conn:
            ids = repo.incident_ids_in(conn, RUNNABLE)
        out = []
        for incident_id in ids:
            try:
                out.append(self.execute(incident_id, actor=actor))
            except DatabaseUnavailable:
                raise
            except RollbackError as exc:  # one stuck incident must not keep the others from recovering
                log.error("INC-%s could not be recovered: %s", incident_id, exc)
                out.append(self.get(incident_id))
        return out

    def break_glass(self, *, model: str, backup: str, reason: str, by: str, os_user: str | None = None,
                    confirmations: dict | None = None) -> Incident:
        """The CLI path for when Slack is down: same pre-flight, engine and journal; the operator at the
        host's shell is the approval, recorded as such, with the operating-system account beside ``--by``."""
        by = clean_text(by, 200)
        if not by:
            raise NotAuthorized("--by NAME is required: break-glass rollbacks are audited by name.")
        os_user = clean_text(os_user, 200) or "unknown"
        inc, _ = self.request_rollback(model=model, backup=backup, reason=reason, requested_by=by, source="cli",
                                       confirmations=confirmations)
        now = self.clock()
        who = {"by": by, "os_user": os_user, "host": socket.gethostname()}
        with self.db.transaction() as conn:
            cur = self.get(inc.id, conn, lock=True)
            new = self._move(conn, cur, APPROVED, approved_by=f"{by} (break-glass CLI, OS user {os_user})"[:300],
                             decided_by=by, approved_at=now, plan={**cur.plan, "break_glass": who})
            self._journal_done(conn, inc.id, "approved", by, detail={"break_glass": True, **who})
            self.audit(conn, actor=by, action="break_glass_rollback", outcome="ok", incident_id=inc.id, **who)
            superseded = aftercare.supersede(conn, new, at=now)
        for old in superseded:
            self._emit(Event("state", old))
        self._emit(Event("state", new))
        return self.execute(inc.id, actor=by)

    # ------------------------------------------------------------------------------- trading only

    def halt_trading(self, *, user: str, reason: str) -> Incident:
        """A manual halt (``/rollback halt``), journaled as an incident of kind 'halt'."""
        now = self.clock()
        with self.db.transaction() as conn:
            inc = repo.insert_incident(conn, kind="halt", state=HALTING, reason=clean_text(reason) or "manual halt",
                                       requested_by=user, created_at=now, updated_at=now)
            sid = self._journal_start(conn, inc.id, "halt", user)
            result = trading.halt(conn, holder=f"incident:{inc.id}", actor=user, reason=inc.reason)
            new = self._move(conn, inc, HALTED, halted_at=result.halted_at, plan={"halt_id": result.halt_id})
            self._journal_finish(conn, sid, "ok", {"halt_id": result.halt_id, "clients": result.clients,
                                                  "joined": result.joined})
            self.audit(conn, actor=user, action="halt", outcome="ok", incident_id=inc.id)
        self._emit(Event("state", new))
        return new

    def resume_trading(self, *, user: str) -> trading.ResumeResult:
        """``/rollback resume`` by an approver (core.resume): refused while any rollback is under way or while any
        model's files do not match its production row; in one transaction under the trading lock, rollbacks
        kept halted after verification resume and every holder of a closed incident lets go (manual halts, and
        failed rollbacks, whose trading stays halted until a person has looked and resumes it here)."""
        return resume_mod.resume_trading(self, user=user)

    def request_resume_override(self, *, user: str, allowed: bool = True) -> tuple[Incident, bool]:
        """An approver asks to resume on production files that do not match (a second approver confirms)."""
        return resume_mod.request_override(self, user=user, allowed=allowed)

    def approve_resume_override(self, *, incident_id: int, approver: str,
                                allowed: bool = True) -> tuple[Incident, trading.ResumeResult]:
        return resume_mod.approve_override(self, incident_id=incident_id, approver=approver, allowed=allowed)



JOBS_CHANNEL = repo.JOBS_CHANNEL
enqueue = repo.enqueue  # queue background work in the caller's transaction


def _still_locked(lock_conn: psycopg.Connection) -> None:
    """The executor's advisory lock lives as long as its session: check the session is still there."""
    try:
        lock_conn.execute("SELECT 1")
    except psycopg.Error:
        raise DatabaseUnavailable("PostgreSQL does not answer: the connection holding this rollback's lock was"
                                  " lost; stopping here so that recovery can take over") from None


def _clean_temporaries(folder: Path) -> None:
    """Remove leftovers of an interrupted atomic write (never visible under a real name)."""
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
