"""What AutoGen itself does with each forced fault, measured through the native adapter.

One ``AssistantAgent`` per role with structured output (``output_content_type``) in
``SelectorGroupChat`` teams; nothing here compensates AutoGen. Each test pins one fault and
asserts the measured outcome, read from the simulator's request log and the scored world.
"""

from __future__ import annotations

import pytest

from coordlab.adapters.base import AdapterOutcome, EpisodeSpec, Knobs, Termination, Variant
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import EventKind
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.harness import EpisodeResult, Status, run_episode
from coordlab.runners.simulator import Simulator
from coordlab.tasks.loader import load_suite_task
from coordlab.tasks.schema import Step

pytest.importorskip("autogen_agentchat")
# the openai SDK's ParsedChatCompletion warns on every structured-output answer AutoGen logs (not ours to fix)
pytestmark = pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")

NONE = load_profile("none")


def forced(step: str, fault: Fault, attempt: int = 0) -> FaultPlan:
    return FaultPlan(NONE, 0, (ForcedFault(step, fault, attempt),))


def run(task_name: str, variant: Variant, simulator: Simulator, plan: FaultPlan, knobs: Knobs | None = None,
        framework: str = "autogen") -> EpisodeResult:
    return run_episode(get_adapter(framework), load_suite_task(task_name), variant, simulator, plan, knobs)


def calls(result: EpisodeResult, step: str) -> int:
    """Model calls the simulator answered for ``step`` (routing calls excluded)."""
    return sum(1 for r in result.records if r.step == step and r.kind not in ("route", "transport_fault"))


def test_malformed_tool_call_is_an_error_before_autogen_sees_it(simulator: Simulator) -> None:
    # With output_content_type set, AutoGen calls the openai SDK's parse(), which needs strict
    # tools and json-decodes strict tool arguments itself: truncated arguments raise in the SDK,
    # so AutoGen's own tool-error result (and a repair by the model) never happens.
    baseline = run("appointment_rebooking", Variant.LINEAR, simulator, FaultPlan(NONE, 0))
    result = run("appointment_rebooking", Variant.LINEAR, simulator, forced("find_slot", Fault.MALFORMED_TOOL_ARGS))
    assert result.status is Status.ERROR and result.termination is Termination.ERROR
    assert (result.error or "").startswith("RuntimeError: JSONDecodeError")
    assert result.counts.model_calls == 1 and result.counts.tool_calls == 0 and result.counts.framework_retries == 0
    assert result.counts.faults_recovered == 0 and not result.harmful
    assert result.counts.prompt_tokens < baseline.counts.prompt_tokens


def test_unknown_tool_gets_autogens_tool_error_and_the_model_repairs(simulator: Simulator) -> None:
    # A call of a tool the agent lacks parses fine: AutoGen answers it with its own error
    # result (is_error) and the agent's next iteration calls the right tool.
    baseline = run("appointment_rebooking", Variant.LINEAR, simulator, FaultPlan(NONE, 0))
    result = run("appointment_rebooking", Variant.LINEAR, simulator, forced("find_slot", Fault.UNKNOWN_TOOL))
    assert result.status is Status.SUCCESS and result.counts.faults_recovered == 1
    assert result.counts.tool_errors == 1 and result.counts.framework_retries == 0
    assert calls(result, "find_slot") == calls(baseline, "find_slot") + 1
    rejected = [e for e in result.trace if e.kind is EventKind.TOOL_CALL and not e.detail["ok"]]
    assert [e.detail["name"] for e in rejected] == ["crm_lookup_v2"]
    assert rejected[0].detail["error"].startswith("rejected by AutoGen")


def test_empty_answer_under_strict_output_arrives_as_a_null_autogen_hands_on(simulator: Simulator) -> None:
    # Under strict structured output (output_content_type) an empty answer arrives as schema JSON with
    # every field null. The writer's output type takes the null (a required Any field), so AutoGen hands it
    # on without an error or a re-ask: the coordinator calls send_email with a null body, AutoGen's own
    # tool-argument validation rejects that call (no email is sent), the CRM is updated anyway, and the
    # team completes; the episode fails its check without an error.
    result = run("appointment_rebooking", Variant.LINEAR, simulator, forced("draft", Fault.EMPTY_ANSWER))
    assert result.status is Status.FAILED_CHECK and result.termination is Termination.COMPLETED
    assert result.error is None and not result.harmful
    assert [(r.fault, r.outputs) for r in result.records if r.step == "draft"] == [
        ("empty_answer", {"confirmation": None})]
    assert calls(result, "draft") == 1 and result.counts.framework_retries == 0
    assert result.counts.faults_recovered == 0
    drafted = [e.detail["outputs"] for e in result.trace if e.kind is EventKind.STEP_OUTPUT and e.step == "draft"]
    assert drafted == [{"confirmation": None}]
    issues = {(r.step, i.field, i.kind, i.cause) for r in result.records for i in r.handoff_issues}
    assert issues == {("send", "confirmation", "corrupted", "model_error")}
    rejected = [e for e in result.trace if e.kind is EventKind.TOOL_CALL and not e.detail["ok"]]
    assert [e.detail["name"] for e in rejected] == ["send_email"]
    assert rejected[0].detail["error"].startswith("rejected by AutoGen")
    assert [e.detail["tool"] for e in result.trace if e.kind is EventKind.SIDE_EFFECT] == ["crm_update"]


