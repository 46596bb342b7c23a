"""The sweep runner: resume after kills, time limits, determinism, identity, and a store that never loses work."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from coordlab.runners.runner import RunSummary, run_sweep
from coordlab.runners.store import SCHEMA_VERSION, EpisodeKey, Store, StoreError
from coordlab.runners.sweep import Sweep, SweepError, parse_seeds
from coordlab.tasks.schema import split_task_key

QUIET = str(Path(__file__).parents[1] / "data" / "quiet.yaml")
"""A stochastic profile that injects nothing in practice: unlike ``none`` (deterministic, so run for its first seed
only), every seed of it is its own episode. The tests below that need many fault-free episodes use it."""
SMALL = dict(tasks=["chain:n=2", "refund_policy_answer"], frameworks=["plain"], variants=["linear", "gated"])
SWEEP_200 = ["--frameworks", "plain", "--tasks", "chain:n=1", "refund_policy_answer", "--variants", "linear",
             "gated", "--faults", QUIET, "semantic_10pct", "--seeds", "25"]

@pytest.fixture(scope="module")
def recorded_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding one small finished run, shared by tests that must leave it untouched."""
    path = tmp_path_factory.mktemp("recorded") / "keep.sqlite"
    run_sweep(Sweep.build(**SMALL, profiles=["none"], seeds=1), path)
    with Store(path) as store:
        store.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def keys(store_path: Path) -> list[tuple]:
    """Recorded episode keys (none while the runner has not created its tables yet)."""
    try:
        with sqlite3.connect(store_path) as connection:
            return connection.execute("SELECT task, framework, variant, profile, seed FROM episodes").fetchall()
    except sqlite3.OperationalError:
        return []


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "coordlab", *args]


def test_killed_five_times_then_resumed_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    store = tmp_path / "r.sqlite"
    command = cli("run", *SWEEP_200, "--store", str(store), "--workers", "2")
    rng = random.Random(7)
    recorded_before: list[int] = []
    for _ in range(5):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = len(keys(store)) + rng.randint(5, 25) if store.exists() else rng.randint(5, 25)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if store.exists() and len(keys(store)) >= target:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        recorded_before.append(len(keys(store)))
    assert recorded_before == sorted(recorded_before) and 0 < recorded_before[-1] < 200
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert f"{recorded_before[-1]} already recorded, {200 - recorded_before[-1]} run" in finished.stdout
    recorded = keys(store)
    assert len(recorded) == 200 and len(set(recorded)) == 200
    with sqlite3.connect(store) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        orphans = connection.execute("SELECT count(*) FROM events WHERE episode_id NOT IN "
                                     "(SELECT episode_id FROM episodes)").fetchone()[0]
        assert orphans == 0


def test_sigint_marks_the_run_interrupted_and_it_resumes(tmp_path: Path) -> None:
    store = tmp_path / "i.sqlite"
    command = cli("run", *SWEEP_200[:-1], "5", "--store", str(store), "--workers", "1")
    # Ctrl-C on a foreground run: the default disposition, even when this test itself was started
    # from a background job (a non-interactive shell starts those with SIGINT ignored, inherited here).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (store.exists() and len(keys(store)) >= 10):
        time.sleep(0.02)
    assert process.poll() is None and len(keys(store)) < 40, "the run must still be going when interrupted"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and "run the same command again to resume" in err
    with sqlite3.connect(store) as connection:
        assert connection.execute("SELECT status FROM runs").fetchone()[0] == "interrupted"
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "(resumed)" in resumed.stdout
    assert len(set(keys(store))) == len(keys(store)) == 40


def test_hung_episode_is_killed_at_its_limit_and_the_rest_go_on(tmp_path: Path, plugins: Path) -> None:
    sweep = Sweep.build(tasks=["chain:n=1", "refund_policy_answer"], frameworks=["hang"], variants=["linear"],
                        profiles=[QUIET], seeds=2)
    summary = run_sweep(sweep, tmp_path / "h.sqlite", workers=1, time_limit=2.0)
    assert summary.statuses == Counter({"success": 2, "timeout": 2})
    with Store(tmp_path / "h.sqlite") as store:
        rows = {(split_task_key(r["task"])[0], r["seed"]): r for r in store.episodes()}
    for seed in (0, 1):
        timed_out = rows[("refund_policy_answer@1", seed)]
        assert timed_out["status"] == "timeout" and timed_out["wall_ms"] <= 3000
        assert rows[("chain@1[n=1]", seed)]["status"] == "success"


