"""Tests of bot.devtools.localpg, the project's self-provisioned private PostgreSQL.

Each test cluster lives under its own temporary project root (never the
project's own .local/pg) and is destroyed at the end.  As root, pytest's
tmp_path (under /tmp/pytest-of-root, mode 700) is not reachable by the
``postgres`` user, so the shared cluster also exercises the /tmp fallback.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from bot.devtools import localpg

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0

@pytest.fixture(scope="module")
def pg_root(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("localpg-root")
    cl = localpg.ensure(root=root)
    yield root
    localpg.cluster(root).destroy()
    assert not cl.is_running()


@pytest.fixture
def pg(pg_root: Path) -> localpg.LocalCluster:
    return localpg.ensure(root=pg_root)


def test_ensure_is_idempotent(pg_root: Path) -> None:
    first = localpg.ensure(root=pg_root)
    pid = first.pid()
    second = localpg.ensure(root=pg_root)
    assert second.port == first.port
    assert second.is_running()
    assert second.pid() == pid
    assert (second.base_dir / "port").read_text().strip() == str(first.port)
    assert first.url() == f"postgresql://rollback_bot@127.0.0.1:{first.port}/rollback_bot"
    assert first.superuser_url() == f"postgresql://postgres@127.0.0.1:{first.port}/postgres"
    if IS_ROOT:
        assert second.base_dir.stat().st_uid == pwd.getpwnam("postgres").pw_uid
        # pytest's tmp root is mode 700 for root: the cluster lives in the /tmp fallback.
        link = pg_root / ".local" / "pg"
        assert link.is_symlink()
        assert Path(os.readlink(link)) == second.base_dir
        assert second.base_dir.name.startswith("rollback-bot-pg-")


def test_role_is_not_superuser(pg: localpg.LocalCluster) -> None:
    with psycopg.connect(pg.url()) as conn:
        user, rolsuper, createdb, createrole = conn.execute(
            "SELECT current_user, rolsuper, rolcreatedb, rolcreaterole"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert user == "rollback_bot"
        assert rolsuper is False
        assert createdb is True
        assert createrole is False
        # PostgreSQL 15: only the database owner may create in schema public.
        conn.execute("CREATE TABLE owner_can_create (id int)")
        conn.rollback()


def test_listens_on_loopback_with_trust_only(pg: localpg.LocalCluster) -> None:
    with psycopg.connect(pg.superuser_url()) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
        assert conn.execute("SHOW port").fetchone()[0] == str(pg.port)
        # durability defaults are kept (the product tests crash safety)
        assert conn.execute("SHOW fsync").fetchone()[0] == "on"
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        assert conn.execute("SHOW max_connections").fetchone()[0] == "200"


def test_create_and_drop_database(pg: localpg.LocalCluster) -> None:
    url = pg.create_database("localpg_extra")
    assert url == pg.url("localpg_extra")
    assert pg.create_database("localpg_extra") == url  # idempotent
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE t (id int)")
        assert conn.execute("SELECT current_database()").fetchone()[0] == "localpg_extra"
    pg.drop_database("localpg_extra")
    with psycopg.connect(pg.superuser_url()) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = 'localpg_extra'"
        ).fetchone()[0] == 0
    pg.drop_database("localpg_extra")  # missing_ok


def test_ensure_creates_requested_databases(pg_root: Path) -> None:
    cl = localpg.ensure(("localpg_a", "localpg_b"), root=pg_root)
    assert cl.url() == cl.url("localpg_a")
    for name in ("localpg_a", "localpg_b"):
        with psycopg.connect(cl.url(name)) as conn:
            owner = conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
            ).fetchone()[0]
            assert owner == "rollback_bot"


def test_stop_and_start_keep_data_and_port(pg: localpg.LocalCluster) -> None:
    url = pg.create_database("localpg_keep")
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('survives')")
    port = pg.port
    assert pg.stop() is True
    assert not pg.is_running()
    assert pg.stop() is False  # already stopped
    pg.start()
    assert pg.is_running() and pg.port == port
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("survives",)]
    old_pid = pg.pid()
    pg.restart()
    assert pg.is_running() and pg.port == port and pg.pid() != old_pid
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone()[0] == 1
    # ensure() after a stop restarts on the stored port
    pg.stop()
    again = localpg.ensure(root=pg.root)
    assert again.port == port and again.is_running()


def test_ensure_recovers_after_postmaster_is_killed(pg: localpg.LocalCluster) -> None:
    url = pg.create_database("localpg_crash")
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS committed (v int)")
        conn.execute("INSERT INTO committed VALUES (1)")
    pg.stop("immediate")  # SIGQUIT: no shutdown checkpoint, crash recovery on start
    again = localpg.ensure(root=pg.root)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM committed").fetchone()[0] >= 1
    assert again.port == pg.port


def test_taken_port_moves_cluster(pg: localpg.LocalCluster) -> None:
    old = pg.port
    pg.stop()
    with socket.socket() as squatter:
        # The server's connections may leave the port in TIME_WAIT for a while; a listener still takes it.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old))
        squatter.listen()
        with pytest.raises(localpg.LocalPGError, match="in use"):
            pg.start()  # start() keeps the port the caller already holds URLs for
        moved = localpg.ensure(root=pg.root)  # ensure() picks another one
    assert moved.port != old and moved.is_running()
    assert (moved.base_dir / "port").read_text().strip() == str(moved.port)


def test_cli_ensure_prints_one_line(pg_root: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "bot.devtools.localpg", *args, "--root", str(pg_root)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )

    result = cli("ensure", "--db", "localpg_cli", "--db", "localpg_cli2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    cl = localpg.cluster(pg_root)
    assert lines == [cl.url("localpg_cli")]
    assert cli("url", "--db", "x").stdout.strip() == cl.url("x")
    status = cli("status")
    assert status.returncode == 0 and "running" in status.stdout
    assert cli("stop").returncode == 0
    assert cli("status").returncode == 3
    assert cli("ensure").stdout.strip() == cl.url("rollback_bot")


def test_accessible_root_keeps_cluster_in_place() -> None:
    root = Path(tempfile.mkdtemp(prefix="localpg-open-", dir="/tmp"))
    root.chmod(0o755)
    try:
        cl = localpg.ensure(root=root)
        base = root / ".local" / "pg"
        assert not base.is_symlink() and cl.base_dir == base
        assert cl.data_dir == base / "data" and cl.socket_dir == base / "run"
        assert cl.log_file == base / "postgres.log" and cl.log_file.exists()
        if IS_ROOT:
            assert base.stat().st_uid == pwd.getpwnam("postgres").pw_uid
            assert stat.S_IMODE(cl.data_dir.stat().st_mode) == 0o700
        with psycopg.connect(cl.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        localpg.cluster(root).destroy()
        shutil.rmtree(root, ignore_errors=True)


def _python_for(user: str) -> tuple[str, str] | None:
    """A python that ``user`` can run with psycopg importable: (interpreter, PYTHONPATH)."""
    site = str(Path(psycopg.__file__).resolve().parent.parent)
    for python in (sys.executable, "/usr/bin/python3"):
        if not os.path.exists(python):
            continue
        try:
            probe = subprocess.run(
                [python, "-c", "import psycopg"], user=user, group=pwd.getpwnam(user).pw_gid,
                extra_groups=[], cwd="/", env={"PYTHONPATH": site, "PATH": os.environ.get("PATH", "")},
                capture_output=True, timeout=60,
            )
        except OSError:  # e.g. the interpreter lives under /root (mode 700)
            continue
        if probe.returncode == 0:
            return python, site
    return None


@pytest.mark.skipif(not IS_ROOT, reason="needs root to switch to another user")
def test_cli_as_ordinary_user() -> None:
    user = "nobody"
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        pytest.fail("no 'nobody' user to run the CLI as an ordinary user")
    found = _python_for(user)
    if found is None:
        pytest.fail("no python with psycopg that 'nobody' can run")
    python, site = found
    root = Path(tempfile.mkdtemp(prefix="localpg-nonroot-", dir="/tmp"))
    (root / "bot" / "devtools").mkdir(parents=True)
    (root / "bot" / "__init__.py").write_text("")
    (root / "bot" / "devtools" / "__init__.py").write_text("")
    shutil.copytree(REPO / "bot" / "devtools" / "localpg", root / "bot" / "devtools" / "localpg")
    (root / "core").mkdir()  # the one runtime module localpg uses (pid_exists)
    (root / "core" / "__init__.py").write_text("")
    shutil.copy(REPO / "core" / "process.py", root / "core" / "process.py")
    for path in [root, *root.rglob("*")]:
        os.chown(path, pw.pw_uid, pw.pw_gid)
    env = {"PYTHONPATH": site, "PATH": os.environ.get("PATH", ""), "HOME": str(root)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [python, "-m", "bot.devtools.localpg", *args], cwd=root, env=env, user=pw.pw_uid,
            group=pw.pw_gid, extra_groups=[], capture_output=True, text=True, timeout=120,
        )

    try:
        result = cli("ensure")
        assert result.returncode == 0, result.stderr
        url = result.stdout.strip()
        data = root / ".local" / "pg" / "data"
        assert data.stat().st_uid == pw.pw_uid  # initdb/postgres ran as the user itself
        with psycopg.connect(url) as conn:
            assert conn.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone() == (False,)
        assert cli("stop").returncode == 0
        assert cli("status").returncode == 3
    finally:
        cli("destroy")
        shutil.rmtree(root, ignore_errors=True)


def test_missing_binaries_without_root_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localpg.binaries, "_locate_bindir", lambda prefer_major=None: None)
    monkeypatch.setattr(localpg.os, "geteuid", lambda: 1000)
    with pytest.raises(localpg.LocalPGError, match="not found"):
        localpg.find_bindir()
