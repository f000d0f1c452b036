"""`rollback-bot doctor` as another, unprivileged user (``python -m tests.doctor_as_user UID GID``).

Tests run as root, and root may read any file, so a folder only the bot's user cannot read must be checked as
some other user. The interpreter's own files may be out of that user's reach (a Python under /root), so a first
run as the caller imports everything the doctor needs (its output discarded); then the process drops to UID/GID
for good and runs the doctor again, printing its lines and exiting with its code.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

from bot.__main__ import main


def run() -> int:
    uid, gid = int(sys.argv[1]), int(sys.argv[2])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["doctor"])
    os.chdir("/")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    assert os.geteuid() == uid and os.getuid() == uid
    return main(["doctor"])


if __name__ == "__main__":
    sys.exit(run())
