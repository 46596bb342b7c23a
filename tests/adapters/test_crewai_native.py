"""CrewAI's own handling of forced faults, measured end to end (no lab code stands in for CrewAI).

Each test pins one fault on ``appointment_rebooking`` (find_slot: scheduler with two tools;
draft: writer without tools; send and update_crm: coordinator with a mutating tool each) and
asserts what CrewAI itself did about it, read off the simulator's request log, the scored
world and the adapter's trace. A clean linear episode is 8 model calls.
"""

from __future__ import annotations

import pytest
from crewai import Agent

from coordlab.adapters.base import Knobs, Termination, Variant
from coordlab.adapters.crewai_adapter import CrewAIAdapter, CrewEpisode
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import EventKind
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.harness import EpisodeResult, Status, run_episode
from coordlab.runners.simulator import Simulator
from coordlab.tasks.loader import load_suite_task

pytestmark = pytest.mark.filterwarnings(
    # CrewAI 1.15 reads its own deprecated fields (function_calling_llm, multimodal...) on every run.
    "ignore::DeprecationWarning:crewai")

TASK = load_suite_task("appointment_rebooking")
CLEAN_LINEAR_CALLS = 8


def run(variant: Variant, simulator: Simulator, *forced: ForcedFault, knobs: Knobs | None = None,
        adapter: CrewAIAdapter | None = None) -> EpisodeResult:
    return run_episode(adapter or get_adapter("crewai"), TASK, variant, simulator,
                       FaultPlan(load_profile("none"), 0, forced), knobs)


def requests(result: EpisodeResult, step: str | None) -> list[tuple[int | None, str, str | None]]:
    """(attempt, kind, fault) of every request the simulator attributed to ``step``."""
    return [(r.attempt, r.kind, r.fault) for r in result.records if r.step == step]


def framework_retries(result: EpisodeResult) -> list[tuple[str | None, str | None, str]]:
    return [(e.role, e.step, e.detail["reason"]) for e in result.trace
            if e.kind is EventKind.RETRY and e.detail["source"] == "framework"]


def lab_tool_calls(result: EpisodeResult, step: str) -> list[tuple[str, bool]]:
    return [(e.detail["name"], e.detail["ok"]) for e in result.trace
            if e.kind is EventKind.TOOL_CALL and e.step == step]


def test_clean_linear_episode_is_the_reference(simulator: Simulator) -> None:
    result = run(Variant.LINEAR, simulator)
    assert result.status is Status.SUCCESS
    assert result.counts.model_calls == CLEAN_LINEAR_CALLS and result.counts.framework_retries == 0
    # Every step's output is CrewAI's output_pydantic conversion, as the trace records it.
    outputs = {e.step: e.detail["outputs"] for e in result.trace if e.kind is EventKind.STEP_OUTPUT}
    assert outputs["send"] == {"message_id": "msg-1"} and outputs["update_crm"] == {"crm_status": "updated"}


def test_malformed_tool_call_is_rejected_by_crewai_and_repaired_by_the_model(simulator: Simulator) -> None:
    result = run(Variant.LINEAR, simulator, ForcedFault("find_slot", Fault.MALFORMED_TOOL_ARGS))
    assert result.status is Status.SUCCESS, result.error
    # CrewAI refuses the unparseable arguments itself ("Failed to parse tool arguments as JSON") and
    # sends that back as the tool result: the lab's tool never runs, so it records no failed call.
    assert lab_tool_calls(result, "find_slot") == [("crm_lookup", True), ("calendar_free_slots", True)]
    assert result.counts.tool_errors == 0 and result.counts.framework_retries == 0
    assert requests(result, "find_slot") == [(0, "tool_call", "malformed_tool_args"), (0, "tool_call", None),
                                             (0, "tool_call", None), (0, "final", None)]
    assert result.counts.model_calls == CLEAN_LINEAR_CALLS + 1 and result.counts.faults_recovered == 1


