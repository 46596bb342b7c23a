"""The compounding table compares like with like: chain, linear, profiles whose faults fail a step, and the draws.

The default suite's chain (n = 6, ``semantic_3pct``, seeds 0..19) is the case that once
marked every row "NO": those seeds draw a step-failing fault in 8 of 20 episodes (seeds 0,
3, 5, 6, 8, 10, 17 and 18; 9 faults in 120 step attempts, where 3% expects 3.6), so every
framework succeeds 60% against 0.97^6 = 0.833, and exactly where no fault was drawn.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from coordlab.reports.data import EpisodeRecord
from coordlab.reports.tables import chain_step_failure, compounding_note, compounding_table
from coordlab.runners.store import COUNT_COLUMNS
from coordlab.tasks.loader import load_suite_task

CHAIN = load_suite_task("chain").key
FAULTED_SEEDS = {0, 3, 5, 6, 8, 10, 17, 18}
"""The seeds of 0..19 whose draws put a wrong value or an omitted field on a step of chain n=6 under semantic_3pct."""

BASE = EpisodeRecord(0, "run", CHAIN, "plain", "1.0", "linear", "semantic_3pct", 0, "success", False,
                     *([0] * len(COUNT_COLUMNS)), 100.0, 50.0, 1.0, "plain", "coordlab-sim", False)


def chain_episodes(system: str = "plain", variant: str = "linear", profile: str = "semantic_3pct",
                   succeeds=lambda seed: seed not in FAULTED_SEEDS, task: str = CHAIN) -> list[EpisodeRecord]:
    return [replace(BASE, episode_id=seed, task=task, framework=system, system=system, variant=variant,
                    profile=profile, seed=seed, status="success" if succeeds(seed) else "failed_check")
            for seed in range(20)]


def test_the_demo_case_says_the_seeds_drew_more_faults_than_p_not_that_a_framework_departs() -> None:
    episodes = (chain_episodes() + chain_episodes(variant="gated") + chain_episodes(profile="none", succeeds=bool)
                + chain_episodes(system="crewai"))
    table = compounding_table(episodes)
    rows = table.values()
    assert [(row["framework"], row["variant"]) for row in rows] == [("plain", "linear"), ("crewai", "linear")]
    for row in rows:
        assert row["success rate"] == pytest.approx(0.6) and row["(1-p)^n"] == pytest.approx(0.97 ** 6)
        assert row["p"] == pytest.approx(0.03) and row["within CI"] is False
        assert row["no fault drawn"] == pytest.approx(0.6)  # the seeds' draws, the same for every framework
        assert (row["succeeded despite a fault"], row["failed without a fault"]) == (0, 0)
    assert "20 episodes of the gated variant" in table.note and "20 episodes of profile none" in table.note
    assert compounding_note(episodes) == ""


def test_a_framework_that_redoes_or_loses_a_step_departs_in_the_draw_columns() -> None:
    redoes = chain_episodes(system="redoer", succeeds=lambda seed: True)
    loses = chain_episodes(system="loser", succeeds=lambda seed: seed not in FAULTED_SEEDS and seed != 1)
    rows = {row["framework"]: row for row in compounding_table(redoes + loses).values()}
    assert (rows["redoer"]["succeeded despite a fault"], rows["redoer"]["failed without a fault"]) == (8, 0)
    assert (rows["loser"]["succeeded despite a fault"], rows["loser"]["failed without a fault"]) == (0, 1)


def test_p_is_the_share_of_step_attempts_meeting_a_fault_that_fails_a_chain_step() -> None:
    assert chain_step_failure("semantic_3pct") == (0.03, "")
    assert chain_step_failure("answers_20pct") == (pytest.approx(0.2), "")  # wrong, omitted, empty, premature
    assert chain_step_failure("none")[0] is None
    assert "fails a chain step" in chain_step_failure("format_drift")[1]  # the value arrives, wrapped
    assert "transport" in chain_step_failure("mixed_5pct")[1]
    assert "mechanisms" in chain_step_failure("mechanism_clash")[1]
    assert chain_step_failure("my_profile@0123abcd")[0] is None


def test_without_a_row_the_report_says_why() -> None:
    episodes = chain_episodes(variant="gated") + chain_episodes(profile="mixed_5pct")
    assert compounding_table(episodes).rows == []
    note = compounding_note(episodes)
    assert note.startswith("No compounding table") and "gated" in note and "mixed_5pct" in note


def test_a_task_the_suite_no_longer_has_keeps_the_curve_and_drops_the_draws() -> None:
    row = compounding_table(chain_episodes(task="chain@1[n=6]")).values()[0]
    assert row["(1-p)^n"] == pytest.approx(0.97 ** 6) and row["no fault drawn"] is None
