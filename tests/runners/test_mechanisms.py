"""The request-dependent mechanisms: common random numbers, monotone thresholds, measured rates."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordlab.adapters.base import Variant
from coordlab.adapters.registry import get_adapter
from coordlab.runners import mechanisms as mechanisms_module
from coordlab.runners.faults import FaultPlan, ProfileError, load_profile, profile_from_mapping
from coordlab.runners.harness import run_episode
from coordlab.runners.mechanisms import Buried, Clash, Length, Mechanism, ToolOverload
from coordlab.runners.simulator import ROUTER_ROLE, Simulator
from coordlab.runners.simulator.episode import EpisodeState
from coordlab.runners.simulator.reading import Reading
from coordlab.tasks.loader import load_suite_task

CHAIN = load_suite_task("chain", {"n": 2})
REQUESTS = 10_000


def profile(**mechanisms: dict[str, Any]) -> Any:
    return profile_from_mapping({"name": "probe", "rate": 0.0, "mechanisms": mechanisms}, "test")


def ask(episode: EpisodeState, role: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None):
    body: dict[str, Any] = {"model": "m", "messages": messages}
    if tools:
        body["tools"] = tools
    return episode.decide(role, body, 0).record


def stage_one(before: str = "", after: str = "", inputs: str = '{"value_0": 7}') -> list[dict[str, Any]]:
    """A request for the chain's first stage, with filler text placed before and after its input."""
    return [{"role": "system", "content": "You are the stage_a."},
            {"role": "user", "content": f"{before}Apply transform number 1 to value_0. [coordlab:step=stage_1]\n"
                                        f"Inputs: {inputs}\n{after}"}]


def acted_share(plan_profile: Any, mechanism: Mechanism, request: Any, role: str = "stage_a",
                task: Any = CHAIN) -> tuple[float, int]:
    """How often ``mechanism`` acts on the same request over REQUESTS seeds, and the request's prompt tokens."""
    acted, tokens = 0, 0
    for seed in range(REQUESTS):
        episode = EpisodeState(task, FaultPlan(plan_profile, seed))
        messages, tools = request
        record = ask(episode, role, messages, tools)
        acted += mechanism.value in record.mechanisms
        tokens = record.prompt_tokens
    return acted / REQUESTS, tokens


def assert_in_binomial_band(share: float, probability: float) -> None:
    """``share`` of REQUESTS trials lies within the 99% normal band of Binomial(REQUESTS, probability)."""
    half_width = 2.576 * math.sqrt(probability * (1 - probability) / REQUESTS) + 0.5 / REQUESTS
    assert abs(share - probability) <= half_width, (share, probability, half_width)


# -- reading -------------------------------------------------------------------------------------

def test_a_schema_echoed_in_a_tool_error_is_not_read_as_the_fields_value() -> None:
    """CrewAI echoes a tool's argument schema in its error text; a model does not take it as the entries."""
    echoed = ('Error: the arguments do not match the schema {"entries": {"type": "array", "items": '
              '{"type": "object"}, "title": "Entries"}}')
    messages = [{"role": "user", "content": 'Inputs: {"entries": [{"id": 1}]}'}, {"role": "tool", "content": echoed}]
    assert Reading.of(messages, {"entries": "array"}).values() == {"entries": [{"id": 1}]}
    assert Reading.of(messages).values()["entries"] != [{"id": 1}]  # untyped reading would take the schema


def test_versions_are_the_distinct_values_oldest_first() -> None:
    messages = [{"role": "user", "content": '{"x": 1} then {"x": 2} and again {"x": 1}'}]
    reading = Reading.of(messages, {"x": "number"})
    assert reading.versions("x") == [2, 1] and reading.values() == {"x": 1}


def test_a_worker_asked_for_another_roles_step_does_it() -> None:
    episode = EpisodeState(CHAIN, FaultPlan(load_profile("none"), 0))
    record = ask(episode, "stage_b", stage_one())
    assert (record.step, record.kind) == ("stage_1", "final")


def test_a_request_without_a_marker_is_worked_on_what_is_missing() -> None:
    episode = EpisodeState(CHAIN, FaultPlan(load_profile("none"), 0))
    record = ask(episode, "stage_b", [{"role": "user", "content": 'Carry on. {"value_0": 7, "value_1": 16}'}])
    assert (record.step, record.kind) == ("stage_2", "final")


