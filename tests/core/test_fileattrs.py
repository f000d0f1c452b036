"""core.fileattrs: model files the bot writes keep the owner, group and mode of the files they replace, and an
emergency backup matches its sibling backups, so the platform's account can still read every model after a
rollback, a reverted rollback and the quick fix that restores a corrupt model file.

The models belong to another user and a group (files 0640, folders 0750). The bot runs as root and as a
non-root member of the group (a real child process, tests/fileattrs_child.py, under setpriv),
against the real PostgreSQL with real XGBoost models; then the platform's account (another member of the
group, in a child process) reads every file. The accounts are made with groupadd/useradd for this test
session only and removed at its end (tests run as root, in CI too).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import assert_consistent, files_equal, trading_halted

ROOT = Path(__file__).resolve().parents[2]
MODEL = "growth_momentum_large"
PREFIX = "rbfa"  # accounts of this test: rbfa<pid>{m,o,b,p}
NOLOGIN = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false") if Path(s).exists()), "/bin/false")


# ------------------------------------------------------------------------------------------------ accounts


@dataclass(frozen=True)
class Accounts:
    group: str     # the platform's models group
    owner: str     # owns the model files (not in the group)
    bot: str       # the bot's account when not root: a member of the group
    platform: str  # the account the platform reads models as: a member of the group

    @property
    def gid(self) -> int:
        return grp.getgrnam(self.group).gr_gid

    def uid(self, user: str) -> int:
        return pwd.getpwnam(user).pw_uid


def _run(*argv: str) -> subprocess.CompletedProcess:
    """groupadd/useradd/userdel, retried while another process holds /etc/passwd's lock (exit 10)."""
    import time

    for _ in range(50):
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 10 and "lock" not in r.stderr:
            return r
        time.sleep(0.2)
    return r


def _exists(kind: str, name: str) -> bool:
    try:
        (pwd.getpwnam if kind == "user" else grp.getgrnam)(name)
        return True
    except KeyError:
        return False


