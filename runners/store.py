"""The results store: one SQLite file (WAL) holding runs, episodes by natural key, and their traces.

Every episode is committed in its own transaction together with its trace events, so a
runner killed at any instant leaves whole episodes or none. A store written by a newer
schema is refused rather than migrated down, and every failure to open or write names the
file and what to do.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 1
"""The store schema this coordlab writes; older stores are migrated up, newer ones refused."""

COUNT_COLUMNS = ("model_calls", "tool_calls", "tool_errors", "handoffs", "handoff_failures", "framework_retries",
                 "transport_retries", "gate_rejections", "faults_injected", "faults_caught", "prompt_tokens",
                 "completion_tokens")
"""Per-episode counters, one column each so reports can aggregate them in SQL."""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,            -- running | interrupted | finished
    spec_json TEXT NOT NULL,         -- the sweep: what was asked for
    metadata_json TEXT NOT NULL      -- versions, knobs, machine, git commit
);
CREATE INDEX IF NOT EXISTS runs_by_identity ON runs (identity, created_at);
CREATE TABLE IF NOT EXISTS episodes (
    episode_id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    task TEXT NOT NULL,              -- name@version[params]
    framework TEXT NOT NULL,
    framework_version TEXT NOT NULL,
    variant TEXT NOT NULL,
    profile TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,            -- success | failed_check | error | timeout | infra_error
    harmful INTEGER NOT NULL,
    termination TEXT NOT NULL,
    verdict_json TEXT NOT NULL,
    {", ".join(f"{c} INTEGER NOT NULL" for c in COUNT_COLUMNS)},
    wall_ms REAL NOT NULL,
    construction_ms REAL NOT NULL,
    execution_ms REAL NOT NULL,
    simulator_ms REAL NOT NULL,      -- time the simulator spent answering (server side)
    knobs_json TEXT NOT NULL,
    notes_json TEXT NOT NULL,
    error TEXT,
    finished_at REAL NOT NULL,
    UNIQUE (run_id, task, framework, framework_version, variant, profile, seed)
);
CREATE TABLE IF NOT EXISTS events (
    episode_id INTEGER NOT NULL REFERENCES episodes (episode_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    at_ms REAL NOT NULL,             -- since the episode's first event
    role TEXT,
    step TEXT,
    detail_json TEXT NOT NULL,
    PRIMARY KEY (episode_id, seq)
);
"""


class StoreError(RuntimeError):
    """The store cannot be opened or written; the message names the file and the way out."""


@dataclass(frozen=True)
class EpisodeKey:
    """The natural key of an episode: (task@version, framework@version, variant, fault profile, seed)."""

    task: str
    framework: str
    framework_version: str
    variant: str
    profile: str
    seed: int

    def __str__(self) -> str:
        return f"{self.task}/{self.framework}@{self.framework_version}/{self.variant}/{self.profile}/{self.seed}"

    @classmethod
    def parse(cls, text: str) -> "EpisodeKey":
        """Read the ``task/framework@version/variant/profile/seed`` form that ``str()`` writes."""
        parts = text.split("/")
        if len(parts) != 5 or "@" not in parts[1] or not parts[4].lstrip("-").isdigit():
            raise ValueError(f"episode key {text!r}: expected TASK/FRAMEWORK@VERSION/VARIANT/PROFILE/SEED")
        framework, _, version = parts[1].partition("@")
        return cls(parts[0], framework, version, parts[2], parts[3], int(parts[4]))


def _describe(exc: sqlite3.Error, path: Path) -> str:
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        return f"store {path} is read-only: choose a writable --store path"
    if "disk is full" in text or "database or disk is full" in text:
        return f"store {path}: the disk is full; nothing of the current episode was written, earlier ones are intact"
    if "unable to open" in text:
        return f"store {path} cannot be opened (does its folder exist and is it writable?)"
    if "not a database" in text:
        return f"{path} is not a coordlab store (not an SQLite file)"
    return f"store {path}: {text}"


