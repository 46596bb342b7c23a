"""Repeated trials of one episode (``coordlab run --trials K``): the key, the store's schema 4, the sweep and the run.

Every trial of a seed meets the same seeded fault schedule, so trials only make sense
against a live endpoint; the simulator's own HTTP server stands in for one here, as in
the other live-mode tests (it answers a live client with an error, which is still an
episode with a key).
"""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from store_support import check_a_failed_migration_changes_nothing, rows, schema_version

from coordlab.reports.data import load_store
from coordlab.reports.tables import pass_k_table
from coordlab.runners import store as store_module
from coordlab.runners import sweep as sweep_module
from coordlab.runners.cli import main
from coordlab.runners.export import episode_key, export_episodes, find_episode
from coordlab.runners.runner import run_sweep
from coordlab.runners.simulator import Simulator
from coordlab.runners.store import (COUNT_COLUMNS, SCHEMA_VERSION, EpisodeKey, Store, StoreError, open_readonly,
                                   pack_exchanges)
from coordlab.runners.sweep import LiveEndpoint, Sweep, SweepError
from coordlab.runners.viewer import Viewer

KEY_ENV = "COORDLAB_TRIALS_TEST_KEY"
SIMULATOR_ONLY = "the simulated model answers a seed the same way every time"
TASK = "chain@1+0123456789ab[n=1]"
"""A task key as a store records it: name@version+content[params]."""
ONE_CELL = dict(tasks=["chain:n=1"], frameworks=["plain"], variants=["linear"], profiles=["none"])


# -- the key -------------------------------------------------------------------------------------

def test_trial_0_keeps_the_five_segment_key_and_a_later_trial_adds_a_sixth() -> None:
    first = EpisodeKey("chain@1[n=6]", "plain", "0.1", "linear", "none", 3)
    third = EpisodeKey("chain@1[n=6]", "plain", "0.1", "linear", "none", 3, 2)
    assert str(first) == "chain@1[n=6]/plain@0.1/linear/none/3" and first.trial == 0
    assert str(third) == "chain@1[n=6]/plain@0.1/linear/none/3/t2"
    assert EpisodeKey.parse(str(first)) == first and EpisodeKey.parse(str(third)) == third
    assert EpisodeKey.parse("chain@1[n=6]/plain@0.1/linear/none/3/t0") == first


@pytest.mark.parametrize("text", ["chain/plain@0.1/linear/none/3/2", "chain/plain@0.1/linear/none/3/t",
                                  "chain/plain@0.1/linear/none/3/t-1", "chain/plain@0.1/linear/none/3/tx",
                                  "chain/plain@0.1/linear/none/3/t1/t2", "chain/plain@0.1/linear/none",
                                  "chain/plain/linear/none/3/t1"])
def test_a_malformed_key_is_refused_naming_both_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"SEED\[/tTRIAL\]"):
        EpisodeKey.parse(text)


# -- the store: schema 3 -> 4 ----------------------------------------------------------------------

def episode_row(seed: int, trial: int | None = None, status: str = "success") -> dict[str, Any]:
    row = {"task": TASK, "framework": "plain", "framework_version": "0.1.0",
           "variant": "linear", "profile": "none", "seed": seed, "status": status, "harmful": 0,
           "termination": "completed", "verdict_json": "{}", **dict.fromkeys(COUNT_COLUMNS, 0), "wall_ms": 1.0,
           "construction_ms": 0.5, "execution_ms": 0.5, "simulator_ms": 0.1, "knobs_json": "{}",
           "notes_json": "[]", "error": None, "finished_at": 0.0}
    if trial is not None:
        row["trial"] = trial
    return row


