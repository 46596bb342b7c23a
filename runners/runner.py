"""Run a sweep: resume or start a run, feed worker slots, record every episode as it finishes.

The parent process never imports a framework and is the store's only writer. Each of
``workers`` slots holds at most one live worker process; a slot keeps its worker while
there are episodes of that framework left. An episode past its time limit is killed with
its worker and recorded as ``timeout``; a worker that dies is an ``infra_error``, kept out
of the score and run again on resume.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, TextIO

from .progress import Progress
from .store import COUNT_COLUMNS, Store, StoreError
from .sweep import EpisodeJob, Sweep
from .worker import WorkerFailed, WorkerHandle

DEFAULT_TIME_LIMIT_S = 120.0
"""Seconds one episode may take before it is killed and recorded as ``timeout``."""


class RunInterrupted(KeyboardInterrupt):
    """The run was interrupted (SIGINT/SIGTERM); it is marked ``interrupted`` and can be resumed."""


@dataclass
class RunSummary:
    """What one invocation did."""

    run_id: str
    resumed: bool
    total: int
    skipped: int
    ran: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0


@dataclass
class _Slot:
    worker: WorkerHandle | None = None
    job: EpisodeJob | None = None
    sent_at: float = 0.0
    deadline: float = 0.0


def run_metadata(sweep: Sweep, workers: int, time_limit: float) -> dict[str, Any]:
    """Versions, knobs, machine and the lab's git commit, stored with the run."""
    packages = {}
    for name in ("coordlab", "openai", "crewai", "autogen-agentchat", "autogen-ext", "langgraph", "pyautogen"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"packages": packages, "knobs": sweep.knobs.to_dict(), "git_commit": commit,
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count()},
            "runtime": {"workers": workers, "time_limit_s": time_limit}}


def _infra_row(job: EpisodeJob, status: str, termination: str, error: str, wall_ms: float) -> dict[str, Any]:
    """A store row for an episode the lab could not finish (timeout or infra error)."""
    counts = dict.fromkeys(COUNT_COLUMNS, 0)
    return {"task": job.key.task, "framework": job.framework, "framework_version": job.key.framework_version,
            "variant": job.variant.value, "profile": job.profile, "seed": job.seed, "status": status,
            "harmful": 0, "termination": termination, "verdict_json": "{}", **counts, "wall_ms": wall_ms,
            "construction_ms": 0.0, "execution_ms": wall_ms, "simulator_ms": 0.0, "knobs_json": "{}",
            "notes_json": "[]", "error": error, "finished_at": time.time()}


