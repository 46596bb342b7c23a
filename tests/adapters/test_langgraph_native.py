"""LangGraph's own handling of forced faults, measured: ChatOpenAI structured output, ToolNode, RetryPolicy,
gate Commands, the supervisor, and the checkpointer. Each test pins what the framework does, not a wish."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.types import RetryPolicy

from coordlab.adapters.base import Knobs, Termination, Variant
from coordlab.adapters.langgraph_adapter import TRANSPORT_ERRORS, LangGraphAdapter, LangGraphEpisode
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import EventKind
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.harness import EpisodeResult, Status, run_episode
from coordlab.runners.simulator import ROUTER_ROLE, Simulator
from coordlab.tasks.loader import load_suite_task

NONE = load_profile("none")
TASK = "appointment_rebooking"
VARIANTS = pytest.mark.parametrize("variant", list(Variant), ids=lambda v: v.value)


class Recorded(LangGraphEpisode):
    """Keeps the last episode so a test can read the graph's checkpointed state (changes nothing else)."""

    last: ClassVar[LangGraphEpisode | None] = None

    def __init__(self, spec: Any):
        super().__init__(spec)
        Recorded.last = self


class OneAttempt(Recorded):
    """A plug-in changing one behaviour: a RetryPolicy that never re-runs a node."""

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=1, retry_on=TRANSPORT_ERRORS)


def adapter_with(episode_class: type[LangGraphEpisode]) -> LangGraphAdapter:
    adapter = LangGraphAdapter()
    adapter.episode_class = episode_class
    return adapter


def run(variant: Variant, simulator: Simulator, *faults: ForcedFault, knobs: Knobs | None = None,
        episode_class: type[LangGraphEpisode] = Recorded, task: str = TASK) -> EpisodeResult:
    return run_episode(adapter_with(episode_class), load_suite_task(task), variant, simulator,
                       FaultPlan(NONE, 0, faults), knobs)


def calls_for(result: EpisodeResult, step: str) -> list[str]:
    return [r.kind for r in result.records if r.step == step and r.role != ROUTER_ROLE]


def tool_events(result: EpisodeResult) -> list[tuple[str, bool, str | None]]:
    return [(e.detail["name"], e.detail["ok"], e.detail["error"])
            for e in result.trace if e.kind is EventKind.TOOL_CALL]


def messages() -> list[Any]:
    assert Recorded.last is not None
    return Recorded.last.state()["messages"]


@VARIANTS
def test_malformed_tool_arguments_fail_the_episode_before_tool_node_sees_them(simulator: Simulator,
                                                                              variant: Variant) -> None:
    """With a response format bound next to tools (ChatOpenAI turns them strict), the openai SDK's parse()
    json-decodes every tool call's arguments: a truncated argument string raises JSONDecodeError inside the
    model node. ToolNode never gets the call, so no ToolInvocationError goes back and nothing repairs it."""
    result = run(variant, simulator, ForcedFault("find_slot", Fault.MALFORMED_TOOL_ARGS))
    assert result.termination is Termination.ERROR and result.status is Status.ERROR
    assert result.error is not None and result.error.startswith("JSONDecodeError")
    assert calls_for(result, "find_slot") == ["tool_call"]  # the malformed call, never re-asked
    assert tool_events(result) == [] and result.counts.faults_recovered == 0
    assert result.counts.framework_retries == 0  # not a transport error: the RetryPolicy leaves it alone
    assert not result.harmful


@VARIANTS
def test_an_unknown_tool_goes_back_to_the_model_as_tool_node_error_and_is_repaired(simulator: Simulator,
                                                                                  variant: Variant) -> None:
    """ToolNode answers a call of a tool it does not have with its own error ToolMessage; the model retries."""
    result = run(variant, simulator, ForcedFault("find_slot", Fault.UNKNOWN_TOOL))
    assert result.status is Status.SUCCESS, (result.verdict.describe(), result.error)
    assert tool_events(result)[0] == ("crm_lookup_v2", False, "unknown tool")
    assert calls_for(result, "find_slot") == ["tool_call"] * 3 + ["final"]  # one turn more than without the fault
    refusal = next(m for m in messages() if isinstance(m, ToolMessage) and m.status == "error")
    assert "crm_lookup_v2 is not a valid tool" in str(refusal.content)


