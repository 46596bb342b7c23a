"""Fault schedules: deterministic, framework-independent, and at the rate the profile says."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from coordlab.runners.faults import (
    TOOL_FAULTS, Fault, FaultPlan, ForcedFault, ProfileError, applicable_faults, forced_faults, load_profile,
    profile_names, scheduled_fault,
)
from coordlab.tasks.loader import load_suite, load_suite_task


def binomial_interval(n: int, p: float, mass: float = 0.99) -> tuple[int, int]:
    """The central ``mass`` interval of Binomial(n, p), from the exact CDF."""
    tail = (1 - mass) / 2
    log_pmf = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p)
               + (n - k) * math.log1p(-p) for k in range(n + 1)]
    cdf, low, high = 0.0, None, None
    for k, value in enumerate(log_pmf):
        cdf += math.exp(value)
        if low is None and cdf >= tail:
            low = k
        if high is None and cdf >= 1 - tail:
            high = k
    assert low is not None and high is not None
    return low, high


def test_builtin_profiles_load() -> None:
    names = profile_names()
    assert {"none", "semantic_1pct", "semantic_3pct", "semantic_10pct", "transport"} <= set(names)
    assert [load_profile(f"semantic_{p}pct").rate for p in (1, 3, 10)] == [0.01, 0.03, 0.10]
    assert all(f.is_transport for f in load_profile("transport").weights)
    assert load_profile("none").rate == 0


def test_schedule_is_a_pure_function_of_its_inputs() -> None:
    profile = load_profile("mixed_5pct")
    task = load_suite_task("incident_triage")
    draws = [[scheduled_fault(profile, seed, task.key, step, attempt)
              for seed in range(300) for step in task.steps for attempt in range(3)] for _ in range(2)]
    assert draws[0] == draws[1]
    assert sum(d is not None for d in draws[0]) > 0


def test_a_different_seed_gives_a_different_schedule() -> None:
    profile = load_profile("semantic_10pct")
    task = load_suite_task("chain", {"n": 12})
    schedule = lambda seed: [scheduled_fault(profile, seed, task.key, s, 0) for s in task.steps]  # noqa: E731
    assert any(schedule(0) != schedule(seed) for seed in range(1, 20))


def test_injected_fault_count_is_inside_the_binomial_99_interval() -> None:
    profile = load_profile("semantic_3pct")
    task = load_suite_task("chain", {"n": 10})
    count = sum(scheduled_fault(profile, seed, task.key, step, 0) is not None
                for seed in range(1000) for step in task.steps)
    low, high = binomial_interval(10_000, 0.03)
    assert low <= count <= high, (count, low, high)


def test_lower_rates_fault_a_subset_of_higher_rates() -> None:
    task = load_suite_task("chain", {"n": 12})
    profiles = [load_profile(name) for name in ("semantic_1pct", "semantic_3pct", "semantic_10pct")]
    hits = {p.name: {(seed, s.id) for seed in range(500) for s in task.steps
                     if scheduled_fault(p, seed, task.key, s, 0)} for p in profiles}
    assert hits["semantic_1pct"] <= hits["semantic_3pct"] <= hits["semantic_10pct"]


def test_faults_only_meet_steps_that_admit_them() -> None:
    profile = load_profile("mixed_5pct")
    for task in load_suite():
        for step in task.steps:
            for seed in range(200):
                fault = scheduled_fault(profile, seed, task.key, step, 0)
                assert fault is None or fault in applicable_faults(step)
                if not step.tool_calls:
                    assert fault not in TOOL_FAULTS
                if not step.mutating:
                    assert fault is not Fault.REPEATED_SIDE_EFFECT


def test_forced_fault_takes_precedence_on_its_step_and_attempt_only() -> None:
    task = load_suite_task("appointment_rebooking")
    plan = FaultPlan(load_profile("none"), 0, forced_faults(["draft:wrong_value", "send:http_429@1"]))
    assert plan.forced == (ForcedFault("draft", Fault.WRONG_VALUE, 0), ForcedFault("send", Fault.HTTP_429, 1))
    assert plan.fault_for(task.key, task.step("draft"), 0) is Fault.WRONG_VALUE
    assert plan.fault_for(task.key, task.step("draft"), 1) is None
    assert plan.fault_for(task.key, task.step("send"), 1) is Fault.HTTP_429


@pytest.mark.parametrize("spec, message", [
    ("draft:wrong_valu", "did you mean 'wrong_value'"), ("draft", "expected STEP:FAULT"),
])
def test_bad_forced_fault_specs(spec: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        forced_faults([spec])


def test_unknown_profile_suggests_the_closest() -> None:
    with pytest.raises(ProfileError, match="did you mean 'semantic_3pct'"):
        load_profile("semantic_3pc")


def test_malformed_profile_file_names_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nrate: 1.5\nfaults: {wrong_valeu: 1, http_429: -1}\nstal_seconds: 3\n")
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    text = str(caught.value)
    assert str(path) in text and "rate: must be a number in [0, 1]" in text
    assert "did you mean 'wrong_value'" in text and "weight must be a non-negative" in text
    assert "did you mean 'stall_seconds'" in text