def _remove_stale() -> None:
    """Accounts left by an earlier session of this test that was killed (its pid is gone)."""
    pattern = re.compile(rf"{PREFIX}(\d+)[mobp]")
    for entry in pwd.getpwall():
        m = pattern.fullmatch(entry.pw_name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _run("userdel", entry.pw_name)
    for entry in grp.getgrall():
        m = pattern.fullmatch(entry.gr_name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _run("groupdel", entry.gr_name)


@pytest.fixture(scope="session")
def accounts() -> Iterator[Accounts]:
    assert os.geteuid() == 0, "these tests create accounts and drop privileges: run them as root (CI does)"
    _remove_stale()
    base = f"{PREFIX}{os.getpid()}"
    acc = Accounts(group=f"{base}m", owner=f"{base}o", bot=f"{base}b", platform=f"{base}p")
    made_users, made_groups = [], []
    try:
        if not _exists("group", acc.group):
            r = _run("groupadd", acc.group)
            assert r.returncode == 0 or _exists("group", acc.group), r.stderr
            made_groups.append(acc.group)
        for user, groups in ((acc.owner, []), (acc.bot, [acc.group]), (acc.platform, [acc.group])):
            if not _exists("user", user):
                extra = ["-G", ",".join(groups)] if groups else []
                r = _run("useradd", "-M", "-U", "-s", NOLOGIN, *extra, user)
                assert r.returncode == 0 or _exists("user", user), r.stderr
                made_users.append(user)
        yield acc
    finally:
        for user in made_users:
            _run("userdel", user)  # removes the user's own group too (USERGROUPS_ENAB)
            if _exists("group", user):
                _run("groupdel", user)
        for group in made_groups:
            _run("groupdel", group)


@pytest.fixture
def shared(tmp_path) -> Iterator[Path]:
    """A folder every account can reach (pytest's own temporary folders are root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="rbfa-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ helpers


def rights(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {".": rights(root)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = rights(p)
    return out


def hand_to_platform(models: Path, acc: Accounts, *, writable: Path | None = None) -> None:
    """Every file and folder to the owner and the group: files 0640, folders 0750 (``writable``: 0770, where a
    non-root bot, a member of the group, must create files)."""
    uid, gid = acc.uid(acc.owner), acc.gid
    for p in [models, *models.rglob("*")]:
        os.chown(p, uid, gid, follow_symlinks=False)
        os.chmod(p, 0o750 if p.is_dir() else 0o640)
    if writable is not None:
        os.chmod(writable, 0o770)


def platform_reads_everything(models: Path, acc: Accounts) -> None:
    """The platform's account lists every folder and reads every file, in a child process of its own."""
    files = sorted(str(p) for p in models.rglob("*") if p.is_file())
    folders = sorted(str(p) for p in [models, *models.rglob("*")] if p.is_dir())
    pw = pwd.getpwnam(acc.platform)
    r = subprocess.run(
        ["sh", "-c", 'for d in $FOLDERS; do ls -- "$d" >/dev/null || exit 1; done; cat -- "$@" >/dev/null', "sh",
         *files],
        env={"PATH": "/usr/bin:/bin", "FOLDERS": " ".join(folders)}, user=pw.pw_uid, group=pw.pw_gid,
        extra_groups=[acc.gid], capture_output=True, text=True, cwd="/",
    )
    assert r.returncode == 0 and not r.stderr, f"{acc.platform} cannot read the models: {r.stderr}"


def run_bot(user: str, *args: str) -> dict:
    """tests/fileattrs_child.py as root, or as ``user`` with its own groups and no privilege but one:
    CAP_DAC_READ_SEARCH (read any file), so that Python can import its standard library wherever it is installed
    (under /root, 0700, here). Writing, chown and chmod are then exactly those of a non-root user; what the
    platform can read is checked by another process with no capability at all."""
    argv = [sys.executable, "-m", "tests.fileattrs_child", *args]
    if user != "root":
        argv = [shutil.which("setpriv") or "setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}",
                "--init-groups", "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--", *argv]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


SCENARIOS = {
    "rollback": ([], "monitoring"),
    "reverted rollback": (["--corrupt-after-restore"], "failed"),
    "quick fix restoring a corrupt model.json": (["--quick-fix"], "monitoring"),
}


# --------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("as_root", [True, False], ids=["bot as root", "bot as a group member"])
def test_written_model_files_keep_their_rights(world, conn, database_url, accounts, shared, scenario, as_root):
    extra, expected = SCENARIOS[scenario]
    models = shared / "models"
    shutil.copytree(world.models_dir, models, symlinks=True)
    folder = models / MODEL
    original = assert_consistent(conn, models, MODEL)
    target = world.models[MODEL].backups[0].name
    assert target != original
    if "--quick-fix" in extra:  # corrupt in place: the file keeps its inode, owner, group and mode
        with open(folder / "model.json", "r+b") as fh:
            fh.truncate(100)
    hand_to_platform(models, accounts, writable=None if as_root else folder)
    before = snapshot(models)
    platform_reads_everything(models, accounts)

    bot = "root" if as_root else accounts.bot
    out = run_bot(bot, "rollback", "--db", database_url, "--models", str(models), "--incidents",
                  str(shared / "incidents"), "--model", MODEL, "--backup", target, *extra)
    assert out["state"] == expected, out
    assert out["euid"] == (0 if as_root else accounts.uid(accounts.bot))
    if expected == "monitoring":
        assert files_equal(folder, folder / out["backup"])
    else:
        assert trading_halted(conn) and "Verification failed" in out["error"]
        assert assert_consistent(conn, models, MODEL) == original

    after = snapshot(models)
    emergency = out["emergency_backup"]
    assert emergency and (folder / emergency).is_dir()
    rewritten = {f"{MODEL}/model.json", f"{MODEL}/metadata.json"}
    bot_uid = accounts.uid(accounts.bot)
    for path, (mode, uid, gid) in before.items():
        assert path in after, f"{path} is gone"
        got_mode, got_uid, got_gid = after[path]
        assert (got_mode, got_gid) == (mode, gid), f"{path}: {got_mode:04o} gid {got_gid}, was {mode:04o} gid {gid}"
        if as_root or path not in rewritten:
            assert got_uid == uid, f"{path}: owner {got_uid}, was {uid}"
        else:  # a non-root bot cannot give a file away: it is the bot's, with the group and mode kept
            assert got_uid in (uid, bot_uid), f"{path}: owner {got_uid}"
    # the emergency backup matches its sibling backups: folder 0750, files 0640, the owner's (root) or the bot's
    sibling = f"{MODEL}/{target}"
    want_uid = accounts.uid(accounts.owner) if as_root else bot_uid
    assert after[f"{MODEL}/{emergency}"] == (before[sibling][0], want_uid, accounts.gid)
    for name in ("model.json", "metadata.json"):
        assert after[f"{MODEL}/{emergency}/{name}"] == (before[f"{sibling}/{name}"][0], want_uid, accounts.gid)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    platform_reads_everything(models, accounts)


def test_a_file_that_did_not_exist_takes_its_siblings_or_its_folders_rights(accounts, shared):
    from core.modelio import atomic_copy, copy_folder_atomically

    uid, gid = accounts.uid(accounts.owner), accounts.gid
    src = shared / "src"
    src.mkdir()
    (src / "model.json").write_text('{"m": 1}')
    (src / "metadata.json").write_text('{"d": 1}')
    folder = shared / "m"
    folder.mkdir()
    os.chown(folder, uid, gid)
    os.chmod(folder, 0o750)
    atomic_copy(src / "model.json", folder / "model.json")  # nothing in place: the folder's, less execute bits
    assert rights(folder / "model.json") == (0o640, uid, gid)
    os.chmod(folder / "model.json", 0o644)
    atomic_copy(src / "metadata.json", folder / "metadata.json")  # the other model file's
    assert rights(folder / "metadata.json") == (0o644, uid, gid)
    # a first backup (no sibling backup): the model folder's rights, and its files those of the files it copies
    copy_folder_atomically([folder / "model.json", folder / "metadata.json"], folder / "backup_emergency_x")
    assert rights(folder / "backup_emergency_x") == (0o750, uid, gid)
    assert rights(folder / "backup_emergency_x" / "model.json") == (0o644, uid, gid)
    assert rights(folder / "backup_emergency_x" / "metadata.json") == (0o644, uid, gid)
    platform_reads_everything(folder, accounts)


@pytest.mark.parametrize("mode, owner", [(0o640, "group"), (0o600, "owner")])
def test_rights_that_cannot_be_kept_refuse_the_write(accounts, shared, mode, owner):
    """A non-root bot outside the file's group (or a file only its owner reads): writing it would lock the
    platform out, so nothing is written and the file in place is untouched."""
    bot = accounts.owner  # not a member of the models group
    folder = shared / "m"
    folder.mkdir()
    os.chown(folder, accounts.uid(bot), accounts.uid(bot))  # the bot may create files here
    (folder / "new.json").write_text('{"new": 1}')
    os.chown(folder / "new.json", accounts.uid(bot), -1)
    dst = folder / "model.json"
    dst.write_text('{"old": 1}')
    os.chown(dst, accounts.uid(accounts.platform), accounts.gid)
    os.chmod(dst, mode)
    before = rights(dst), dst.read_text(), dst.stat().st_ino
    out = run_bot(bot, "copy", str(folder / "new.json"), str(dst))
    assert out["error"] == "RightsNotKept", out
    assert owner in out["message"] and "not written" in out["message"], out["message"]
    assert (rights(dst), dst.read_text(), dst.stat().st_ino) == before
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "new.json"]  # no temporary left
