"""Run a sweep: resume or start a run, feed worker slots, record every episode as it finishes.

The parent process never imports a framework and is the store's only writer. Each of
``workers`` slots holds at most one live worker process; a slot keeps its worker while
there are episodes of that framework left. An episode past its time limit is killed with
its worker and recorded as ``timeout``; a worker that dies is an ``infra_error``, kept out
of the score and run again on resume.
"""

from __future__ import annotations

import contextlib
import math
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

from coordlab.tasks.schema import split_task_key

from .progress import Progress
from .store import COUNT_COLUMNS, Store, StoreError
from .sweep import EpisodeJob, Sweep, SweepError, TaskRef
from .worker import FrameworkTracing, WorkerFailed, WorkerHandle

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
    framework_log: Path | None = None
    """Where the frameworks' own log messages of this invocation went (None when they logged nothing)."""


@dataclass
class _Slot:
    """One worker slot: idle (no job), starting (its worker is not ready yet) or running a job."""

    worker: WorkerHandle | None = None
    job: EpisodeJob | None = None
    sent_at: float = 0.0
    deadline: float = 0.0
    """The running episode's time limit; while the worker starts, its start-up limit."""

    @property
    def starting(self) -> bool:
        return self.job is not None and self.worker is not None and not self.worker.ready


def run_metadata(sweep: Sweep, workers: int, time_limit: float) -> dict[str, Any]:
    """Versions, knobs, machine and the lab's git commit, stored with the run."""
    packages = {}
    for name in ("coordlab", "openai", "crewai", "autogen-agentchat", "autogen-ext", "langgraph", "pyautogen", "mcp",
                 "langchain-mcp-adapters"):
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
            "variant": job.variant.value, "profile": job.key.profile, "seed": job.seed, "trial": job.key.trial,
            "status": status, "harmful": 0, "termination": termination, "verdict_json": "{}", **counts,
            "wall_ms": wall_ms, "construction_ms": 0.0, "execution_ms": wall_ms, "simulator_ms": 0.0,
            "knobs_json": "{}", "notes_json": "[]", "error": error, "finished_at": time.time()}


def run_sweep(sweep: Sweep, store_path: str | Path, *, workers: int | None = None,
              time_limit: float = DEFAULT_TIME_LIMIT_S, fresh: bool = False,
              progress_stream: TextIO | None = None,
              on_episode: Callable[[EpisodeJob, str], None] | None = None,
              on_recorded: Callable[[int], None] | None = None,
              framework_tracing: FrameworkTracing | None = None, bodies: bool = True) -> RunSummary:
    """Run every episode of ``sweep`` not yet recorded in the store's matching run.

    ``on_episode`` hears each finished job and its status; ``on_recorded`` each committed
    episode's id in the store (what a trace exporter streams from). ``framework_tracing``
    switches the frameworks' own tracing on, towards a receiver; ``bodies`` False keeps the
    model request and response bodies out of the store (``--no-bodies``). Both are runtime
    options: neither is part of the run's identity.
    """
    workers = check_runtime(workers, time_limit)
    if sweep.live is not None and sweep.live.api_key_env is not None and os.environ.get(sweep.live.api_key_env) is None:
        raise SweepError(f"--api-key-env {sweep.live.api_key_env}: that environment variable is not set; "
                         "export the endpoint's key in it (the key is read by the workers and never stored)")
    jobs = sweep.jobs()
    identity = sweep.identity()
    with Store(store_path) as store:
        refuse_edited_tasks(store, {job.key.task: job.task for job in jobs}, store_path)
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
            _execute(store, run_id, sweep, todo, workers, time_limit, progress, summary, on_episode, on_recorded,
                     framework_tracing, bodies)
        except KeyboardInterrupt:
            store.set_run_status(run_id, "interrupted")
            raise RunInterrupted(f"interrupted: {summary.skipped + summary.ran} of {summary.total} episodes are "
                                 f"recorded in run {run_id}; run the same command again to resume") from None
        except BaseException:
            # Whatever broke, what is recorded stays resumable; a store that cannot take even this
            # (a full disk) must not hide the error that matters.
            with contextlib.suppress(StoreError):
                store.set_run_status(run_id, "interrupted")
            raise
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            progress.close()
        store.set_run_status(run_id, "finished")
        summary.elapsed_s = time.monotonic() - started
        log = framework_log(store.path)
        summary.framework_log = log if log.is_file() and log.stat().st_size else None
        return summary


