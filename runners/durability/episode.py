"""Run one durable episode: a first run the lab kills at the scheduled point, then a resumed run.

Both runs are fresh processes (:mod:`.attempt`); the simulator serving them lives here, in
the orchestrating process, so its request log spans the crash. Scoring reads the world
back from its journal (what the outside system did, across both runs) and the request log
(what each run asked the model): a side effect made twice is *duplicated* (harmful), one
never made is *lost*, and a model call the resumed run makes again is *work redone*.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Mapping

from coordlab.adapters.base import AdapterOutcome, Durability, Endpoint, Knobs, Termination, Variant
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import TraceEvent
from coordlab.tasks.oracle import solve
from coordlab.tasks.schema import Task
from coordlab.tasks.scoring import Verdict, score
from coordlab.tasks.world import World

from ..faults import Fault, FaultPlan, load_profile
from ..harness import API_KEY, Status
from ..simulator import MODEL_NAME, ROUTER_ROLE, RequestRecord, Simulator
from ..simulator.episode import Decision, EpisodeState
from ..sweep import TaskRef
from .attempt import AttemptJob, attempt_main
from .crash import CrashPoint, crash_point
from .journal import WorldJournal
from .review import inbox_summary, late_step

STARTUP_LIMIT_S = 180.0
"""How long a fresh process may take to import its framework and report ready."""

DEFAULT_TIME_LIMIT_S = 120.0
"""How long one run (first or resumed) may take before the lab kills it as hung."""

CRASH = "crash"
"""The request-log kind of the request at which a ``before_step`` crash killed the process (never answered)."""


class CrashingEpisode(EpisodeState):
    """A simulated episode that kills its client's process when the first request of a given step arrives."""

    def __init__(self, task: Task, plan: FaultPlan, before_step: str | None):
        super().__init__(task, plan)
        self.before_step = before_step
        self.victim: int | None = None
        """The process to kill (the first run's); None once it is dead or when nothing is to be killed."""

    def _work(self, role: str, messages: list[Mapping[str, Any]], body: Mapping[str, Any],
              base: dict[str, Any]) -> Decision:
        if self.victim is not None and self.before_step is not None:  # decide() holds the episode's lock here
            step, _ = self._step_of(role, messages, body)
            if step is not None and step.id == self.before_step:
                victim, self.victim = self.victim, None
                os.kill(victim, signal.SIGKILL)
                record = RequestRecord(step=step.id, attempt=self.attempts[step.id], kind=CRASH, fault=None,
                                       completion_tokens=0, **{**base, "status": 0})
                return Decision(record, None, Fault.CONNECTION_RESET)
        return super()._work(role, messages, body, base)


@dataclass
class RunReport:
    """How one process's run ended, as the orchestrator saw it."""

    outcome: AdapterOutcome | None
    """What the adapter returned; None when the process died first (killed, or crashed on its own)."""
    trace: list[TraceEvent] = field(default_factory=list)
    exit_code: int | None = None
    started_at: float = 0.0
    ended_at: float = 0.0
    timed_out: bool = False

    @property
    def killed(self) -> bool:
        """The process ended by SIGKILL without finishing (the scheduled crash, or the lab's time limit)."""
        return self.outcome is None and self.exit_code == -signal.SIGKILL


@dataclass
class DurableResult:
    """One durable episode, scored: did the work complete, and did each side effect happen exactly once?"""

    task: str
    framework: str
    framework_version: str
    variant: str
    seed: int
    crash: CrashPoint
    knobs: dict[str, Any]
    crashed: bool
    """The first run died at the crash point (False: it ended before reaching it; then nothing was resumed)."""
    resume_path: str
    """The framework's resume mechanism as its adapter declares it ("" = none: a resumed run starts over)."""
    resumed_from: str | None
    """What the resumed run read back (the adapter's words); None when it started over."""
    status: Status
    termination: Termination
    verdict: Verdict
    duplicated: int
    """Side effects of the correct run made more than once (each extra copy counts)."""
    lost: int
    """Side effects of the correct run never made."""
    redone_calls: int
    """Model calls the resumed run made that repeat one the first run had already made (same role, step, kind)."""
    calls_before: int
    calls_after: int
    recover_s: float | None
    """Seconds from the kill to the resumed run's first model call that is new work (or its end, if none)."""
    wall_s: float
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    reviews: dict[str, int] | None = None
    """With a reviewer: how many approvals, rejections and late answers it gave, and changes made unapproved."""
    effects_at_crash: int | None = None
    """The world's changes when the first run died (read from the journal before the resumed run started)."""
    traces: tuple[list[TraceEvent], list[TraceEvent]] = field(default_factory=lambda: ([], []))

    @property
    def exactly_once(self) -> bool:
        """Every side effect of the correct run happened once: none twice, none missing."""
        return self.duplicated == 0 and self.lost == 0

    @property
    def scored(self) -> bool:
        """Whether the episode counts in the rates: its first run died at the crash point, or failed before
        reaching it (a framework must not escape the crash by failing first). A first run that succeeded
        without reaching the point met no crash, and is only counted."""
        return self.crashed or self.status is not Status.SUCCESS

    @property
    def harmful(self) -> bool:
        """A side effect happened that the correct run would not make (a duplicate above all)."""
        return self.verdict.harmful