def issues(result: EpisodeResult) -> set[tuple[str | None, str, str, str]]:
    return {(r.step, i.field, i.kind, i.cause) for r in result.records for i in r.handoff_issues}


def step_outputs(result: EpisodeResult, step: str) -> list[dict[str, Any]]:
    return [e.detail["outputs"] for e in result.trace if e.kind is EventKind.STEP_OUTPUT and e.step == step]


@pytest.mark.parametrize("variant, status, termination", [
    (Variant.LINEAR, Status.FAILED_CHECK, Termination.COMPLETED),
    (Variant.GATED, Status.SUCCESS, Termination.COMPLETED),
    (Variant.DELEGATED, Status.FAILED_CHECK, Termination.ROUTED_OUT)], ids=lambda v: str(v))
def test_an_empty_answer_arrives_as_nulls_that_only_a_gate_stops(simulator: Simulator, variant: Variant,
                                                                  status: Status, termination: Termination) -> None:
    """Under strict structured output an empty answer arrives as schema JSON with every field null, which
    with_structured_output parses without an error: nothing raises and nobody re-asks. linear: the step schema
    keeps the null and the next node hands it on; the coordinator calls send_email with a null body, ToolNode
    runs it and the tool refuses it, the CRM is updated anyway. gated: the gate before send rejects the null
    confirmation and the writer's redo gives a real one. delegated: the role schema drops the null (no step
    output), the supervisor routes on regardless, the same refused email follows, and the run ends routed out."""
    result = run(variant, simulator, ForcedFault("draft", Fault.EMPTY_ANSWER))
    assert result.status is status and result.termination is termination, (result.verdict.describe(), result.error)
    assert result.error is None and not result.harmful
    draft = [(r.attempt, r.fault, r.outputs) for r in result.records if r.step == "draft" and r.role != ROUTER_ROLE]
    assert draft[0] == (0, "empty_answer", {"confirmation": None})
    sent = [e.detail["tool"] for e in result.trace if e.kind is EventKind.SIDE_EFFECT]
    if variant is Variant.GATED:
        assert [attempt for attempt, _, _ in draft] == [0, 1] and draft[1][1] is None
        assert "Dana Whitfield" in draft[1][2]["confirmation"] and "2026-11-26T16:30" in draft[1][2]["confirmation"]
        assert result.counts.gate_rejections == 1 and result.counts.framework_retries == 1
        assert result.counts.faults_recovered == 1 and issues(result) == set()
        assert sent == ["send_email", "crm_update"]
    else:
        assert len(draft) == 1 and result.counts.framework_retries == 0 and result.counts.faults_recovered == 0
        assert issues(result) == {("send", "confirmation", "corrupted", "model_error")}
        assert ("send_email", False, "send_email: argument 'body' must be string, got NoneType") in tool_events(result)
        assert sent == ["crm_update"]
        # the step schema hands the null on as the field's value; the role schema's optional field drops it
        assert step_outputs(result, "draft") == ([{"confirmation": None}] if variant is Variant.LINEAR else [])


@pytest.mark.parametrize("variant, termination, harmful", [
    (Variant.LINEAR, Termination.COMPLETED, True), (Variant.GATED, Termination.GATE_EXHAUSTED, False),
    (Variant.DELEGATED, Termination.ROUTED_OUT, True)], ids=lambda v: str(v))
def test_an_omitted_field_is_a_null_a_step_schema_keeps_and_a_role_schema_drops(
        simulator: Simulator, variant: Variant, termination: Termination, harmful: bool) -> None:
    """Under strict structured output an omitted field arrives as null beside the step's other fields (find_slot
    leaves out slot). A step's schema (every field required, any value) takes the null as the slot's value; a
    delegated role agent's schema (every field optional) treats the null as not given and drops it. Either way
    nothing raises: the writer drafts around the null, linear and delegated send that email (harmful) and the
    tool refuses crm_update's null value; in gated the gate rejects every redo of the draft, since the redo
    cannot mend find_slot's null, and the gate's bound ends the run before anything is sent."""
    result = run(variant, simulator, ForcedFault("find_slot", Fault.OMITTED_FIELD))
    assert result.status is Status.FAILED_CHECK and result.termination is termination, result.verdict.describe()
    assert result.error is None and result.harmful is harmful
    answer = next(r for r in result.records if r.step == "find_slot" and r.kind == "final")
    assert answer.fault == "omitted_field" and answer.outputs is not None and answer.outputs["slot"] is None
    assert {"customer_name", "customer_email"} <= {k for k, v in answer.outputs.items() if v is not None}
    assert Recorded.last is not None
    values = Recorded.last.state()["values"]
    if variant is Variant.DELEGATED:
        assert "slot" not in values and "slot" not in step_outputs(result, "find_slot")[0]
    else:
        assert "slot" in values and values["slot"] is None and step_outputs(result, "find_slot")[0]["slot"] is None
    assert ("draft", "slot", "corrupted", "model_error") in issues(result)
    if variant is Variant.GATED:
        assert [r.attempt for r in result.records if r.step == "draft"] == [0, 1, 2]
        assert result.counts.gate_rejections == 3 and not any(r.step == "send" for r in result.records)
    else:
        assert ("update_crm", "slot", "corrupted", "model_error") in issues(result)
        assert ("crm_update", False, "crm_update: argument 'value' must be string, got NoneType") in tool_events(result)
        assert [e.detail["tool"] for e in result.trace if e.kind is EventKind.SIDE_EFFECT] == ["send_email"]


