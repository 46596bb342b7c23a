"""The default suite: its seed count is its power calculation, and a deterministic profile runs once per cell."""

from __future__ import annotations

import pytest

from coordlab.reports.stats import mcnemar_power
from coordlab.runners import design
from coordlab.runners.faults import load_profile
from coordlab.runners.sweep import DEFAULT_SEEDS, Sweep, SweepError


def test_the_default_seed_count_is_the_power_calculation() -> None:
    calculated = design.design()
    assert calculated.seeds == design.SEEDS == DEFAULT_SEEDS
    assert calculated.tests == 36
    assert calculated.power >= design.TARGET_POWER
    # One seed fewer would not reach the target power: the count is the smallest that does.
    fewer = (calculated.seeds - 1) * design.TASKS
    assert mcnemar_power(fewer, design.BACKGROUND_DISCORDANCE + design.TARGET_DIFFERENCE,
                         design.BACKGROUND_DISCORDANCE, calculated.level) < design.TARGET_POWER
    assert f"{calculated.seeds} seeds" in calculated.explain()


def test_the_default_suite_can_show_differences() -> None:
    sweep = Sweep.default()
    assert [v.value for v in sweep.variants] == ["linear", "gated", "delegated"]
    assert sweep.profiles == ("none", "realistic_3pct", "mixed_5pct")
    assert len(sweep.seeds) == DEFAULT_SEEDS


def test_a_profile_that_injects_nothing_runs_one_seed_per_cell() -> None:
    assert load_profile("none").deterministic
    assert not load_profile("realistic_3pct").deterministic  # mechanisms and faults
    sweep = Sweep.build(tasks=["chain"], frameworks=["plain"], variants=["linear"], profiles=["none", "semantic_3pct"],
                        seeds=5)
    jobs = sweep.jobs()
    assert sorted(j.seed for j in jobs if j.profile == "none") == [0]
    assert sorted(j.seed for j in jobs if j.profile == "semantic_3pct") == [0, 1, 2, 3, 4]
    assert sweep.collapsed_profiles() == ["none"]


def test_a_live_endpoint_keeps_every_seed_as_a_trial() -> None:
    from coordlab.runners.sweep import LiveEndpoint

    sweep = Sweep.build(tasks=["chain"], frameworks=["plain"], variants=["linear"], profiles=["none"], seeds=3,
                        live=LiveEndpoint("http://127.0.0.1:9/v1", "m", "OPENAI_API_KEY"))
    assert sweep.seeds_for("none") == (0, 1, 2)


def test_seed_errors_still_name_the_flag() -> None:
    with pytest.raises(SweepError, match="--seeds"):
        Sweep.build(seeds=0)
