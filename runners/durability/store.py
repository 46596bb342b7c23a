"""The durability experiment's results: one SQLite row per durable episode, written as each one ends.

Its own small store (not the comparison store): a durable episode is two runs around a
crash, scored by what happened to each side effect, and its columns say so. Rows are
keyed by (scenario, task, framework, version, variant, seed, idempotency keys), so an interrupted
experiment resumes where it stopped, and several worker processes may write at once (WAL,
one short transaction per row): a row once written is never rewritten or lost.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from .episode import DurableResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS durable_episodes (
    scenario TEXT NOT NULL, task TEXT NOT NULL, framework TEXT NOT NULL, framework_version TEXT NOT NULL,
    variant TEXT NOT NULL, seed INTEGER NOT NULL, idempotency_keys INTEGER NOT NULL,
    crash_kind TEXT NOT NULL, crash_effect INTEGER, crash_step TEXT,
    crashed INTEGER NOT NULL, resume_path TEXT NOT NULL, resumed_from TEXT,
    status TEXT NOT NULL, termination TEXT NOT NULL, harmful INTEGER NOT NULL, exactly_once INTEGER NOT NULL,
    duplicated INTEGER NOT NULL, lost INTEGER NOT NULL, redone_calls INTEGER NOT NULL,
    calls_before INTEGER NOT NULL, calls_after INTEGER NOT NULL, recover_s REAL, wall_s REAL NOT NULL,
    error TEXT, notes_json TEXT NOT NULL, verdict_json TEXT NOT NULL, requests_json TEXT NOT NULL,
    knobs_json TEXT NOT NULL, reviews_json TEXT, unapproved INTEGER, effects_at_crash INTEGER,
    code_version TEXT,
    PRIMARY KEY (scenario, task, framework, framework_version, variant, seed, idempotency_keys)
)
"""

SCENARIOS = ("crash", "review")
"""``crash``: killed at the scheduled point; ``review``: a scripted human approves each gated step (may answer late)."""

KEY_COLUMNS = ("scenario", "task", "framework", "framework_version", "variant", "seed", "idempotency_keys")


def request_log(result: DurableResult) -> list[dict[str, Any]]:
    """The episode's model requests as the report reads them: who asked for which step, in which run, when."""
    origin = result.records[0].received_at if result.records else 0.0
    return [{"seq": r.seq, "role": r.role, "step": r.step, "attempt": r.attempt, "kind": r.kind,
             "status": r.status, "at_s": round(r.received_at - origin, 4), "tool_calls": list(r.tool_calls)}
            for r in result.records]


def code_version() -> str | None:
    """The git commit of the coordlab checkout that runs the episodes (None outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def row_of(result: DurableResult, commit: str | None = None) -> dict[str, Any]:
    """The result as a row of ``durable_episodes``, with the commit of the code that ran it."""
    return {
        "scenario": "review" if result.reviews is not None else "crash",
        "task": result.task, "framework": result.framework, "framework_version": result.framework_version,
        "variant": result.variant, "seed": result.seed,
        "idempotency_keys": int(bool(result.knobs.get("idempotency_keys"))),
        "crash_kind": result.crash.kind, "crash_effect": result.crash.effect, "crash_step": result.crash.step,
        "crashed": int(result.crashed), "resume_path": result.resume_path, "resumed_from": result.resumed_from,
        "status": result.status.value, "termination": result.termination.value, "harmful": int(result.harmful),
        "exactly_once": int(result.exactly_once), "duplicated": result.duplicated, "lost": result.lost,
        "redone_calls": result.redone_calls, "calls_before": result.calls_before, "calls_after": result.calls_after,
        "recover_s": result.recover_s, "wall_s": result.wall_s, "error": result.error,
        "notes_json": json.dumps(result.notes), "verdict_json": json.dumps(asdict(result.verdict)),
        "requests_json": json.dumps(request_log(result)), "knobs_json": json.dumps(result.knobs),
        "reviews_json": None if result.reviews is None else json.dumps(result.reviews),
        "unapproved": None if result.reviews is None else result.reviews["unapproved"],
        "effects_at_crash": result.effects_at_crash, "code_version": commit,
    }


class DurabilityStore:
    """Open (creating if needed) a durability store; use as a context manager."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(self.path, timeout=60)
        self.connection.row_factory = sqlite3.Row
        with self.connection:
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute(SCHEMA)

    def __enter__(self) -> "DurabilityStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (every row is already committed)."""
        self.connection.close()

    def has(self, key: tuple[Any, ...]) -> bool:
        """Whether the episode keyed ``key`` (in :data:`KEY_COLUMNS` order) is recorded."""
        where = " AND ".join(f"{c} = ?" for c in KEY_COLUMNS)
        return self.connection.execute(f"SELECT 1 FROM durable_episodes WHERE {where}", key).fetchone() is not None

    def add(self, result: DurableResult, commit: str | None = None) -> None:
        """Record one episode (run by the code at ``commit``), in its own transaction."""
        row = row_of(result, commit)
        columns = ", ".join(row)
        with self.connection:
            self.connection.execute(f"INSERT OR IGNORE INTO durable_episodes ({columns}) "
                                    f"VALUES ({', '.join('?' for _ in row)})", list(row.values()))

    def rows(self, after_rowid: int = 0) -> Iterator[sqlite3.Row]:
        """Every recorded row (with its ``rowid``) after ``after_rowid``, in the order written."""
        yield from self.connection.execute("SELECT rowid, * FROM durable_episodes WHERE rowid > ? ORDER BY rowid",
                                           (after_rowid,))