def schema_3_store(path: Path) -> Path:
    """A store as schema 3 wrote it: episodes keyed without a trial, with trace events and model bodies."""
    with Store(path) as store:
        store.create_run("run-v3", "identity", {}, {})
        for seed in range(3):
            store.record_episode("run-v3", episode_row(seed, status="success" if seed else "failed_check"),
                                 [{"kind": "fault", "at_ms": 0.0, "role": "writer", "step": "draft",
                                   "detail": {"fault": "wrong_value", "recovered": seed == 1}}],
                                 (1, pack_exchanges([(0, {"messages": [{"role": "user", "content": f"s{seed}"}]},
                                                      {"choices": []})])))
    with sqlite3.connect(path) as connection:  # the episodes table as schemas 2 and 3 defined it, rows kept
        connection.execute("PRAGMA foreign_keys = OFF")
        connection.execute(store_module._episodes_table("episodes_v3", trial=False))
        columns = [r[1] for r in connection.execute("PRAGMA table_info(episodes_v3)")]
        connection.execute(f"INSERT INTO episodes_v3 SELECT {', '.join(columns)} FROM episodes")
        connection.execute("DROP TABLE episodes")
        connection.execute("ALTER TABLE episodes_v3 RENAME TO episodes")
        connection.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    connection.close()
    assert "trial" not in {r["name"] for r in rows(path, "pragma_table_info('episodes')", "cid")}
    return path


def unique_keys(path: Path) -> list[list[str]]:
    with sqlite3.connect(path) as connection:
        found = [[c[2] for c in connection.execute(f"PRAGMA index_info('{index[1]}')")]
                 for index in connection.execute("PRAGMA index_list(episodes)") if index[2]]
    connection.close()
    return found


def test_a_schema_3_store_migrates_keeping_every_row_and_the_key_takes_a_trial(tmp_path: Path) -> None:
    path = schema_3_store(tmp_path / "v3.sqlite")
    episodes_before = rows(path, "episodes", "episode_id")
    events_before = rows(path, "events", "episode_id, seq")
    bodies_before = rows(path, "exchanges", "episode_id")
    runs_before = rows(path, "runs", "run_id")

    Store(path).close()

    assert schema_version(path) == SCHEMA_VERSION == 4
    episodes_after = rows(path, "episodes", "episode_id")
    assert [{k: v for k, v in row.items() if k != "trial"} for row in episodes_after] == episodes_before
    assert [row["trial"] for row in episodes_after] == [0, 0, 0]
    assert rows(path, "events", "episode_id, seq") == events_before
    assert rows(path, "exchanges", "episode_id") == bodies_before
    assert rows(path, "runs", "run_id") == runs_before
    assert unique_keys(path) == [["run_id", "task", "framework", "framework_version", "variant", "profile", "seed",
                                  "trial"]]
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    connection.close()

    with Store(path) as store:
        second = store.record_episode("run-v3", episode_row(0, trial=1), [])  # beside trial 0 of the same seed
        with pytest.raises(StoreError, match="UNIQUE"):
            store.record_episode("run-v3", episode_row(0, trial=1), [])
        keys = store.finished_keys("run-v3")
        first = EpisodeKey(TASK, "plain", "0.1.0", "linear", "none", 0)
        assert first in keys and replace(first, trial=1) in keys and len(keys) == 4
        found = store.find_episode(replace(first, trial=1))
        assert found is not None and found["episode_id"] == second
        assert store.find_episode(first)["episode_id"] == episodes_before[0]["episode_id"]  # type: ignore[index]
    Store(path).close()  # a second open migrates nothing again
    assert len(rows(path, "episodes", "episode_id")) == 4


