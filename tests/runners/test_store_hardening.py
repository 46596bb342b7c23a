"""The store and the export under abuse: two writers, foreign and damaged files, outputs that cannot be written.

Each test names a way a user lost or garbled results (or got a traceback) before the store
took a writer lock and checked what it opens, and before exports wrote through a checked,
atomic write.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

from coordlab.runners import export
from coordlab.runners.cli import main
from coordlab.runners.export import ExportError, export_episodes, find_episode, render_episode
from coordlab.runners.runner import run_sweep
from coordlab.runners.store import COUNT_COLUMNS, Store, StoreError, lock_path, open_readonly
from coordlab.runners.sweep import Sweep

QUIET = str(Path(__file__).parents[1] / "data" / "quiet.yaml")
"""A stochastic profile that injects nothing in practice: unlike ``none`` (deterministic, so run for its first seed
only), every seed of it is its own episode. The sweeps below that need several fault-free episodes use it."""
SMALL_SWEEP = dict(tasks=["chain:n=1"], frameworks=["plain"], variants=["linear"], profiles=[QUIET], seeds=2)


def episode_row(seed: int, profile: str = "none") -> dict[str, Any]:
    """A complete row for ``Store.record_episode``."""
    return {"task": "chain@1[n=2]", "framework": "plain", "framework_version": "1.0", "variant": "linear",
            "profile": profile, "seed": seed, "status": "success", "harmful": 0, "termination": "completed",
            "verdict_json": "{}", **dict.fromkeys(COUNT_COLUMNS, 1), "wall_ms": 10.0, "construction_ms": 1.0,
            "execution_ms": 9.0, "simulator_ms": 1.0, "knobs_json": "{}", "notes_json": "[]", "error": None,
            "finished_at": 1_700_000_000.0}


def make_store(path: Path, episodes: int = 60) -> Path:
    """A small finished store whose traces fill a few dozen pages (so damage in its middle hits live data)."""
    with Store(path) as store:
        store.create_run("run-1", "identity-1", {"tasks": ["chain@1[n=2]"]}, {})
        for seed in range(episodes):
            trace = [{"kind": "model_call", "at_ms": float(i), "role": "worker", "step": f"stage_{i}",
                      "detail": {"attempt": 1, "prompt_tokens": 10, "completion_tokens": 2, "text": "x" * 60}}
                     for i in range(12)]
            store.record_episode("run-1", episode_row(seed), trace)
    return path


def damage(path: Path) -> None:
    """Overwrite three whole pages in the middle of the file with a byte pattern, as a bad disk block would."""
    data = bytearray(path.read_bytes())
    page = 4096
    start = (len(data) // 2) // page * page
    data[start:start + 3 * page] = bytes((i * 37 + 11) % 256 for i in range(3 * page))
    path.write_bytes(bytes(data))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sound store, built once; tests copy it before changing anything."""
    return make_store(tmp_path_factory.mktemp("small") / "small.sqlite")