def test_gate_redo_puts_the_rejection_into_the_messages_and_reruns_the_retry_step(simulator: Simulator) -> None:
    result = run(Variant.GATED, simulator, ForcedFault("draft", Fault.WRONG_VALUE))
    assert result.status is Status.SUCCESS, result.verdict.describe()
    assert result.counts.gate_rejections == 1 and result.counts.framework_retries == 1
    assert [r.attempt for r in result.records if r.step == "draft"] == [0, 1]
    history = messages()
    rejection = next(i for i, m in enumerate(history) if isinstance(m, HumanMessage) and m.name == "gate")
    assert str(history[rejection].content).startswith("Rejected by the gate before 'send'")
    redo = history[rejection + 1]  # the retry step's node runs again: its instruction, then the writer's answer
    assert isinstance(redo, HumanMessage) and "[coordlab:step=draft]" in str(redo.content)
    assert isinstance(history[rejection + 2], AIMessage) and history[rejection + 2].name == "writer"
    # the redo's request carries the whole exchange, the wrong draft and the rejection included
    first, second = [r.prompt_tokens for r in result.records if r.step == "draft"]
    assert second > first


def test_gate_redo_stops_at_the_bound_with_the_guarded_step_never_run(simulator: Simulator) -> None:
    faults = [ForcedFault("draft", Fault.WRONG_VALUE, attempt) for attempt in range(2)]
    result = run(Variant.GATED, simulator, *faults, knobs=Knobs(gate_retries=1))
    assert result.termination is Termination.GATE_EXHAUSTED and result.error is None
    assert result.counts.gate_rejections == 2 and result.counts.framework_retries == 1
    assert not any(r.step == "send" for r in result.records) and not result.harmful


@VARIANTS
def test_transport_fault_past_the_client_is_retried_by_the_node_retry_policy(simulator: Simulator,
                                                                             variant: Variant) -> None:
    """client_max_retries=0: the SDK gives up on the 500 at once; LangGraph's RetryPolicy re-runs the model node."""
    knobs = Knobs(client_max_retries=0)
    clean = run(variant, simulator, knobs=knobs)
    result = run(variant, simulator, ForcedFault("draft", Fault.HTTP_500), knobs=knobs)
    assert result.status is Status.SUCCESS, (result.verdict.describe(), result.error)
    assert result.counts.transport_retries == 0 and result.counts.framework_retries == 1
    retry = next(e for e in result.trace if e.kind is EventKind.RETRY)
    assert retry.role == "writer" and "RetryPolicy re-ran the model node (attempt 2)" in retry.detail["reason"]
    assert calls_for(result, "draft") == ["transport_fault", "final"]
    assert result.counts.model_calls == clean.counts.model_calls  # the failed request is not a model call
    assert result.counts.faults_recovered == 1


def test_without_node_retries_the_same_fault_ends_the_episode(simulator: Simulator) -> None:
    """The same fault with a plug-in RetryPolicy of one attempt (no copy of run()): an error termination."""
    result = run(Variant.LINEAR, simulator, ForcedFault("draft", Fault.HTTP_500), knobs=Knobs(client_max_retries=0),
                 episode_class=OneAttempt)
    assert result.termination is Termination.ERROR and result.status is Status.ERROR
    assert result.error is not None and result.error.startswith("OpenAIAPIError: Error code: 500")
    assert result.counts.framework_retries == 0 and not any(r.step == "send" for r in result.records)


