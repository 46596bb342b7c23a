"""The plain reference adapter through the episode harness: the contract every framework meets."""

from __future__ import annotations

import pytest

from coordlab.adapters.base import Knobs, Termination, Variant
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import EventKind
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.harness import Status, run_episode
from coordlab.runners.simulator import Simulator
from coordlab.tasks.loader import load_suite, load_suite_task

NONE = load_profile("none")


def forced(step: str, fault: Fault) -> FaultPlan:
    return FaultPlan(NONE, 0, (ForcedFault(step, fault),))


@pytest.mark.parametrize("variant", list(Variant), ids=str)
@pytest.mark.parametrize("task", load_suite(), ids=lambda t: t.name)
def test_every_task_and_variant_succeeds_without_faults(simulator: Simulator, task, variant: Variant) -> None:
    result = run_episode(get_adapter("plain"), task, variant, simulator, FaultPlan(NONE, 0))
    assert result.status is Status.SUCCESS, (result.verdict.describe(), result.error)
    assert result.termination is Termination.COMPLETED
    assert result.counts.handoff_failures == 0 and result.counts.faults_injected == 0


@pytest.mark.parametrize("task_name, step", [("appointment_rebooking", "draft"), ("incident_triage", "route"),
                                             ("invoice_reconciliation", "flag")])
def test_gate_catches_a_wrong_value_that_linear_lets_through(simulator: Simulator, task_name: str, step: str) -> None:
    task, adapter = load_suite_task(task_name), get_adapter("plain")
    linear = run_episode(adapter, task, Variant.LINEAR, simulator, forced(step, Fault.WRONG_VALUE))
    gated = run_episode(adapter, task, Variant.GATED, simulator, forced(step, Fault.WRONG_VALUE))
    assert linear.status is Status.FAILED_CHECK and linear.harmful
    assert gated.status is Status.SUCCESS and not gated.harmful
    assert gated.counts.gate_rejections == 1 and gated.counts.framework_retries == 1
    assert (linear.counts.faults_recovered, gated.counts.faults_recovered) == (0, 1)


def test_gate_gives_up_after_its_retry_bound(simulator: Simulator) -> None:
    task = load_suite_task("incident_triage")
    plan = FaultPlan(NONE, 0, tuple(ForcedFault("route", Fault.WRONG_VALUE, attempt) for attempt in range(3)))
    result = run_episode(get_adapter("plain"), task, Variant.GATED, simulator, plan, Knobs(gate_retries=2))
    assert result.termination is Termination.GATE_EXHAUSTED and result.counts.gate_rejections == 3
    assert not result.harmful and result.status is Status.FAILED_CHECK  # nobody was paged: a safe failure


def test_wrong_handoff_target_is_a_measured_handoff_failure(simulator: Simulator) -> None:
    task = load_suite_task("appointment_rebooking")
    result = run_episode(get_adapter("plain"), task, Variant.DELEGATED, simulator,
                         forced("draft", Fault.WRONG_HANDOFF_TARGET))
    # the coordinator, sent to draft, spent the send with nothing to send: not recovered, the router's error
    assert result.counts.faults_recovered == 0 and result.counts.handoff_model_errors >= 1
    routed = [e for e in result.trace if e.kind is EventKind.MODEL_CALL and e.detail["kind"] == "route"]
    assert routed[1].detail["route_target"] == "coordinator"  # the draft was routed to the wrong role


@pytest.mark.parametrize("fault", [Fault.HTTP_429, Fault.HTTP_500])
def test_transport_fault_is_a_recorded_transport_retry(simulator: Simulator, fault: Fault) -> None:
    task = load_suite_task("refund_policy_answer")
    result = run_episode(get_adapter("plain"), task, Variant.LINEAR, simulator, forced("answer", fault))
    assert result.status is Status.SUCCESS and result.counts.transport_retries == 1
    assert result.counts.faults_recovered == 1
    assert any(e.kind is EventKind.RETRY and e.detail["source"] == "transport" for e in result.trace)


def test_client_giving_up_is_an_error_outcome_not_a_crash(simulator: Simulator) -> None:
    task = load_suite_task("refund_policy_answer")
    result = run_episode(get_adapter("plain"), task, Variant.LINEAR, simulator, forced("answer", Fault.HTTP_500),
                         Knobs(client_max_retries=0))
    assert result.status is Status.ERROR and "InternalServerError" in (result.error or "")
    assert result.knobs["client_max_retries"] == 0


def test_trace_is_ordered_and_complete(simulator: Simulator) -> None:
    task = load_suite_task("appointment_rebooking")
    result = run_episode(get_adapter("plain"), task, Variant.GATED, simulator, FaultPlan(NONE, 0))
    kinds = [e.kind for e in result.trace]
    assert [e.at for e in result.trace[:-1]] == sorted(e.at for e in result.trace[:-1])
    assert kinds[-1] is EventKind.TERMINATION
    assert kinds.count(EventKind.MODEL_CALL) == result.counts.model_calls == 8
    assert kinds.count(EventKind.GATE) == 2 and kinds.count(EventKind.SIDE_EFFECT) == 2
    task_key = load_suite_task("appointment_rebooking").key
    assert result.key == (task_key, f"plain@{result.framework_version}", "gated", "none", 0)
