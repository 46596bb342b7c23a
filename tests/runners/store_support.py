"""Reading a store file directly, as the migration tests do: every row of a table, and its schema version."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

import pytest

from coordlab.runners import store as store_module
from coordlab.runners.store import Store, StoreError


def rows(path: Path, table: str, order: str) -> list[dict[str, Any]]:
    """Every row of ``table``, ordered by ``order``, as dicts."""
    with sqlite3.connect(path) as connection:
        connection.row_factory = sqlite3.Row
        found = [dict(r) for r in connection.execute(f"SELECT * FROM {table} ORDER BY {order}")]
    connection.close()
    return found


def schema_version(path: Path) -> int:
    """The schema version the store file records."""
    with sqlite3.connect(path) as connection:
        version = int(connection.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
    connection.close()
    return version


def check_a_failed_migration_changes_nothing(path: Path, from_version: int,
                                             migration: Callable[[sqlite3.Connection], None],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``migration`` (from schema ``from_version``), fail right after it, and check the store is as it was.

    The failure comes after the old episodes table is already dropped: only the one
    transaction around the migrations can bring it back.
    """
    episodes_before, events_before = rows(path, "episodes", "episode_id"), rows(path, "events", "episode_id, seq")

    def migrate_then_fail(connection: sqlite3.Connection) -> None:
        migration(connection)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setitem(store_module._MIGRATIONS, from_version, migrate_then_fail)
    with pytest.raises(StoreError, match="disk I/O error"):
        Store(path)
    assert schema_version(path) == from_version
    assert rows(path, "episodes", "episode_id") == episodes_before
    assert rows(path, "events", "episode_id, seq") == events_before