def test_a_crashing_framework_is_an_error_not_an_infra_error(tmp_path: Path, plugins: Path) -> None:
    sweep = Sweep.build(tasks=["chain:n=1"], frameworks=["crash"], variants=["linear"], profiles=[QUIET], seeds=2)
    summary = run_sweep(sweep, tmp_path / "c.sqlite", workers=1)
    assert summary.statuses == Counter({"error": 2})
    with Store(tmp_path / "c.sqlite") as store:
        assert "the framework fell over" in store.episodes()[0]["error"]


def _outcomes(path: Path, run_id: str) -> dict:
    with Store(path) as store:
        result = {}
        for row in store.episodes(run_id):
            faults = [(e["step"], json.loads(e["detail_json"])["attempt"], json.loads(e["detail_json"])["fault"])
                      for e in store.events(row["episode_id"]) if e["kind"] == "fault"]
            result[str(EpisodeKey(row["task"], row["framework"], row["framework_version"], row["variant"],
                                  row["profile"], row["seed"]))] = (row["status"], row["harmful"],
                                                                    row["model_calls"], faults)
        return result


def test_same_sweep_twice_gives_identical_outcomes_and_schedules(tmp_path: Path) -> None:
    sweep = Sweep.build(**SMALL, profiles=["semantic_10pct"], seeds=6)
    first = run_sweep(sweep, tmp_path / "a.sqlite", workers=2)
    second = run_sweep(sweep, tmp_path / "b.sqlite", workers=1)
    a, b = _outcomes(tmp_path / "a.sqlite", first.run_id), _outcomes(tmp_path / "b.sqlite", second.run_id)
    assert a == b and any(faults for *_, faults in a.values())
    other = run_sweep(Sweep.build(**SMALL, profiles=["semantic_10pct"], seeds="6-11"), tmp_path / "c.sqlite")
    schedule = lambda outcomes: sorted(f for *_, f in outcomes.values())  # noqa: E731
    assert schedule(_outcomes(tmp_path / "c.sqlite", other.run_id)) != schedule(a)


def test_workers_and_time_limit_do_not_change_the_run_identity(tmp_path: Path) -> None:
    sweep = Sweep.build(**SMALL, profiles=["none"], seeds=1)
    first = run_sweep(sweep, tmp_path / "s.sqlite", workers=1, time_limit=60)
    again = run_sweep(sweep, tmp_path / "s.sqlite", workers=2, time_limit=5)
    assert again.run_id == first.run_id and again.resumed and (again.skipped, again.ran) == (first.total, 0)
    assert Sweep.build(**SMALL, profiles=["none"], seeds=2).identity() != sweep.identity()
    fresh = run_sweep(sweep, tmp_path / "s.sqlite", fresh=True)
    assert fresh.run_id != first.run_id and fresh.ran == first.total


def test_store_written_by_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION + 1),))
    before = file_digest(path)
    with pytest.raises(StoreError, match="written by a newer coordlab"):
        run_sweep(Sweep.build(**SMALL, profiles=["none"], seeds=1), path)
    assert file_digest(path) == before


def test_unwritable_store_path_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match=r"/proc/coordlab-test\.sqlite"):
        Store("/proc/coordlab-test.sqlite")


