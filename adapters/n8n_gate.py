"""The lab's gate endpoint for n8n: an HTTP service on 127.0.0.1 that an n8n HTTP Request node asks.

n8n's IF node decides what happens after a gate, but the predicate is the task's and must be
the same code for every framework (:func:`~coordlab.adapters.toolkit.check_gate`, which
records the verdict in the episode's trace). n8n runs in another process, so the predicate is
served over HTTP: ``POST /episodes/<id>/gates/<step>`` with ``{"values": {...}}`` answers
``{"passed": bool, "message": str}``. Episodes are told apart by URL, as the simulator's are.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from coordlab.runners.loopback_service import LoopbackService
from coordlab.tasks.schema import Task
from coordlab.tasks.world import World

from .toolkit import check_gate
from .trace import TraceRecorder

_GATE = re.compile(r"^/episodes/([A-Za-z0-9_-]+)/gates/([a-z][a-z0-9_]*)$")


@dataclass(frozen=True)
class GateEpisode:
    """What a gate check needs of one open episode."""

    task: Task
    world: World
    trace: TraceRecorder


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as on the simulator: no 40 ms Nagle stalls per gate
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the per-request stderr line; the trace records every gate."""

    def _send(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        match = _GATE.match(self.path.split("?", 1)[0])
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        episode = self.server.owner.episode(match[1]) if match else None
        if match is None or episode is None:
            self._send(404, {"error": f"no open episode at {self.path}"})
            return
        try:
            values = json.loads(raw or b"{}").get("values")
        except (ValueError, AttributeError):
            values = None
        if not isinstance(values, dict):
            self._send(400, {"error": "the body must be a JSON object with an object 'values'"})
            return
        verdict = check_gate(episode.task, episode.world, episode.trace, match[2], values)
        self._send(200, {"passed": verdict.passed, "message": verdict.message})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: "GateService"


class GateService(LoopbackService):
    """Serves every open episode's gates; one per adapter process, beside its n8n."""

    thread_name = "coordlab-n8n-gates"

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self._episodes: dict[str, GateEpisode] = {}
        self._lock = threading.Lock()

    def _bind(self) -> ThreadingHTTPServer:
        server = _Server((self.host, self.port), _Handler)
        server.owner = self
        return server

    def open(self, episode_id: str, episode: GateEpisode) -> str:
        """Serve ``episode``'s gates; the base URL its gate nodes post to (``<url>/<step>``)."""
        with self._lock:
            self._episodes[episode_id] = episode
        return f"{self.url}/episodes/{episode_id}/gates"

    def close(self, episode_id: str) -> None:
        """Stop serving an episode (a late request then gets a 404)."""
        with self._lock:
            self._episodes.pop(episode_id, None)

    def episode(self, episode_id: str) -> GateEpisode | None:
        """The open episode called ``episode_id``, if any."""
        with self._lock:
            return self._episodes.get(episode_id)
