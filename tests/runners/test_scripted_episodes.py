"""Whole episodes through the scripted reference loop: the oracle path, forced faults, reproducibility."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import httpx
import pytest

from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.scripted import run_scripted
from coordlab.runners.simulator import FINISH, ROUTER_ROLE, Simulator
from coordlab.runners.simulator.log import BODY_FIELDS
from coordlab.tasks.loader import load_suite, load_suite_task

NONE = load_profile("none")


def forced(step: str, fault: Fault, attempt: int = 0) -> FaultPlan:
    return FaultPlan(NONE, 0, (ForcedFault(step, fault, attempt),))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("task", load_suite(), ids=lambda t: t.name)
def test_oracle_path_solves_every_task_with_no_faults(simulator: Simulator, task, stream: bool) -> None:
    result = run_scripted(task, simulator, FaultPlan(NONE, 0), stream=stream)
    assert result.verdict.success, result.verdict.describe()
    assert not any(r.fault or r.handoff_issues or r.kind == "unidentified" for r in result.records)
    assert {r.step for r in result.records} == {s.id for s in task.steps}


def test_wrong_value_before_a_mutating_step_is_harmful_without_a_gate(simulator: Simulator) -> None:
    result = run_scripted(load_suite_task("appointment_rebooking"), simulator, forced("draft", Fault.WRONG_VALUE))
    assert not result.verdict.success and result.verdict.harmful
    assert "2026-12-03T16:30" in result.world.state["outbox"][0]["body"]  # the slot a week off


def test_wrong_team_is_paged_when_routing_value_is_wrong(simulator: Simulator) -> None:
    result = run_scripted(load_suite_task("incident_triage"), simulator, forced("route", Fault.WRONG_VALUE))
    assert result.verdict.harmful and result.world.state["pager"][0]["team"] == "team-platform"


def test_omitted_field_is_a_missing_input_downstream(simulator: Simulator) -> None:
    result = run_scripted(load_suite_task("chain", {"n": 4}), simulator, forced("stage_2", Fault.OMITTED_FIELD))
    assert not result.verdict.success and not result.verdict.harmful
    issues = [(r.step, i.field, i.kind) for r in result.records for i in r.handoff_issues]
    assert issues == [("stage_3", "value_2", "missing")]


@pytest.mark.parametrize("fault", [Fault.UNKNOWN_TOOL, Fault.MALFORMED_TOOL_ARGS])
def test_recoverable_tool_faults_are_recovered_by_a_tool_error_loop(simulator: Simulator, fault: Fault) -> None:
    result = run_scripted(load_suite_task("appointment_rebooking"), simulator, forced("find_slot", fault))
    assert result.verdict.success
    assert [r.fault for r in result.records if r.fault] == [fault.value]


def test_skipped_mutating_tool_fails_without_harm(simulator: Simulator) -> None:
    result = run_scripted(load_suite_task("refund_policy_answer"), simulator, forced("reply", Fault.SKIPPED_TOOL))
    assert not result.verdict.success and not result.verdict.harmful and result.verdict.missing_side_effects


def test_repeated_side_effect_is_harmful(simulator: Simulator) -> None:
    result = run_scripted(load_suite_task("research_brief"), simulator, forced("publish", Fault.REPEATED_SIDE_EFFECT))
    assert result.verdict.harmful and len(result.world.state["wiki"]) == 2


@pytest.mark.parametrize("fault", [Fault.PREMATURE_STOP, Fault.EMPTY_ANSWER])
def test_answers_without_content_fail_the_episode(simulator: Simulator, fault: Fault) -> None:
    result = run_scripted(load_suite_task("invoice_reconciliation"), simulator, forced("match", fault))
    assert not result.verdict.success
    assert [(r.step, r.fault) for r in result.records if r.fault] == [("match", fault.value)]


def _comparable(records) -> list[dict]:
    """The records without what differs between two runs by design: timings and the episode's own id.

    The id also appears inside the bodies the records keep (a completion's id is ``chatcmpl-EPISODE-SEQ``), so it is
    masked there too, and so is a completion's ``created`` clock second (two runs can straddle a second); every
    other byte of the request and response bodies must match.
    """
    comparable = []
    for record in records:
        fields = {k: v for k, v in asdict(record).items() if k not in ("elapsed_ms", "received_at", "episode_id")}
        for body in BODY_FIELDS:
            text = re.sub(r'"created": \d+', '"created": 0', json.dumps(fields[body]))
            fields[body] = json.loads(text.replace(record.episode_id, "EPISODE"))
        comparable.append(fields)
    return comparable


def test_same_seed_same_schedule_and_outcome(simulator: Simulator) -> None:
    task, plan = load_suite_task("chain", {"n": 12}), FaultPlan(load_profile("semantic_10pct"), 0, ())
    runs = [run_scripted(task, simulator, plan) for _ in range(2)]
    assert runs[0].records[0].episode_id != runs[1].records[0].episode_id  # two episodes, not one read twice
    assert all(r.request_body and r.response_body for run in runs for r in run.records)  # the bodies are compared
    assert _comparable(runs[0].records) == _comparable(runs[1].records)
    assert runs[0].verdict == runs[1].verdict


def test_schedule_does_not_depend_on_how_the_client_talks(simulator: Simulator) -> None:
    """A streaming client and a history-keeping raw-HTTP client meet the same faults on the same steps."""
    task = load_suite_task("chain", {"n": 12})
    for seed in range(6):
        plan = FaultPlan(load_profile("mixed_5pct"), seed)
        scripted = run_scripted(task, simulator, plan, stream=True)
        history = _run_with_full_history(simulator, task, plan)
        faults = lambda records: [(r.step, r.attempt, r.fault) for r in records if r.fault]  # noqa: E731
        assert faults(scripted.records) == faults(history)


def _run_with_full_history(simulator: Simulator, task, plan) -> list:
    """A group-chat style driver: one growing transcript, every agent sees everything."""
    episode = simulator.open_episode(task, plan)
    transcript = [{"role": "user", "content": "Inputs: " + json.dumps(dict(task.inputs))}]
    with httpx.Client(timeout=10) as http:
        for step in task.steps:
            transcript.append({"role": "user", "content": f"Next: {step.instruction} {step.marker}"})
            for _ in range(3):  # a crude retry on transport faults
                try:
                    response = http.post(f"{simulator.base_url(episode.id, step.role)}/chat/completions",
                                         json={"model": "m", "messages": transcript})
                    response.raise_for_status()
                    break
                except httpx.HTTPError:
                    continue
            transcript.append({"role": "assistant", "name": step.role,
                               "content": response.json()["choices"][0]["message"]["content"]})
    return list(simulator.close_episode(episode.id).records)


def test_missing_value_gives_a_wrong_answer_and_a_logged_handoff_failure(simulator: Simulator) -> None:
    task = load_suite_task("appointment_rebooking")
    episode = simulator.open_episode(task, FaultPlan(NONE, 0))
    step = task.step("draft")
    with httpx.Client() as http:
        reply = http.post(f"{simulator.base_url(episode.id, 'writer')}/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": f"{step.marker} {json.dumps({'customer_name': 'Dana'})}"}]})
    answer = json.loads(reply.json()["choices"][0]["message"]["content"])
    assert "(unknown)" in answer["confirmation"]
    assert [(i.field, i.kind) for i in episode.records[0].handoff_issues] == [("slot", "missing")]


def test_router_names_the_next_role_and_can_be_misrouted(simulator: Simulator) -> None:
    task = load_suite_task("appointment_rebooking")
    tools = [{"type": "function", "function": {"name": f"transfer_to_{role}", "parameters": {"type": "object"}}}
             for role in task.roles]
    produced = {"customer_name": "Dana Whitfield", "customer_email": "d@example.com", "slot": "2026-11-26T16:30"}
    for plan, expected, fault in [(FaultPlan(NONE, 0), "writer", None),
                                  (FaultPlan(NONE, 0, (ForcedFault("draft", Fault.WRONG_HANDOFF_TARGET),)),
                                   "coordinator", "wrong_handoff_target")]:
        episode = simulator.open_episode(task, plan)
        with httpx.Client() as http:
            reply = http.post(f"{simulator.base_url(episode.id, ROUTER_ROLE)}/chat/completions", json={
                "model": "m", "tools": tools, "messages": [{"role": "user", "content": json.dumps(produced)}]})
        call = reply.json()["choices"][0]["message"]["tool_calls"][0]["function"]
        assert call["name"] == f"transfer_to_{expected}"
        record = episode.records[0]
        assert (record.kind, record.step, record.route_target, record.fault) == ("route", "draft", expected, fault)


def test_router_says_finish_when_everything_is_produced(simulator: Simulator) -> None:
    task = load_suite_task("chain", {"n": 1})
    episode = simulator.open_episode(task, FaultPlan(NONE, 0))
    with httpx.Client() as http:
        reply = http.post(f"{simulator.base_url(episode.id, ROUTER_ROLE)}/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": json.dumps({"value_1": 224})}]})
    assert reply.json()["choices"][0]["message"]["content"] == f"{FINISH} " + json.dumps({"value_1": 224})
