"""Long-lived worker processes: one framework each, imported once, with their own simulator.

Frameworks are never mixed in one process (CrewAI patches ``warnings`` and installs signal
handlers at import), so each worker serves one framework for as long as it has episodes of
it. The worker runs its own simulator on 127.0.0.1, so a killed worker takes nothing of
another's with it. The parent sends jobs and receives finished store rows over a pipe: the
episode row, its trace, and its model request and response bodies, redacted and compressed
here so the parent (the store's one writer) only writes them.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordlab.adapters.base import Knobs
from coordlab.tasks.schema import Task

from .netguard import loopback_only, url_address, url_hosts
from .offline import neutralise_telemetry
from .redaction import Redactor
from .store import pack_exchanges
from .sweep import EpisodeJob, LiveEndpoint, TaskRef

if TYPE_CHECKING:
    from .simulator.upstream import Upstream

_CONTEXT = multiprocessing.get_context("spawn")  # a clean interpreter: nothing inherited from the parent
STARTUP_LIMIT_S = 180.0
"""How long a worker may take to import its framework and start its simulator."""


COLLECT_EVERY = 10
"""Episodes between full garbage collections in a worker."""


def release_memory(episodes_done: int) -> None:
    """Free the cyclic garbage episodes leave behind and hand the freed heap back to the OS.

    Measured on the plain adapter: frameworks, clients and traces leave reference cycles that
    the generational collector reaches only rarely, so a worker's RSS climbed from 118 to
    295 MiB over 1,000 episodes; collecting every ``COLLECT_EVERY`` episodes and trimming
    the heap keeps it flat (81 MiB over 400 episodes with a collection after each one).
    """
    if episodes_done % COLLECT_EVERY:
        return
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


class WorkerFailed(RuntimeError):
    """A worker could not start, or died; the lab's fault, not the framework's (``infra_error``)."""


@dataclass(frozen=True)
class FrameworkTracing:
    """Opt-in: the framework's own tracing, sent to the OTLP receiver that gets coordlab's spans."""

    endpoint: str
    project: str


PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal the kernel sends this process when its parent dies (Linux)."""


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this worker when the runner dies, even mid-episode in a busy loop.

    A worker blocked in a hung or CPU-bound episode never reads its pipe, so it cannot
    notice on its own that the runner was killed; without this it outlived the runner.
    """
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux/glibc: the worker still stops at its next read of the closed pipe
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the signal was armed


def endpoint_address(base_url: str) -> tuple[str, int]:
    """The host and port a base URL connects to."""
    try:
        return url_address(base_url)
    except ValueError as exc:
        raise WorkerFailed(f"--base-url {exc}") from None


def endpoint_unreachable(base_url: str, timeout: float = 3.0) -> str | None:
    """Why the endpoint cannot be reached (a sentence), or None when a TCP connection opens."""
    host, port = endpoint_address(base_url)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"the model endpoint {host}:{port} cannot be reached ({exc.strerror or exc})"


def _endpoint_hosts(live: LiveEndpoint | None) -> list[str]:
    """The endpoint's name and the addresses it resolves to: what the network guard lets through."""
    if live is None:
        return []
    try:
        return url_hosts(live.base_url)
    except ValueError as exc:
        raise WorkerFailed(f"--base-url {exc}") from None


def _upstream(live: LiveEndpoint) -> "Upstream":
    """The real endpoint behind the worker's fault proxy, with its key read from the environment (None: no key)."""
    from .simulator.upstream import Upstream

    if live.api_key_env is None:
        return Upstream(live.base_url, live.model)
    key = os.environ.get(live.api_key_env)
    if key is None:
        raise WorkerFailed(f"--api-key-env {live.api_key_env}: that environment variable is not set")
    return Upstream(live.base_url, live.model, key)


def _warm_up(adapter: Any, simulator: Any) -> None:
    """Run one small episode and discard it, so framework and client warm-up (lazy imports, the
    openai SDK's first-use cost) count against the worker's start, not against an episode's clock."""
    from coordlab.adapters.base import Variant
    from coordlab.tasks.loader import load_suite_task

    from .faults import FaultPlan, load_profile
    from .harness import run_episode

    run_episode(adapter, load_suite_task(WARM_UP_TASK, {"n": 1}), Variant.LINEAR, simulator,
                FaultPlan(load_profile("none"), 0))


