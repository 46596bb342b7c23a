"""The report's plots as a reader sees them: tick labels read from the rendered matplotlib axes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from coordlab.reports.data import EpisodeRecord
from coordlab.reports.plots import fault_rate_figure, rate_ticks, success_vs_fault_rate
from coordlab.runners.store import COUNT_COLUMNS
from coordlab.tasks.loader import load_suite_task

BASE = EpisodeRecord(0, "run", "chain@1[n=6]", "plain", "1.0", "linear", "none", 0, "success", False,
                     *([0] * len(COUNT_COLUMNS)), 100.0, 50.0, 1.0, "plain", "coordlab-sim", False)


def episodes(task: str, profiles: list[str], seeds: int = 4) -> list[EpisodeRecord]:
    """Episodes of ``task`` under each profile, one in four failed, for plain and langgraph, linear and gated."""
    return [replace(BASE, episode_id=index, task=task, profile=profile, seed=seed, framework=system, system=system,
                    variant=variant, status="success" if seed % 4 else "failed_check")
            for index, (profile, seed, system, variant) in enumerate(
                (p, s, f, v) for p in profiles for s in range(seeds) for f in ("plain", "langgraph")
                for v in ("linear", "gated"))]


def x_tick_labels(records: list[EpisodeRecord]) -> list[list[str]]:
    """The x tick labels of every panel of the fault-rate figure, as drawn."""
    figure = fault_rate_figure(records)
    assert figure is not None
    figure.canvas.draw()
    return [[label.get_text() for label in axes.get_xticklabels()] for axes in figure.axes if axes.get_visible()]


def test_rate_ticks_sit_at_the_rates_with_the_decimals_they_need() -> None:
    assert rate_ticks([0.03, 0.0, 0.005, 0.1, 0.01, 0.03]) == ([0.0, 0.005, 0.01, 0.03, 0.1],
                                                               ["0%", "0.5%", "1%", "3%", "10%"])
    assert rate_ticks([0.2, 0.075]) == ([0.075, 0.2], ["7.5%", "20%"])


@pytest.mark.parametrize("profiles, expected", [
    (["none", "semantic_3pct"], ["0%", "3%"]),  # the demo's two profiles: once "0% 0% 1% 2% 2% 2% 3%"
    (["none", "semantic_1pct", "semantic_3pct", "semantic_10pct"], ["0%", "1%", "3%", "10%"]),
    (["semantic_1pct", "semantic_3pct", "answers_20pct", "format_drift"], ["1%", "3%", "20%"]),  # 20% twice: one tick
])
def test_the_fault_rate_axis_labels_each_rate_once(profiles: list[str], expected: list[str]) -> None:
    chain = load_suite_task("chain").key  # a suite task, so the panel draws the (1-p)^n curve too
    for labels in x_tick_labels(episodes(chain, profiles) + episodes("refund_policy_answer@1", profiles)):
        assert labels == expected
        assert len(set(labels)) == len(labels)
    figure = success_vs_fault_rate(episodes(chain, profiles))
    assert figure is not None and figure.png.startswith(b"\x89PNG") and "<svg" in figure.svg