def test_full_disk_loses_nothing_already_recorded(tmp_path: Path) -> None:
    path = tmp_path / "full.sqlite"
    run_sweep(Sweep.build(**SMALL, profiles=["none"], seeds=1), path)
    with Store(path) as store:
        run_id = store.runs()[0]["run_id"]
        before = len(store.episodes())
        pages = store.connection.execute("PRAGMA page_count").fetchone()[0]
        store.connection.execute(f"PRAGMA max_page_count = {pages + 1}")  # the disk fills up now
        row = dict(store.episodes()[0])
        for column in ("episode_id", "run_id"):
            row.pop(column)
        row["seed"] = 99
        huge = [{"kind": "model_call", "at_ms": float(i), "detail": {"padding": "x" * 2000}} for i in range(200)]
        with pytest.raises(StoreError, match="disk is full; nothing of the current episode was written"):
            store.record_episode(run_id, row, huge)
    with Store(path) as store:
        assert len(store.episodes()) == before
        assert store.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize("argv, message", [
    (["--workers", "x"], "invalid int value"),
    (["--seeds", "0"], "need at least 1 seed"),
    (["--variants", "gatd"], "did you mean 'gated'"),
    (["--tasks", "chain:n=x"], "NAME:param=INTEGER"),
    (["--faults", "semantic_3"], "no fault profile"),
    (["--time-limit", "-1"], "--time-limit must be positive"),
    (["--base-url", "http://127.0.0.1:9/v1"], "--base-url needs --model"),
])
def test_bad_flags_are_clear_errors_and_leave_the_store_intact(recorded_store: Path, argv: list[str],
                                                              message: str) -> None:
    path = recorded_store
    before = file_digest(path)
    result = subprocess.run(cli("run", "--frameworks", "plain", "--store", str(path), *argv),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert file_digest(path) == before


def test_seeds_forms() -> None:
    assert parse_seeds(3) == (0, 1, 2) and parse_seeds("3-5") == (3, 4, 5) and parse_seeds("1,4,9") == (1, 4, 9)
    with pytest.raises(SweepError):
        parse_seeds("5-3")


def test_sweep_file_matches_flags(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("tasks: [chain:n=2, refund_policy_answer]\nframeworks: [plain]\nvariants: [linear, gated]\n"
                    "profiles: [none]\nseeds: 1\n")
    assert Sweep.from_file(path).identity() == Sweep.build(**SMALL, profiles=["none"], seeds=1).identity()
    path.write_text("tasks: [chain]\nframework: [plain]\n")
    with pytest.raises(SweepError, match="did you mean 'frameworks'"):
        Sweep.from_file(path)


def test_progress_reports_eta_and_success_per_framework(tmp_path: Path) -> None:
    import io

    stream = io.StringIO()
    summary: RunSummary = run_sweep(Sweep.build(**SMALL, profiles=["none"], seeds=1), tmp_path / "p.sqlite",
                                    progress_stream=stream)
    assert summary.ran == 4 and "ETA" in stream.getvalue() and "ok: plain 4/4" in stream.getvalue()


def test_run_metadata_records_versions_machine_and_commit(tmp_path: Path) -> None:
    run_sweep(Sweep.build(**SMALL, profiles=["none"], seeds=1), tmp_path / "m.sqlite", workers=1, time_limit=30)
    with Store(tmp_path / "m.sqlite") as store:
        metadata = json.loads(store.runs()[0]["metadata_json"])
    assert metadata["packages"]["crewai"] and metadata["packages"]["langgraph"]
    assert metadata["machine"]["cpus"] and metadata["runtime"] == {"workers": 1, "time_limit_s": 30}
    assert "git_commit" in metadata and metadata["knobs"]["gate_retries"] == 2


def test_live_endpoint_key_is_read_from_the_environment_and_never_stored(tmp_path: Path, monkeypatch) -> None:
    from coordlab.runners.simulator import Simulator
    from coordlab.runners.sweep import LiveEndpoint

    monkeypatch.setenv("COORDLAB_TEST_KEY", "sk-very-secret")
    with Simulator() as simulator:  # any OpenAI-compatible endpoint will do; this one answers errors
        live = LiveEndpoint(f"{simulator.url}/v1", "some-model", "COORDLAB_TEST_KEY")
        sweep = Sweep.build(tasks=["chain:n=1"], frameworks=["plain"], variants=["linear"], profiles=["none"],
                            seeds=1, live=live)
        summary = run_sweep(sweep, tmp_path / "live.sqlite", workers=1)
    assert summary.ran == 1
    assert b"sk-very-secret" not in (tmp_path / "live.sqlite").read_bytes()
    for wal in tmp_path.glob("live.sqlite*"):
        assert b"sk-very-secret" not in wal.read_bytes()


def test_store_counter_columns_are_the_harness_counters() -> None:
    from dataclasses import fields

    from coordlab.runners.harness import Counts
    from coordlab.runners.store import COUNT_COLUMNS

    assert COUNT_COLUMNS == tuple(f.name for f in fields(Counts))