WARM_UP_TASK = "chain"
"""The built-in task a worker runs once, unrecorded, before it reports ready."""


def _identify(row: dict[str, Any], job: EpisodeJob, reported_version: str) -> dict[str, Any]:
    """Key the row exactly as the parent keyed the job, so resume always finds it.

    The parent reads versions from package metadata; a plug-in's adapter may report another
    one. The job's key is the one identity; a differing report is kept as a note.
    """
    key = job.key
    if reported_version != key.framework_version:
        notes = json.loads(row["notes_json"]) + [f"the adapter reports version {reported_version}; "
                                                 f"keyed as {key.framework_version}"]
        row["notes_json"] = json.dumps(notes)
    row.update(task=key.task, framework=key.framework, framework_version=key.framework_version,
               variant=key.variant, profile=key.profile, seed=key.seed, trial=key.trial)
    return row


def route_framework_chatter(log_path: Path | None) -> None:
    """Send the frameworks' logging and warnings to ``log_path`` instead of over the run's progress line.

    The frameworks log what the episode already records (an agent's failed call, a
    serializer warning per structured answer); on the terminal that buries the progress.
    Done before the framework is imported, so a library's own ``basicConfig`` finds the
    root logger configured and adds nothing; what a framework prints goes there too. A
    worker's own crash still reaches stderr.
    """
    handler: logging.Handler = logging.NullHandler()
    if log_path is not None:
        handler = logging.FileHandler(log_path, encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter(f"%(asctime)s worker {os.getpid()} %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.captureWarnings(True)
    # What a framework prints (CrewAI's event bus warns through a rich console on stdout) goes
    # the same way; the worker itself talks to the runner through its pipe, never stdout.
    sys.stdout = open(log_path if log_path is not None else os.devnull, "a", encoding="utf-8", buffering=1)


def packed_bodies(exchanges: list[tuple[int, Any, Any]], redact: Redactor) -> tuple[int, bytes] | None:
    """An episode's (seq, request, response) bodies as the store keeps them, secrets scrubbed first:
    (how many, the compressed blob), or None when there are none."""
    if not exchanges:
        return None
    return len(exchanges), pack_exchanges((seq, redact.body(request), redact.body(response))
                                          for seq, request, response in exchanges)


def worker_main(framework: str, knobs: Knobs, live: LiveEndpoint | None, connection: Connection,
                parent_pid: int | None = None, tracing: FrameworkTracing | None = None,
                log_path: Path | None = None, keep_bodies: bool = True) -> None:
    """The worker's loop: import the framework once, then run jobs until told to stop or the parent goes.

    Without ``keep_bodies`` (``coordlab run --no-bodies``) no model request or response body is sent back.
    """
    die_with_parent(parent_pid if parent_pid is not None else os.getppid())
    route_framework_chatter(log_path)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt means
    neutralise_telemetry()
    redact = Redactor.from_environment([os.environ.get(live.api_key_env, "")] if live and live.api_key_env else [])
    try:
        allowed = _endpoint_hosts(live)
        if tracing is not None:
            from .framework_tracing import enable_framework_tracing

            allowed += url_hosts(tracing.endpoint)
            enable_framework_tracing(framework, tracing.endpoint, tracing.project)
    except (WorkerFailed, ValueError, RuntimeError) as exc:
        connection.send(("failed", redact(str(exc))))
        return
    with loopback_only(allow=allowed):
        _serve(framework, knobs, live, connection, redact, keep_bodies)
        if tracing is not None:
            _flush_framework_spans()


def _flush_framework_spans() -> None:
    """Send the framework's last spans before the worker exits (the runner reaps a stopping worker in 5 s)."""
    from opentelemetry import trace

    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        flush(3000)


def _serve(framework: str, knobs: Knobs, live: LiveEndpoint | None, connection: Connection,
           redact: Redactor, keep_bodies: bool = True) -> None:
    from coordlab.adapters.registry import get_adapter

    from .faults import FaultPlan, load_profile
    from .harness import Status, run_episode
    from .simulator import Simulator

    simulator = None
    try:
        if live is not None and (why := endpoint_unreachable(live.base_url)):
            raise WorkerFailed(why)
        adapter = get_adapter(framework)
        upstream = None if live is None else _upstream(live)
        # A live run's requests go through this server's fault proxy; the warm-up stays on the simulator.
        simulator = Simulator().start()
        _warm_up(adapter, simulator)
        reported_version = adapter.version()
    except Exception as exc:  # noqa: BLE001 - reported to the parent as an infra error
        connection.send(("failed", redact(f"{type(exc).__name__}: {exc}")))
        if simulator is not None:
            simulator.stop()
        return
    connection.send(("ready", os.getpid()))
    episodes_done = 0
    tasks: dict[TaskRef, Task] = {}  # a task is loaded (parsed and solved) once per worker, not per episode
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            break  # the parent is gone
        if message[0] == "stop":
            break
        job: EpisodeJob = message[1]
        try:
            task = tasks.get(job.task) or tasks.setdefault(job.task, job.task.load())
            plan = FaultPlan(load_profile(job.profile), job.seed, job.forced)
            result = run_episode(adapter, task, job.variant, simulator, plan, knobs, upstream)
            if result.unreachable is not None:
                connection.send(("infra_error", redact(result.unreachable)))
            elif live is not None and result.status is Status.ERROR and (why := endpoint_unreachable(live.base_url)):
                connection.send(("infra_error", redact(why)))
            else:
                row = _identify(result.to_row(), job, reported_version)
                bodies = packed_bodies(result.exchanges(), redact) if keep_bodies else None
                connection.send(("result", redact(row), redact(result.event_rows()), bodies))
        except Exception as exc:  # noqa: BLE001 - the lab broke, not the framework
            connection.send(("infra_error", redact(f"{type(exc).__name__}: {exc}")))
        episodes_done += 1
        release_memory(episodes_done)
    simulator.stop()


@dataclass
class WorkerHandle:
    """The parent's side of one worker process.

    Starting is split in two, :meth:`spawn` and :meth:`accept_ready`, so the parent can keep
    watching the other slots' deadlines while a worker imports its framework.
    """

    framework: str
    process: Any
    connection: Connection
    ready: bool = False
    startup_deadline: float = field(default=0.0)

    @classmethod
    def spawn(cls, framework: str, knobs: Knobs, live: LiveEndpoint | None,
              tracing: FrameworkTracing | None = None, log_path: Path | None = None,
              keep_bodies: bool = True) -> "WorkerHandle":
        """Start a worker process; it reports on :attr:`connection` when it is ready (or failed).

        The frameworks' log messages go to ``log_path`` (None: nowhere); ``keep_bodies`` False
        keeps the model request and response bodies out of its results.
        """
        parent, child = _CONTEXT.Pipe()
        process = _CONTEXT.Process(target=worker_main,
                                   args=(framework, knobs, live, child, os.getpid(), tracing, log_path,
                                         keep_bodies),
                                   name=f"coordlab-{framework}", daemon=True)
        process.start()
        child.close()
        return cls(framework, process, parent, startup_deadline=time.monotonic() + STARTUP_LIMIT_S)

    def accept_ready(self) -> None:
        """Read the worker's start-up report (call when :attr:`connection` is readable)."""
        try:
            status, detail = self.connection.recv()
        except (EOFError, OSError):
            self.kill()
            raise WorkerFailed(f"the {self.framework} worker died while starting "
                               f"(exit code {self.process.exitcode})") from None
        if status != "ready":
            self.kill()
            raise WorkerFailed(f"the {self.framework} worker could not start: {detail}")
        self.ready = True

    def startup_overdue(self) -> WorkerFailed:
        """The error for a worker that did not report within :data:`STARTUP_LIMIT_S` (it is killed)."""
        self.kill()
        return WorkerFailed(f"the {self.framework} worker did not start within {STARTUP_LIMIT_S:g} s")

    def send(self, job: EpisodeJob) -> None:
        """Hand the worker one job; a worker that died since its last episode raises :class:`WorkerFailed`."""
        try:
            self.connection.send(("run", job))
        except (OSError, ValueError) as exc:
            self.kill()
            raise WorkerFailed(f"the {self.framework} worker died between episodes "
                               f"(exit code {self.process.exitcode}): {exc}") from None

    def request_stop(self) -> None:
        """Ask the worker to finish its loop and exit (it is idle); does not wait."""
        try:
            self.connection.send(("stop",))
        except (OSError, ValueError):
            pass  # already gone

    def kill(self) -> None:
        """End the worker now (SIGKILL), taking any hung episode with it."""
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.connection.close()
