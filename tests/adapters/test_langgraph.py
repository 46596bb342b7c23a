"""The LangGraph adapter end to end against the simulator: every variant, forced faults, bounds."""

from __future__ import annotations

from typing import TypedDict

import openai
import pytest
from langgraph.errors import GraphRecursionError
from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy

from coordlab.adapters.base import Adapter, Knobs, Termination, Variant
from coordlab.adapters.langgraph_adapter import TRANSPORT_ERRORS, LangGraphEpisode, _limit
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import EventKind
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.harness import EpisodeResult, Status, run_episode
from coordlab.runners.simulator import ROUTER_ROLE, Simulator
from coordlab.tasks.loader import load_suite, load_suite_task

NONE = load_profile("none")


def forced(*faults: ForcedFault) -> FaultPlan:
    return FaultPlan(NONE, 0, faults)


def run(task_name: str, variant: Variant, simulator: Simulator, plan: FaultPlan,
        knobs: Knobs | None = None) -> EpisodeResult:
    return run_episode(get_adapter("langgraph"), load_suite_task(task_name), variant, simulator, plan, knobs)


def handoffs(result: EpisodeResult) -> list[tuple[str | None, str, str]]:
    return [(e.detail["source"], e.detail["target"], e.detail["mechanism"])
            for e in result.trace if e.kind is EventKind.HANDOFF]


def test_adapter_meets_the_protocol() -> None:
    adapter = get_adapter("langgraph")
    assert isinstance(adapter, Adapter) and adapter.name == "langgraph"
    assert adapter.version().startswith("1.")
    assert all(adapter.support(v).faithful for v in Variant)


@pytest.mark.parametrize("variant", list(Variant), ids=lambda v: v.value)
@pytest.mark.parametrize("task", load_suite(), ids=lambda t: t.name)
def test_every_task_succeeds_with_no_faults(simulator: Simulator, task, variant: Variant) -> None:
    result = run_episode(get_adapter("langgraph"), task, variant, simulator, FaultPlan(NONE, 0))
    assert result.status is Status.SUCCESS, (result.verdict.describe(), result.error)
    assert result.termination is Termination.COMPLETED
    # values reached every step through graph state: nothing missing or corrupted
    assert not any(r.handoff_issues or r.kind == "unidentified" for r in result.records)
    work = [r.step for r in result.records if r.role != ROUTER_ROLE]
    assert set(work) == {s.id for s in task.steps}
    mechanisms = {m for _, _, m in handoffs(result)}
    assert mechanisms == ({"command goto"} if variant is Variant.DELEGATED else {"edge"})


@pytest.mark.parametrize("task_name, step", [("appointment_rebooking", "draft"), ("incident_triage", "route")])
def test_gate_catches_a_wrong_value_that_linear_passes_on(simulator: Simulator, task_name: str, step: str) -> None:
    plan = forced(ForcedFault(step, Fault.WRONG_VALUE))
    gated = run(task_name, Variant.GATED, simulator, plan)
    assert gated.status is Status.SUCCESS, gated.verdict.describe()
    assert gated.counts.gate_rejections >= 1 and gated.counts.framework_retries >= 1
    assert [r.attempt for r in gated.records if r.step == step and r.kind == "final"] == [0, 1]  # redone once

    linear = run(task_name, Variant.LINEAR, simulator, plan)
    assert linear.status is Status.FAILED_CHECK and linear.harmful
    assert linear.counts.gate_rejections == 0


def test_gate_bound_ends_the_episode_before_the_mutation(simulator: Simulator) -> None:
    knobs = Knobs(gate_retries=2)
    plan = forced(*(ForcedFault("draft", Fault.WRONG_VALUE, attempt) for attempt in range(3)))
    result = run("appointment_rebooking", Variant.GATED, simulator, plan, knobs)
    assert result.termination is Termination.GATE_EXHAUSTED and result.error is None
    assert result.counts.gate_rejections == 3 and result.counts.framework_retries == 2
    assert not result.harmful and not any(r.step == "send" for r in result.records)


