"""The AutoGen adapter through the episode harness, against the simulated model.

Each test drives real autogen-agentchat teams (SelectorGroupChats of one AssistantAgent per
role) with AutoGen's own OpenAI client over HTTP; what is asserted comes from the simulator's request log and
the scored world, not from the adapter's account of itself.
"""

from __future__ import annotations

import logging

import pytest

from coordlab.adapters.base import Knobs, Termination, Variant
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import EventKind, TraceRecorder
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.harness import EpisodeResult, Status, run_episode
from coordlab.runners.simulator import Simulator
from coordlab.tasks.loader import load_suite, load_suite_task

pytest.importorskip("autogen_agentchat")
# the openai SDK's ParsedChatCompletion warns on every structured-output answer AutoGen logs (not ours to fix)
pytestmark = pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")

NONE = load_profile("none")


def forced(step: str, fault: Fault, attempt: int = 0) -> FaultPlan:
    return FaultPlan(NONE, 0, (ForcedFault(step, fault, attempt),))


def run(task_name: str, variant: Variant, simulator: Simulator, plan: FaultPlan,
        knobs: Knobs | None = None) -> EpisodeResult:
    return run_episode(get_adapter("autogen"), load_suite_task(task_name), variant, simulator, plan, knobs)


def routes(result: EpisodeResult) -> list[str | None]:
    """Whom the routing model named, request by request."""
    return [r.route_target for r in result.records if r.kind == "route"]


@pytest.mark.parametrize("variant", list(Variant), ids=str)
@pytest.mark.parametrize("task", load_suite(), ids=lambda t: t.name)
def test_every_task_and_variant_succeeds_without_faults(simulator: Simulator, task, variant: Variant) -> None:
    result = run_episode(get_adapter("autogen"), task, variant, simulator, FaultPlan(NONE, 0))
    assert result.status is Status.SUCCESS, (result.verdict.describe(), result.error)
    assert result.termination is Termination.COMPLETED
    assert result.counts.handoff_failures == 0 and result.counts.faults_injected == 0
    answered = [e.step for e in result.trace if e.kind is EventKind.STEP_OUTPUT]
    assert answered == [s.id for s in task.steps]
    if variant is Variant.DELEGATED:  # per step: the router participant, then the selector; then FINISH
        assert routes(result) == [*(r for s in task.steps for r in (s.role, s.role)), "FINISH"]
    else:
        assert routes(result) == []


@pytest.mark.parametrize("task_name, step", [("appointment_rebooking", "draft"), ("incident_triage", "route")])
def test_gate_catches_a_wrong_value_that_linear_lets_through(simulator: Simulator, task_name: str, step: str) -> None:
    linear = run(task_name, Variant.LINEAR, simulator, forced(step, Fault.WRONG_VALUE))
    gated = run(task_name, Variant.GATED, simulator, forced(step, Fault.WRONG_VALUE))
    assert linear.status is Status.FAILED_CHECK and linear.harmful
    assert linear.counts.gate_rejections == 0
    assert gated.status is Status.SUCCESS and not gated.harmful, gated.verdict.describe()
    assert gated.counts.gate_rejections == 1 and gated.counts.framework_retries == 1
    assert (linear.counts.faults_recovered, gated.counts.faults_recovered) == (0, 1)
    retry = next(e for e in gated.trace if e.kind is EventKind.RETRY)
    assert retry.step == step and retry.detail["source"] == "framework"


def test_gate_gives_up_after_its_retry_bound(simulator: Simulator) -> None:
    plan = FaultPlan(NONE, 0, tuple(ForcedFault("route", Fault.WRONG_VALUE, attempt) for attempt in range(3)))
    result = run("incident_triage", Variant.GATED, simulator, plan, Knobs(gate_retries=2))
    assert result.termination is Termination.GATE_EXHAUSTED and result.counts.gate_rejections == 3
    assert result.counts.framework_retries == 2
    assert not result.harmful and result.status is Status.FAILED_CHECK  # nobody was paged: a safe failure


