"""Runbook step 5, verify (journal step ``verify``, state ``verifying`` → ``resuming``, or ``verified`` when the
rollback keeps trading halted).

The model in place is the approved backup (checksums of both files), loads with xgboost, has the metadata and
features checked at request time, and a prediction on the latest rows is finite and varies. A failure is
``VerificationFailed``, and the executor undoes the rollback (``core.runbook.revert``).

The parse is most of a rollback's machine time, so once trading is halted the approved backup's model is parsed
on a thread from its bytes while the backup, restore and record steps run (``ParseAhead``). Verification uses
that result only when the file in place has the same checksum.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from core import integrity
from core.errors import BackupCorrupt, RollbackError, VerificationFailed
from core.incidents import BACKING_UP, HALTED, RECORDING, RESTORING, RESUMING, VERIFIED, Event, Incident
from core.modelio import METADATA_FILE, MODEL_FILE, load_booster, load_booster_if_identical, read_metadata, sha256_file
from core.platform import feature_columns, feature_rows
from core.registry import ModelRegistry
from core.runbook.journal import begin, finish, finish_in
from core.runbook.preflight import check_prediction

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["NAME", "PARSE_AHEAD_STATES", "ParseAhead", "run", "verify_in_place"]

log = logging.getLogger("rollback_bot.engine")

NAME = "verify"
# Once trading is halted, the approved backup's model is parsed while these steps run (ParseAhead), on threads
# shared by every engine of the process (started on first use).
PARSE_AHEAD_STATES = frozenset({HALTED, BACKING_UP, RESTORING, RECORDING})
_PARSER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="model-parse")


class ParseAhead:
    """The approved backups' models parsed ahead, by incident id (one executor's, for one run each)."""

    def __init__(self) -> None:
        self._parsing: dict[int, Future] = {}

    def __contains__(self, incident_id: int) -> bool:
        return incident_id in self._parsing

    def start(self, inc: Incident, registry: ModelRegistry) -> None:
        """Parsing a large model.json is most of a rollback's machine time, and the halt, backup, restore and
        record steps mostly wait for PostgreSQL and the disk. So once trading is halted (the halt itself never
        shares the CPU with it), the approved backup's model is parsed on a thread of its own (xgboost parses
        outside Python's lock)."""
        if (inc.kind != "rollback" or inc.state not in PARSE_AHEAD_STATES or not inc.target_sha256
                or inc.id in self._parsing):
            return
        try:
            source = registry.backup_dir(inc.model_name, inc.target_backup) / MODEL_FILE
        except RollbackError:
            return  # the backup is gone or unusable: the steps themselves say so
        self._parsing[inc.id] = _PARSER.submit(load_booster_if_identical, source, inc.target_sha256,
                                               max_bytes=registry.max_model_bytes)

    def take(self, incident_id: int) -> Any:
        """The model parsed for this incident, waiting for it if need be; None if there is none."""
        parsing = self._parsing.pop(incident_id, None)
        if parsing is None:
            return None
        try:
            return parsing.result()
        except Exception:  # noqa: BLE001 - only an optimisation: verification loads the file in place instead
            log.exception("INC-%s: parsing the approved model ahead failed", incident_id)
            return None

    def drop(self, incident_id: int) -> None:
        self._parsing.pop(incident_id, None)


def run(engine: Engine, inc: Incident, actor: str) -> Incident:
    """verifying → resuming (or verified, to stay halted): the model in place is the approved one and works."""
    sid = begin(engine, inc, NAME, actor)
    try:
        detail = verify_in_place(engine, inc, parsed=engine.executor.parsed.take(inc.id))
    except RollbackError as exc:
        finish(engine, sid, "failed", error=str(exc))
        raise VerificationFailed(f"Verification failed: {exc}") from None
    with engine.db.transaction() as conn:
        cur = engine.get(inc.id, conn, lock=True)
        new = engine.move(conn, cur, VERIFIED if cur.keep_halted else RESUMING, step=(NAME, detail, None),
                          plan={**cur.plan, "verified_sha256": detail["sha256"]})
        finish_in(engine, conn, sid, "ok", detail)
    engine.publish(Event("step", new, NAME, detail, queued=True))
    engine.publish(Event("state", new))
    return new


def verify_in_place(engine: Engine, inc: Incident, *, parsed: Any = None) -> dict:
    """The model in place is the approved backup, loads with xgboost, has sane metadata and predicts.
    ``parsed``: that backup's model parsed from bytes with the approved checksum (``ParseAhead``); the
    file in place having the same checksum, it is the same model, and it is not parsed a second time."""
    registry = engine.registry
    folder = registry.model_dir(inc.model_name)
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
                                                                 max_bytes=registry.max_model_bytes)
    except BackupCorrupt as exc:
        raise VerificationFailed(str(exc)) from None
    if not pinned_meta:  # requested before metadata.json was pinned: compare with the backup's
        target_meta = read_metadata(registry.backup_dir(inc.model_name, inc.target_backup))
        if meta.model_dump() != target_meta.model_dump():
            raise VerificationFailed("metadata.json in place differs from the backup's")
    _check_feature_order(inc, booster, list(meta.features))
    with engine.db.transaction() as conn:
        available = feature_columns(conn)
        missing = [f for f in meta.features if f not in available]
        if missing:
            raise VerificationFailed(f"ml_training_features lacks {', '.join(missing[:8])}")
        day, _, rows = feature_rows(conn, meta.features)
    check_prediction(booster, meta.features, rows, what="Verification")
    return {"sha256": sha, "prediction_day": day.isoformat() if day else None, "rows": len(rows),
            "training_date": meta.training_date.isoformat(),
            "parsed": "ahead, from identical bytes" if parsed is not None else "from the file in place"}


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
