"""Running the server: initdb, the managed settings, starting (port choice, stale pid files, orphaned backends)
and stopping the postmaster."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bot.devtools.localpg.binaries import find_bindir
from bot.devtools.localpg.common import (
    _LOG_ROTATE_BYTES, _SHUTDOWN_SIGNALS, HOST, MANAGED_CONF, SUPERUSER, LocalPGError, _children, log,
)
from bot.devtools.localpg.osuser import _OsUser
from bot.devtools.localpg.processes import (
    _is_our_postmaster, _log_tail, _pick_port, _pid_alive, _port_free, _processes_in, _read_pidfile,
)
from core.process import pid_exists

if TYPE_CHECKING:
    from bot.devtools.localpg.localcluster import LocalCluster


def _read_port(base: Path) -> int | None:
    try:
        port = int((base / "port").read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def _write_port(cl: LocalCluster, user: _OsUser) -> None:
    tmp = cl.port_file.with_name(f"port.tmp{os.getpid()}")
    tmp.write_text(f"{cl.port}\n")
    user.chown(tmp)
    os.replace(tmp, cl.port_file)


def _run_as(user: _OsUser, cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd,
        cwd=str(cwd),
        env=user.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        **user.popen_kwargs(),
    )


def _initdb(cl: LocalCluster, user: _OsUser) -> bool:
    """Create the cluster if there is none; returns True if it did."""
    if cl.is_initialized():
        return False
    if cl.data_dir.exists():
        if any(cl.data_dir.iterdir()):
            raise LocalPGError(f"{cl.data_dir} exists but is not a PostgreSQL cluster; remove it")
        cl.data_dir.rmdir()
    assert cl.bindir is not None
    staging = cl.base_dir / "data.init"  # renamed to data/ once complete, so data/ is never half-made
    shutil.rmtree(staging, ignore_errors=True)
    log.info("initialising PostgreSQL cluster in %s (as OS user %s)", cl.data_dir, user.name)
    cmd = [
        str(cl.bindir / "initdb"),
        "-D", str(staging),
        "-A", "trust",
        "-U", SUPERUSER,
        "-E", "UTF8",
        "--locale=C",
        "--no-sync",
    ]
    result = _run_as(user, cmd, cl.base_dir, timeout=300)
    with open(cl.log_file, "a") as fh:
        fh.write(f"---- initdb ----\n{result.stdout}{result.stderr}")
    user.chown(cl.log_file)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise LocalPGError(f"initdb failed (exit {result.returncode}):\n{tail}")
    hba = staging / "pg_hba.conf"
    hba.write_text(
        "# Managed by bot/devtools/localpg.py: private development/test cluster.\n"
        "# trust over the unix socket and 127.0.0.1 only (the server listens on 127.0.0.1 only).\n"
        "# TYPE  DATABASE     USER  ADDRESS        METHOD\n"
        "local   all          all                  trust\n"
        "host    all          all   127.0.0.1/32   trust\n"
        "local   replication  all                  trust\n"
        "host    replication  all   127.0.0.1/32   trust\n"
    )
    with open(staging / "postgresql.conf", "a") as fh:
        fh.write(f"\n# Managed settings (port, sockets, ...), rewritten at every start.\ninclude '{MANAGED_CONF}'\n")
    os.rename(staging, cl.data_dir)
    return True


def _write_managed_conf(cl: LocalCluster, user: _OsUser) -> None:
    def q(value: object) -> str:
        return "'" + str(value).replace("'", "''") + "'"

    path = cl.data_dir / MANAGED_CONF
    tmp = path.with_name(MANAGED_CONF + ".tmp")
    tmp.write_text(
        "# Managed by bot/devtools/localpg.py and rewritten at every start: do not edit.\n"
        f"listen_addresses = {q(HOST)}\n"
        f"port = {cl.port}\n"
        f"unix_socket_directories = {q(cl.socket_dir)}\n"
        "max_connections = 200\n"
    )
    user.chown(tmp)
    os.replace(tmp, path)


def _remove_stale_socket_locks(cl: LocalCluster) -> None:
    """Remove socket lock files left in our private socket dir by a postmaster that is gone."""
    for lock in cl.socket_dir.glob(".s.PGSQL.*.lock"):
        try:
            pid = int(lock.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            continue
        if not _is_our_postmaster(pid, cl.data_dir):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            with contextlib.suppress(FileNotFoundError):
                lock.with_suffix("").unlink()  # the socket itself


def _rotate_log(cl: LocalCluster) -> None:
    with contextlib.suppress(OSError):
        if cl.log_file.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(cl.log_file, cl.log_file.with_name("postgres.log.1"))


def _spawn(cl: LocalCluster, user: _OsUser) -> subprocess.Popen:
    assert cl.bindir is not None
    with open(cl.log_file, "ab") as logf:
        user.chown(cl.log_file)
        proc = subprocess.Popen(
            [str(cl.bindir / "postgres"), "-D", str(cl.data_dir)],
            cwd=str(cl.base_dir),
            env=user.env(),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives make's exit, no terminal SIGINT
            close_fds=True,
            **user.popen_kwargs(),
        )
    _children[proc.pid] = proc
    return proc


def _pidfile_status(data_dir: Path) -> str | None:
    """Line 8 of postmaster.pid: "starting", "stopping", "ready" or "standby" (None if absent)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    return lines[7].strip() if len(lines) > 7 else None