def test_empty_answer_of_an_agent_with_tools_reruns_its_whole_task(simulator: Simulator) -> None:
    result = run(Variant.LINEAR, simulator, ForcedFault("find_slot", Fault.EMPTY_ANSWER))
    assert result.status is Status.SUCCESS, result.error
    # CrewAI raises "Invalid response from LLM call - None or empty." and max_retry_limit re-runs the
    # task from its first prompt: both tool calls are made again (no side effect here, both read-only).
    assert framework_retries(result) == [
        ("scheduler", "find_slot", "agent re-ran its task after: Invalid response from LLM call - None or empty.")]
    assert requests(result, "find_slot") == [(0, "tool_call", None), (0, "tool_call", None),
                                             (0, "final", "empty_answer"), (1, "tool_call", None),
                                             (1, "tool_call", None), (1, "final", None)]
    assert len(lab_tool_calls(result, "find_slot")) == 4
    assert result.counts.model_calls == CLEAN_LINEAR_CALLS + 3


def test_empty_answer_under_strict_output_is_a_null_crewai_hands_on_without_asking_again(
        simulator: Simulator) -> None:
    result = run(Variant.LINEAR, simulator, ForcedFault("draft", Fault.EMPTY_ANSWER))
    # The writer has no tools, so CrewAI asks it with a strict response_format (output_pydantic): an empty
    # answer arrives as {"confirmation": null}. The SDK parses it, output_pydantic accepts the null, and CrewAI
    # neither asks again nor re-runs the task. The null reaches send as task context; the coordinator calls
    # send_email with a null body, CrewAI's own tool-argument validation refuses it (the lab's tool never
    # runs), the crew updates the CRM and completes: the episode fails its check without an error.
    assert result.status is Status.FAILED_CHECK and result.termination is Termination.COMPLETED
    assert result.error is None and not result.harmful
    assert requests(result, "draft") == [(0, "final", "empty_answer")]
    assert [r.outputs for r in result.records if r.step == "draft"] == [{"confirmation": None}]
    assert result.counts.framework_retries == 0 and result.counts.faults_recovered == 0
    assert result.counts.model_calls == CLEAN_LINEAR_CALLS
    outputs = {e.step: e.detail["outputs"] for e in result.trace if e.kind is EventKind.STEP_OUTPUT}
    assert outputs["draft"] == {"confirmation": None} and outputs["send"] == {"message_id": None}
    issues = {(r.step, i.field, i.kind, i.cause) for r in result.records for i in r.handoff_issues}
    assert issues == {("send", "confirmation", "corrupted", "model_error")}
    assert requests(result, "send") == [(0, "tool_call", None), (0, "final", None)]
    assert lab_tool_calls(result, "send") == []  # refused by CrewAI before the lab's send_email ran
    assert [e.detail["tool"] for e in result.trace if e.kind is EventKind.SIDE_EFFECT] == ["crm_update"]


def test_guardrail_redo_loses_the_upstream_context(simulator: Simulator) -> None:
    result = run(Variant.GATED, simulator, ForcedFault("draft", Fault.WRONG_VALUE))
    # CrewAI's retry prompt replaces the draft task's context (find_slot's output) with the guardrail
    # error and the previous answer: the writer's two redos lack customer_name and slot, cannot draft
    # a confirmation the gate accepts, and CrewAI raises once guardrail_max_retries is spent.
    assert result.termination is Termination.GATE_EXHAUSTED and result.error is None
    assert result.status is Status.FAILED_CHECK and not result.harmful
    assert requests(result, "draft") == [(0, "final", "wrong_value"), (1, "final", None), (2, "final", None)]
    for redo in (r for r in result.records if r.step == "draft" and r.attempt):
        assert {(i.field, i.kind) for i in redo.handoff_issues} == {("customer_name", "missing"), ("slot", "missing")}
    assert result.counts.gate_rejections == 3 and result.counts.framework_retries == 2
    assert not requests(result, "send") and not result.verdict.unexpected_side_effects
    assert any(note.startswith("gated: CrewAI redid 'draft'") for note in result.notes)


def test_server_error_beyond_the_client_retries_reruns_the_agent_task(simulator: Simulator) -> None:
    result = run(Variant.LINEAR, simulator, ForcedFault("send", Fault.HTTP_500), knobs=Knobs(client_max_retries=0))
    assert result.status is Status.SUCCESS, result.error
    # The SDK does not retry (max_retries=0); the agent's max_retry_limit re-runs the send task.
    assert result.counts.transport_retries == 0
    assert [(role, step) for role, step, _ in framework_retries(result)] == [("coordinator", "send")]
    assert requests(result, "send") == [(0, "transport_fault", "http_500"), (0, "tool_call", None), (0, "final", None)]
    assert [e.detail["tool"] for e in result.trace if e.kind is EventKind.SIDE_EFFECT] == ["send_email", "crm_update"]