def test_an_infra_error_is_replaced_by_its_own_trial_only(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        store.create_run("run", "identity", {}, {})
        store.record_episode("run", episode_row(0, trial=0, status="infra_error"), [])
        store.record_episode("run", episode_row(0, trial=1, status="infra_error"), [])
        store.record_episode("run", episode_row(0, trial=1), [])  # the rerun of trial 1 replaces trial 1's error
        statuses = [(row["trial"], row["status"]) for row in store.episodes("run")]
    assert statuses == [(0, "infra_error"), (1, "success")]


def test_a_migration_to_4_that_fails_half_way_leaves_the_schema_3_store_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_a_failed_migration_changes_nothing(schema_3_store(tmp_path / "v3.sqlite"), 3,
                                             store_module._migrate_3_to_4, monkeypatch)


def test_a_schema_3_store_read_only_reads_every_episode_as_trial_0(tmp_path: Path) -> None:
    path = schema_3_store(tmp_path / "v3.sqlite")
    data = load_store(path)
    assert all(e.trial == 0 for e in data.episodes) and data.superseded == 0
    assert len(data.episodes) + data.replicates == 3  # profile none on the simulator: its seeds are copies
    with open_readonly(path) as store:
        row = find_episode(store, f"{TASK}/plain/linear/none/1")
        assert episode_key(row).trial == 0 and row["seed"] == 1
        with pytest.raises(StoreError, match="predates repeated trials"):
            find_episode(store, f"{TASK}/plain/linear/none/1/t1")
        assert store.find_episode(EpisodeKey(row["task"], "plain", "0.1.0", "linear", "none", 1, 1)) is None
        out = tmp_path / "old.csv"
        export_episodes(store, out, "csv")
    header = out.read_text().splitlines()[0].split(",")
    assert header[header.index("seed") + 1] == "trial"  # an export of an old store has the column too: all 0
    assert schema_version(path) == 3


# -- the sweep ------------------------------------------------------------------------------------

def live() -> LiveEndpoint:
    return LiveEndpoint("http://127.0.0.1:9/v1", "some-model", KEY_ENV)


def test_jobs_expand_over_trials_and_the_spec_records_them() -> None:
    sweep = Sweep.build(**ONE_CELL, seeds=2, live=live(), trials=3)
    jobs = sweep.jobs()
    assert [(job.seed, job.trial, job.key.seed, job.key.trial) for job in jobs] == [
        (seed, trial, seed, trial) for seed in range(2) for trial in range(3)]
    assert len({job.key for job in jobs}) == 6 and str(jobs[-1].key).endswith("/none/1/t2")
    assert sweep.to_dict()["trials"] == 3 and Sweep.build(**ONE_CELL, seeds=2, live=live()).to_dict()["trials"] == 1
    assert sweep.identity() != Sweep.build(**ONE_CELL, seeds=2, live=live()).identity()
    assert [job.key.trial for job in Sweep.build(**ONE_CELL, seeds=2, live=live()).jobs()] == [0, 0]


def test_trials_against_the_simulator_are_refused_with_the_reason(tmp_path: Path) -> None:
    sweep = Sweep.build(**ONE_CELL, seeds=2, trials=3)  # built: --sweep FILE --base-url sets live after the file
    with pytest.raises(SweepError, match=SIMULATOR_ONLY) as refused:
        sweep.jobs()
    assert "--trials 3" in str(refused.value) and "--seeds 6" in str(refused.value)
    with pytest.raises(SweepError, match=SIMULATOR_ONLY):
        run_sweep(sweep, tmp_path / "never.sqlite")
    assert not (tmp_path / "never.sqlite").exists()
    Sweep.build(**ONE_CELL, seeds=2, trials=1).jobs()  # one trial is every run before --trials: fine


@pytest.mark.parametrize("trials", [0, 101, -1, True, 2.5, "two", "3x"])
def test_a_trial_count_outside_1_to_100_is_refused_naming_the_flag(trials: Any) -> None:
    with pytest.raises(SweepError, match=r"--trials: expected a whole number of trials from 1 to 100"):
        Sweep.build(**ONE_CELL, trials=trials)


def test_max_episodes_counts_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep_module, "MAX_EPISODES", 5)
    assert Sweep.build(**ONE_CELL, seeds=2, live=live(), trials=2).trials == 2
    with pytest.raises(SweepError, match="expands to 6 episodes"):
        Sweep.build(**ONE_CELL, seeds=2, live=live(), trials=3)