def test_gate_redo_is_a_new_team_run_for_the_retry_steps_role_agent(simulator: Simulator) -> None:
    # The rejection goes back to the writer agent as a new task message; the agent keeps its
    # context, the values reach it through the team's conversation, one extra model call.
    baseline = run("appointment_rebooking", Variant.GATED, simulator, FaultPlan(NONE, 0))
    result = run("appointment_rebooking", Variant.GATED, simulator, forced("draft", Fault.WRONG_VALUE))
    assert result.status is Status.SUCCESS and not result.harmful
    assert result.counts.gate_rejections == 1 and result.counts.framework_retries == 1
    assert calls(result, "draft") == 2 and result.counts.model_calls == baseline.counts.model_calls + 1
    redo = [r for r in result.records if r.step == "draft"][1]
    assert redo.attempt == 1 and redo.handoff_issues == ()  # customer_name and slot still reach the redo
    gates = [(e.step, e.detail["passed"]) for e in result.trace if e.kind is EventKind.GATE]
    assert gates == [("send", False), ("send", True), ("update_crm", True)]


def test_transport_burst_beyond_the_client_retries_is_an_error_termination(simulator: Simulator) -> None:
    # client_max_retries=0: the SDK gives up on the first 500; AutoGen has no agent-level retry,
    # the team re-raises it and the episode ends in an error.
    result = run("refund_policy_answer", Variant.LINEAR, simulator, forced("answer", Fault.HTTP_500),
                 Knobs(client_max_retries=0))
    assert result.status is Status.ERROR and result.termination is Termination.ERROR
    assert (result.error or "").startswith("RuntimeError: InternalServerError: Error code: 500")
    assert result.counts.transport_retries == 0 and result.counts.framework_retries == 0
    assert result.counts.faults_recovered == 0 and result.counts.model_calls == 2  # retrieve's two calls
    assert [r.status for r in result.records if r.step == "answer"] == [500]


def test_wrong_routing_decision_is_overridden_by_the_selector(simulator: Simulator) -> None:
    # The router participant names the wrong role for 'draft'; AutoGen then asks its selector
    # model (the router URL again), which names the writer: the wrong decision never becomes
    # a turn and costs no extra call; it counts as a recovered fault, not as a failed handoff.
    baseline = run("appointment_rebooking", Variant.DELEGATED, simulator, FaultPlan(NONE, 0))
    result = run("appointment_rebooking", Variant.DELEGATED, simulator,
                 forced("draft", Fault.WRONG_HANDOFF_TARGET))
    assert result.status is Status.SUCCESS and result.termination is Termination.COMPLETED
    routed = [r.route_target for r in result.records if r.kind == "route"]
    assert routed[2:4] == ["coordinator", "writer"]
    assert result.counts.handoff_failures == 0 and result.counts.faults_recovered == 1
    assert result.counts.model_calls == baseline.counts.model_calls
    selected = [e.detail["target"] for e in result.trace if e.kind is EventKind.HANDOFF]
    assert selected == ["scheduler", "writer", "coordinator", "coordinator"]


def test_self_gate_records_one_rejection_as_crewai_does(simulator: Simulator) -> None:
    # The gate before update_crm retries update_crm itself. Nothing can be redone before the
    # guarded step, so AutoGen stops at the first rejection: the old adapter re-checked the
    # unchanged values until the bound (3 rejections against CrewAI's 1), an adapter artefact.
    plan = forced("send", Fault.OMITTED_FIELD)
    result = run("appointment_rebooking", Variant.GATED, simulator, plan)
    assert result.termination is Termination.GATE_EXHAUSTED and result.counts.gate_rejections == 1
    assert not result.harmful and result.counts.framework_retries == 0
    pytest.importorskip("crewai")
    crewai = run("appointment_rebooking", Variant.GATED, simulator, plan, framework="crewai")

    def self_gate(episode: EpisodeResult) -> list[bool]:
        return [e.detail["passed"] for e in episode.trace if e.kind is EventKind.GATE and e.step == "update_crm"]

    assert self_gate(result) == [False]
    # CrewAI either checks this gate the same way, or (its per-task output_pydantic requiring
    # message_id) stops before it: a framework difference, not a different count at the gate
    assert self_gate(crewai) in ([False], []), (crewai.termination, crewai.error)


def test_a_plug_in_changes_one_behaviour_without_copying_run(simulator: Simulator) -> None:
    from coordlab.adapters.autogen_adapter import AutoGenAdapter, AutoGenEpisode

    class PoliteEpisode(AutoGenEpisode):
        """Adds one sentence to every step's task message."""

        def step_task(self, step: Step, feedback: str = "") -> str:
            return "Please be careful.\n" + super().step_task(step, feedback)

    class PoliteAdapter(AutoGenAdapter):
        name = "autogen_polite"
        episode_class = PoliteEpisode

        def run(self, spec: EpisodeSpec) -> AdapterOutcome:
            outcome = super().run(spec)
            self.seen = type(spec).__name__
            return outcome

    adapter = PoliteAdapter()
    result = run_episode(adapter, load_suite_task("refund_policy_answer"), Variant.GATED, simulator,
                         FaultPlan(NONE, 0))
    assert result.status is Status.SUCCESS and adapter.seen == "EpisodeSpec"
