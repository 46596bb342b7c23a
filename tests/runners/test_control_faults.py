"""Faults that reach control-model differences: bursts, lost responses, format drift, routing only where routed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from coordlab.adapters.base import Variant
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.toolkit import parse_output
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, applicable_faults, load_profile, scheduled_fault
from coordlab.runners.harness import run_episode
from coordlab.runners.simulator import Simulator
from coordlab.runners.simulator.episode import EpisodeState
from coordlab.tasks.loader import load_suite_task
from coordlab.tasks.tools import RESPONSE_LOST

CHAIN = load_suite_task("chain", {"n": 2})
STAGE_ONE = [{"role": "user", "content": 'Apply transform number 1 to value_0. [coordlab:step=stage_1]\n'
                                         'Inputs: {"value_0": 7}'}]


def forced(fault: Fault, step: str = "stage_1", profile: str = "none", **changes: Any) -> FaultPlan:
    base = load_profile(profile)
    from dataclasses import replace
    return FaultPlan(replace(base, **changes), 0, (ForcedFault(step, fault),))


def test_a_transport_burst_fails_k_consecutive_requests_then_answers() -> None:
    episode = EpisodeState(CHAIN, forced(Fault.HTTP_500, burst=3))
    kinds = [episode.decide("stage_a", {"messages": STAGE_ONE}, retry).record.kind for retry in range(4)]
    assert kinds == ["transport_fault"] * 3 + ["final"]


def test_without_a_burst_one_retry_is_enough() -> None:
    episode = EpisodeState(CHAIN, forced(Fault.HTTP_500))
    kinds = [episode.decide("stage_a", {"messages": STAGE_ONE}, retry).record.kind for retry in range(2)]
    assert kinds == ["transport_fault", "final"]


def test_format_drift_wraps_the_answer_unless_structured_output_was_asked_for() -> None:
    drifting = EpisodeState(CHAIN, forced(Fault.FORMAT_DRIFT)).decide("stage_a", {"messages": STAGE_ONE}, 0)
    with_schema = {"messages": STAGE_ONE, "response_format": {"type": "json_schema", "json_schema": {
        "name": "out", "schema": {"type": "object", "properties": {"value_1": {"type": "integer"}}}}}}
    structured = EpisodeState(CHAIN, forced(Fault.FORMAT_DRIFT)).decide("stage_a", with_schema, 0)
    drifted_text = drifting.reply.content
    assert drifting.record.fault == "format_drift"
    with pytest.raises(ValueError):
        json.loads(drifted_text)  # no longer bare JSON
    assert parse_output(drifted_text) == json.loads(structured.reply.content)
    assert structured.record.fault is None


def test_a_lost_response_after_a_mutating_call_is_retried_and_repeats_the_side_effect(simulator: Simulator) -> None:
    """The tool applied its change, the framework saw a timeout, the model retried: two emails in the world."""
    task = load_suite_task("appointment_rebooking")
    result = run_episode(get_adapter("plain"), task, Variant.LINEAR, simulator,
                         FaultPlan(load_profile("none"), 0, (ForcedFault("send", Fault.TOOL_ERROR_AFTER_EFFECT),)))
    sends = [e for e in result.trace if e.kind.value == "tool_call" and e.detail.get("name") == "send_email"]
    assert [e.detail["ok"] for e in sends] == [False, True]
    assert RESPONSE_LOST in sends[0].detail.get("error", "")
    assert result.harmful and len(result.verdict.unexpected_side_effects) == 1


def test_no_routing_fault_is_drawn_where_nobody_routes_and_the_rate_is_unchanged() -> None:
    profile, task = load_profile("mixed_5pct"), load_suite_task("incident_triage")
    step = task.steps[0]
    assert Fault.WRONG_HANDOFF_TARGET in applicable_faults(step, routed=True)
    assert Fault.WRONG_HANDOFF_TARGET not in applicable_faults(step, routed=False)
    routed = [scheduled_fault(profile, seed, task.release, step, 0, routed=True) for seed in range(3000)]
    unrouted = [scheduled_fault(profile, seed, task.release, step, 0, routed=False) for seed in range(3000)]
    assert Fault.WRONG_HANDOFF_TARGET in routed and Fault.WRONG_HANDOFF_TARGET not in unrouted
    assert [f is None for f in routed] == [f is None for f in unrouted]  # the same attempts meet a fault


def strict_request(strict: bool = True) -> dict[str, Any]:
    return {"messages": STAGE_ONE, "response_format": {"type": "json_schema", "json_schema": {
        "name": "out", "strict": strict,
        "schema": {"type": "object", "properties": {"value_1": {}}, "required": ["value_1"]}}}}


def test_a_strict_schema_gets_every_required_field_even_from_a_faulty_answer() -> None:
    """A strict API never leaves a required field out: an omitted or empty answer comes as nulls."""
    for fault in (Fault.OMITTED_FIELD, Fault.EMPTY_ANSWER, Fault.PREMATURE_STOP):
        decision = EpisodeState(CHAIN, forced(fault)).decide("stage_a", strict_request(), 0)
        assert json.loads(decision.reply.content) == {"value_1": None}
        assert decision.record.fault == fault.value


def test_without_strict_a_field_can_still_be_left_out() -> None:
    omitted = EpisodeState(CHAIN, forced(Fault.OMITTED_FIELD)).decide("stage_a", strict_request(strict=False), 0)
    empty = EpisodeState(CHAIN, forced(Fault.EMPTY_ANSWER)).decide("stage_a", strict_request(strict=False), 0)
    assert json.loads(omitted.reply.content) == {} and empty.reply.content == ""


def test_a_null_a_strict_api_returned_is_a_model_error_downstream() -> None:
    episode = EpisodeState(CHAIN, forced(Fault.OMITTED_FIELD))
    episode.decide("stage_a", strict_request(), 0)
    stage_two = [{"role": "user", "content": 'Apply transform number 2 to value_1. [coordlab:step=stage_2]\n'
                                             'Inputs: {"value_1": null}'}]
    record = episode.decide("stage_b", {"messages": stage_two}, 0).record
    assert [(i.field, i.kind, i.cause) for i in record.handoff_issues] == [("value_1", "corrupted", "model_error")]