def test_a_sweep_file_takes_trials_and_names_the_field(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("tasks: [chain:n=1]\nframeworks: [plain]\nvariants: [linear]\nprofiles: [none]\ntrials: 4\n")
    assert Sweep.from_file(good).trials == 4 and Sweep.from_file(good).to_dict()["trials"] == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [chain:n=1]\ntrials: 0\n")
    with pytest.raises(SweepError, match=r"bad\.yaml: trials: expected a whole number of trials from 1 to 100"):
        Sweep.from_file(bad)


# -- the command line -------------------------------------------------------------------------------

def test_run_refuses_trials_without_a_live_endpoint_and_beside_a_sweep_file(tmp_path: Path, capsys) -> None:
    store = tmp_path / "cli.sqlite"
    code = main(["run", "--tasks", "chain:n=1", "--frameworks", "plain", "--variants", "linear", "--faults", "none",
                 "--trials", "3", "--store", str(store)])
    assert code == 2 and SIMULATOR_ONLY in capsys.readouterr().err and not store.exists()
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("tasks: [chain:n=1]\n")
    code = main(["run", "--sweep", str(sweep_file), "--trials", "2", "--store", str(store)])
    assert code == 2 and "cannot be combined" in capsys.readouterr().err
    assert main(["run", "--tasks", "chain:n=1", "--trials", "0", "--store", str(store)]) == 2
    assert "--trials: expected a whole number" in capsys.readouterr().err


def test_help_names_the_flag_and_the_six_segment_key(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--trials K" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["show", "--help"])
    assert "[/tK]" in capsys.readouterr().out


# -- a live run with trials, end to end -----------------------------------------------------------------

@pytest.fixture(scope="module")
def live_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seeds x two trials of one plain episode, against the simulator's server posing as a live endpoint."""
    path = tmp_path_factory.mktemp("trials") / "live.sqlite"
    with pytest.MonkeyPatch.context() as patch, Simulator() as simulator:
        patch.setenv(KEY_ENV, "sk-trials-test")
        sweep = Sweep.build(**ONE_CELL, seeds=2, live=LiveEndpoint(f"{simulator.url}/v1", "some-model", KEY_ENV),
                            trials=2)
        first = run_sweep(sweep, path, workers=1)
        again = run_sweep(sweep, path, workers=1)
    assert (first.total, first.ran, first.statuses.get("infra_error", 0)) == (4, 4, 0)
    assert (again.resumed, again.skipped, again.ran) == (True, 4, 0)  # resume finds every trial by its key
    return path


def test_a_live_run_records_each_trial_under_its_own_key(live_store: Path) -> None:
    recorded = rows(live_store, "episodes", "episode_id")
    assert sorted((row["seed"], row["trial"]) for row in recorded) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    (run,) = rows(live_store, "runs", "run_id")
    assert json.loads(run["spec_json"])["trials"] == 2
    data = load_store(live_store)
    assert len(data.episodes) == 4 and data.superseded == 0 and all(e.live for e in data.episodes)
    (row,) = pass_k_table(data.episodes, 2).values()
    assert row["trials are"] == "repeated trials" and (row["tasks"], row["seeds"], row["episodes"]) == (1, 2, 4)


def test_show_and_export_name_the_trial(live_store: Path, tmp_path: Path, capsys) -> None:
    recorded = {(row["seed"], row["trial"]): row for row in rows(live_store, "episodes", "episode_id")}
    with open_readonly(live_store) as store:
        key = str(episode_key(store.episodes()[0])).rsplit("/", 1)[0]  # a trial 0 key without its seed
        assert main(["show", f"{key}/1/t1", "--store", str(live_store)]) == 0
        assert capsys.readouterr().out.startswith(f"episode {key}/1/t1  (run ")
        assert find_episode(store, f"{key}/1")["episode_id"] == recorded[(1, 0)]["episode_id"]
        assert find_episode(store, f"{key}/1/t1")["episode_id"] == recorded[(1, 1)]["episode_id"]
        assert export_episodes(store, tmp_path / "e.jsonl", "jsonl") == 4
    exported = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert sorted((e["seed"], e["trial"]) for e in exported) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_the_viewer_shows_the_trial_and_a_link_by_key_round_trips(live_store: Path) -> None:
    recorded = {(row["seed"], row["trial"]): row for row in rows(live_store, "episodes", "episode_id")}
    target = recorded[(0, 1)]
    with open_readonly(live_store) as store:
        key = str(episode_key(store.query("SELECT * FROM episodes WHERE episode_id = ?",
                                          (target["episode_id"],))[0]))
    assert key.endswith("/0/t1")
    with Viewer(live_store, port=0) as viewer:
        for query in ({"key": key}, {"key": key, "run": target["run_id"]}):
            with urllib.request.urlopen(f"{viewer.url}/episodes/by-key?{urllib.parse.urlencode(query)}") as page:
                assert page.geturl().endswith(f"/episodes/{target['episode_id']}")
                body = page.read().decode()
            assert f'<code id="episode-key">{key}</code>' in body
        with urllib.request.urlopen(f"{viewer.url}/episodes") as page:
            listing = page.read().decode()
        with urllib.request.urlopen(f"{viewer.url}/") as page:
            runs = page.read().decode()
    assert listing.count(">t1</span>") == 2  # the seed column names the trial of both seeds' second episodes
    assert "2 seeds × 2 trials" in runs