def _wait_ready(cl: LocalCluster, pid: int, deadline: float) -> str:
    while True:
        if not _pid_alive(pid):
            return "exited"
        # Only try to connect once the postmaster says it is ready: avoids a
        # "the database system is starting up" FATAL in the log for every poll.
        if _pidfile_status(cl.data_dir) in ("ready", "standby") and cl._accepts_connections():
            return "ready"
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(0.03)


def _start(cl: LocalCluster, user: _OsUser, timeout: float, allow_port_change: bool) -> bool:
    """Start the server unless running; returns True if it started it."""
    deadline = time.monotonic() + timeout
    info = _read_pidfile(cl.data_dir)
    if info is not None and _is_our_postmaster(info[0], cl.data_dir):
        if info[1] is not None:
            cl.port = info[1]
        status = _wait_ready(cl, info[0], deadline)  # e.g. still in crash recovery
        if status == "ready":
            return False
        if status == "timeout":
            raise LocalPGError(
                f"PostgreSQL (pid {info[0]}) runs but does not accept connections after "
                f"{timeout:.0f}s; last lines of {cl.log_file}:\n{_log_tail(cl.log_file)}"
            )
        info = None
    if info is not None:
        # postmaster.pid of a postmaster that is gone (killed, crashed, machine restarted).
        # First let orphaned backends of a killed postmaster exit: they still use the
        # data directory and its shared memory.
        while _processes_in(cl.data_dir):
            if time.monotonic() > deadline:
                raise LocalPGError(
                    f"processes {_processes_in(cl.data_dir)} still use {cl.data_dir} although "
                    "its postmaster is gone; stop them first"
                )
            time.sleep(0.05)
        if pid_exists(info[0]):
            # The pid is a zombie nobody reaps (PID 1 of some containers) or now belongs to
            # an unrelated process: the postmaster would refuse to start ("lock file
            # already exists").  Nothing uses the data directory any more, so drop the file.
            log.info("removing stale postmaster.pid (pid %s is not a live postmaster)", info[0])
            with contextlib.suppress(FileNotFoundError):
                (cl.data_dir / "postmaster.pid").unlink()
    _remove_stale_socket_locks(cl)
    if cl.bindir is None:
        cl.bindir = find_bindir(prefer_major=_cluster_major(cl))
    tried: list[int] = []
    while True:
        if cl.port is None or (not _port_free(cl.port) and allow_port_change):
            old = cl.port
            cl.port = _pick_port(exclude=tried)
            if old is not None:
                log.info("port %s is taken: moving the cluster to port %s", old, cl.port)
        elif not _port_free(cl.port):
            raise LocalPGError(f"port {cl.port} on {HOST} is in use by another process")
        _write_port(cl, user)
        _write_managed_conf(cl, user)
        _rotate_log(cl)
        offset = cl.log_file.stat().st_size if cl.log_file.exists() else 0
        log.info("starting PostgreSQL on %s:%s (data %s)", HOST, cl.port, cl.data_dir)
        proc = _spawn(cl, user)
        status = _wait_ready(cl, proc.pid, deadline)
        if status == "ready":
            return True
        output = _log_tail(cl.log_file, offset)
        if status == "timeout":
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            raise LocalPGError(
                f"PostgreSQL did not accept connections within {timeout:.0f}s; "
                f"last lines of {cl.log_file}:\n{output}"
            )
        if ("could not bind" in output or "Address already in use" in output) and allow_port_change and len(tried) < 5:
            tried.append(cl.port)
            cl.port = None
            continue
        if ("shared memory block is still in use" in output or "lock file" in output) and time.monotonic() < deadline:
            time.sleep(0.5)  # children of a killed postmaster still exiting
            continue
        raise LocalPGError(
            f"PostgreSQL exited during startup (exit {proc.returncode}); "
            f"last lines of {cl.log_file}:\n{output}"
        )


def _stop(cl: LocalCluster, mode: str, timeout: float) -> bool:
    info = _read_pidfile(cl.data_dir)
    if info is None or not _is_our_postmaster(info[0], cl.data_dir):
        return False
    pid = info[0]
    log.info("stopping PostgreSQL (pid %s, %s shutdown)", pid, mode)
    try:
        os.kill(pid, _SHUTDOWN_SIGNALS[mode])
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            raise LocalPGError(
                f"PostgreSQL (pid {pid}) did not stop within {timeout:.0f}s ({mode} shutdown); "
                f"last lines of {cl.log_file}:\n{_log_tail(cl.log_file)}"
            )
        time.sleep(0.02)
    return True


def _cluster_major(cl: LocalCluster) -> str | None:
    try:
        return (cl.data_dir / "PG_VERSION").read_text().strip() or None
    except OSError:
        return None