def task_ref(task: Task | TaskRef) -> TaskRef:
    """How a fresh process loads ``task`` again: by its file and parameters."""
    if isinstance(task, TaskRef):
        return task
    if task.source is None:
        raise ValueError(f"task {task.name!r} was not loaded from a file; a fresh process could not load it")
    return TaskRef(str(task.source), tuple(sorted(task.params.items())))


def effect_counts(task: Task, world: World) -> tuple[int, int]:
    """(duplicated, lost): changes made more often than the correct run makes them, and its changes never made.

    A repeat is counted by tool, whatever its arguments: a resumed run that sends the email
    again with another body has still sent it twice. A change is lost when the correct run's
    exact change (tool and arguments) is missing.
    """
    correct = solve(task).side_effects
    per_tool = Counter(e.tool for e in world.side_effects)
    duplicated = sum(max(0, per_tool[tool] - n) for tool, n in Counter(e.tool for e in correct).items())
    actual = Counter(e.signature for e in world.side_effects)
    lost = sum(max(0, n - actual[s]) for s, n in Counter(e.signature for e in correct).items())
    return duplicated, lost


def work_redone(before: list[RequestRecord], after: list[RequestRecord]) -> tuple[int, RequestRecord | None]:
    """How many of ``after``'s model calls repeat one of ``before``'s, and ``after``'s first that does not.

    A call is identified by (role, step, kind): the resumed run asking for step ``draft``'s
    tool call again is work the first run had already paid for.
    """
    paid = Counter((r.role, r.step, r.kind) for r in before)
    redone, first_new = 0, None
    for record in after:
        key = (record.role, record.step, record.kind)
        if paid[key] > 0:
            paid[key] -= 1
            redone += 1
        elif first_new is None:
            first_new = record
    return redone, first_new


