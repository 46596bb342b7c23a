"""pass^k over repeated trials (``coordlab run --trials K``), computed by hand on small stores, and pairing by trial.

The stores are written through the store's own API with a live run's spec, as a live
``--trials`` run leaves them: several episodes per (task, framework, variant, profile,
seed), told apart by their trial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordlab.reports.data import EpisodeRecord, collapse_replicates, load_store
from coordlab.reports.pairing import pair_key
from coordlab.reports.tables import pass_k_table, paired_table, resolve_max_k
from coordlab.reports.verdict import pair_up
from coordlab.runners.store import COUNT_COLUMNS, Store

TOL = 1e-9
TASK_A = "chain@1+0123456789ab[n=1]"
TASK_B = "chain@1+0123456789ab[n=2]"
LIVE_SPEC = {"live": {"base_url": "http://127.0.0.1:9/v1", "model": "some-model", "api_key_env": "KEY"}, "trials": 3}


def row(task: str, seed: int, trial: int, success: bool, framework: str = "plain") -> dict[str, Any]:
    return {"task": task, "framework": framework, "framework_version": "1.0", "variant": "linear", "profile": "none",
            "seed": seed, "trial": trial, "status": "success" if success else "failed_check", "harmful": 0,
            "termination": "completed", "verdict_json": "{}", **dict.fromkeys(COUNT_COLUMNS, 0), "wall_ms": 1.0,
            "construction_ms": 0.5, "execution_ms": 0.5, "simulator_ms": 0.0, "knobs_json": "{}",
            "notes_json": "[]", "error": None, "finished_at": 0.0}


def live_store(path: Path, outcomes: dict[tuple[str, str, int], list[bool]], spec: dict[str, Any] = LIVE_SPEC) -> Path:
    """A store of one live run: for each (framework, task, seed), its trials' outcomes in trial order."""
    with Store(path) as store:
        store.create_run("run-live", "identity", spec, {})
        for (framework, task, seed), trials in outcomes.items():
            for trial, success in enumerate(trials):
                store.record_episode("run-live", row(task, seed, trial, success, framework), [])
    return path


def only_row(table: Any) -> dict[str, Any]:
    (found,) = table.values()
    return found


def test_one_cell_of_three_trials_two_successes(tmp_path: Path) -> None:
    data = load_store(live_store(tmp_path / "one.sqlite", {("plain", TASK_A, 0): [True, False, True]}))
    assert len(data.episodes) == 3 and data.superseded == 0 and data.replicates == 0  # live: never collapsed
    assert resolve_max_k(data.episodes, None) == 3
    for by_task in (False, True):
        table = pass_k_table(data.episodes, 3, by_task=by_task)
        found = only_row(table)
        # C(2,1)/C(3,1) = 2/3, C(2,2)/C(3,2) = 1/3, C(2,3)/C(3,3) = 0
        assert found["pass^1"] == pytest.approx(2 / 3, abs=TOL)
        assert found["pass^2"] == pytest.approx(1 / 3, abs=TOL)
        assert found["pass^3"] == pytest.approx(0.0, abs=TOL)
        assert found["trials are"] == "repeated trials" and (found["seeds"], found["episodes"]) == (1, 3)
        assert "trials are" in table.columns and "seeds are" not in table.columns
        assert "k trials" in table.title
        assert "--trials K" in (table.note or "") and "same seeded fault schedule" in (table.note or "")
        assert "In the other rows" not in (table.note or "")  # every row is of repeated trials