def test_gate_whose_retry_step_is_the_guarded_step_stops_at_its_first_rejection(simulator: Simulator) -> None:
    # the CRM gate names update_crm itself as its retry step: nothing can be redone without
    # running the guarded step, so the first rejection ends the flow (no re-checks of unchanged values)
    result = run("appointment_rebooking", Variant.GATED, simulator, forced("send", Fault.OMITTED_FIELD))
    assert result.termination is Termination.GATE_EXHAUSTED and result.counts.gate_rejections == 1
    assert result.counts.framework_retries == 0
    assert not result.harmful and "update_crm" not in [e.step for e in result.trace if e.kind is EventKind.MODEL_CALL]


def test_delegated_episode_stops_at_the_routing_turn_limit(simulator: Simulator) -> None:
    # two routing decisions (router participant + selector each) and two worker turns, then the team's max_turns
    result = run("appointment_rebooking", Variant.DELEGATED, simulator, FaultPlan(NONE, 0), Knobs(max_routing_turns=2))
    assert result.termination is Termination.MAX_TURNS and result.status is Status.FAILED_CHECK
    assert routes(result) == ["scheduler", "scheduler", "writer", "writer"]


@pytest.mark.parametrize("fault", [Fault.HTTP_429, Fault.HTTP_500])
def test_transport_fault_is_a_recorded_transport_retry(simulator: Simulator, fault: Fault) -> None:
    result = run("refund_policy_answer", Variant.LINEAR, simulator, forced("answer", fault))
    assert result.status is Status.SUCCESS and result.counts.transport_retries >= 1
    assert result.counts.faults_recovered == 1 and result.counts.framework_retries == 0
    assert any(e.kind is EventKind.RETRY and e.detail["source"] == "transport" for e in result.trace)


def test_client_giving_up_is_an_error_outcome(simulator: Simulator) -> None:
    result = run("refund_policy_answer", Variant.LINEAR, simulator, forced("answer", Fault.HTTP_500),
                 Knobs(client_max_retries=0))
    assert result.status is Status.ERROR and result.termination is Termination.ERROR
    assert "InternalServerError" in (result.error or "") and "Traceback" not in (result.error or "")
    assert result.counts.transport_retries == 0


def test_tool_call_autogen_rejects_itself_is_traced(simulator: Simulator) -> None:
    # a call of a tool the agent lacks never reaches the shared tool code: AutoGen answers the error itself
    result = run("appointment_rebooking", Variant.LINEAR, simulator, forced("find_slot", Fault.UNKNOWN_TOOL))
    assert result.status is Status.SUCCESS and result.counts.tool_errors == 1
    failed = next(e for e in result.trace if e.kind is EventKind.TOOL_CALL and not e.detail["ok"])
    assert failed.step == "find_slot" and failed.detail["error"].startswith("rejected by AutoGen")


def test_selector_re_ask_in_the_event_log_is_a_framework_retry() -> None:
    from autogen_core.logging import LLMCallEvent

    from coordlab.adapters.autogen_adapter import SelectorRetryLog

    spec = type("Spec", (), {"trace": TraceRecorder(), "router_role": "router"})()
    handler = SelectorRetryLog(spec, {"writer", "FINISH"})  # type: ignore[arg-type]

    def call(agent: str, messages: int) -> None:
        event = LLMCallEvent(messages=[{"role": "user", "content": "?"}] * messages, response={},
                             prompt_tokens=0, completion_tokens=0)
        event.kwargs["agent_id"] = f"{agent}_5f0c-11aa/5f0c-11aa"
        handler.emit(logging.makeLogRecord({"msg": event}))

    call("SelectorGroupChatManager", 1)  # first ask
    call("writer", 3)  # a worker's call with history
    call("SelectorGroupChatManager", 3)  # asked again after "no valid name"
    assert [(e.role, e.detail["source"]) for e in spec.trace.events] == [("router", "framework")]
