"""core.fileguard and the name checks of core.registry: hostile backup files and names are refused with a clear
message before anything changes (no incident, no halt, no emergency backup), and reading them never blocks,
follows a link or recurses without bound. Against a real PostgreSQL and real XGBoost models."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from core.errors import BackupCorrupt, ConfigError, InvalidName, PreflightFailed
from core.modelio import read_metadata
from core.registry import ModelRegistry, validate_name
from tests.helpers import trading_halted

MODEL = "growth_momentum_large"
HOSTILE = "backup_zz_hostile"


def target_of(services) -> str:
    return services.registry.recommend(MODEL).backup.name


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size and mtime, links not followed (a FIFO is never opened)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


def hostile_copy(world, services, name: str = HOSTILE) -> Path:
    """A copy of the recommended (valid) backup under a new name, to be spoiled by the test."""
    src = world.models_dir / MODEL / target_of(services)
    dest = world.models_dir / MODEL / name
    dest.mkdir()
    for f in ("model.json", "metadata.json"):
        shutil.copy2(src / f, dest / f)
    return dest


def assert_refused_and_nothing_changed(services, conn, before, *, backup: str = HOSTILE, match: str) -> str:
    """request_rollback(backup) is refused with a message matching ``match``; nothing changed."""
    with pytest.raises((PreflightFailed, BackupCorrupt, InvalidName)) as info:
        run_bounded(lambda: services.engine.request_rollback(model=MODEL, backup=backup, reason="hostile file",
                                                             requested_by="U0ALICE"))
    message = str(info.value)
    assert match in message, message
    assert "Traceback" not in message and len(message) < 600
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.incidents").fetchone()["n"] == 0
    assert not trading_halted(conn)
    assert snapshot(services.settings.models_dir) == before
    return message


def run_bounded(call, timeout: float = 30.0, fifo: Path | None = None):
    """Run ``call`` on a thread; a call still blocked after ``timeout`` (reading a FIFO) fails the test. The
    FIFO is then opened for writing and closed, which lets the blocked reader go."""
    result: dict = {}

    def target():
        try:
            result["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if fifo is not None:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        thread.join(10)
        pytest.fail(f"the call blocked for more than {timeout:.0f} s (it opened a FIFO for reading)")
    if "error" in result:
        raise result["error"]
    return result["value"]


# ------------------------------------------------------------------------------------------------ names


@pytest.mark.parametrize("name", ["backup_x\n", "growth_momentum_large\n"])
def test_names_must_match_whole(name):
    with pytest.raises(InvalidName, match="Invalid backup name"):
        validate_name(name, "backup")


def test_a_backup_folder_named_with_a_final_newline_is_neither_listed_nor_a_target(services, world, conn):
    """A folder "backup_…\\n" on disk passed the old check (``$`` matches before a final newline): it was
    listed, recommended and could be rolled back to."""
    folder = hostile_copy(world, services, target_of(services) + "_copy\n")
    before = snapshot(world.models_dir)
    assert folder.name not in [b.name for b in services.registry.list_backups(MODEL)]
    assert_refused_and_nothing_changed(services, conn, before, backup=folder.name, match="Invalid backup name")


# --------------------------------------------------------------------------------- links, FIFOs, devices


def test_a_symlinked_backup_folder_is_refused(services, world, conn):
    """A link to a valid backup inside MODELS_DIR: it stays inside, but a backup must be a real folder."""
    link = world.models_dir / MODEL / HOSTILE
    link.symlink_to(world.models_dir / MODEL / target_of(services), target_is_directory=True)
    before = snapshot(world.models_dir)
    info = {b.name: b for b in services.registry.list_backups(MODEL)}[HOSTILE]
    assert not info.usable and "symbolic link" in info.problems[0]
    assert services.registry.recommend(MODEL).backup.name != HOSTILE
    assert_refused_and_nothing_changed(services, conn, before, match="symbolic link")


@pytest.mark.parametrize("spoiled", ["model.json", "metadata.json"])
def test_a_symlinked_backup_file_is_refused(services, world, conn, spoiled):
    """The link leads to the very bytes of a valid backup (inside MODELS_DIR): a backup holds files, not links."""
    folder = hostile_copy(world, services)
    (folder / spoiled).unlink()
    (folder / spoiled).symlink_to(world.models_dir / MODEL / target_of(services) / spoiled)
    before = snapshot(world.models_dir)
    info = {b.name: b for b in services.registry.list_backups(MODEL)}[HOSTILE]
    assert not info.usable and any("symbolic link" in p for p in info.problems), info.problems
    message = assert_refused_and_nothing_changed(services, conn, before, match="symbolic link")
    assert spoiled in message


@pytest.mark.parametrize("spoiled", ["model.json", "metadata.json"])
def test_a_fifo_in_a_backup_is_refused_without_blocking(services, world, conn, spoiled):
    folder = hostile_copy(world, services)
    (folder / spoiled).unlink()
    os.mkfifo(folder / spoiled)
    before = snapshot(world.models_dir)
    backups = run_bounded(lambda: services.registry.list_backups(MODEL), fifo=folder / spoiled)
    info = {b.name: b for b in backups}[HOSTILE]
    assert not info.usable and any("FIFO" in p for p in info.problems), info.problems
    with pytest.raises(PreflightFailed, match=f"{spoiled} is refused: it is a FIFO"):
        run_bounded(lambda: services.engine.request_rollback(model=MODEL, backup=HOSTILE, reason="r",
                                                             requested_by="U0ALICE"), fifo=folder / spoiled)
    assert conn.execute("SELECT count(*) AS n FROM rollback_bot.incidents").fetchone()["n"] == 0
    assert not trading_halted(conn) and snapshot(world.models_dir) == before


@pytest.mark.parametrize("spoiled", ["model.json", "metadata.json"])
def test_a_device_in_a_backup_is_refused(services, world, conn, spoiled):
    folder = hostile_copy(world, services)
    (folder / spoiled).unlink()
    os.mknod(folder / spoiled, stat.S_IFCHR | 0o644, os.makedev(1, 3))  # /dev/null: reads as empty
    before = snapshot(world.models_dir)
    message = assert_refused_and_nothing_changed(services, conn, before, match="character device")
    assert f"{spoiled} is refused" in message


def test_a_backup_file_turned_into_a_link_after_approval_stops_before_the_halt(services, world, conn):
    """Swapped for a link to identical bytes between approval and execution: pre-flight again refuses it."""
    target = target_of(services)
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    elsewhere = world.models_dir / MODEL / ".elsewhere.json"
    model_file = world.models_dir / MODEL / target / "model.json"
    shutil.copy2(model_file, elsewhere)
    model_file.unlink()
    model_file.symlink_to(elsewhere)
    done = services.engine.execute(inc.id)
    assert done.state == "failed" and "symbolic link" in done.error, done.error
    assert not trading_halted(conn)
    assert not any(p.name.startswith("backup_emergency_") for p in (world.models_dir / MODEL).iterdir())


# ------------------------------------------------------------------------------------------ oversized


def test_an_oversized_model_is_refused(settings, db, world, conn):
    from bot.compose import build_services

    services = build_services(settings.model_copy(update={"max_model_bytes": 4096}), db)
    big = world.models_dir / MODEL / target_of(build_services(settings, db)) / "model.json"
    assert big.stat().st_size > 4096
    before = snapshot(world.models_dir)
    assert services.registry.recommend(MODEL).backup is None  # every backup's model.json is over the limit
    message = assert_refused_and_nothing_changed(services, conn, before, backup=big.parent.name,
                                                 match="over the limit of 4096 bytes (MAX_MODEL_BYTES)")
    assert "model.json is refused" in message


def test_max_model_bytes_is_a_setting(monkeypatch):
    from core.settings import Settings, load_settings

    assert Settings(_env_file=None).max_model_bytes == 512 * 1024 * 1024
    monkeypatch.setenv("MAX_MODEL_BYTES", "1048576")
    assert Settings(_env_file=None).max_model_bytes == 1048576
    monkeypatch.setenv("MAX_MODEL_BYTES", "lots")
    with pytest.raises(ConfigError, match="MAX_MODEL_BYTES is malformed"):
        load_settings(_env_file=None)


def test_read_regular_stops_at_the_limit_even_when_the_file_grows(tmp_path):
    from core.fileguard import UnsafeFile, read_regular

    path = tmp_path / "grows"
    path.write_bytes(b"x" * 100)
    assert len(read_regular(path, max_bytes=100)) == 100
    with pytest.raises(UnsafeFile, match="over the limit of 99 bytes"):
        read_regular(path, max_bytes=99)


# ------------------------------------------------------------------------------------- deep nesting


@pytest.mark.parametrize("depth", [200, 100_000])
def test_deeply_nested_metadata_is_a_clean_backup_corrupt(services, world, conn, depth):
    """100 000 levels made json raise RecursionError; 200 levels parsed, and went on into validation."""
    folder = hostile_copy(world, services)
    meta = json.loads((folder / "metadata.json").read_text())
    text = json.dumps(meta)[:-1] + ', "extra": ' + "[" * depth + "]" * depth + "}"
    (folder / "metadata.json").write_text(text)
    with pytest.raises(BackupCorrupt, match="nests"):
        read_metadata(folder)
    before = snapshot(world.models_dir)
    info = {b.name: b for b in ModelRegistry(world.models_dir).list_backups(MODEL)}[HOSTILE]
    assert not info.usable and "nests" in info.problems[0]
    assert_refused_and_nothing_changed(services, conn, before, match="nests")


def test_metadata_with_an_endless_number_is_a_clean_backup_corrupt(services, world):
    folder = hostile_copy(world, services)
    meta = json.loads((folder / "metadata.json").read_text())
    text = json.dumps(meta)[:-1] + ', "extra": ' + "9" * 50_000 + "}"
    (folder / "metadata.json").write_text(text)
    with pytest.raises(BackupCorrupt, match="not valid JSON"):
        read_metadata(folder)
