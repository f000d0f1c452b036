"""The operating-system user that owns and runs the cluster (initdb and postgres refuse to run as root)."""

from __future__ import annotations

import dataclasses
import os
import pwd
import subprocess
from pathlib import Path

from bot.devtools.localpg.common import LocalPGError


@dataclasses.dataclass(frozen=True)
class _OsUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    switch: bool  # we are root and must switch to this user for initdb/postgres

    def popen_kwargs(self) -> dict:
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        env["LANG"] = "C"
        if self.switch:
            env.update(HOME=self.home or "/", USER=self.name, LOGNAME=self.name)
        return env

    def chown(self, path: Path) -> None:
        if self.switch:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)


def _server_user() -> _OsUser:
    euid = os.geteuid()
    if euid != 0:
        try:
            pw = pwd.getpwuid(euid)
            name, home = pw.pw_name, pw.pw_dir
        except KeyError:  # e.g. an arbitrary uid in a container
            name, home = str(euid), os.environ.get("HOME", "/")
        return _OsUser(name, euid, os.getegid(), (), home, False)
    name = os.environ.get("ROLLBACK_BOT_PG_OS_USER") or "postgres"
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise LocalPGError(
            f"running as root, but there is no {name!r} system user to run PostgreSQL as "
            "(initdb/postgres refuse to run as root); install the 'postgresql' package "
            "or set ROLLBACK_BOT_PG_OS_USER to an unprivileged user"
        ) from None
    if pw.pw_uid == 0:
        raise LocalPGError(f"OS user {name!r} is root; PostgreSQL must run unprivileged")
    groups = tuple(os.getgrouplist(name, pw.pw_gid))
    return _OsUser(name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir, True)


def _user_can_reach(user: _OsUser, path: Path) -> bool:
    """True if ``user`` can traverse ``path`` (search permission on every component)."""
    if not user.switch:
        return os.access(path, os.X_OK)
    result = subprocess.run(
        ["/bin/sh", "-c", 'test -d "$1" && test -x "$1"', "sh", str(path)],
        cwd="/",
        env=user.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **user.popen_kwargs(),
    )
    return result.returncode == 0
