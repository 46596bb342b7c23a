"""Fixtures of the runner tests: misbehaving third-party adapters, installed through the entry-point group."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

MODULE = Path(__file__).with_name("misbehaving_adapters.py")
ENTRY_POINTS = {"hang": "Hang", "crash": "Crash", "spin": "Spin", "slowfirst": "SlowFirst", "renamed": "Renamed",
                "reach": "Reach", "slowstart": "slowstart"}
PLUGIN_VERSION = "1.0"


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``misbehaving_adapters`` installed as a distribution; returns its folder.

    The folder is on this process's ``sys.path`` (spawned workers inherit it); a subprocess
    needs it in ``PYTHONPATH``.
    """
    root = tmp_path / "plugins"
    root.mkdir()
    shutil.copy(MODULE, root / "coordlab_misbehaving_adapters.py")
    dist = root / f"coordlab_misbehaving_adapters-{PLUGIN_VERSION}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: coordlab-misbehaving-adapters\nVersion: {PLUGIN_VERSION}\n")
    lines = "".join(f"{name} = coordlab_misbehaving_adapters:{target}\n" for name, target in ENTRY_POINTS.items())
    (dist / "entry_points.txt").write_text(f"[coordlab.adapters]\n{lines}")
    monkeypatch.syspath_prepend(str(root))
    return root


class _OtlpReceiver(http.server.BaseHTTPRequestHandler):
    """A minimal OTLP/HTTP receiver: keeps every POST's path, content type and body, answers success."""

    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """An OTLP/HTTP receiver on 127.0.0.1: its URL and the (path, content type, body) of every request it got."""
    received: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (_OtlpReceiver,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def unused_port() -> Callable[[], int]:
    """A function giving a loopback port nothing listens on (for a dead endpoint, or a server to start)."""
    def port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    return port


class _EchoingKeyHandler(http.server.BaseHTTPRequestHandler):
    """An endpoint that rejects every request and, carelessly, quotes the key it was sent."""

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
        body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error",
                                     "code": "invalid_api_key"}}).encode()
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echoing_endpoint() -> Iterator[str]:
    """A careless live endpoint on 127.0.0.1 (its base URL) that quotes back the key it was sent."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoingKeyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