def refuse_edited_tasks(store: Store, tasks: dict[str, TaskRef], store_path: str | Path) -> None:
    """Refuse a task whose content changed without a version bump since this store recorded it.

    ``tasks`` maps each task key about to be run to how the sweep names the task (the keys
    already carry the content hashes, so nothing is loaded again). Episode keys carry the
    task's content hash, so old and new results could never be confused row by row; but two
    different tasks under one ``name@version`` would make every table that names the
    version ambiguous. The author either bumps ``version:`` or records the edited task in
    another store.
    """
    recorded: dict[str, set[str]] = {}
    for key in store.task_keys():
        release, content = split_task_key(key)
        if content is not None:
            recorded.setdefault(release, set()).add(content)
    for key, ref in tasks.items():
        release, content = split_task_key(key)
        others = recorded.get(release, set()) - {content}
        if others:
            where = f" ({ref.name})" if ref.name.endswith((".yaml", ".yml")) else ""
            raise SweepError(
                f"task {release}{where} has changed since store {store_path} recorded it (content "
                f"{', '.join(sorted(others))} there, {content} now) but its version was not bumped: "
                f"raise `version:` in the task file, or record the edited task in another --store")


def framework_log(store_path: Path) -> Path:
    """The file beside the store that collects the frameworks' own log messages (appended run after run)."""
    return store_path.with_name(store_path.name + ".frameworks.log")


def check_runtime(workers: int | None, time_limit: float) -> int:
    """The number of worker slots to use; a clear error for a count or limit that cannot work."""
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise SweepError(f"--workers must be a whole number of at least 1, got {workers!r}")
    if (not isinstance(time_limit, (int, float)) or isinstance(time_limit, bool) or not math.isfinite(time_limit)
            or time_limit <= 0):
        raise SweepError(f"--time-limit must be positive, a finite number of seconds, got {time_limit!r}")
    return workers or os.cpu_count() or 1


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _execute(store: Store, run_id: str, sweep: Sweep, todo: list[EpisodeJob], workers: int, time_limit: float,
             progress: Progress, summary: RunSummary,
             on_episode: Callable[[EpisodeJob, str], None] | None,
             on_recorded: Callable[[int], None] | None = None,
             framework_tracing: FrameworkTracing | None = None, bodies: bool = True) -> None:
    queues: dict[str, deque[EpisodeJob]] = {}
    for job in todo:
        queues.setdefault(job.framework, deque()).append(job)
    slots = [_Slot() for _ in range(min(workers, len(todo)) or 1)]

    def record(job: EpisodeJob, row: dict[str, Any], events: list[dict[str, Any]],
               bodies: tuple[int, bytes] | None = None) -> None:
        episode_id = store.record_episode(run_id, row, events, bodies)
        if on_recorded is not None:
            on_recorded(episode_id)
        summary.ran += 1
        summary.statuses[row["status"]] += 1
        progress.update(job.framework, row["status"])
        if on_episode is not None:
            on_episode(job, row["status"])

    feeder = _Feeder(queues, sweep, time_limit, record, framework_tracing, framework_log(store.path), bodies)
    try:
        while True:
            for slot in slots:
                if slot.job is None:
                    feeder.assign(slot)
            busy = [s for s in slots if s.job is not None]
            if not busy:
                return
            # Every deadline is watched here, the starting workers' too: nothing blocks this loop.
            ready = wait([s.worker.connection for s in busy if s.worker],  # type: ignore[union-attr]
                         timeout=max(0.0, min(s.deadline for s in busy) - time.monotonic()))
            for slot in busy:
                if slot.worker is not None and slot.worker.connection in ready:
                    feeder.on_message(slot)
                elif time.monotonic() >= slot.deadline:
                    feeder.on_deadline(slot)
    finally:
        for slot in slots:
            if slot.worker is not None:
                slot.worker.kill() if slot.job is not None else feeder.retire(slot.worker)
        feeder.close()