@pytest.fixture
def damaged_store(small_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged.sqlite"
    copy.write_bytes(small_store.read_bytes())
    damage(copy)
    return copy


HOLDER = textwrap.dedent("""
    import sys, time
    from coordlab.runners.store import Store
    store = Store(sys.argv[1])
    print("ready", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """Another process holding a writable store open, as a running `coordlab run` does."""
    path = tmp_path / "held.sqlite"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    yield process, path
    process.kill()
    process.wait()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


# -- 1. one writer per store ---------------------------------------------------------------------------

def test_a_second_writer_is_refused_with_the_holders_pid_and_a_way_out(holder) -> None:
    process, path = holder
    with pytest.raises(StoreError) as refused:
        Store(path)
    message = str(refused.value)
    assert f"store {path} is busy" in message and f"pid {process.pid}" in message
    assert "wait for it to finish or use another --store" in message


def test_a_second_run_is_refused_before_it_records_anything(holder) -> None:
    _, path = holder
    with pytest.raises(StoreError, match="is busy"):
        run_sweep(Sweep.build(**SMALL_SWEEP), path)
    with open_readonly(path) as store:  # readers take no lock: report, show and export work during a run
        assert store.episodes() == [] and store.runs() == []


def test_a_sigkilled_writer_leaves_no_stale_lock(holder) -> None:
    process, path = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert lock_path(path).exists()
    summary = run_sweep(Sweep.build(**SMALL_SWEEP), path, workers=1)
    assert summary.ran == 2
    assert lock_path(path).read_text().split()[0] == str(os.getpid())


def test_one_process_may_reopen_a_store_but_not_hold_it_twice(tmp_path: Path) -> None:
    path = tmp_path / "twice.sqlite"
    for _ in range(3):
        with Store(path) as store:
            with pytest.raises(StoreError, match="already open for writing in this process"):
                Store(path)
            with open_readonly(path):
                pass
    Store(path).close()


def test_two_identical_runs_at_once_record_every_episode_once(tmp_path: Path) -> None:
    store = tmp_path / "race.sqlite"
    command = [sys.executable, "-m", "coordlab", "run", "--frameworks", "plain", "--tasks", "chain:n=1",
               "refund_policy_answer", "--variants", "linear", "gated", "--faults", QUIET, "--seeds", "15",
               "--workers", "1", "--store", str(store)]
    logs = [tmp_path / f"stderr-{i}.txt" for i in range(2)]
    processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("w")) for log in logs]
    results = [(process.wait(timeout=300), log.read_text()) for process, log in zip(processes, logs)]
    for code, err in results:
        assert "Traceback" not in err and (code == 0 or (code == 1 and "is busy" in err)), err
    assert any(code == 0 for code, _ in results)
    with sqlite3.connect(store) as connection:
        keys = connection.execute("SELECT task, variant, seed FROM episodes").fetchall()
        assert connection.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    assert len(keys) == len(set(keys)) == 60


# -- 2. a foreign SQLite file is not adopted ---------------------------------------------------------------

def test_a_foreign_sqlite_database_is_refused_untouched(tmp_path: Path, capsys) -> None:
    path = tmp_path / "notes.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE notes (body TEXT)")
        connection.execute("INSERT INTO notes VALUES ('my own data')")
    connection.close()
    before = digest(path)
    with pytest.raises(StoreError, match="is an SQLite database but not a coordlab store.*choose another --store"):
        Store(path)
    code, err = cli(capsys, "run", "--frameworks", "plain", "--tasks", "chain:n=1", "--store", str(path))
    assert code == 1 and f"{path} is an SQLite database but not a coordlab store" in err
    assert digest(path) == before


def test_an_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    path.touch()
    with Store(path) as store:
        assert store.runs() == []


def test_a_store_path_is_taken_literally(tmp_path: Path) -> None:
    path = tmp_path / "results#1?.sqlite"
    with Store(path):
        pass
    assert path.exists() and not (tmp_path / "results").exists()


def test_a_folder_as_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"is a folder: give a file path"):
        Store(tmp_path)


# -- 3 and 5. a damaged store is neither written to nor exported ------------------------------------------

def test_a_damaged_store_is_refused_for_writing_and_left_as_it_was(damaged_store: Path, capsys) -> None:
    before = digest(damaged_store)
    with pytest.raises(StoreError) as refused:
        Store(damaged_store)
    message = str(refused.value)
    assert f"store {damaged_store} is damaged" in message and "nothing was written" in message
    code, err = cli(capsys, "run", "--frameworks", "plain", "--tasks", "chain:n=1", "--store", str(damaged_store))
    assert code == 1 and "is damaged" in err
    assert digest(damaged_store) == before


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "otel"])
def test_exporting_a_damaged_store_is_a_store_error_and_writes_nothing(damaged_store: Path, tmp_path: Path,
                                                                       fmt: str, capsys) -> None:
    out = tmp_path / f"out.{fmt}"
    with open_readonly(damaged_store) as store, pytest.raises(StoreError, match="is damaged"):
        export_episodes(store, out, fmt)
    code, err = cli(capsys, "export", "--format", fmt, "--store", str(damaged_store), "--out", str(out))
    assert code == 1 and f"store {damaged_store} is damaged" in err
    assert not out.exists()


def test_unreadable_json_in_a_trace_is_a_store_error(small_store: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "garbled.sqlite"
    path.write_bytes(small_store.read_bytes())
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE events SET detail_json = '{\"attempt\": 1, \"prom' WHERE seq = 3")
    connection.close()
    with open_readonly(path) as store:
        with pytest.raises(StoreError, match="event 3 of episode 1 is not readable JSON"):
            render_episode(store, find_episode(store, "chain@1[n=2]/plain/linear/none/0"))
        with pytest.raises(StoreError, match="not readable JSON"):
            export_episodes(store, tmp_path / "spans.json", "otel")
    code, err = cli(capsys, "show", "chain@1[n=2]/plain/linear/none/0", "--store", str(path))
    assert code == 1 and "not readable JSON" in err


def test_every_store_read_turns_sqlite_errors_into_store_errors(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s.sqlite", episodes=2)
    with open_readonly(path) as store:
        with pytest.raises(StoreError, match=f"store {path}"):
            store.query("SELECT * FROM no_such_table")
    with pytest.raises(StoreError, match="is closed"):
        store.episodes()


# -- 4. export outputs that cannot be written -------------------------------------------------------------

@pytest.fixture
def readable(small_store: Path) -> Iterator[Store]:
    with open_readonly(small_store) as store:
        yield store


def test_export_into_a_path_under_a_file_is_an_export_error(readable: Store, tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file")
    with pytest.raises(ExportError, match=f"{blocker} is a file, not a folder.*choose another --out"):
        export_episodes(readable, blocker / "episodes.jsonl", "jsonl")
    with pytest.raises(ExportError, match=f"{blocker} is a file, not a folder"):
        export_episodes(readable, blocker / "deeper" / "episodes.csv", "csv")
    assert blocker.read_text() == "a file"


def test_export_onto_a_folder_is_an_export_error(readable: Store, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    (folder / "keep").mkdir(parents=True)
    with pytest.raises(ExportError, match="is a folder"):
        export_episodes(readable, folder, "csv")
    assert [p.name for p in folder.iterdir()] == ["keep"]


def test_export_into_an_unwritable_place_is_an_export_error(readable: Store) -> None:
    with pytest.raises(ExportError, match=r"cannot write /proc/coordlab-export\.jsonl"):
        export_episodes(readable, Path("/proc/coordlab-export.jsonl"), "jsonl")


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_full_disk_keeps_the_earlier_export_whole(readable: Store, tmp_path: Path, failing: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "episodes.jsonl"
    export_episodes(readable, out, "jsonl")
    before = out.read_bytes()

    def disk_full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export.os, failing, disk_full)
    with pytest.raises(ExportError, match="the disk is full.*any earlier file is unchanged") as failure:
        export_episodes(readable, out, "otel" if failing == "fsync" else "csv")
    assert isinstance(failure.value, OSError) and failure.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episodes.jsonl"]  # no temp file left behind
    assert json.loads(before.splitlines()[0])["episode_id"] == 1
