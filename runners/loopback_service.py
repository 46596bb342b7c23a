"""An HTTP server on a loopback address, served from a background thread: the simulator's and the viewer's shape.

Both serve on 127.0.0.1 for the life of a ``with`` block (or between ``start`` and
``stop``) and report the port they got when asked for port 0; only what they bind and how
they say a bind failed differ, which subclasses give in :meth:`LoopbackService._bind`.
"""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Self


class LoopbackService:
    """Serve :meth:`_bind`'s server in a daemon thread; ``port`` becomes the bound port (an ephemeral one for 0)."""

    thread_name = "coordlab-service"
    poll_interval = 0.1
    """How often ``serve_forever`` checks for shutdown: the upper bound of how long ``stop`` waits."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _bind(self) -> ThreadingHTTPServer:
        """The bound server; raises the subclass's own error, naming the address, when it cannot bind."""
        raise NotImplementedError

    def _stopping(self, server: ThreadingHTTPServer) -> None:
        """Called before shutdown (the simulator cuts stalled requests short here)."""

    def start(self) -> Self:
        """Bind and serve in a background thread."""
        self._server = self._bind()
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=self.thread_name,
                                        kwargs={"poll_interval": self.poll_interval}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        if self._server is not None:
            self._stopping(self._server)
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The root URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self.port}"