def test_a_run_cut_short_keeps_its_checkpointed_state(simulator: Simulator) -> None:
    """A 500 at update_crm that neither the client (no retries) nor the node's RetryPolicy (one attempt) absorbs
    ends the run in an error: the checkpointer still holds the state of the last superstep that completed."""
    result = run(Variant.LINEAR, simulator, ForcedFault("update_crm", Fault.HTTP_500),
                 knobs=Knobs(client_max_retries=0), episode_class=OneAttempt)
    assert result.status is Status.ERROR and result.termination is Termination.ERROR
    assert result.error is not None and result.error.startswith("OpenAIAPIError: Error code: 500")
    assert [(r.kind, r.fault) for r in result.records if r.step == "update_crm"] == [("transport_fault", "http_500")]
    assert Recorded.last is not None
    state = Recorded.last.state()
    assert set(state["outputs"]) == {"find_slot", "draft", "send"}  # the last completed superstep
    assert state["outputs"]["send"] == {"message_id": "msg-1"} and "crm_status" not in state["values"]
    assert [e.detail["tool"] for e in result.trace if e.kind is EventKind.SIDE_EFFECT] == ["send_email"]


def test_a_wrong_routing_decision_to_an_idle_role_costs_a_redo_and_a_reroute(simulator: Simulator) -> None:
    """Misrouted to the scheduler after its work is done, the agent answers its own step again from the
    conversation (no tool calls: the results are in the shared messages); the supervisor then reroutes."""
    clean = run(Variant.DELEGATED, simulator)
    result = run(Variant.DELEGATED, simulator, ForcedFault("send", Fault.WRONG_HANDOFF_TARGET))
    assert result.status is Status.SUCCESS, result.verdict.describe()
    assert result.counts.handoff_failures == 0 and result.counts.faults_recovered == 1  # made good: no failed handoff
    routes = [r.route_target for r in result.records if r.kind == "route"]
    assert routes == ["scheduler", "writer", "scheduler", "coordinator", "coordinator", "FINISH"]
    assert calls_for(result, "find_slot")[-1] == "final" and calls_for(result, "find_slot").count("final") == 2
    assert result.counts.model_calls == clean.counts.model_calls + 2  # one routing turn and one worker answer


def test_a_wrong_routing_decision_to_a_busy_role_sends_before_the_draft_exists(simulator: Simulator) -> None:
    """Misrouted to the coordinator first, the agent picks its first step (send) with nothing to send: the tool
    rejects the call, the agent answers anyway, and the supervisor later finishes with the email never sent."""
    result = run(Variant.DELEGATED, simulator, ForcedFault("find_slot", Fault.WRONG_HANDOFF_TARGET))
    assert [r.route_target for r in result.records if r.kind == "route"][0] == "coordinator"
    missing = {(r.step, i.field) for r in result.records for i in r.handoff_issues if i.kind == "missing"}
    assert ("send", "confirmation") in missing
    assert tool_events(result)[0][:2] == ("send_email", False)
    assert result.status is Status.FAILED_CHECK and result.termination is Termination.ROUTED_OUT
    assert not result.harmful


@VARIANTS
def test_langgraph_no_longer_sends_what_plain_sends(simulator: Simulator, variant: Variant) -> None:
    """Same episode, same model behaviour: LangGraph's agents share the team's messages, so its prompts differ."""
    task = load_suite_task(TASK)
    plain = run_episode(get_adapter("plain"), task, variant, simulator, FaultPlan(NONE, 0))
    langgraph = run_episode(get_adapter("langgraph"), task, variant, simulator, FaultPlan(NONE, 0))
    assert plain.status is langgraph.status is Status.SUCCESS
    assert langgraph.counts.prompt_tokens != plain.counts.prompt_tokens
    assert [r.prompt_tokens for r in langgraph.records] != [r.prompt_tokens for r in plain.records]


def test_no_tokenizer_is_loaded_on_the_hot_path(simulator: Simulator) -> None:
    """ChatOpenAI counts tokens with tiktoken only when asked (get_num_tokens); nothing here asks."""
    import tiktoken.registry

    for variant in Variant:
        assert run(variant, simulator).status is Status.SUCCESS
    assert tiktoken.registry.ENCODINGS == {}
