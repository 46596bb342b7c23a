"""A store written before "recovered" and per-handoff counters opens, migrates, and keeps everything it recorded.

``tests/data/store_schema_1.sql`` is a real schema-1 store (written by that release's
store code, then dumped). Its ``faults_caught`` and per-request ``handoff_failures`` meant
something else than today's counters, so a migration keeps them as ``legacy_*`` columns,
leaves the new counters NULL, and every report reads NULL as unknown, never as zero.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from store_support import check_a_failed_migration_changes_nothing, rows, schema_version

from coordlab.reports.build import notes
from coordlab.reports.data import load_prices, load_store
from coordlab.reports.tables import coordination_table, faults_table
from coordlab.runners import store as store_module
from coordlab.runners.export import render_episode
from coordlab.runners.store import (COUNT_COLUMNS, SCHEMA_VERSION, Store, open_readonly,
                                   pack_exchanges)

OLD_DUMP = Path(__file__).parents[1] / "data" / "store_schema_1.sql"
RENAMED = {"faults_caught": "legacy_faults_caught", "handoff_failures": "legacy_handoff_failures"}
NEW_COUNTERS = ("faults_recovered", "handoffs_lost", "handoff_model_errors")


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as connection:
        connection.executescript(OLD_DUMP.read_text())
    connection.close()
    return path


def new_row(seed: int) -> dict[str, Any]:
    return {"task": "appointment_rebooking@1+f251c446c5f9", "framework": "plain", "framework_version": "0.1.0",
            "variant": "linear", "profile": "semantic_10pct", "seed": seed, "status": "success", "harmful": 0,
            "termination": "completed", "verdict_json": "{}", **dict.fromkeys(COUNT_COLUMNS, 0),
            "faults_injected": 1, "faults_recovered": 1, "wall_ms": 1.0, "construction_ms": 0.5, "execution_ms": 0.5,
            "simulator_ms": 0.1, "knobs_json": "{}", "notes_json": "[]", "error": None, "finished_at": 0.0}


def test_an_old_store_migrates_keeping_every_row_and_value(old_store: Path) -> None:
    episodes_before = rows(old_store, "episodes", "episode_id")
    events_before = rows(old_store, "events", "episode_id, seq")
    runs_before = rows(old_store, "runs", "run_id")
    assert schema_version(old_store) == 1 and len(episodes_before) == 3 and len(events_before) == 5

    Store(old_store).close()

    assert schema_version(old_store) == SCHEMA_VERSION == 4
    episodes_after = rows(old_store, "episodes", "episode_id")
    assert len(episodes_after) == len(episodes_before)
    for before, after in zip(episodes_before, episodes_after):
        for column, value in before.items():
            assert after[RENAMED.get(column, column)] == value, column  # every recorded value, under its new name
        assert all(after[counter] is None for counter in NEW_COUNTERS)  # unknown, not zero
        assert not set(RENAMED) & set(after)
    assert rows(old_store, "events", "episode_id, seq") == events_before  # traces untouched, ids still match
    assert rows(old_store, "runs", "run_id") == runs_before
    with sqlite3.connect(old_store) as connection:
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    connection.close()


def test_a_migrated_store_takes_new_episodes_and_resumes_its_run(old_store: Path) -> None:
    with Store(old_store) as store:
        assert len(store.finished_keys("run-v1")) == 3
        store.record_episode("run-v1", new_row(3), [{"kind": "fault", "at_ms": 0.0, "role": "writer", "step": "draft",
                                                     "detail": {"fault": "wrong_value", "recovered": True}}])
        assert len(store.finished_keys("run-v1")) == 4
    reopened = rows(old_store, "episodes", "episode_id")[-1]
    assert reopened["faults_recovered"] == 1 and reopened["legacy_faults_caught"] is None
    Store(old_store).close()  # a second open migrates nothing again
    assert len(rows(old_store, "episodes", "episode_id")) == 4


def test_reports_read_old_episodes_as_unknown_and_say_so(old_store: Path) -> None:
    with Store(old_store) as store:
        store.record_episode("run-v1", new_row(3), [])
    data = load_store(old_store)
    assert [e.faults_recovered for e in data.episodes] == [None, None, None, 1]
    assert data.unmeasured == 3
    (row,) = faults_table(data.episodes).values()
    # 3 faults injected in all; recovery known for the new episode only: 1 of its 1
    assert (row["faults injected"], row["faults recovered"], row["recovered share"]) == (3, 1, 1.0)
    (coordination,) = coordination_table(data.episodes).values()
    assert coordination["handoffs lost / ep"] == 0.0  # the new episode's, not an average with old zeros
    assert any("3 episode(s) were recorded before" in note and "unknown" in note
               for note in notes(data, load_prices()))


def test_an_old_store_read_only_is_reported_unchanged_and_unmigrated(old_store: Path) -> None:
    digest = hashlib.sha256(old_store.read_bytes()).hexdigest()
    data = load_store(old_store)
    assert len(data.episodes) == 3 and data.unmeasured == 3
    (row,) = faults_table(data.episodes).values()
    assert row["faults injected"] == 2 and row["faults recovered"] is None and row["recovered share"] is None
    store = open_readonly(old_store)
    try:
        text = render_episode(store, store.episodes()[0])
    finally:
        store.close()
    assert "faults unknown/1 recovered" in text and "repeated_side_effect (worked on again (old 'caught'))" in text
    assert hashlib.sha256(old_store.read_bytes()).hexdigest() == digest and schema_version(old_store) == 1


def test_a_migration_that_fails_half_way_leaves_the_old_store_as_it_was(old_store: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    check_a_failed_migration_changes_nothing(old_store, 1, store_module._migrate_1_to_2, monkeypatch)


def test_a_fault_event_records_recovered_not_caught(old_store: Path) -> None:
    with Store(old_store) as store:
        store.record_episode("run-v1", new_row(3), [{"kind": "fault", "at_ms": 0.0, "role": "writer",
                                                     "step": "draft", "detail": {"fault": "wrong_value",
                                                                                 "recovered": False}}])
        text = render_episode(store, store.episodes()[-1])
    assert "wrong_value (not recovered)" in text and "handoffs failed 0 lost / 0 model error" in text
    assert json.loads(rows(old_store, "events", "episode_id, seq")[-1]["detail_json"]) == {
        "fault": "wrong_value", "recovered": False}


def schema_2_store(path: Path) -> Path:
    """A store as schema 2 wrote it (today's minus the exchanges table and the fault index), with one episode."""
    with Store(path) as store:
        store.create_run("run-v2", "identity", {}, {})
        store.record_episode("run-v2", new_row(0), [{"kind": "fault", "at_ms": 0.0, "role": "writer", "step": "draft",
                                                     "detail": {"fault": "wrong_value", "recovered": True}}])
    with sqlite3.connect(path) as connection:
        connection.execute("DROP INDEX events_by_fault")
        connection.execute("DROP TABLE exchanges")
        connection.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    connection.close()
    return path


def tables_and_indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
    connection.close()
    return names


def test_a_schema_2_store_gains_the_bodies_table_and_keeps_everything(tmp_path: Path) -> None:
    path = schema_2_store(tmp_path / "v2.sqlite")
    episodes_before, events_before = rows(path, "episodes", "episode_id"), rows(path, "events", "episode_id, seq")
    assert "exchanges" not in tables_and_indexes(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    with open_readonly(path) as store:  # read-only: read as it is, no bodies, nothing migrated
        assert store.exchanges(1) is None
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest and schema_version(path) == 2

    bodies = [(0, {"messages": [{"role": "user", "content": "hello"}]}, {"choices": []}), (1, {"messages": []}, None)]
    with Store(path) as store:
        assert store.exchanges(1) == []  # recorded before bodies were kept
        second = store.record_episode("run-v2", new_row(1), [], (len(bodies), pack_exchanges(bodies)))
        stored = store.exchanges(second)
    assert schema_version(path) == SCHEMA_VERSION and {"exchanges", "events_by_fault"} <= tables_and_indexes(path)
    assert [(e.seq, e.request, e.response) for e in stored or []] == bodies
    assert rows(path, "episodes", "episode_id")[:1] == episodes_before
    assert rows(path, "events", "episode_id, seq") == events_before
    with sqlite3.connect(path) as connection:  # the viewer's fault filter reads fault events through the index
        plan = " ".join(str(row) for row in connection.execute(
            "EXPLAIN QUERY PLAN SELECT episode_id FROM events WHERE kind = 'fault' "
            "AND json_extract(detail_json, '$.fault') = ?", ("wrong_value",)))
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("DELETE FROM episodes WHERE episode_id = ?", (second,))  # bodies go with their episode
        assert connection.execute("SELECT count(*) FROM exchanges").fetchone()[0] == 0
    connection.close()
    assert "events_by_fault" in plan