class Store:
    """A handle on one SQLite results file. The runner is its only writer."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        if readonly and not self.path.exists():
            raise StoreError(f"no store at {self.path}: run `coordlab run --store {self.path}` first")
        try:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            uri = f"file:{self.path}?mode={'ro' if readonly else 'rwc'}"
            self.connection = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
            self.connection.row_factory = sqlite3.Row
            self.connection.execute("PRAGMA foreign_keys = ON")
            self._check_schema(readonly)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(_describe(exc, self.path) if isinstance(exc, sqlite3.Error)
                             else f"store {self.path}: {exc.strerror or exc}") from None

    def _check_schema(self, readonly: bool) -> None:
        tables = {r[0] for r in self.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = None
        if "meta" in tables:
            row = self.connection.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else None
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(f"store {self.path} was written by a newer coordlab (schema {version}; this one reads "
                             f"up to {SCHEMA_VERSION}): upgrade coordlab or use another --store")
        if readonly:
            if version is None:
                raise StoreError(f"{self.path} is not a coordlab store (no schema version)")
            return
        # Only now that the file is known to be ours and not newer may anything be written to it.
        self.connection.execute("PRAGMA journal_mode = WAL")
        self.connection.execute("PRAGMA synchronous = NORMAL")
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.connection.execute(statement)
            self.connection.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    # -- transactions ----------------------------------------------------------------------
    class _Transaction:
        def __init__(self, store: "Store"):
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store.connection.execute("BEGIN IMMEDIATE")
            return self.store.connection

        def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
            connection = self.store.connection
            if kind is None:
                try:
                    connection.execute("COMMIT")
                    return
                except sqlite3.Error:
                    self._rollback()
                    raise
            self._rollback()

        def _rollback(self) -> None:
            # SQLite has already rolled back by itself after some errors (a full disk among them);
            # a second ROLLBACK would then raise and hide the error that matters.
            if self.store.connection.in_transaction:
                self.store.connection.execute("ROLLBACK")

    def transaction(self) -> "_Transaction":
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any error."""
        return Store._Transaction(self)

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        self.connection.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, action: Any) -> Any:
        try:
            with self.transaction() as connection:
                return action(connection)
        except sqlite3.Error as exc:
            raise StoreError(_describe(exc, self.path)) from None

    # -- runs ---------------------------------------------------------------------------------
    def latest_run(self, identity: str) -> sqlite3.Row | None:
        """The most recent run with ``identity`` (what a resume continues)."""
        return self.connection.execute("SELECT * FROM runs WHERE identity = ? ORDER BY created_at DESC LIMIT 1",
                                       (identity,)).fetchone()

    def create_run(self, run_id: str, identity: str, spec: dict[str, Any], metadata: dict[str, Any]) -> None:
        """Record a new run."""
        self._write(lambda c: c.execute("INSERT INTO runs VALUES (?, ?, ?, 'running', ?, ?)",
                                        (run_id, identity, time.time(), json.dumps(spec), json.dumps(metadata))))

    def set_run_status(self, run_id: str, status: str) -> None:
        """Mark a run ``running``, ``interrupted`` or ``finished``."""
        self._write(lambda c: c.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id)))

    def runs(self) -> list[sqlite3.Row]:
        """Every run, newest first."""
        return self.connection.execute("SELECT * FROM runs ORDER BY created_at DESC").fetchall()

    # -- episodes -----------------------------------------------------------------------------
    def finished_keys(self, run_id: str) -> set[EpisodeKey]:
        """Keys already recorded in ``run_id`` (infra errors excluded: those are run again)."""
        rows = self.connection.execute(
            "SELECT task, framework, framework_version, variant, profile, seed FROM episodes "
            "WHERE run_id = ? AND status != 'infra_error'", (run_id,))
        return {EpisodeKey(*row) for row in rows}

    def record_episode(self, run_id: str, row: dict[str, Any], events: list[dict[str, Any]]) -> int:
        """Write one episode and its trace in one transaction (replacing an earlier infra error of the key)."""
        columns = list(row)

        def write(connection: sqlite3.Connection) -> int:
            connection.execute(
                "DELETE FROM episodes WHERE run_id = ? AND task = ? AND framework = ? AND framework_version = ? "
                "AND variant = ? AND profile = ? AND seed = ? AND status = 'infra_error'",
                (run_id, row["task"], row["framework"], row["framework_version"], row["variant"], row["profile"],
                 row["seed"]))
            cursor = connection.execute(
                f"INSERT INTO episodes (run_id, {', '.join(columns)}) VALUES (?, {', '.join('?' * len(columns))})",
                (run_id, *row.values()))
            episode_id = int(cursor.lastrowid or 0)
            connection.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(episode_id, seq, e["kind"], e["at_ms"], e.get("role"), e.get("step"), json.dumps(e["detail"]))
                 for seq, e in enumerate(events)])
            return episode_id

        return self._write(write)

    def episodes(self, run_id: str | None = None) -> list[sqlite3.Row]:
        """Episodes of one run (default: every run), in the order they finished."""
        if run_id is None:
            return self.connection.execute("SELECT * FROM episodes ORDER BY episode_id").fetchall()
        return self.connection.execute("SELECT * FROM episodes WHERE run_id = ? ORDER BY episode_id",
                                       (run_id,)).fetchall()

    def find_episode(self, key: EpisodeKey, run_id: str | None = None) -> sqlite3.Row | None:
        """The newest episode with ``key`` (in ``run_id`` if given)."""
        query = ("SELECT * FROM episodes WHERE task = ? AND framework = ? AND framework_version = ? AND variant = ? "
                 "AND profile = ? AND seed = ?")
        params: list[Any] = [key.task, key.framework, key.framework_version, key.variant, key.profile, key.seed]
        if run_id is not None:
            query += " AND run_id = ?"
            params.append(run_id)
        return self.connection.execute(query + " ORDER BY episode_id DESC LIMIT 1", params).fetchone()

    def events(self, episode_id: int) -> Iterator[sqlite3.Row]:
        """An episode's trace events in order."""
        return iter(self.connection.execute("SELECT * FROM events WHERE episode_id = ? ORDER BY seq", (episode_id,)))


def open_readonly(path: str | Path) -> Store:
    """Open an existing store for reading (reports, show, export)."""
    return Store(path, readonly=True)