# -- common random numbers -----------------------------------------------------------------------

def test_two_frameworks_meet_identical_draws_for_identical_coordinates(simulator: Simulator,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every mechanism draw is keyed by (seed, task, step, attempt, mechanism, detail) and nothing else."""
    drawn: dict[str, list[tuple[tuple[Any, ...], float]]] = {}
    original = mechanisms_module.uniform
    current: list[str] = []

    def recording(*parts: Any) -> float:
        value = original(*parts)
        drawn.setdefault(current[0], []).append((parts, value))
        return value

    monkeypatch.setattr(mechanisms_module, "uniform", recording)
    plan = FaultPlan(profile(length={"rate": 0.2}, clash={"rate": 0.2}, buried={"rate": 0.2}), 3)
    for framework in ("plain", "langgraph"):
        current[:] = [framework]
        run_episode(get_adapter(framework), CHAIN, Variant.LINEAR, simulator, plan)
    plain, langgraph = (dict(drawn[f]) for f in ("plain", "langgraph"))
    assert set(plain) == set(langgraph) and plain == langgraph
    assert {parts[4] for parts in plain} >= {"length", "buried"}
    assert all(parts[:2] == (3, CHAIN.release) for parts in plain)


# -- thresholds: a leaner request never meets a higher one --------------------------------------

rates = st.floats(min_value=0.0, max_value=1.0)


@given(rates, st.integers(1, 50), st.integers(0, 50))
def test_clash_threshold_grows_with_versions(rate: float, versions: int, more: int) -> None:
    clash = Clash(rate)
    assert clash.threshold(versions) <= clash.threshold(versions + more) <= 1.0
    assert clash.threshold(1) == 0.0


@given(rates, st.floats(0.0, 3.0), st.integers(1, 200_000), st.integers(0, 200_000))
def test_length_threshold_grows_with_tokens(rate: float, elasticity: float, tokens: int, more: int) -> None:
    length = Length(rate=rate, elasticity=elasticity)
    assert length.threshold(tokens) <= length.threshold(tokens + more) <= length.cap


@given(rates, st.integers(1, 100_000), st.integers(0, 100_000), st.lists(st.floats(0.0, 1.0), max_size=4))
def test_buried_threshold_grows_with_tokens(rate: float, tokens: int, more: int, positions: list[float]) -> None:
    buried = Buried(rate=rate)
    assert buried.threshold(tokens, tuple(positions)) <= buried.threshold(tokens + more, tuple(positions)) <= 1.0


@given(rates, st.integers(1, 10), st.integers(0, 40), st.integers(0, 40))
def test_tool_overload_threshold_grows_with_tools_offered(rate: float, needed: int, offered: int, more: int) -> None:
    overload = ToolOverload(rate)
    assert overload.threshold(needed + offered, needed) <= overload.threshold(needed + offered + more, needed) <= 1.0
    assert overload.threshold(needed, needed) == 0.0


def test_a_leaner_request_never_fails_where_a_fuller_one_succeeds() -> None:
    """Same draws, two request sizes: the length mechanism acts on the lean one only where it acts on the full one."""
    length = profile(length={"rate": 0.05, "reference_tokens": 100, "elasticity": 1.0, "cap": 1.0})
    for seed in range(400):
        lean = ask(EpisodeState(CHAIN, FaultPlan(length, seed)), "stage_a", stage_one())
        full = ask(EpisodeState(CHAIN, FaultPlan(length, seed)), "stage_a", stage_one(before="Background. " * 60))
        assert full.prompt_tokens > lean.prompt_tokens
        assert "length" not in lean.mechanisms or "length" in full.mechanisms


# -- measured rates on 10,000 synthetic requests --------------------------------------------------

def test_length_acts_at_its_threshold_rate() -> None:
    knob = {"rate": 0.04, "reference_tokens": 100, "elasticity": 0.5, "cap": 0.5}
    share, tokens = acted_share(profile(length=knob), Mechanism.LENGTH, (stage_one(before="Context. " * 40), None))
    assert_in_binomial_band(share, Length(**knob).threshold(tokens))


def test_clash_acts_at_its_threshold_rate() -> None:
    request = stage_one(before='Earlier: {"value_0": 5}\n')
    share, _ = acted_share(profile(clash={"rate": 0.15}), Mechanism.CLASH, (request, None))
    assert_in_binomial_band(share, Clash(0.15).threshold(2))


def test_buried_acts_at_its_threshold_rate() -> None:
    filler = "Background that does not matter. " * 120
    share, tokens = acted_share(profile(buried={"rate": 0.3, "reference_tokens": 2000}), Mechanism.BURIED,
                                (stage_one(before=filler, after=filler), None))
    assert_in_binomial_band(share, Buried(rate=0.3, reference_tokens=2000).threshold(tokens, (0.5,)))


def test_a_value_at_the_edge_of_a_long_request_is_never_buried() -> None:
    filler = "Background that does not matter. " * 240
    share, _ = acted_share(profile(buried={"rate": 1.0}), Mechanism.BURIED, (stage_one(after=filler), None))
    assert share == 0.0


def test_tool_overload_acts_at_its_threshold_rate() -> None:
    task = load_suite_task("appointment_rebooking")
    step = task.steps[0]
    assert step.tools, "the first step of appointment_rebooking calls a tool"
    needed = [task.tools[t.name].openai_spec() for t in step.tools]
    decoys = [{"type": "function", "function": {"name": f"decoy_{i}", "parameters": {"type": "object"}}}
              for i in range(3 * len(needed))]
    messages = [{"role": "user", "content": f"{step.instruction} {step.marker}\nInputs: {json.dumps(dict(task.inputs))}"}]
    share, _ = acted_share(profile(tool_overload={"rate": 0.1}), Mechanism.TOOL_OVERLOAD, (messages, needed + decoys),
                           role=step.role, task=task)
    assert_in_binomial_band(share, ToolOverload(0.1).threshold(4 * len(needed), len(needed)))


def test_brief_loss_acts_at_its_rate() -> None:
    tools = [{"type": "function", "function": {"name": "delegate_work", "parameters": {
        "type": "object", "properties": {"coworker": {"type": "string"}, "task": {"type": "string"},
                                         "context": {"type": "string"}}}}}]
    share, _ = acted_share(profile(brief_loss={"rate": 0.2}), Mechanism.BRIEF_LOSS, (stage_one(), tools),
                           role=ROUTER_ROLE)
    assert_in_binomial_band(share, 0.2)


def test_the_brief_carries_only_what_the_router_read() -> None:
    tools = [{"type": "function", "function": {"name": "delegate_work", "parameters": {
        "type": "object", "properties": {"coworker": {"type": "string"}, "task": {"type": "string"},
                                         "context": {"type": "string"}}}}}]
    episode = EpisodeState(CHAIN, FaultPlan(load_profile("none"), 0))
    body = {"messages": [{"role": "user", "content": "Route the work."}], "tools": tools}
    decision = episode.decide(ROUTER_ROLE, body, 0)
    arguments = json.loads(decision.reply.tool_calls[0]["arguments"])
    assert "[coordlab:step=" not in arguments["task"] and json.loads(arguments["context"]) == {}


# -- profile files ------------------------------------------------------------------------------

@pytest.mark.parametrize("mechanisms, problem", [
    ({"clsh": {"rate": 0.1}}, "mechanisms.clsh: unknown mechanism"),
    ({"clash": {"rate": 2}}, "mechanisms.clash.rate: must be a probability"),
    ({"buried": {"band": [0.8, 0.2]}}, "mechanisms.buried.band"),
    ({"length": {"elasticity": "steep"}}, "mechanisms.length.elasticity"),
    ({"tool_overload": 0.1}, "mechanisms.tool_overload: expected a mapping"),
])
def test_a_bad_mechanism_setting_is_a_located_error(mechanisms: dict[str, Any], problem: str) -> None:
    with pytest.raises(ProfileError, match=problem.replace(".", r"\.")):
        profile_from_mapping({"name": "bad", "rate": 0.0, "mechanisms": mechanisms}, "bad.yaml")


def test_a_user_profile_key_changes_with_its_mechanisms_and_an_old_one_keeps_its_digest() -> None:
    plain = profile_from_mapping({"name": "mine", "rate": 0.1, "faults": {"wrong_value": 1}}, "mine.yaml")
    before_mechanisms = json.dumps([0.1, [["wrong_value", 1.0]], 5.0, 20])  # the digest's contents until now
    assert plain.key == f"mine@{hashlib.sha256(before_mechanisms.encode()).hexdigest()[:8]}"
    stronger = replace(plain, mechanisms=profile(clash={"rate": 0.3}).mechanisms)
    assert stronger.key != plain.key
