"""What every part of the private cluster shares: its constants, its error, its logger, the postmasters this
process started."""

from __future__ import annotations

import logging
import signal
import subprocess
from pathlib import Path

#: one logger for the whole package, so that the command line's handler sees every part
log = logging.getLogger("bot.devtools.localpg")

HOST = "127.0.0.1"
ROLE = "rollback_bot"
SUPERUSER = "postgres"
DEFAULT_DATABASES: tuple[str, ...] = ("rollback_bot",)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0
FALLBACK_PARENT = Path("/tmp")
MANAGED_CONF = "rollback_bot.conf"

_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_PORT_RANGE = (20000, 32000)  # below Linux's default ephemeral range (32768-60999)
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_SHUTDOWN_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_REQUIRED_BINARIES = ("initdb", "postgres")

# Postmasters started by this process: kept so they can be reaped (a stopped
# child would otherwise linger as a zombie and look alive).
_children: dict[int, subprocess.Popen] = {}


class LocalPGError(RuntimeError):
    """The private cluster could not be provisioned, started or stopped."""