@pytest.mark.parametrize("task_name, step, wrong_role", [("appointment_rebooking", "send", "scheduler"),
                                                         ("incident_triage", "diagnose", "collector")])
def test_delegated_recovers_from_a_misroute_to_an_idle_role(simulator: Simulator, task_name: str, step: str,
                                                             wrong_role: str) -> None:
    result = run(task_name, Variant.DELEGATED, simulator, forced(ForcedFault(step, Fault.WRONG_HANDOFF_TARGET)))
    assert result.counts.faults_recovered == 1 and result.counts.handoff_failures == 0  # made good: no failed handoff
    assert (ROUTER_ROLE, wrong_role, "command goto") in handoffs(result)
    assert result.status is Status.SUCCESS, result.verdict.describe()


def test_delegated_misroute_to_a_busy_role_runs_its_step_too_early(simulator: Simulator) -> None:
    result = run("appointment_rebooking", Variant.DELEGATED, simulator,
                 forced(ForcedFault("find_slot", Fault.WRONG_HANDOFF_TARGET)))
    assert handoffs(result)[0] == (ROUTER_ROLE, "coordinator", "command goto")
    missing = {(r.step, i.field) for r in result.records for i in r.handoff_issues if i.kind == "missing"}
    assert ("send", "confirmation") in missing
    assert result.status is Status.FAILED_CHECK


def test_routing_turns_are_bounded_by_the_knob(simulator: Simulator) -> None:
    result = run("appointment_rebooking", Variant.DELEGATED, simulator, FaultPlan(NONE, 0), Knobs(max_routing_turns=2))
    assert result.termination is Termination.MAX_TURNS
    assert result.error is None  # the supervisor's own bound, not the recursion_limit backstop
    assert sum(1 for r in result.records if r.kind == "route") == 2


@pytest.mark.parametrize("variant", list(Variant), ids=lambda v: v.value)
@pytest.mark.parametrize("fault", [Fault.HTTP_429, Fault.HTTP_500], ids=lambda f: f.value)
def test_transport_faults_are_retried_by_the_sdk(simulator: Simulator, fault: Fault, variant: Variant) -> None:
    result = run("appointment_rebooking", variant, simulator, forced(ForcedFault("draft", fault)))
    assert result.counts.transport_retries >= 1
    assert result.status is Status.SUCCESS, (result.verdict.describe(), result.error)


def test_node_retries_cover_the_transport_only() -> None:
    """The model nodes' RetryPolicy names its exceptions: transport errors, never a 4xx or a bad answer."""
    policy = LangGraphEpisode.retry_policy(None)  # type: ignore[arg-type]  # reads no episode state
    assert policy.retry_on == TRANSPORT_ERRORS and policy.max_attempts == RetryPolicy().max_attempts
    assert all(issubclass(error, openai.APIError) for error in TRANSPORT_ERRORS)
    for refused in (openai.BadRequestError, openai.AuthenticationError, openai.NotFoundError, ValueError):
        assert not issubclass(refused, TRANSPORT_ERRORS)


class _Count(TypedDict):
    n: int


@pytest.mark.parametrize("supersteps", [1, 4])
def test_recursion_limit_helper_matches_langgraph(supersteps: int) -> None:
    """Pins the measured off-by-one the adapter's limits rely on: S supersteps need limit S + 1."""
    graph = StateGraph(_Count)
    previous = START
    for i in range(supersteps):
        graph.add_node(f"n{i}", lambda state: {"n": state["n"] + 1})
        graph.add_edge(previous, f"n{i}")
        previous = f"n{i}"
    graph.add_edge(previous, END)
    compiled = graph.compile()
    assert compiled.invoke({"n": 0}, {"recursion_limit": _limit(supersteps)}) == {"n": supersteps}
    with pytest.raises(GraphRecursionError):
        compiled.invoke({"n": 0}, {"recursion_limit": _limit(supersteps) - 1})