def _model_calls(records: list[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if r.kind not in (CRASH, "transport_fault")]


def attempt_context() -> BaseContext:
    """How fresh processes are made by default: spawned, a clean interpreter that imports its framework."""
    return multiprocessing.get_context("spawn")


def _run_once(context: BaseContext, job: AttemptJob, episode: CrashingEpisode | None,
              time_limit_s: float) -> RunReport:
    """Start a fresh process for ``job``, let it run (as the episode's victim when given), report how it ended."""
    parent, child = context.Pipe()
    process = context.Process(target=attempt_main, args=(job, child), name=f"coordlab-durable-{job.framework}",
                              daemon=True)
    process.start()
    child.close()
    report = RunReport(None)
    try:
        if not parent.poll(STARTUP_LIMIT_S):
            raise TimeoutError(f"the {job.framework} process did not start within {STARTUP_LIMIT_S:g} s")
        status, pid = parent.recv()
        if status != "ready":
            raise RuntimeError(f"the {job.framework} process reported {status!r} instead of being ready")
        if episode is not None:
            episode.victim = pid
        report.started_at = time.perf_counter()
        parent.send("go")
        if parent.poll(time_limit_s):
            _, report.outcome, report.trace = parent.recv()
        else:
            report.timed_out = True
    except (EOFError, OSError):
        pass  # the process died: killed at the crash point, or crashed on its own
    finally:
        report.ended_at = time.perf_counter()
        if episode is not None:
            episode.victim = None
        if process.is_alive() and report.outcome is None:
            process.kill()
        process.join(10)
        if process.is_alive():  # it answered but does not exit (a framework's thread holds it): it goes now
            process.kill()
            process.join(10)
        report.exit_code = process.exitcode
        parent.close()
    return report


def run_durable_episode(framework: str, task: Task | TaskRef, variant: Variant, seed: int, folder: Path,
                        crash: CrashPoint | None = None, knobs: Knobs | None = None,
                        time_limit_s: float = DEFAULT_TIME_LIMIT_S, simulator: Simulator | None = None,
                        context: BaseContext | None = None, review: bool = False) -> DurableResult:
    """Run ``task`` in ``framework``, kill it at ``crash`` (default: the seed's scheduled point), resume, score.

    ``folder`` must be empty or new: it holds the world's journal and the framework's saved
    state. ``context`` makes the fresh processes (default: spawned ones). With ``review``, a
    scripted human approves every gated step instead, and the only crash is a late answer
    (the first run dies waiting for it; ``crash`` must then be None).
    """
    started = time.perf_counter()
    knobs = knobs or Knobs()
    ref = task_ref(task)
    task = ref.load()
    if review:
        if crash is not None:
            raise ValueError("a reviewed episode crashes only where its reviewer answers late: give no crash point")
        crash = CrashPoint("awaiting_review", step=late_step(task, seed))
    crash = crash or crash_point(task, seed)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise ValueError(f"{folder}: a durable episode needs an empty folder (it holds that episode's saved state)")
    WorldJournal(folder).save(World.for_task(task))
    adapter = get_adapter(framework)
    context = context or attempt_context()
    own_simulator = simulator is None
    simulator = simulator or Simulator().start()
    plan = FaultPlan(load_profile("none"), seed, routed=variant is Variant.DELEGATED)
    episode = CrashingEpisode(task, plan, crash.step if crash.kind == "before_step" else None)
    simulator.serve(episode)
    try:
        endpoint = Endpoint({role: simulator.base_url(episode.id, role) for role in [*task.roles, ROUTER_ROLE]},
                            MODEL_NAME, API_KEY)

        def job(resume: bool) -> AttemptJob:
            return AttemptJob(framework, ref, variant, knobs, endpoint, Durability(folder, resume, episode.id),
                              crash.effect if crash.kind == "after_effect" and not resume else None, seed, review)

        first = _run_once(context, job(False), episode, time_limit_s)
        crashed = first.killed and not first.timed_out
        effects_at_crash = len(WorldJournal(folder).load(task).side_effects) if crashed else None
        second = _run_once(context, job(True), None, time_limit_s) if crashed else None
    finally:
        served = simulator.close_episode(episode.id)
        if own_simulator:
            simulator.stop()
    result = _score(adapter, task, variant, seed, crash, knobs, folder, first, second, list(served.records),
                    time.perf_counter() - started)
    result.effects_at_crash = effects_at_crash
    result.reviews = inbox_summary(folder) if review else None
    return result


def _score(adapter: Any, task: Task, variant: Variant, seed: int, crash: CrashPoint, knobs: Knobs, folder: Path,
           first: RunReport, second: RunReport | None, records: list[RequestRecord], wall_s: float) -> DurableResult:
    last = second if second is not None else first
    world = WorldJournal(folder).load(task)
    outcome = last.outcome
    notes: list[str] = []
    if outcome is None:
        why = "hung past the time limit" if last.timed_out else f"died (exit code {last.exit_code})"
        outcome = AdapterOutcome(Termination.TIMEOUT if last.timed_out else Termination.ERROR,
                                 error=f"the {'resumed' if second else 'first'} run {why}")
    notes += outcome.notes
    if second is None and not last.timed_out:
        notes.append(f"the first run ended before the crash point ({crash.describe()}): nothing to resume")
    world.final_output = dict(outcome.final_output)
    verdict = score(task, world)
    duplicated, lost = effect_counts(task, world)
    calls = _model_calls(records)
    before = [r for r in calls if second is None or r.received_at < second.started_at]
    after = [r for r in calls if second is not None and r.received_at >= second.started_at]
    redone, first_new = work_redone(before, after)
    recover_s = None
    if second is not None:
        back = first_new.received_at if first_new is not None else second.ended_at
        recover_s = back - first.ended_at
    if outcome.termination is Termination.TIMEOUT:
        status = Status.TIMEOUT
    elif outcome.termination is Termination.ERROR:
        status = Status.ERROR
    else:
        status = Status.SUCCESS if verdict.success else Status.FAILED_CHECK
    return DurableResult(
        task=task.key, framework=adapter.name, framework_version=adapter.version(), variant=variant.value,
        seed=seed, crash=crash, knobs=knobs.to_dict(), crashed=second is not None,
        resume_path=getattr(adapter, "resume_path", ""),
        resumed_from=second.outcome.resumed_from if second is not None and second.outcome is not None else None,
        status=status, termination=outcome.termination, verdict=verdict, duplicated=duplicated, lost=lost,
        redone_calls=redone, calls_before=len(before), calls_after=len(after), recover_s=recover_s, wall_s=wall_s,
        error=outcome.error, notes=notes, records=records,
        traces=(first.trace, second.trace if second is not None else []))
