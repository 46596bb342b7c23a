"""The verdict on hand-built episodes: paired exact tests, Holm over the whole family, power when nothing differs."""

from __future__ import annotations

import dataclasses

import pytest

from coordlab.reports.data import EpisodeRecord
from coordlab.reports.stats import minimum_detectable_difference
from coordlab.reports.verdict import Outcome, build_verdict, verdict_lines, verdict_table

PROFILE = "semantic_10pct"
TASKS = ("alpha@1", "beta@1")
_ids = iter(range(1, 10_000))


def episode(system: str, task: str, variant: str, profile: str, seed: int, status: str = "success",
            harmful: bool = False) -> EpisodeRecord:
    """An EpisodeRecord with every counter zero: the verdict reads outcomes, not counters."""
    counters = {f.name: 0 for f in dataclasses.fields(EpisodeRecord) if f.type in ("int", "int | None")}
    return EpisodeRecord(**{**counters, "episode_id": next(_ids), "run_id": "r", "task": task, "framework": system,
                            "framework_version": "1", "variant": variant, "profile": profile, "seed": seed,
                            "status": status, "harmful": harmful, "wall_ms": 1.0, "execution_ms": 1.0,
                            "simulator_ms": 0.0, "system": system, "model": "m", "live": False})


def cell(system: str, failures: set[tuple[str, int]], harmful: set[tuple[str, int]] = frozenset(),
         seeds: int = 20, variant: str = "linear") -> list[EpisodeRecord]:
    """20 seeds of both tasks; the (task, seed) pairs in ``failures`` fail (harmfully when also in ``harmful``)."""
    return [episode(system, task, variant, PROFILE, seed,
                    "failed_check" if (task, seed) in failures else "success", (task, seed) in harmful)
            for task in TASKS for seed in range(seeds)]


def test_a_framework_worse_on_success_is_found_after_holm() -> None:
    # crewai fails 12 pairs that plain solves and solves none that plain fails: p = 2 · 0.5^12 = 1/2048.
    # autogen is plain's twin: p = 1 twice. Family: 4 tests (2 frameworks x success, harm); Holm multiplies
    # the smallest p by 4: 4/2048 = 0.001953125; the rest stay 1.
    crewai_failures = {("alpha@1", s) for s in range(6)} | {("beta@1", s) for s in range(6)}
    episodes = cell("plain", set()) + cell("crewai", crewai_failures) + cell("autogen", set())
    verdict = build_verdict(episodes)
    assert verdict.family_size == 4
    by_key = {(c.framework, c.outcome): c for c in verdict.comparisons}
    worse = by_key[("crewai", Outcome.SUCCESS)]
    assert worse.p_value == pytest.approx(1 / 2048)
    assert worse.adjusted_p == pytest.approx(4 / 2048)
    assert worse.significant and not worse.better
    assert worse.difference == pytest.approx(-12 / 40)
    assert len(worse.explained_by) == 12 and all(e.system == "crewai" and not e.success for e in worse.explained_by)
    quiet = by_key[("autogen", Outcome.SUCCESS)]
    assert quiet.adjusted_p == 1.0 and not quiet.significant
    # Nothing disagrees the other way, so the detectable difference is the exact test's at level 0.05/4.
    assert quiet.detectable == pytest.approx(minimum_detectable_difference(40, 0.0, 0.05 / 4, 0.8))
    lines = verdict_lines(verdict)
    assert len(lines) == 1 and lines[0].heading == "linear · semantic_10pct (40 pairs per framework)"
    text = " ".join(lines[0].sentences)
    assert "crewai **worse** on success: 70.0% vs 100.0% (-30.0 pp" in text
    assert "Holm p 0.002" in text
    assert "could have detected a difference of" in text
    assert [e.episode.system for e in lines[0].examples] == ["crewai", "crewai"]


def test_harm_is_tested_beside_success() -> None:
    # A retry that rescues answers and repeats a side effect: succeeds more, harms more.
    plain_failures = {("alpha@1", s) for s in range(10)}
    retry_harm = {("beta@1", s) for s in range(10)}
    episodes = cell("plain", plain_failures) + cell("retrier", retry_harm, retry_harm)
    verdict = build_verdict(episodes)
    by_outcome = {c.outcome: c for c in verdict.comparisons}
    # Success: 10 only-plain-fails vs 10 only-retrier-fails: p = 1. Harm: 10 only-retrier-harmful vs 0.
    assert by_outcome[Outcome.SUCCESS].p_value == 1.0
    assert by_outcome[Outcome.HARM].p_value == pytest.approx(2 / 1024)
    assert by_outcome[Outcome.HARM].adjusted_p == pytest.approx(4 / 1024)
    assert by_outcome[Outcome.HARM].significant and not by_outcome[Outcome.HARM].better
    assert by_outcome[Outcome.HARM].difference == pytest.approx(10 / 40)


def test_a_deterministic_profile_is_stated_as_fact_not_tested() -> None:
    episodes = [episode(s, t, "linear", "none", 0, "failed_check" if (s, t) == ("crewai", "beta@1") else "success")
                for s in ("plain", "crewai") for t in TASKS]
    verdict = build_verdict(episodes)
    assert verdict.comparisons == []
    lines = verdict_lines(verdict)
    assert lines[0].heading == "linear · none (deterministic)"
    assert lines[0].sentences == ("crewai fails 1 of 2 tasks, reproducibly: beta.",)


def test_the_table_lists_every_test_with_raw_and_adjusted_p() -> None:
    episodes = cell("plain", set()) + cell("crewai", {("alpha@1", 0)})
    table = verdict_table(build_verdict(episodes))
    rows = table.values()
    assert [(r["framework"], r["outcome"]) for r in rows] == [("crewai", "success"), ("crewai", "harm")]
    assert rows[0]["p"] == 1.0 and rows[0]["Holm p"] == 1.0 and rows[0]["significant"] is False


def test_a_clean_deterministic_profile_is_one_line_for_every_variant() -> None:
    episodes = [episode(s, t, v, "none", 0) for s in ("plain", "crewai") for t in TASKS for v in ("linear", "gated")]
    lines = verdict_lines(build_verdict(episodes))
    assert [line.heading for line in lines] == ["linear, gated · none (deterministic)"]
    assert lines[0].sentences[0].startswith("every framework solves all 2 tasks in each of these variants")


def test_conditions_where_nothing_differs_share_one_line() -> None:
    episodes = [e for v in ("linear", "gated") for s in ("plain", "autogen") for e in cell(s, set(), variant=v)]
    lines = verdict_lines(build_verdict(episodes))
    assert [line.heading for line in lines] == ["linear, gated · semantic_10pct"]
    assert lines[0].sentences[0].startswith("no significant difference on success or harm (autogen against plain)")
