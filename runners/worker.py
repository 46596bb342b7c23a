"""Long-lived worker processes: one framework each, imported once, with their own simulator.

Frameworks are never mixed in one process (CrewAI patches ``warnings`` and installs signal
handlers at import), so each worker serves one framework for as long as it has episodes of
it. The worker runs its own simulator on 127.0.0.1, so a killed worker takes nothing of
another's with it. The parent sends jobs and receives finished store rows over a pipe.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from coordlab.adapters.base import Endpoint, Knobs

from .sweep import EpisodeJob, LiveEndpoint

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


def _live_endpoint(live: LiveEndpoint, roles: list[str]) -> Endpoint:
    key = os.environ.get(live.api_key_env)
    if key is None:
        raise WorkerFailed(f"--api-key-env {live.api_key_env}: that environment variable is not set")
    return Endpoint({role: live.base_url for role in roles}, live.model, key)


def worker_main(framework: str, knobs: Knobs, live: LiveEndpoint | None, connection: Connection) -> None:
    """The worker's loop: import the framework once, then run jobs until told to stop or the parent goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt means
    from coordlab.adapters.registry import get_adapter

    from .faults import FaultPlan, load_profile
    from .harness import run_episode
    from .simulator import ROUTER_ROLE, Simulator

    try:
        adapter = get_adapter(framework)
        simulator = Simulator().start() if live is None else None
    except Exception as exc:  # noqa: BLE001 - reported to the parent as an infra error
        connection.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    connection.send(("ready", os.getpid()))
    episodes_done = 0
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            break  # the parent is gone
        if message[0] == "stop":
            break
        job: EpisodeJob = message[1]
        try:
            task = job.task.load()
            plan = FaultPlan(load_profile(job.profile), job.seed)
            endpoint = None if live is None else _live_endpoint(live, [*task.roles, ROUTER_ROLE])
            result = run_episode(adapter, task, job.variant, simulator, plan, knobs, endpoint)
            connection.send(("result", result.to_row(), result.event_rows()))
        except Exception as exc:  # noqa: BLE001 - the lab broke, not the framework
            connection.send(("infra_error", f"{type(exc).__name__}: {exc}"))
        episodes_done += 1
        release_memory(episodes_done)
    if simulator is not None:
        simulator.stop()


@dataclass
class WorkerHandle:
    """The parent's side of one worker process."""

    framework: str
    process: Any
    connection: Connection

    @classmethod
    def start(cls, framework: str, knobs: Knobs, live: LiveEndpoint | None) -> "WorkerHandle":
        """Spawn a worker and wait until its framework is imported and its simulator is up."""
        parent, child = _CONTEXT.Pipe()
        process = _CONTEXT.Process(target=worker_main, args=(framework, knobs, live, child),
                                   name=f"coordlab-{framework}", daemon=True)
        process.start()
        child.close()
        handle = cls(framework, process, parent)
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while not parent.poll(0.2):
            if not process.is_alive() or time.monotonic() > deadline:
                handle.kill()
                raise WorkerFailed(f"the {framework} worker did not start (exit code {process.exitcode})")
        try:
            status, detail = parent.recv()
        except EOFError:
            handle.kill()
            raise WorkerFailed(f"the {framework} worker died while starting") from None
        if status != "ready":
            handle.kill()
            raise WorkerFailed(f"the {framework} worker could not start: {detail}")
        return handle

    def send(self, job: EpisodeJob) -> None:
        """Hand the worker one job."""
        self.connection.send(("run", job))

    def stop(self) -> None:
        """Ask the worker to finish; kill it if it does not within a few seconds."""
        try:
            self.connection.send(("stop",))
        except (OSError, ValueError):
            pass
        self.process.join(5)
        self.kill()

    def kill(self) -> None:
        """End the worker now (SIGKILL), taking any hung episode with it."""
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.connection.close()