def test_pass_k_is_per_seed_then_averaged_over_seeds_then_tasks(tmp_path: Path) -> None:
    data = load_store(live_store(tmp_path / "two.sqlite", {
        ("plain", TASK_A, 0): [True, False, True],   # pass^1 2/3, pass^2 1/3, pass^3 0
        ("plain", TASK_A, 1): [True, True, True],    # 1, 1, 1
        ("plain", TASK_B, 0): [False, False, True],  # 1/3, 0, 0
        ("plain", TASK_B, 1): [True, True],          # 1, 1, (no third trial: left out of pass^3)
    }))
    table = pass_k_table(data.episodes, 3)
    found = only_row(table)
    task_a = [(2 / 3 + 1) / 2, (1 / 3 + 1) / 2, (0 + 1) / 2]
    task_b = [(1 / 3 + 1) / 2, (0 + 1) / 2, 0.0]
    for k in (1, 2, 3):
        assert found[f"pass^{k}"] == pytest.approx((task_a[k - 1] + task_b[k - 1]) / 2, abs=TOL), k
    assert (found["tasks"], found["seeds"], found["episodes"]) == (2, 4, 11)
    by_task = {r["task"]: r for r in pass_k_table(data.episodes, 3, by_task=True).values()}
    assert by_task[TASK_B]["pass^3"] == pytest.approx(0.0, abs=TOL) and by_task[TASK_B]["seeds"] == 2
    assert by_task[TASK_A]["pass^2"] == pytest.approx(2 / 3, abs=TOL)


def test_one_trial_per_seed_keeps_seeds_as_the_trials_and_the_old_columns(tmp_path: Path) -> None:
    spec = {**LIVE_SPEC, "trials": 1}
    data = load_store(live_store(tmp_path / "seeds.sqlite", {("plain", TASK_A, seed): [seed != 1]
                                                             for seed in range(3)}, spec))
    table = pass_k_table(data.episodes, 3)
    found = only_row(table)
    assert table.columns == ["framework", "variant", "profile", "seeds are", "tasks", "episodes", "pass^1", "pass^2",
                             "pass^3"]
    assert found["seeds are"] == "repeated trials" and table.title == "pass^k: success on every one of k seeds"
    assert [found[f"pass^{k}"] for k in (1, 2, 3)] == pytest.approx([2 / 3, 1 / 3, 0.0], abs=TOL)  # seeds as trials
    assert (table.note or "").startswith("pass^k = C(c,k)/C(n,k) over a task's n seeds")


def test_a_live_row_of_seeds_beside_rows_of_trials_says_which_is_which(tmp_path: Path) -> None:
    data = load_store(live_store(tmp_path / "mixed.sqlite", {("plain", TASK_A, 0): [True, False],
                                                             ("crewai", TASK_A, 0): [True],
                                                             ("crewai", TASK_A, 1): [False]}))
    rows = {r["framework"]: r for r in pass_k_table(data.episodes, 2).values()}
    assert rows["plain"]["trials are"] == "repeated trials" and rows["crewai"]["trials are"] == "live seeds"
    assert "In the other rows" in (pass_k_table(data.episodes, 2).note or "")


def test_frameworks_pair_trial_by_trial(tmp_path: Path) -> None:
    data = load_store(live_store(tmp_path / "pairs.sqlite", {("plain", TASK_A, 0): [True, True, False],
                                                             ("crewai", TASK_A, 0): [True, False, False]}))
    assert {pair_key(e) for e in data.episodes} == {(TASK_A, "linear", "none", 0, trial) for trial in range(3)}
    (found,) = paired_table(data.episodes).values()
    # trial 0: both; trial 1: only plain; trial 2: neither. Keyed by seed alone there would be one pair, not three.
    assert (found["pairs"], found["both succeed"], found["neither"]) == (3, 1, 1)
    assert {found["framework A"]: found["only A"], found["framework B"]: found["only B"]} == {"plain": 1, "crewai": 0}
    (by_system,) = pair_up(data.episodes).values()
    assert sorted(by_system["plain"]) == [(TASK_A, "linear", "none", 0, trial) for trial in range(3)]


def test_live_trials_are_never_collapsed_as_replicates(tmp_path: Path) -> None:
    data = load_store(live_store(tmp_path / "none.sqlite", {("plain", TASK_A, 0): [True, True, True]}))
    kept, dropped = collapse_replicates(data.episodes)
    assert len(kept) == 3 and dropped == 0 and sorted(e.trial for e in kept) == [0, 1, 2]


def test_a_record_built_without_a_trial_is_trial_0() -> None:
    record = EpisodeRecord(0, "r", TASK_A, "plain", "1", "linear", "none", 0, "success", False,
                           *([0] * len(COUNT_COLUMNS)), 1.0, 1.0, 0.0, "plain", "m", False)
    assert record.trial == 0 and pair_key(record)[-1] == 0
