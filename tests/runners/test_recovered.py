"""A fault is recovered when its effect did not reach the end state, not merely when its step was worked on again.

The unit tests judge hand-written request logs against hand-built end states, one rule
per fault kind; the episode tests run the plain reference adapter on the simulator with a
forced fault and read the harness's FAULT events and counters.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from coordlab.adapters.base import Variant
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import EventKind
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.harness import run_episode
from coordlab.runners.recovery import EndState, fault_recovered, wrong_values
from coordlab.runners.simulator import HandoffIssue, RequestRecord, Simulator
from coordlab.tasks.loader import load_suite_task
from coordlab.tasks.world import SideEffect

TASK = load_suite_task("appointment_rebooking")
NONE = load_profile("none")
SLOT, WRONG_SLOT = "2026-11-26T16:30", "2026-12-03T16:30"
EMAIL_SIGNATURE = 'send_email{"body":"...","subject":"...","to":"dana.whitfield@example.com"}'


def request(seq: int, step: str | None, kind: str, fault: str | None = None, *, role: str = "writer",
            outputs: dict[str, Any] | None = None, route_target: str | None = None) -> RequestRecord:
    """One logged request, with only what recovery reads filled in."""
    return RequestRecord(seq=seq, episode_id="e", role=role, step=step, attempt=0, kind=kind, fault=fault,
                         prompt_tokens=1, completion_tokens=1, retry_count=0, stream=False, status=200,
                         outputs=outputs, route_target=route_target)


def end(*effects: SideEffect, final: dict[str, Any] | None = None, missing: tuple[str, ...] = (),
        unexpected: tuple[str, ...] = ()) -> EndState:
    return EndState(TASK, effects, final or {}, missing, unexpected)


def judged(log: list[RequestRecord], state: EndState, index: int = 0) -> bool:
    return fault_recovered(log[index], log[index + 1:], state)


def email(body: str) -> SideEffect:
    return SideEffect("send_email", {"to": "dana.whitfield@example.com", "subject": "moved", "body": body}, {})


# -- one rule per fault kind ---------------------------------------------------------------------

def test_a_repeated_side_effect_never_recovers_even_when_its_step_answers_again() -> None:
    log = [request(0, "send", "tool_call", "repeated_side_effect", role="coordinator"),
           request(1, "send", "final", role="coordinator", outputs={"message_id": "msg-1"})]
    assert not judged(log, end(unexpected=(EMAIL_SIGNATURE,)))
    assert not judged(log, end())  # not even when scoring found nothing wrong


@pytest.mark.parametrize("answer", ["final", "tool_call"])
def test_a_transport_fault_recovers_when_its_step_later_gets_an_answer(answer: str) -> None:
    log = [request(0, "draft", "transport_fault", "http_500"), request(1, "draft", answer)]
    assert judged(log, end())


def test_a_transport_fault_without_a_later_answer_on_its_step_is_not_recovered() -> None:
    log = [request(0, "draft", "transport_fault", "http_429"), request(1, "draft", "transport_fault", "http_429"),
           request(2, "send", "final", role="coordinator"), request(3, "draft", "route", role="router")]
    assert not judged(log, end())


@pytest.mark.parametrize("fault", ["skipped_tool", "unknown_tool", "malformed_tool_args"])
def test_a_tool_fault_recovers_only_if_no_side_effect_of_its_step_is_missing(fault: str) -> None:
    log = [request(0, "send", "final" if fault == "skipped_tool" else "tool_call", fault, role="coordinator"),
           request(1, "send", "final", role="coordinator", outputs={"message_id": "msg-1"})]
    assert judged(log, end(email("ok")))
    assert not judged(log, end(missing=(EMAIL_SIGNATURE,)))
    crm_missing = 'crm_update{"customer_id":"C-1042","field":"appointment","value":"x"}'
    assert judged(log, end(missing=(crm_missing,)))  # another step's gap is not this fault's
    assert not judged(log[:1], end())  # no fault-free answer afterwards


@pytest.mark.parametrize("fault", ["premature_stop", "empty_answer", "omitted_field"])
def test_an_answer_fault_recovers_when_its_step_later_answers_without_a_fault(fault: str) -> None:
    log = [request(0, "draft", "final", fault), request(1, "draft", "final", "wrong_value"),
           request(2, "draft", "final", outputs={"confirmation": "right"})]
    assert judged(log, end())
    assert not judged(log[:2], end())  # a second faulty answer does not make the first good
    assert not judged([log[0], request(1, "send", "final", role="coordinator")], end())


def test_a_wrong_value_in_a_side_effect_is_not_recovered_even_after_a_correct_answer() -> None:
    wrong = {"confirmation": f"Dear Dana Whitfield, moved to {WRONG_SLOT}."}
    right = {"confirmation": f"Dear Dana Whitfield, moved to {SLOT}."}
    log = [request(0, "draft", "final", "wrong_value", outputs=wrong),
           request(1, "draft", "final", outputs=right)]
    assert wrong_values(log[0], log[1]) == [wrong["confirmation"]]
    assert not judged(log, end(email(wrong["confirmation"])))
    assert judged(log, end(email(right["confirmation"])))


def test_a_wrong_value_found_inside_a_longer_text_or_in_the_final_output_is_not_recovered() -> None:
    log = [request(0, "find_slot", "final", "wrong_value", role="scheduler",
                   outputs={"customer_name": "Dana Whitfield", "slot": WRONG_SLOT}),
           request(1, "find_slot", "final", role="scheduler",
                   outputs={"customer_name": "Dana Whitfield", "slot": SLOT})]
    assert not judged(log, end(email(f"Your appointment has been moved to {WRONG_SLOT}.")))
    assert not judged(log, end(final={"crm_status": "updated", "note": {"slot": WRONG_SLOT}}))
    # the right value it shares with the correction (the customer's name) is not a wrong value
    assert judged(log, end(email(f"Dear Dana Whitfield, your appointment has been moved to {SLOT}.")))


def test_a_wrong_value_is_compared_by_type() -> None:
    log = [request(0, "credit", "final", "wrong_value", role="approver", outputs={"approved": True}),
           request(1, "credit", "final", role="approver", outputs={"approved": False})]
    assert judged(log, end(SideEffect("post_order", {"po_id": "PO-7781", "amount": 1}, {})))  # 1 is not True
    assert not judged(log, end(SideEffect("post_order", {"po_id": "PO-7781", "flag": True}, {})))


def test_a_wrong_value_without_a_later_correct_answer_or_logged_outputs_is_not_recovered() -> None:
    log = [request(0, "draft", "final", "wrong_value", outputs={"confirmation": "wrong"})]
    assert not judged(log, end())
    untraceable = [request(0, "draft", "final", "wrong_value"), request(1, "draft", "final", outputs={"x": 1})]
    assert not judged(untraceable, end())


def test_a_misroute_recovers_when_the_step_is_routed_right_worked_on_by_its_owner_or_answered_well() -> None:
    misroute = request(0, "draft", "route", "wrong_handoff_target", role="router", route_target="coordinator")
    rerouted = [misroute, request(1, "draft", "route", role="router", route_target="writer")]
    assert judged(rerouted, end())
    by_owner = [misroute, request(1, "draft", "tool_call", role="writer")]
    assert judged(by_owner, end())
    # the wrong role did the step's work, without a fault: the misroute cost a turn, not the result
    assert judged([misroute, request(1, "draft", "final", role="coordinator", outputs={"confirmation": "x"})], end())
    assert not judged([misroute, request(1, "draft", "final", "wrong_value", role="coordinator")], end())
    assert not judged([misroute, request(1, "draft", "route", "wrong_handoff_target", role="router")], end())
    assert not judged([misroute], end())


def test_a_misroute_whose_wrong_role_spoiled_its_own_step_is_not_recovered() -> None:
    log = [request(0, "draft", "route", "wrong_handoff_target", role="router", route_target="coordinator"),
           request(1, "send", "tool_call", role="coordinator"), request(2, "send", "final", role="coordinator"),
           request(3, "draft", "route", role="router", route_target="writer")]
    assert not judged(log, end(missing=(EMAIL_SIGNATURE,)))
    assert judged(log, end())


def test_a_fault_kind_the_lab_does_not_know_needs_a_later_fault_free_answer() -> None:
    log = [request(0, "draft", "final", "some_future_fault"), request(1, "draft", "tool_call")]
    assert not judged(log, end())
    assert judged(log + [request(2, "draft", "final", outputs={"confirmation": "x"})], end())


def test_a_drifted_answer_recovers_when_its_values_reach_their_readers_intact() -> None:
    drifted = request(0, "draft", "final", "format_drift", outputs={"confirmation": "Dear Dana"})
    read = request(1, "send", "tool_call", role="coordinator")
    assert judged([drifted, read], end())
    lost = HandoffIssue("confirmation", "missing", "Dear Dana", None, "lost")
    unread = replace(read, handoff_issues=(lost,))
    assert not judged([drifted, unread], end())  # the framework could not read the wrapped answer
    assert not judged([drifted], end())  # nobody read it: the run ended there
    last = request(0, "update_crm", "final", "format_drift", role="coordinator", outputs={"crm_status": "updated"})
    assert judged([last], end(final={"crm_status": "updated"}))  # the flow's last answer reached the final output
    assert not judged([last], end(final={}))
    assert judged([drifted, unread, request(2, "draft", "final", outputs={"confirmation": "Dear Dana"})], end())


def test_an_effect_that_errored_recovers_only_if_nobody_repeated_it() -> None:
    log = [request(0, "send", "tool_call", "tool_error_after_effect", role="coordinator"),
           request(1, "send", "final", role="coordinator", outputs={"message_id": "msg-1"})]
    assert judged(log, end(email("ok")))
    assert not judged(log, end(email("ok"), email("ok"), unexpected=(EMAIL_SIGNATURE,)))


# -- whole episodes through the harness ------------------------------------------------------------

def episode(simulator: Simulator, variant: Variant, step: str, fault: Fault, task_name: str = "appointment_rebooking"):
    plan = FaultPlan(NONE, 0, (ForcedFault(step, fault),))
    return run_episode(get_adapter("plain"), load_suite_task(task_name), variant, simulator, plan)


def fault_events(result) -> list[dict[str, Any]]:
    return [e.detail for e in result.trace if e.kind is EventKind.FAULT]


def test_a_repeated_email_is_counted_unrecovered_though_its_step_answered_afterwards(simulator: Simulator) -> None:
    result = episode(simulator, Variant.LINEAR, "send", Fault.REPEATED_SIDE_EFFECT)
    assert result.harmful
    fault = next(r for r in result.records if r.fault)
    assert any(r.step == fault.step for r in result.records[fault.seq + 1:])  # what "caught" used to count
    assert fault_events(result) == [{"fault": "repeated_side_effect", "attempt": 0, "recovered": False}]
    assert (result.counts.faults_injected, result.counts.faults_recovered) == (1, 0)


def test_a_gate_redo_recovers_a_wrong_draft_that_linear_sends(simulator: Simulator) -> None:
    linear = episode(simulator, Variant.LINEAR, "draft", Fault.WRONG_VALUE)
    gated = episode(simulator, Variant.GATED, "draft", Fault.WRONG_VALUE)
    assert [e["recovered"] for e in fault_events(linear)] == [False]
    assert [e["recovered"] for e in fault_events(gated)] == [True] and gated.counts.faults_recovered == 1


def test_a_misroute_that_made_the_wrong_role_send_nothing_is_an_unrecovered_model_error(simulator: Simulator) -> None:
    result = episode(simulator, Variant.DELEGATED, "draft", Fault.WRONG_HANDOFF_TARGET)
    assert result.verdict.missing_side_effects  # the coordinator, sent to draft, spent its send with nothing to send
    assert [e["recovered"] for e in fault_events(result)] == [False]
    assert result.counts.faults_recovered == 0 and result.counts.handoff_model_errors >= 1


def test_a_wrapped_answer_that_plain_reads_anyway_is_recovered(simulator: Simulator) -> None:
    result = episode(simulator, Variant.LINEAR, "draft", Fault.FORMAT_DRIFT)
    assert result.status.value == "success"
    assert fault_events(result) == [{"fault": "format_drift", "attempt": 0, "recovered": True}]
