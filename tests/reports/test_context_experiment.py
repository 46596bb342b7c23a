"""The context experiment: its generated profiles, its sweeps, and its paired table and figure.

(a) the profiles say what the design says (strength 0 is the mechanism off) and each runs
only where its mechanism can act; (b) Newcombe's paired interval against a published value;
(c) the table from episodes built by hand, where pairing decides the counts; (d) one tiny
real run through the experiment's report hook.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest

from coordlab.reports.context import context_cells, context_figure, context_point, context_table
from coordlab.reports.stats import paired_difference_interval
from coordlab.reports.data import EpisodeRecord
from coordlab.runners.experiments import (CONTEXT_SERIES, CONTEXT_TASKS, EXPERIMENTS, _context, _context_report,
                                          context_profile_name, write_context_profiles)
from coordlab.runners.faults import load_profile
from coordlab.runners.mechanisms import Mechanism

# -- (a) the design ------------------------------------------------------------------------------


def test_generated_profiles_load_and_encode_their_strength(tmp_path: Path) -> None:
    points = write_context_profiles(tmp_path)
    assert (tmp_path / "ctx_clash_0.30.yaml").is_file() and (tmp_path / "ctx_length_0.05.yaml").is_file()
    assert len(points) == sum(len(series.strengths) for series in CONTEXT_SERIES)
    series_of = {series.mechanism: series for series in CONTEXT_SERIES}
    for point in points:
        series = series_of[point.mechanism]
        profile = load_profile(point.reference(tmp_path))
        knobs = {m: getattr(profile.mechanisms, m.value) for m in Mechanism}
        assert all(knob.rate == 0 for m, knob in knobs.items() if m is not point.mechanism)
        assert knobs[point.mechanism].rate == point.strength
        assert profile.mechanisms.active == (point.strength > 0)  # strength 0: the mechanism off
        if point.strength > 0:  # the fixed knobs ride along with a non-zero rate
            assert all(getattr(knobs[point.mechanism], name) == value for name, value in series.knobs.items())
        assert profile.rate == series.fault_rate
        assert {f.value: w for f, w in profile.weights.items()} == dict(series.faults)
        if point.data is None:  # the shared baseline: nothing on at all
            assert profile.key == "none" and point.strength == 0 and series.fault_rate == 0
        else:
            assert context_point(profile.key) == (point.mechanism.value, point.strength)
            assert profile.name == context_profile_name(point.mechanism, point.strength)
    clash = load_profile(tmp_path / "ctx_clash_0.00.yaml")  # clash keeps its wrong answers at strength 0
    assert clash.rate == 0.1 and not clash.mechanisms.active


def test_each_profile_runs_once_and_only_where_its_mechanism_acts(tmp_path: Path) -> None:
    sweeps = _context(2, tmp_path)
    cells: list[tuple[str, str]] = []
    for sweep in sweeps:
        assert [str(t) for t in sweep.tasks] == list(CONTEXT_TASKS) and sweep.seeds == (0, 1)
        keys = sweep.profile_keys()
        cells += [(keys[p], v.value) for p in sweep.profiles for v in sweep.variants]
    assert len(cells) == len(set(cells))  # no episode key is run twice, by two sweeps
    variants_of: dict[str, set[str]] = {}
    for profile, variant in cells:
        variants_of.setdefault(profile.partition("@")[0], set()).add(variant)
    assert variants_of["none"] == {"linear", "gated", "delegated"}
    assert variants_of["ctx_brief_loss_0.30"] == {"delegated"}
    assert variants_of["ctx_clash_0.00"] == variants_of["ctx_clash_1.00"] == {"gated", "delegated"}
    assert variants_of["ctx_length_0.20"] == variants_of["ctx_tool_overload_0.60"] == {"linear", "gated", "delegated"}
    assert "context" in EXPERIMENTS and EXPERIMENTS["context"].extend_report is not None


# -- (b) the paired interval ---------------------------------------------------------------------


def test_paired_difference_interval_matches_the_published_example() -> None:
    # Fagerland, Lydersen & Laake (2017), ch. 8, Cavo et al. (2012): 59 both, 6 only A, 16 only B, 80 neither;
    # Newcombe square-and-add: estimate -0.0621, 95% CI -0.1186 to -0.0046 (contingencytables' own test).
    low, high = paired_difference_interval(59, 6, 16, 80)
    assert (low, high) == (pytest.approx(-0.1186, abs=5e-5), pytest.approx(-0.0046, abs=5e-5))
    # Every pair agreeing: the estimate is 0 and the interval is not a point.
    low, high = paired_difference_interval(10, 0, 0, 0)
    assert low < 0 < high and low == pytest.approx(-high)
    low, high = paired_difference_interval(0, 10, 0, 0)
    assert 0 < low < 1 and high == 1.0
    with pytest.raises(ValueError):
        paired_difference_interval(0, 0, 0, 0)


# -- (c) the table from hand-built episodes -----------------------------------------------------

_DEFAULTS = {"str": "", "int": 0, "float": 0.0, "bool": False, "int | None": 0}


def record(**values: Any) -> EpisodeRecord:
    """An episode with every field not given set to a neutral value (robust to counters being added)."""
    fields = {f.name: values.pop(f.name) if f.name in values else _DEFAULTS[str(f.type)]
              for f in dataclasses.fields(EpisodeRecord)}
    assert not values, f"unknown fields {values}"
    fields["system"] = fields["system"] or fields["framework"]
    return EpisodeRecord(**fields)


def episode(framework: str, profile: str, variant: str, task: str, seed: int, success: bool,
            harmful: bool = False) -> EpisodeRecord:
    return record(framework=framework, profile=profile, variant=variant, task=task, seed=seed,
                  status="success" if success else "failed_check", harmful=harmful)


TASKS = ("a@1", "b@1")


def alternating(profile: str, variants: tuple[str, ...] = ("gated",), seeds: int = 5) -> list[EpisodeRecord]:
    """crewai fails, harmfully, exactly where plain succeeds, and succeeds exactly where plain fails."""
    episodes = []
    for task in TASKS:
        for variant in variants:
            for seed in range(seeds):
                plain_wins = (seed + TASKS.index(task)) % 2 == 0
                episodes.append(episode("plain", profile, variant, task, seed, plain_wins))
                episodes.append(episode("crewai", profile, variant, task, seed, not plain_wins, harmful=plain_wins))
    return episodes


def agreeing(profile: str, variants: tuple[str, ...], seeds: int = 5) -> list[EpisodeRecord]:
    return [episode(framework, profile, variant, task, seed, True) for framework in ("plain", "crewai")
            for task in TASKS for variant in variants for seed in range(seeds)]


def test_pairing_decides_the_counts() -> None:
    episodes = agreeing("ctx_clash_0.00@aaaa0000", ("gated",)) + alternating("ctx_clash_0.30@bbbb1111")
    random.Random(7).shuffle(episodes)  # pairs are found by key, not by position
    rows = context_table(episodes).values()
    assert [(r["mechanism"], r["strength"], r["framework"]) for r in rows] == [("clash", 0.0, "crewai"),
                                                                              ("clash", 0.3, "crewai")]
    off, on = rows
    assert (off["pairs"], off["both succeed"], off["only framework"], off["only plain"]) == (10, 10, 0, 0)
    assert off["difference"] == 0 and off["McNemar p"] == 1.0
    # Both succeed half the time, so unpaired rates look equal; paired, they never succeed together.
    assert on["framework success"] == on["plain success"] == 0.5
    assert (on["pairs"], on["both succeed"], on["only framework"], on["only plain"], on["neither"]) == (10, 0, 5, 5, 0)
    assert on["McNemar p"] == 1.0 and on["difference"] == 0
    assert (on["only framework harmful"], on["only plain harmful"]) == (5, 0)
    assert on["harm McNemar p"] == pytest.approx(2 / 2**5)
    assert on["95% CI low"] < 0 < on["95% CI high"]


def test_a_framework_failing_exactly_where_plain_succeeds() -> None:
    profile = "ctx_buried_0.60@cccc2222"
    episodes = [episode("plain", profile, "linear", task, seed, True) for task in TASKS for seed in range(6)]
    episodes += [episode("langgraph", profile, "linear", task, seed, False, harmful=True)
                 for task in TASKS for seed in range(6)]
    row = context_table(episodes).values()[0]
    assert (row["pairs"], row["only plain"], row["only framework"], row["both succeed"]) == (12, 12, 0, 0)
    assert row["difference"] == -1.0 and row["McNemar p"] == pytest.approx(2 / 2**12)
    assert row["95% CI high"] < 0 and row["only framework harmful"] == 12


def test_the_shared_baseline_is_strength_zero_in_each_mechanisms_own_variants() -> None:
    episodes = agreeing("none", ("linear", "gated", "delegated"))
    episodes += agreeing("ctx_length_0.10@dddd3333", ("linear", "gated"))
    episodes += alternating("ctx_brief_loss_0.30@eeee4444", ("delegated",))
    episodes += agreeing("semantic_3pct", ("linear",))  # not a context profile: left out
    cells = context_cells(episodes)
    assert list(cells) == ["length", "brief_loss"]  # Mechanism order
    assert {e.variant for e in cells["length"][0.0]} == {"linear", "gated"}
    assert {e.variant for e in cells["brief_loss"][0.0]} == {"delegated"}
    rows = {(r["mechanism"], r["strength"]): r for r in context_table(episodes).values()}
    assert rows[("length", 0.0)]["pairs"] == 20 and rows[("brief_loss", 0.0)]["pairs"] == 10
    assert rows[("brief_loss", 0.3)]["variants"] == "delegated"
    assert rows[("length", 0.1)]["variants"] == "linear, gated"


def test_profiles_filter_keeps_stale_episodes_out() -> None:
    current, stale = "ctx_clash_0.30@bbbb1111", "ctx_clash_0.30@0ld00000"
    episodes = alternating(current) + agreeing(stale, ("gated",))
    assert context_table(episodes).values()[0]["pairs"] == 20  # both pooled when nothing says which is current
    row = context_table(episodes, {current}).values()[0]
    assert row["pairs"] == 10 and row["both succeed"] == 0


def test_no_context_profiles_no_rows_and_no_figure() -> None:
    episodes = agreeing("semantic_3pct", ("linear",)) + agreeing("none", ("linear",))
    assert context_table(episodes).rows == [] and context_figure(episodes) is None
    assert context_figure([]) is None and context_table([]).rows == []


def test_figure_draws_every_mechanism() -> None:
    episodes = agreeing("none", ("linear",)) + alternating("ctx_length_0.20@ffff5555", ("linear",))
    episodes += alternating("ctx_clash_0.00@aaaa0000") + alternating("ctx_clash_1.00@abab0000")
    figure = context_figure(episodes)
    assert figure is not None and figure.key == "context_mechanisms"
    assert figure.png.startswith(b"\x89PNG") and "<svg" in figure.svg
    # Without plain there is nothing to pair with: success and harm only, still a figure.
    alone = [e for e in episodes if e.framework != "plain"]
    assert context_figure(alone) is not None and context_table(alone).rows == []


# -- (d) one tiny real run through the report hook ----------------------------------------------


def test_tiny_real_run_through_the_report_hook(tmp_path: Path) -> None:
    """brief_loss at 0 and 0.6, delegated, plain and crewai, one task, two seeds: 6 episodes (``none`` runs once)."""
    from coordlab.reports.build import build_report
    from coordlab.runners.runner import run_sweep
    from coordlab.runners.sweep import Sweep

    folder = tmp_path / "profiles"
    write_context_profiles(folder)
    sweep = Sweep.build(tasks=["appointment_rebooking"], frameworks=["plain", "crewai"], variants=["delegated"],
                        profiles=["none", str(folder / "ctx_brief_loss_0.60.yaml")], seeds=2)
    summary = run_sweep(sweep, tmp_path / "results.sqlite", workers=2)
    assert summary.statuses.get("infra_error", 0) == 0
    report = build_report(tmp_path / "results.sqlite")
    _context_report(report, tmp_path)
    table = report.tables[0]
    assert table.key == "context_paired" and report.figures[0].key == "context_mechanisms"
    rows = {(r["mechanism"], r["strength"]): r for r in table.values()}
    assert set(rows) == {("brief_loss", 0.0), ("brief_loss", 0.6)}
    assert all(r["framework"] == "crewai" for r in rows.values())
    # Strength 0 is the deterministic ``none``: one episode per cell, not two copies.
    assert (rows[("brief_loss", 0.0)]["pairs"], rows[("brief_loss", 0.6)]["pairs"]) == (1, 2)
    assert rows[("brief_loss", 0.0)]["difference"] == 0  # nothing on: the same episodes' outcomes
    settings = report.provenance["context_profiles"]
    assert {"profile": "none", "mechanism": "brief_loss", "strength": 0.0} .items() <= next(
        s for s in settings if s["mechanism"] == "brief_loss" and s["strength"] == 0).items()
    assert any("brief_loss rate 0, 0.1, 0.3, 0.6" in note for note in report.notes)