@dataclass
class _Feeder:
    """Keeps the slots fed: assigns jobs, starts workers, and turns what comes back into store rows.

    A framework whose worker fails to start twice is given up on for this invocation: its
    remaining episodes are recorded as infra errors (run again on resume) instead of
    spawning a doomed worker per episode. A worker found dead when handed a job gets the job
    again on a fresh worker once; twice is an infra error.
    """

    queues: dict[str, deque[EpisodeJob]]
    sweep: Sweep
    time_limit: float
    record: Callable[..., None]
    """Records (job, row, events[, bodies]) in the store."""
    framework_tracing: FrameworkTracing | None = None
    framework_log: Path | None = None
    keep_bodies: bool = True
    """Whether workers send the model request and response bodies back (``--no-bodies``: they do not)."""
    startup_failures: Counter[str] = field(default_factory=Counter)
    resent: set[EpisodeJob] = field(default_factory=set)
    retired: list[WorkerHandle] = field(default_factory=list)
    """Workers asked to stop; reaped at the end so that stopping one never holds up the loop."""

    def retire(self, worker: WorkerHandle) -> None:
        """Ask an idle worker to stop, without waiting for it."""
        worker.request_stop()
        self.retired.append(worker)

    def close(self) -> None:
        """Wait briefly for retired workers, then kill any that linger."""
        for worker in self.retired:
            worker.process.join(5)
            worker.kill()

    def assign(self, slot: _Slot) -> None:
        """Give an idle slot its next job, keeping its worker's framework while it has work."""
        while slot.job is None:
            worker = slot.worker
            framework = worker.framework if worker and self.queues.get(worker.framework) else \
                max((f for f in self.queues if self.queues[f]), key=lambda f: len(self.queues[f]), default=None)
            if framework is None:
                if worker is not None:
                    self.retire(worker)
                    slot.worker = None
                return
            slot.job = self.queues[framework].popleft()
            if worker is not None and worker.framework == framework:
                self._send(slot)  # a dead worker leaves the slot idle and workerless: the loop spawns one
                continue
            if worker is not None:
                self.retire(worker)
            slot.worker = WorkerHandle.spawn(framework, self.sweep.knobs, self.sweep.live, self.framework_tracing,
                                             self.framework_log, self.keep_bodies)
            slot.deadline = slot.worker.startup_deadline

    def on_message(self, slot: _Slot) -> None:
        """The slot's worker said something: it is ready, or an episode finished or broke."""
        assert slot.worker is not None and slot.job is not None
        if slot.starting:
            try:
                slot.worker.accept_ready()
            except WorkerFailed as exc:
                self._startup_failed(slot, exc)
                return
            self._send(slot)
            return
        job = slot.job
        try:
            message = slot.worker.connection.recv()
        except (EOFError, OSError):
            message = ("infra_error", f"the {job.framework} worker died")
        slot.job = None
        if message[0] == "result" and time.monotonic() - slot.sent_at > self.time_limit:
            # Finished, but past its limit: the limit holds even when the result was already on its way.
            self.infra(job, "timeout", "timeout", f"finished after the {self.time_limit:g} s limit", slot.sent_at)
            return
        if message[0] == "result":
            self.record(job, message[1], message[2], message[3] if len(message) > 3 else None)
            return
        self.infra(job, "infra_error", "error", message[1], slot.sent_at)
        slot.worker.kill()
        slot.worker = None

    def infra(self, job: EpisodeJob, status: str, termination: str, error: str, since: float) -> None:
        """Record ``job`` as an episode the lab could not finish (timeout or infra error)."""
        wall_ms = (time.monotonic() - since) * 1000 if since else 0.0
        self.record(job, _infra_row(job, status, termination, error, wall_ms), [])

    def on_deadline(self, slot: _Slot) -> None:
        """A deadline passed: a start-up that took too long, or an episode past its time limit."""
        assert slot.worker is not None and slot.job is not None
        if slot.starting:
            self._startup_failed(slot, slot.worker.startup_overdue())
            return
        job = slot.job
        slot.worker.kill()
        slot.worker = None
        slot.job = None
        self.infra(job, "timeout", "timeout", f"killed after the {self.time_limit:g} s limit", slot.sent_at)

    def _send(self, slot: _Slot) -> None:
        assert slot.worker is not None and slot.job is not None
        try:
            slot.worker.send(slot.job)
        except WorkerFailed as exc:
            job = slot.job
            slot.worker = None
            slot.job = None
            if job in self.resent:
                self.infra(job, "infra_error", "error", str(exc), 0.0)
            else:
                self.resent.add(job)
                self.queues[job.framework].appendleft(job)
            return
        slot.sent_at = time.monotonic()
        slot.deadline = slot.sent_at + self.time_limit  # the episode's clock starts now, not at spawn

    def _startup_failed(self, slot: _Slot, exc: WorkerFailed) -> None:
        assert slot.worker is not None and slot.job is not None
        framework, job = slot.worker.framework, slot.job
        slot.worker.kill()
        slot.worker = None
        slot.job = None
        self.startup_failures[framework] += 1
        self.infra(job, "infra_error", "error", str(exc), 0.0)
        if self.startup_failures[framework] >= 2:
            while self.queues[framework]:
                self.infra(self.queues[framework].popleft(), "infra_error", "error", str(exc), 0.0)


__all__ = ["DEFAULT_TIME_LIMIT_S", "RunInterrupted", "RunSummary", "StoreError", "run_metadata", "run_sweep"]
