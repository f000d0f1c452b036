"""Runbook step 4b, the restore (journal step ``restore``, state ``restoring`` → ``recording``).

Both files of the approved backup replace the production ones, each with an atomic replace
(``core.modelio.atomic_copy``), after checking that the backup is still the one approved (its pinned checksums,
``core.integrity``) and, right before each file operation, that this process still holds the rollback's lock
(``core.fencing``). A file that is already the target's is left alone, so the step can run again after a crash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core import integrity
from core.incidents import RECORDING, Event, Incident
from core.modelio import METADATA_FILE, MODEL_FILE, atomic_copy, sha256_file
from core.runbook.journal import begin, clean_temporaries, finish_in

if TYPE_CHECKING:
    from core.engine import Engine

__all__ = ["NAME", "run"]

NAME = "restore"


def run(engine: Engine, inc: Incident, actor: str) -> Incident:
    """restoring → recording: the approved backup's files in place."""
    sid = begin(engine, inc, NAME, actor)
    fence = engine.executor.fence
    folder = engine.registry.model_dir(inc.model_name)
    source = engine.registry.backup_dir(inc.model_name, inc.target_backup)
    pins = integrity.pins_of(inc)
    fence(inc, "removing temporary files")
    clean_temporaries(folder)  # a copy interrupted by a crash in an earlier attempt
    integrity.check_pins(source, pins, what=f"Backup {inc.target_backup} changed on disk after approval")
    for name in (METADATA_FILE, MODEL_FILE):
        dst, src = folder / name, source / name
        if (dst.is_symlink() or not dst.exists()  # a link in place is replaced by a plain file
                or dst.stat().st_size != src.stat().st_size  # differ: no need to hash
                or sha256_file(dst) != sha256_file(src)):
            fence(inc, f"restoring {name}")
            atomic_copy(source / name, folder / name)
            engine.fault(f"restored:{name}")
    detail = {"from": inc.target_backup, "sha256": inc.target_sha256}
    with engine.db.transaction() as conn:
        new = engine.move(conn, engine.get(inc.id, conn, lock=True), RECORDING, step=(NAME, detail, None))
        finish_in(engine, conn, sid, "ok", detail)
    engine.publish(Event("step", new, NAME, detail, queued=True))
    engine.publish(Event("state", new))
    return new
