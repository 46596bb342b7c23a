"""Run one episode of one adapter against the simulator, then score it and build its trace.

The harness is the same for every framework: it opens the simulator episode and a fresh
world, hands the adapter an :class:`EpisodeSpec`, and afterwards joins the adapter's trace
with the simulator's request log. Model calls, injected faults (and whether each was
recovered), transport retries and failed handoffs are counted from that log, which knows
both ends of every exchange, so no framework's own bookkeeping can flatter it.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from coordlab.adapters.base import (
    Adapter, AdapterOutcome, Endpoint, EpisodeSpec, Knobs, Termination, ToolTransport, Variant,
)
from coordlab.adapters.trace import EventKind, TraceEvent, TraceRecorder
from coordlab.tasks.schema import Task
from coordlab.tasks.scoring import Verdict, score
from coordlab.tasks.world import World

from .faults import Fault, FaultPlan
from .handoff_tally import tally_handoffs
from .recovery import EndState, fault_recovered, mechanism_recovered
from .simulator import MODEL_NAME, ROUTER_ROLE, RequestRecord, Simulator
from .simulator.upstream import Upstream

API_KEY = "sk-coordlab-simulated"
"""Any key works with the simulator; clients insist on having one."""


class Status(StrEnum):
    """An episode's outcome status."""

    SUCCESS = "success"
    FAILED_CHECK = "failed_check"
    ERROR = "error"
    TIMEOUT = "timeout"
    INFRA_ERROR = "infra_error"


@dataclass(frozen=True)
class Counts:
    """Per-episode counters, all measured from the trace and the simulator's log."""

    model_calls: int
    tool_calls: int
    tool_errors: int
    handoffs: int
    handoffs_lost: int
    """Handoffs (step attempt x field) whose value the model emitted right and the framework did not deliver intact."""
    handoff_model_errors: int
    """Handoffs whose value the producing model emitted wrong or left out, plus misroutes never made good."""
    framework_retries: int
    transport_retries: int
    gate_rejections: int
    faults_injected: int
    faults_recovered: int
    """Injected faults whose effect did not reach the final state (:mod:`coordlab.runners.recovery`)."""
    prompt_tokens: int
    completion_tokens: int

    @property
    def handoff_failures(self) -> int:
        """Every failed handoff, whatever its cause."""
        return self.handoffs_lost + self.handoff_model_errors