def run_sweep(sweep: Sweep, store_path: str | Path, *, workers: int | None = None,
              time_limit: float = DEFAULT_TIME_LIMIT_S, fresh: bool = False,
              progress_stream: TextIO | None = None,
              on_episode: Callable[[EpisodeJob, str], None] | None = None) -> RunSummary:
    """Run every episode of ``sweep`` not yet recorded in the store's matching run."""
    workers = max(1, workers or os.cpu_count() or 1)
    if time_limit <= 0:
        raise ValueError(f"--time-limit must be positive, got {time_limit}")
    jobs = sweep.jobs()
    identity = sweep.identity()
    with Store(store_path) as store:
        previous = None if fresh else store.latest_run(identity)
        if previous is not None:
            run_id, done = previous["run_id"], store.finished_keys(previous["run_id"])
            store.set_run_status(run_id, "running")
        else:
            run_id, done = uuid.uuid4().hex[:12], set()
            store.create_run(run_id, identity, sweep.to_dict(), run_metadata(sweep, workers, time_limit))
        todo = [job for job in jobs if job.key not in done]
        summary = RunSummary(run_id, previous is not None, len(jobs), len(jobs) - len(todo))
        progress = Progress(len(jobs), summary.skipped, progress_stream)
        started = time.monotonic()
        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            _execute(store, run_id, sweep, todo, workers, time_limit, progress, summary, on_episode)
        except KeyboardInterrupt:
            store.set_run_status(run_id, "interrupted")
            raise RunInterrupted(f"interrupted: {summary.skipped + summary.ran} of {summary.total} episodes are "
                                 f"recorded in run {run_id}; run the same command again to resume") from None
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            progress.close()
        store.set_run_status(run_id, "finished")
        summary.elapsed_s = time.monotonic() - started
        return summary


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _execute(store: Store, run_id: str, sweep: Sweep, todo: list[EpisodeJob], workers: int, time_limit: float,
             progress: Progress, summary: RunSummary,
             on_episode: Callable[[EpisodeJob, str], None] | None) -> None:
    queues: dict[str, deque[EpisodeJob]] = {}
    for job in todo:
        queues.setdefault(job.framework, deque()).append(job)
    slots = [_Slot() for _ in range(min(workers, len(todo)) or 1)]
    startup_failures: Counter[str] = Counter()

    def record(job: EpisodeJob, row: dict[str, Any], events: list[dict[str, Any]]) -> None:
        store.record_episode(run_id, row, events)
        summary.ran += 1
        summary.statuses[row["status"]] += 1
        progress.update(job.framework, row["status"])
        if on_episode is not None:
            on_episode(job, row["status"])

    try:
        while True:
            for slot in slots:
                if slot.job is None:
                    _assign(slot, queues, sweep, time_limit, record, startup_failures)
            busy = [s for s in slots if s.job is not None]
            if not busy:
                return
            now = time.monotonic()
            ready = wait([s.worker.connection for s in busy if s.worker],  # type: ignore[union-attr]
                         timeout=max(0.0, min(s.deadline for s in busy) - now))
            for slot in busy:
                assert slot.worker is not None and slot.job is not None
                job = slot.job
                if slot.worker.connection in ready:
                    try:
                        message = slot.worker.connection.recv()
                    except (EOFError, OSError):
                        message = ("infra_error", f"the {job.framework} worker died")
                    if message[0] == "result":
                        record(job, message[1], message[2])
                    else:
                        record(job, _infra_row(job, "infra_error", "error", message[1],
                                               (time.monotonic() - slot.sent_at) * 1000), [])
                        slot.worker.kill()
                        slot.worker = None
                    slot.job = None
                elif time.monotonic() >= slot.deadline:
                    slot.worker.kill()
                    slot.worker = None
                    record(job, _infra_row(job, "timeout", "timeout", f"killed after the {time_limit:g} s limit",
                                           (time.monotonic() - slot.sent_at) * 1000), [])
                    slot.job = None
    finally:
        for slot in slots:
            if slot.worker is not None:
                slot.worker.kill() if slot.job is not None else slot.worker.stop()


def _assign(slot: _Slot, queues: dict[str, deque[EpisodeJob]], sweep: Sweep, time_limit: float,
            record: Callable[[EpisodeJob, dict[str, Any], list[dict[str, Any]]], None],
            startup_failures: Counter[str]) -> None:
    """Give an idle slot its next job, keeping its worker's framework while it has work.

    A framework whose worker fails to start twice is given up on for this invocation: its
    remaining episodes are recorded as infra errors (run again on resume) instead of
    spawning a doomed worker per episode.
    """
    while True:
        framework = slot.worker.framework if slot.worker and queues.get(slot.worker.framework) else \
            max((f for f in queues if queues[f]), key=lambda f: len(queues[f]), default=None)
        if framework is None:
            if slot.worker is not None:
                slot.worker.stop()
                slot.worker = None
            return
        if slot.worker is None or slot.worker.framework != framework:
            if slot.worker is not None:
                slot.worker.stop()
            try:
                slot.worker = WorkerHandle.start(framework, sweep.knobs, sweep.live)
            except WorkerFailed as exc:
                slot.worker = None
                startup_failures[framework] += 1
                doomed = len(queues[framework]) if startup_failures[framework] >= 2 else 1
                for _ in range(doomed):
                    job = queues[framework].popleft()
                    record(job, _infra_row(job, "infra_error", "error", str(exc), 0.0), [])
                continue
        slot.job = queues[framework].popleft()
        slot.sent_at = time.monotonic()
        slot.deadline = slot.sent_at + time_limit
        slot.worker.send(slot.job)
        return


__all__ = ["DEFAULT_TIME_LIMIT_S", "RunInterrupted", "RunSummary", "StoreError", "run_metadata", "run_sweep"]