def test_rate_limit_beyond_the_client_retries_is_resent_by_crewai_without_an_event(simulator: Simulator) -> None:
    result = run(Variant.LINEAR, simulator, ForcedFault("send", Fault.HTTP_429), knobs=Knobs(client_max_retries=0))
    assert result.status is Status.SUCCESS, result.error
    # BaseLLM.call re-sends a rate-limited call itself: a fresh request (retry count 0) and no retry event.
    assert result.counts.transport_retries == 0 and result.counts.framework_retries == 0
    assert requests(result, "send") == [(0, "transport_fault", "http_429"), (0, "tool_call", None), (0, "final", None)]
    assert [r.retry_count for r in result.records if r.step == "send"] == [0, 0, 0]


def test_wrong_routing_decision_is_done_by_the_coworker_it_reached(simulator: Simulator) -> None:
    result = run(Variant.DELEGATED, simulator, ForcedFault("draft", Fault.WRONG_HANDOFF_TARGET))
    assert result.status is Status.SUCCESS, result.error
    # CrewAI's manager delegates draft to the coordinator; its brief describes the draft, and a
    # model asked for work its role does not own does it anyway, so nobody re-delegates.
    delegated = [(e.step, e.detail["target"]) for e in result.trace
                 if e.kind is EventKind.HANDOFF and e.step == "draft"]
    assert delegated == [("draft", "coordinator")]
    assert [(r.role, r.kind) for r in result.records if r.step == "draft" and r.role != "router"] == [
        ("coordinator", "final")]
    assert result.counts.handoff_failures == 0 and result.counts.faults_recovered == 1  # made good: no failed handoff
    assert not result.verdict.unexpected_side_effects


def test_unstructured_answer_is_converted_by_an_extra_model_call(simulator: Simulator) -> None:
    result = run(Variant.LINEAR, simulator, ForcedFault("send", Fault.PREMATURE_STOP))
    # The coordinator's answer is no JSON: CrewAI's Converter asks the model once more, with only
    # the answer text and a response_format, and gets message_id null (the text holds none).
    converter = [r for r in result.records if r.role == "coordinator" and r.step is None]
    assert [r.kind for r in converter] == ["unidentified"]
    outputs = {e.step: e.detail["outputs"] for e in result.trace if e.kind is EventKind.STEP_OUTPUT}
    assert outputs["send"] == {"message_id": None}
    assert result.counts.model_calls == CLEAN_LINEAR_CALLS + 1


def test_omitted_field_in_a_tool_agent_answer_fails_the_crew(simulator: Simulator) -> None:
    result = run(Variant.LINEAR, simulator, ForcedFault("send", Fault.OMITTED_FIELD))
    # A JSON answer missing a required field is a ValidationError in CrewAI's conversion, outside the
    # agent's max_retry_limit loop: the crew raises after the email was sent, and nothing is redone.
    assert result.termination is Termination.ERROR and result.error.startswith("ValidationError")
    assert [e.detail["tool"] for e in result.trace if e.kind is EventKind.SIDE_EFFECT] == ["send_email"]
    assert result.counts.framework_retries == 0 and not requests(result, "update_crm")


class _NoRerunEpisode(CrewEpisode):
    """A plug-in that changes one behaviour: agents that never re-run a failed task."""

    def agent(self, role: str) -> Agent:
        built = super().agent(role)
        built.max_retry_limit = 0
        return built


class _NoRerunAdapter(CrewAIAdapter):
    episode_class = _NoRerunEpisode


def test_episode_class_is_an_extension_point(simulator: Simulator) -> None:
    result = run(Variant.LINEAR, simulator, ForcedFault("send", Fault.HTTP_500), knobs=Knobs(client_max_retries=0),
                 adapter=_NoRerunAdapter())
    assert result.termination is Termination.ERROR and "500" in (result.error or "")
    assert result.counts.framework_retries == 0