@dataclass
class EpisodeResult:
    """One finished episode: key, status, score, counters, timing and the joined trace."""

    task: str
    framework: str
    framework_version: str
    variant: str
    profile: str
    seed: int
    status: Status
    harmful: bool
    termination: Termination
    verdict: Verdict
    counts: Counts
    wall_ms: float
    construction_ms: float
    execution_ms: float
    knobs: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    trace: list[TraceEvent] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    started_at: float | None = None
    """``time.perf_counter()`` when the episode started (before construction): the origin of event times."""
    unreachable: str | None = None
    """Why the live endpoint did not answer one of the episode's requests: then the episode measured the
    endpoint, not the framework, and the worker records it as an infra error."""

    @property
    def simulator_ms(self) -> float:
        """Time the simulator spent answering this episode's requests (server side)."""
        return sum(r.elapsed_ms for r in self.records)

    def to_row(self) -> dict[str, Any]:
        """The episode as a row of the results store's ``episodes`` table."""
        return {
            "task": self.task, "framework": self.framework, "framework_version": self.framework_version,
            "variant": self.variant, "profile": self.profile, "seed": self.seed, "status": self.status.value,
            "harmful": int(self.harmful), "termination": self.termination.value,
            "verdict_json": json.dumps(asdict(self.verdict)), **asdict(self.counts),
            "wall_ms": self.wall_ms, "construction_ms": self.construction_ms, "execution_ms": self.execution_ms,
            "simulator_ms": self.simulator_ms, "knobs_json": json.dumps(self.knobs),
            "notes_json": json.dumps(self.notes), "error": self.error, "finished_at": time.time(),
        }

    def event_rows(self) -> list[dict[str, Any]]:
        """The trace as rows of the ``events`` table, times in ms since the episode started.

        Measured from the start (not from the first event), an event's time places it inside
        the episode's wall time, construction included, as a trace viewer draws it.
        """
        origin = self.started_at if self.started_at is not None else (self.trace[0].at if self.trace else 0.0)
        return [{"kind": e.kind.value, "at_ms": (e.at - origin) * 1000, "role": e.role, "step": e.step,
                 "detail": e.detail} for e in self.trace]

    def exchanges(self) -> list[tuple[int, Any, Any]]:
        """Each model request's (seq, request body, response body), in arrival order (a live one's through the proxy).

        The k-th MODEL_CALL event of the trace is request k: both follow the simulator's arrival order.
        """
        return [(r.seq, r.request_body, r.response_body) for r in self.records]

    @property
    def key(self) -> tuple[str, str, str, str, int]:
        """The natural key: (task@version, framework@version, variant, fault profile, seed)."""
        return (self.task, f"{self.framework}@{self.framework_version}", self.variant, self.profile, self.seed)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (trace and records included)."""
        return asdict(self)


def join_trace(events: list[TraceEvent], records: list[RequestRecord], end: EndState) -> list[TraceEvent]:
    """Merge the adapter's events with model calls, faults and transport retries from the simulator's log.

    ``end`` is what the episode left behind: a fault is marked recovered when its effect did
    not reach it.
    """
    joined = list(events)
    for index, record in enumerate(records):
        joined.append(TraceEvent(EventKind.MODEL_CALL, record.received_at, record.role, record.step, {
            "attempt": record.attempt, "kind": record.kind, "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens, "status": record.status, "stream": record.stream,
            "elapsed_ms": record.elapsed_ms,
            "tool_calls": list(record.tool_calls), "tool_call_ids": list(record.tool_call_ids),
            "route_target": record.route_target, "mechanisms": list(record.mechanisms),
            "handoff_issues": [asdict(i) for i in record.handoff_issues]}))
        if record.retry_count:
            # The SDK's own retries, counted the same way for every framework (a framework that
            # re-sends on its own, as CrewAI does after the SDK gives up on a 429, shows as a new request).
            joined.append(TraceEvent(EventKind.RETRY, record.received_at, record.role, record.step,
                                     {"source": "transport", "reason": f"client retry {record.retry_count}"}))
        if record.fault:
            joined.append(TraceEvent(EventKind.FAULT, record.received_at, record.role, record.step,
                                     {"fault": record.fault, "attempt": record.attempt,
                                      "recovered": fault_recovered(record, records[index + 1:], end)}))
    joined += mechanism_events(records, end)
    return sorted(joined, key=lambda e: e.at)


def mechanism_events(records: list[RequestRecord], end: EndState) -> list[TraceEvent]:
    """One FAULT event per mechanism and step attempt it acted on (``mechanism`` set in its detail).

    A mechanism's draw holds for its whole step attempt, so it shows on every request of the
    attempt; it is one fault, judged at the last request it acted on.
    """
    last: dict[tuple[str | None, int | None, str], int] = {}
    for index, record in enumerate(records):
        for mechanism in record.mechanisms:
            last[(record.step, record.attempt, mechanism)] = index
    return [TraceEvent(EventKind.FAULT, records[index].received_at, records[index].role, step,
                       {"fault": mechanism, "mechanism": True, "attempt": attempt,
                        "recovered": mechanism_recovered(mechanism, records[index], records[index + 1:], end)})
            for (step, attempt, mechanism), index in sorted(last.items(), key=lambda item: item[1])]


def count(trace: list[TraceEvent], records: list[RequestRecord]) -> Counts:
    """The per-episode counters (faults' recovery read from the trace's FAULT events, set by :func:`join_trace`)."""
    of = lambda kind: [e for e in trace if e.kind is kind]  # noqa: E731
    faults = of(EventKind.FAULT)
    misroutes = sum(1 for e in faults if e.detail["fault"] == Fault.WRONG_HANDOFF_TARGET.value
                    and not e.detail["recovered"])
    handoffs = tally_handoffs(records, unrecovered_misroutes=misroutes)
    return Counts(
        model_calls=sum(1 for r in records if r.kind != "transport_fault"),
        tool_calls=len(of(EventKind.TOOL_CALL)),
        tool_errors=sum(1 for e in of(EventKind.TOOL_CALL) if not e.detail["ok"]),
        handoffs=len(of(EventKind.HANDOFF)),
        handoffs_lost=handoffs.lost,
        handoff_model_errors=handoffs.model_errors,
        framework_retries=sum(1 for e in of(EventKind.RETRY) if e.detail["source"] == "framework"),
        transport_retries=sum(1 for e in of(EventKind.RETRY) if e.detail["source"] == "transport"),
        gate_rejections=sum(1 for e in of(EventKind.GATE) if not e.detail["passed"]),
        faults_injected=len(faults),
        faults_recovered=sum(1 for e in faults if e.detail["recovered"]),
        prompt_tokens=sum(r.prompt_tokens for r in records),
        completion_tokens=sum(r.completion_tokens for r in records),
    )


def tool_transport_for(adapter: Adapter, knobs: Knobs) -> tuple[Knobs, str | None]:
    """The knobs the episode runs with: the asked-for tool transport if the adapter has it, else its only one.

    The transport used is what the outcome records, with a note when it is not the one asked for
    (n8n reaches tools only over MCP; a plug-in without the attribute has native tools only).
    """
    offered = getattr(adapter, "tool_transports", frozenset({ToolTransport.NATIVE}))
    if knobs.tool_transport in offered:
        return knobs, None
    used = ToolTransport.MCP if ToolTransport.MCP in offered else ToolTransport.NATIVE
    return replace(knobs, tool_transport=used), (f"tools over {used.value}, not {knobs.tool_transport.value}: "
                                                 f"{adapter.name} offers only {used.value}")


def run_episode(adapter: Adapter, task: Task, variant: Variant, simulator: Simulator, plan: FaultPlan,
                knobs: Knobs | None = None, upstream: Upstream | None = None) -> EpisodeResult:
    """Run ``task`` once through ``adapter`` in ``variant`` against ``simulator`` under ``plan``.

    With ``upstream``, a real endpoint answers instead of the oracle, through the
    simulator's fault proxy: the same schedule, request log and bodies; no oracle, so only
    the end state scores the episode. The adapter only ever holds the simulator's URLs and
    a placeholder key; the real key stays with the proxy.
    """
    knobs = knobs or Knobs()
    started = time.perf_counter()
    world = World.for_task(task)
    world.idempotency_keys = knobs.idempotency_keys
    recorder = TraceRecorder()
    # The plan learns whether a model routes (only then can a handoff target be wrong), and the
    # episode gets the world, where a tool's response lost after its change is acted out.
    plan = replace(plan, routed=variant is Variant.DELEGATED)
    if upstream is not None and knobs.client_timeout is not None:  # nobody waits for an answer longer than that
        upstream = replace(upstream, timeout_s=min(upstream.timeout_s, knobs.client_timeout))
    knobs, transport_note = tool_transport_for(adapter, knobs)
    episode = simulator.open_episode(task, plan, world=world, upstream=upstream)
    endpoint = Endpoint({role: simulator.base_url(episode.id, role) for role in [*task.roles, ROUTER_ROLE]},
                        upstream.model if upstream else MODEL_NAME, API_KEY)
    try:
        with contextlib.ExitStack() as stack:
            if knobs.tool_transport is ToolTransport.MCP:
                from .tool_server import ToolEpisode, served_tools  # the MCP SDK and its server, only when used

                tool_urls = stack.enter_context(served_tools(
                    episode.id, ToolEpisode(task, world, recorder, episode.current_step), list(task.roles)))
                endpoint = replace(endpoint, tool_urls=tool_urls)
            outcome = adapter.run(EpisodeSpec(task, variant, endpoint, knobs, world, recorder))
    except Exception as exc:  # noqa: BLE001 - a crashing framework is an outcome, not a lab failure
        outcome = AdapterOutcome(Termination.ERROR, error="".join(traceback.format_exception_only(exc)).strip())
    finally:
        served = simulator.close_episode(episode.id)
    records = list(served.records)
    world.final_output = dict(outcome.final_output)
    verdict = score(task, world)
    trace = join_trace(recorder.events, records, EndState.of(task, world, verdict))
    for effect in world.side_effects:
        trace.append(TraceEvent(EventKind.SIDE_EFFECT, trace[-1].at if trace else started, None, None,
                                {"tool": effect.tool, "arguments": dict(effect.arguments)}))
    trace.append(TraceEvent(EventKind.TERMINATION, time.perf_counter(), None, None,
                            {"termination": outcome.termination.value, "error": outcome.error}))
    if outcome.termination is Termination.ERROR:
        status = Status.ERROR
    else:
        status = Status.SUCCESS if verdict.success else Status.FAILED_CHECK
    support = adapter.support(variant)
    notes = list(outcome.notes) + ([] if support.faithful else [f"variant not faithful: {support.note}"]) + \
        served.notes() + ([transport_note] if transport_note else [])
    return EpisodeResult(
        task=task.key, framework=adapter.name, framework_version=adapter.version(), variant=variant.value,
        profile=plan.profile.key, seed=plan.seed, status=status, harmful=verdict.harmful,
        termination=outcome.termination, verdict=verdict, counts=count(trace, records),
        wall_ms=(time.perf_counter() - started) * 1000, construction_ms=outcome.construction_ms,
        execution_ms=outcome.execution_ms, knobs=knobs.to_dict(), notes=notes, error=outcome.error,
        trace=trace, records=records, started_at=started, unreachable=served.unreachable)
