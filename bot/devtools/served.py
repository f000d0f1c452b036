"""What the local stand-ins (Slack's Web API, PagerDuty's Events API) share: an HTTP server on port 0 served by a
thread of its own, stopped by ``stop`` or at the end of a ``with`` block."""

from __future__ import annotations

import threading
from http.server import HTTPServer
from typing import Self


class ServedInThread:
    """Mixed into a stand-in whose ``start`` sets ``_server`` and ``_thread`` and returns the stand-in."""

    _server: HTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
