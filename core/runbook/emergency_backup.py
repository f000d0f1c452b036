"""Runbook step 4a, the emergency backup (journal step ``emergency_backup``, state ``backing_up`` → ``restoring``).

The production files are copied as they are (a corrupt or missing model.json included) into
``backup_emergency_<time>/``, which appears complete or not at all (``core.modelio.copy_folder_atomically``);
their checksums are recorded in the plan as the originals a revert puts back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import RollbackError
from core.incidents import RESTORING, Event, Incident
from core.modelio import METADATA_FILE, MODEL_FILE, MODEL_FILES, copy_folder_atomically, sha256_file
from core.registry import EMERGENCY_PREFIX
from core.runbook.journal import begin, clean_temporaries, finish_in

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["NAME", "name_for", "run"]

NAME = "emergency_backup"


def name_for(engine: Engine, inc: Incident) -> str:
    """A new emergency backup's folder name: ``backup_emergency_<time>`` (``_2``, ``_3``… if taken)."""
    folder = engine.registry.model_dir(inc.model_name)
    base = f"{EMERGENCY_PREFIX}{engine.clock():%Y-%m-%d_%H-%M-%S}"
    name, n = base, 1
    while (folder / name).exists():
        n += 1
        name = f"{base}_{n}"
    return name


def run(engine: Engine, inc: Incident, actor: str) -> Incident:
    """backing_up → restoring: the current model copied into backup_emergency_*/."""
    sid = begin(engine, inc, NAME, actor)
    fence = engine.executor.fence
    folder = engine.registry.model_dir(inc.model_name)
    dest = folder / inc.emergency_backup
    fence(inc, "removing temporary files")
    clean_temporaries(folder)
    present = [folder / f for f in MODEL_FILES if (folder / f).is_file()]
    if not dest.exists():
        fence(inc, "the emergency backup")
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
    with engine.db.transaction() as conn:
        cur = engine.get(inc.id, conn, lock=True)
        new = engine.move(conn, cur, RESTORING, step=(NAME, detail, None),
                          plan={**cur.plan, "original_sha256": sums[MODEL_FILE],
                                "original_metadata_sha256": sums[METADATA_FILE]})
        finish_in(engine, conn, sid, "ok", detail)
    engine.publish(Event("step", new, NAME, detail, queued=True))
    engine.publish(Event("state", new))
    return new
