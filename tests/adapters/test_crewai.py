"""The CrewAI adapter end to end: real crews on CrewAI's own client against the simulated model.

Outcomes are judged by what the harness measures (the simulator's request log, the scored
world); the adapter's own trace is asserted only where recording it is what is under test
(handoffs, step outputs, framework retries).
"""

from __future__ import annotations

import pytest

from coordlab.adapters.base import Knobs, Termination, Variant
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import EventKind
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.harness import EpisodeResult, Status, run_episode
from coordlab.runners.simulator import Simulator
from coordlab.tasks.loader import load_suite, load_suite_task
from coordlab.tasks.schema import Task

pytestmark = pytest.mark.filterwarnings(
    # CrewAI 1.15 reads its own deprecated fields (function_calling_llm, multimodal...) on every run.
    "ignore::DeprecationWarning:crewai")

NONE = load_profile("none")
SUITE = load_suite()
BEFORE_MUTATING = [("appointment_rebooking", "draft"), ("incident_triage", "route"),
                   ("invoice_reconciliation", "flag"), ("research_brief", "review")]
"""(task, step): a step whose wrong value a gate catches before the mutating step after it."""


def run(task: Task, variant: Variant, simulator: Simulator, *forced: ForcedFault,
        knobs: Knobs | None = None) -> EpisodeResult:
    return run_episode(get_adapter("crewai"), task, variant, simulator, FaultPlan(NONE, 0, forced), knobs)


def handoffs(result: EpisodeResult) -> list[tuple[str | None, str, str]]:
    return [(e.step, e.detail["target"], e.detail["mechanism"]) for e in result.trace if e.kind is EventKind.HANDOFF]


@pytest.mark.parametrize("variant", [Variant.LINEAR, Variant.GATED])
@pytest.mark.parametrize("task", SUITE, ids=lambda t: t.name)
def test_every_task_succeeds_in_a_sequential_crew(simulator: Simulator, task: Task, variant: Variant) -> None:
    result = run(task, variant, simulator)
    assert result.status is Status.SUCCESS, (result.error, result.verdict.describe())
    assert result.termination is Termination.COMPLETED
    assert not any(r.handoff_issues or r.kind == "unidentified" for r in result.records)
    changes = [s for i, s in enumerate(task.steps) if i == 0 or task.steps[i - 1].role != s.role]
    assert handoffs(result) == [(s.id, s.role, "task context") for s in changes]
    outputs = [e.step for e in result.trace if e.kind is EventKind.STEP_OUTPUT]
    assert outputs == [s.id for s in task.steps]


@pytest.mark.parametrize("task", SUITE, ids=lambda t: t.name)
def test_delegated_manager_hands_every_step_to_its_role(simulator: Simulator, task: Task) -> None:
    result = run(task, Variant.DELEGATED, simulator)
    assert handoffs(result) == [(s.id, s.role, "delegation tool") for s in task.steps]
    worked = [(r.role, r.step) for r in result.records if r.role != "router" and r.kind == "final"]
    assert worked == [(s.role, s.id) for s in task.steps]
    assert not any(r.handoff_issues for r in result.records)
    assert not result.verdict.unexpected_side_effects and not result.verdict.missing_side_effects


@pytest.mark.parametrize("task", SUITE, ids=lambda t: t.name)
def test_delegated_succeeds_on_every_task(simulator: Simulator, task: Task) -> None:
    result = run(task, Variant.DELEGATED, simulator)
    assert result.status is Status.SUCCESS, (result.error, result.verdict.describe())


