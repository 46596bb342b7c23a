"""One run of a durable episode in a fresh process: the process the lab may SIGKILL.

The process knows nothing of the episode but what a restarted production process would
find: the task, the endpoint, and the folder where the world and the framework's own saved
state live. It reads the world back from the journal, builds the framework's objects, and
runs the adapter with :class:`~coordlab.adapters.base.Durability` set; the adapter saves
(first run) or reads back (resumed run) the framework's state there. A scheduled crash
after a side effect is carried out here, inside the tool call, once the change is durable.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Callable

from coordlab.adapters.base import AdapterOutcome, Durability, Endpoint, EpisodeSpec, Knobs, Termination, Variant
from coordlab.adapters.trace import TraceRecorder
from coordlab.tasks.world import World

from ..netguard import loopback_only
from ..offline import neutralise_telemetry
from ..sweep import TaskRef
from .journal import WorldJournal
from .review import ScriptedReviewer

FRAMEWORK_LOG = "framework.log"
"""Where a run's framework logging and printing go, in the episode's folder."""


@dataclass(frozen=True)
class AttemptJob:
    """What a fresh process needs to run (or resume) one durable episode."""

    framework: str
    task: TaskRef
    variant: Variant
    knobs: Knobs
    endpoint: Endpoint
    durability: Durability
    crash_after_effect: int | None = None
    """Kill this process right after the world's N-th change (the first run of an ``after_effect`` crash)."""
    seed: int = 0
    review: bool = False
    """Whether a scripted human approves every gated step (:mod:`.review`), through the framework's own mechanism."""


def crash_after(effect: int) -> Callable[[World], None]:
    """A world listener that SIGKILLs this process once the world holds ``effect`` changes.

    It runs after the journal's listener, so the change is on disk before the process dies.
    SIGKILL, not an exception: nothing of the framework's (no ``finally``, no exit handler) runs.
    """
    def listener(world: World) -> None:
        if len(world.side_effects) >= effect:
            os.kill(os.getpid(), signal.SIGKILL)
    return listener


def attempt_main(job: AttemptJob, connection: Connection) -> None:
    """The fresh process: report ready, wait for the go, run the adapter, send back its outcome and trace."""
    from coordlab.adapters.registry import get_adapter

    from ..worker import die_with_parent, route_framework_chatter

    die_with_parent(os.getppid())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator decides what an interrupt means
    route_framework_chatter(job.durability.folder / FRAMEWORK_LOG)
    # A framework thread's uncaught exception (CrewAI's checkpoint writer can panic, and its Rust core then
    # writes to file descriptor 2 itself) is its chatter too: it goes to the log, not over the experiment's
    # progress line; the run's outcome is what it reports.
    sys.stderr = sys.stdout
    os.dup2(sys.stdout.fileno(), 2)
    neutralise_telemetry()
    with loopback_only():
        task = job.task.load()
        journal = WorldJournal(job.durability.folder)
        world = journal.keep(journal.load(task))
        world.idempotency_keys = job.knobs.idempotency_keys
        if job.crash_after_effect is not None:
            world.effect_listeners.append(crash_after(job.crash_after_effect))
        approver = None
        if job.review:
            # One restart per episode: in the resumed run, a late answer is the answer that came after it.
            approver = ScriptedReviewer(job.durability.folder, task, job.seed, kill_on_late=not job.durability.resume)
            approver.watch(world)
        adapter = get_adapter(job.framework)
        connection.send(("ready", os.getpid()))
        if connection.recv() != "go":
            return
        recorder = TraceRecorder()
        spec = EpisodeSpec(task, job.variant, job.endpoint, job.knobs, world, recorder, job.durability, approver)
        try:
            outcome = adapter.run(spec)
        except Exception as exc:  # noqa: BLE001 - a crashing framework is an outcome, not a lab failure
            outcome = AdapterOutcome(Termination.ERROR, error="".join(traceback.format_exception_only(exc)).strip())
        connection.send(("done", outcome, recorder.events))
