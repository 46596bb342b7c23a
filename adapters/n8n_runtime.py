"""A real n8n server from npm, run headless on 127.0.0.1 as a child process of the adapter's worker.

n8n is not a Python library: the lab installs it with npm (``make n8n``, into ``n8n/node_modules``),
starts ``n8n start`` once per worker process on the first episode and reuses it, and talks to
it only through HTTP: the internal REST API (``/rest/...``) once, to create the owner and an
API key, exactly as a person does in the setup screen, then n8n's public REST API
(``/api/v1/...``) for credentials, workflows, activation and executions.

Everything that would leave the machine is switched off with n8n's own settings (read off
n8n 1.123's ``@n8n/config``): diagnostics (PostHog/RudderStack), version notifications and
"what's new", templates, personalisation, the hiring and dynamic banners, licence renewal,
the AI assistant. Every run gets a fresh user folder (SQLite database, encryption key) in a
temp directory, removed when n8n stops.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
HOME_ENV = "COORDLAB_N8N_HOME"
"""Overrides the folder whose ``node_modules`` holds n8n (default: ``n8n/`` in the repository)."""
INSTALL_HINT = "install it with: make n8n (npm ci in the repository's n8n/ folder)"
START_LIMIT_S = 120.0
"""How long n8n may take to answer its readiness probe (migrations on a fresh SQLite file take a few seconds)."""
STOP_GRACE_S = 10.0
OWNER = {"email": "lab@coordlab.invalid", "firstName": "Coord", "lastName": "Lab", "password": "Coordlab-n8n-1"}
"""The instance owner the lab sets up on each fresh, throw-away n8n (never reachable beyond loopback)."""

OFFLINE_ENV = {
    "N8N_DIAGNOSTICS_ENABLED": "false",
    "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
    "N8N_VERSION_NOTIFICATIONS_WHATS_NEW_ENABLED": "false",
    "N8N_TEMPLATES_ENABLED": "false",
    "N8N_PERSONALIZATION_ENABLED": "false",
    "N8N_HIRING_BANNER_ENABLED": "false",
    "N8N_DYNAMIC_BANNERS_ENABLED": "false",
    "N8N_LICENSE_AUTO_RENEW_ENABLED": "false",
    "N8N_AI_ENABLED": "false",
    "N8N_PUBLIC_API_SWAGGERUI_DISABLED": "true",
    "N8N_SECURE_COOKIE": "false",  # the setup cookie travels over plain http on 127.0.0.1
    "N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS": "true",
    "DB_TYPE": "sqlite",
    "N8N_LISTEN_ADDRESS": "127.0.0.1",
    "N8N_HOST": "127.0.0.1",
    "N8N_PROTOCOL": "http",
}
"""n8n's settings for running offline (names checked in n8n 1.123's own source)."""


PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
"""Not passed on to n8n: its model and MCP clients honour them, and everything it reaches is on 127.0.0.1."""


class N8nUnavailable(RuntimeError):
    """n8n is not installed, or did not start."""


def n8n_home() -> Path:
    """The folder whose ``node_modules`` holds n8n."""
    return Path(os.environ.get(HOME_ENV) or REPO_ROOT / "n8n")


def n8n_executable(home: Path | None = None) -> Path:
    """The ``n8n`` command of the installation; :class:`N8nUnavailable` naming ``make n8n`` when absent."""
    executable = (home or n8n_home()) / "node_modules" / ".bin" / "n8n"
    if not executable.exists():
        raise N8nUnavailable(f"n8n is not installed (no {executable}); {INSTALL_HINT}")
    return executable


def npm_version(package: str, home: Path | None = None) -> str:
    """The version of an npm package installed beside n8n, read from its package.json (no process started)."""
    manifest = (home or n8n_home()) / "node_modules" / package / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        raise N8nUnavailable(f"n8n is not installed (no {manifest}); {INSTALL_HINT}") from None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class N8nRuntime:
    """One n8n server: started lazily, owner and API key set up, stopped on :meth:`stop` or at exit.

    ``wrapper`` prefixes the command (the tests run n8n under ``strace`` to see every
    connection it attempts).
    """

    def __init__(self, home: Path | None = None, wrapper: Sequence[str] = ()):
        self.home = home or n8n_home()
        self.wrapper = list(wrapper)
        self.port = 0
        self.folder: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        """Seconds from spawning n8n to having an API key (what a worker's first episode pays once)."""
        self._api: httpx.Client | None = None
        self._lock = threading.Lock()
        self._stop_registered = False

    @property
    def url(self) -> str:
        """The root URL of the running server."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path | None:
        """n8n's stdout and stderr (kept out of the terminal)."""
        return self.folder / "n8n.log" if self.folder else None

    def ensure_started(self) -> "N8nRuntime":
        """Start n8n unless it is already running (one per process, reused by every episode)."""
        with self._lock:
            if self.process is None or self.process.poll() is not None:
                self._start()
        return self

    def _start(self) -> None:
        executable = n8n_executable(self.home)
        started = time.perf_counter()
        self.folder = Path(tempfile.mkdtemp(prefix="coordlab-n8n-"))
        self.port = free_port()
        inherited = {name: value for name, value in os.environ.items() if name.lower() not in PROXY_VARIABLES}
        env = {**inherited, **OFFLINE_ENV, "N8N_USER_FOLDER": str(self.folder), "N8N_PORT": str(self.port)}
        with open(self.folder / "n8n.log", "wb") as log:
            self.process = subprocess.Popen([*self.wrapper, str(executable), "start"], env=env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        if not self._stop_registered:
            atexit.register(self.stop)
            self._stop_registered = True
        try:
            self._wait_ready()
            self._api = httpx.Client(base_url=f"{self.url}/api/v1", timeout=60.0,
                                     headers={"X-N8N-API-KEY": self._set_up_owner()})
        except (N8nUnavailable, httpx.HTTPError) as exc:
            log = self.log_tail()
            self.stop()  # removes the folder, log included: its end goes into the error
            raise N8nUnavailable(f"{exc}\n--- the end of n8n's log ---\n{log}") from None
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - started

    def _wait_ready(self) -> None:
        """Poll until the REST API is mounted or n8n dies.

        ``/healthz/readiness`` turns ok as soon as the database is migrated, before the REST
        routes exist (``/rest/owner/setup`` then answers 404), and while starting n8n answers
        every path with 200 and the text "n8n is starting up"; ``/rest/settings`` answers JSON
        only once the routes are mounted.
        """
        deadline = time.monotonic() + START_LIMIT_S
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise N8nUnavailable(f"n8n exited with {self.process.returncode} while starting")
            try:
                probe = httpx.get(f"{self.url}/rest/settings", timeout=2.0)
                if probe.status_code == 200 and probe.headers.get("content-type", "").startswith("application/json"):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise N8nUnavailable(f"n8n did not become ready within {START_LIMIT_S:.0f} s")

    def _set_up_owner(self) -> str:
        """Create the owner (``POST /rest/owner/setup``, which also logs in) and a public-API key with every
        scope the owner may grant (``GET /rest/api-keys/scopes``, ``POST /rest/api-keys``); the raw key."""
        with httpx.Client(base_url=f"{self.url}/rest", timeout=30.0) as rest:
            rest.post("/owner/setup", json=OWNER).raise_for_status()
            scopes = rest.get("/api-keys/scopes").raise_for_status().json()["data"]
            created = rest.post("/api-keys", json={"label": "coordlab", "scopes": scopes, "expiresAt": None})
            return str(created.raise_for_status().json()["data"]["rawApiKey"])

    def log_tail(self, lines: int = 30) -> str:
        """The last lines n8n wrote ('' when there is no log)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) if self.log_path else ""
        except OSError:
            return ""

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call n8n's public REST API (``/api/v1`` + ``path``); the decoded JSON answer."""
        if self._api is None:
            raise N8nUnavailable("n8n is not running")
        response = self._api.request(method, path, **kwargs)
        if response.is_error:
            raise N8nUnavailable(f"n8n answered {response.status_code} to {method} {path}: {response.text[:500]}")
        return response.json() if response.content else None

    def webhook(self, path: str, body: dict[str, Any], timeout: float) -> httpx.Response:
        """POST ``body`` to a production webhook of an active workflow; the raw response."""
        return httpx.post(f"{self.url}/webhook/{path}", json=body, timeout=timeout)

    def stop(self) -> None:
        """SIGTERM n8n's process group, SIGKILL it after a grace period, remove its folder; safe to call twice."""
        if self._api is not None:
            self._api.close()
            self._api = None
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal n8n and whatever it spawned (it runs in its own session, so its group is its pid)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