@pytest.mark.parametrize("task_name,step", BEFORE_MUTATING)
def test_wrong_value_before_a_mutating_step_harms_linear_and_the_guardrail_stops_it(
        simulator: Simulator, task_name: str, step: str) -> None:
    task, fault = load_suite_task(task_name), ForcedFault(step, Fault.WRONG_VALUE)
    linear = run(task, Variant.LINEAR, simulator, fault)
    assert linear.status is Status.FAILED_CHECK and linear.harmful
    gated = run(task, Variant.GATED, simulator, fault)
    # CrewAI's guardrail retry replaces the task context with the guardrail error, so every redo
    # lacks the upstream values it reads: the gate keeps rejecting until CrewAI gives up, harmlessly.
    assert gated.termination is Termination.GATE_EXHAUSTED and gated.error is None and not gated.harmful
    assert gated.counts.gate_rejections == 3 and gated.counts.framework_retries == 2
    upstream = {name for name in task.step(step).reads if name not in task.inputs}
    redone = [r for r in gated.records if r.step == step and r.attempt and r.kind == "final"]
    assert len(redone) == 2
    assert all({i.field for i in r.handoff_issues if i.kind == "missing"} == upstream for r in redone)
    assert any("CrewAI redid" in note for note in gated.notes)


def test_guardrail_out_of_retries_is_gate_exhausted_and_nothing_is_sent(simulator: Simulator) -> None:
    result = run(load_suite_task("appointment_rebooking"), Variant.GATED, simulator,
                 ForcedFault("draft", Fault.WRONG_VALUE), knobs=Knobs(gate_retries=0))
    assert result.termination is Termination.GATE_EXHAUSTED and result.error is None
    assert result.counts.gate_rejections == 1 and result.counts.framework_retries == 0
    assert not result.harmful and not [r for r in result.records if r.step == "send"]


def test_gate_that_retries_its_own_step_skips_it_without_harm(simulator: Simulator) -> None:
    # update_crm's gate names update_crm as its retry step: a ConditionalTask, checked before the task runs.
    # The premature answer of send becomes message_id null through CrewAI's Converter.
    result = run(load_suite_task("appointment_rebooking"), Variant.GATED, simulator,
                 ForcedFault("send", Fault.PREMATURE_STOP))
    assert result.termination is Termination.GATE_EXHAUSTED
    assert result.counts.gate_rejections == 1 and not result.harmful
    assert not [r for r in result.records if r.step == "update_crm"]
    assert [e.detail["tool"] for e in result.trace if e.kind is EventKind.SIDE_EFFECT] == ["send_email"]


def test_misrouted_delegation_is_a_recovered_fault_done_by_the_wrong_coworker(simulator: Simulator) -> None:
    """The brief describes the draft, so the coordinator it reached writes it (a model does what it is asked)."""
    result = run(load_suite_task("appointment_rebooking"), Variant.DELEGATED, simulator,
                 ForcedFault("draft", Fault.WRONG_HANDOFF_TARGET))
    assert result.counts.faults_recovered == 1 and result.counts.handoff_failures == 0
    assert [h for h in handoffs(result) if h[0] == "draft"] == [("draft", "coordinator", "delegation tool")]
    assert any(r.role == "coordinator" and r.step == "draft" and r.kind == "final" for r in result.records)
    assert not result.verdict.unexpected_side_effects


@pytest.mark.parametrize("fault", [Fault.HTTP_429, Fault.HTTP_500])
def test_transport_fault_is_retried_by_the_client(simulator: Simulator, fault: Fault) -> None:
    result = run(load_suite_task("appointment_rebooking"), Variant.LINEAR, simulator, ForcedFault("send", fault))
    assert result.status is Status.SUCCESS, result.error
    assert result.counts.transport_retries >= 1 and result.counts.faults_recovered == 1


def test_agent_reruns_its_task_when_the_client_gives_up(simulator: Simulator) -> None:
    result = run(load_suite_task("appointment_rebooking"), Variant.LINEAR, simulator,
                 ForcedFault("send", Fault.HTTP_500), knobs=Knobs(client_max_retries=0))
    assert result.status is Status.SUCCESS, result.error
    assert result.counts.transport_retries == 0
    retries = [(e.role, e.step) for e in result.trace if e.kind is EventKind.RETRY and e.detail["source"] == "framework"]
    assert retries == [("coordinator", "send")]
