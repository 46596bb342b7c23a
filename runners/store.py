"""The results store: one SQLite file (WAL) holding runs, episodes by natural key, and their traces.

Every episode is committed in its own transaction together with its trace events, so a
runner killed at any instant leaves whole episodes or none. A writable store admits one
writer at a time (an OS lock on a sidecar ``<store>.lock`` that dies with its process), and
is refused before anything is written when it was written by a newer schema, is some other
program's SQLite database, or is damaged. A store of an older schema is migrated up when it
is opened for writing, in one transaction that keeps every recorded row (opened read-only,
it is read as it is). Every failure to open, read or write names the file and what to do.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
import time
import urllib.parse
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

SCHEMA_VERSION = 4
"""The store schema this coordlab writes; older stores are migrated up, newer ones refused.

1: the first release. 2: ``faults_caught`` became ``faults_recovered`` (a fault whose effect
did not reach the end state, not one whose step was merely worked on again) and
``handoff_failures`` (per request) became ``handoffs_lost`` and ``handoff_model_errors`` (per
handoff). See :func:`_migrate_1_to_2`. 3: every model request and response body is kept with
its episode (table ``exchanges``), and fault events are indexed by fault kind, for the episode
viewer. See :func:`_migrate_2_to_3`. 4: an episode's natural key gains its ``trial`` (the same episode repeated
against a live endpoint, for pass^k; 0 for every episode recorded before). See :func:`_migrate_3_to_4`.
"""

COUNT_COLUMNS = ("model_calls", "tool_calls", "tool_errors", "handoffs", "handoffs_lost", "handoff_model_errors",
                 "framework_retries", "transport_retries", "gate_rejections", "faults_injected", "faults_recovered",
                 "prompt_tokens", "completion_tokens")
"""Per-episode counters, one column each so reports can aggregate them in SQL."""

MEASURED_SINCE = {"handoffs_lost": 2, "handoff_model_errors": 2, "faults_recovered": 2}
"""Counters a store schema before the given one did not measure: NULL (unknown, not zero) in episodes it migrated."""

LEGACY_COLUMNS = {"legacy_faults_caught": "faults_caught", "legacy_handoff_failures": "handoff_failures"}
"""Schema-1 counters kept, renamed, in a migrated store (new column: old column). Their meaning was not today's:
``faults_caught`` counted a fault whose step was worked on again, ``handoff_failures`` counted issues per request."""


def _episodes_table(name: str, extra_columns: tuple[str, ...] = (), trial: bool = True) -> str:
    """The episodes table's definition under ``name`` (a migration builds the new table beside the old).

    ``trial`` False gives the table as schemas 2 and 3 had it (no trial column, a key of seven
    columns): what the migration from schema 1 builds before the one to 4 adds the trial.
    """
    counters = ",\n    ".join(f"{c} INTEGER" + ("" if c in MEASURED_SINCE else " NOT NULL") for c in COUNT_COLUMNS)
    extra = "".join(f"\n    {column}," for column in extra_columns)
    trial_column = "\n    trial INTEGER NOT NULL DEFAULT 0,   -- repeat of the same episode (live endpoints), from 0" \
        if trial else ""
    return f"""
CREATE TABLE IF NOT EXISTS {name} (
    episode_id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    task TEXT NOT NULL,              -- name@version[params]
    framework TEXT NOT NULL,
    framework_version TEXT NOT NULL,
    variant TEXT NOT NULL,
    profile TEXT NOT NULL,
    seed INTEGER NOT NULL,{trial_column}
    status TEXT NOT NULL,            -- success | failed_check | error | timeout | infra_error
    harmful INTEGER NOT NULL,
    termination TEXT NOT NULL,
    verdict_json TEXT NOT NULL,
    {counters},
    wall_ms REAL NOT NULL,
    construction_ms REAL NOT NULL,
    execution_ms REAL NOT NULL,
    simulator_ms REAL NOT NULL,      -- time the simulator spent answering (server side)
    knobs_json TEXT NOT NULL,
    notes_json TEXT NOT NULL,
    error TEXT,
    finished_at REAL NOT NULL,{extra}
    UNIQUE (run_id, task, framework, framework_version, variant, profile, seed{", trial" if trial else ""})
)"""


_EXCHANGES_SCHEMA = """
CREATE TABLE IF NOT EXISTS exchanges (
    episode_id INTEGER PRIMARY KEY REFERENCES episodes (episode_id) ON DELETE CASCADE,
    requests INTEGER NOT NULL,       -- how many model requests the bodies hold
    bodies BLOB NOT NULL             -- zlib-compressed JSON list, in arrival order: {seq, request, response}
);
CREATE INDEX IF NOT EXISTS events_by_fault ON events (json_extract(detail_json, '$.fault'), episode_id)
    WHERE kind = 'fault';
"""
"""Schema 3's additions: the bodies of each episode's model exchanges, and fault events by kind (a viewer filter).

One compressed blob per episode rather than one per request: a request repeats the
conversation so far, which only compression across requests removes. Measured on the
default suite (2 seeds, 360 episodes): 2.0 kB per episode this way, 9.7 kB compressing each
body on its own, 24 kB uncompressed.
"""

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
{_episodes_table("episodes")};
CREATE TABLE IF NOT EXISTS events (
    episode_id INTEGER NOT NULL REFERENCES episodes (episode_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    at_ms REAL NOT NULL,             -- since the episode started (stores before 0.1.1: its first event)
    role TEXT,
    step TEXT,
    detail_json TEXT NOT NULL,
    PRIMARY KEY (episode_id, seq)
);
{_EXCHANGES_SCHEMA}
"""


class StoreError(RuntimeError):
    """The store cannot be opened or written; the message names the file and the way out."""


@dataclass(frozen=True)
class Exchange:
    """One model request and what was sent back, as the simulator saw them (secrets redacted)."""

    seq: int
    """Arrival order within the episode, from 0: the episode's ``seq``-th model_call event."""
    request: Any
    """The request's JSON body as received."""
    response: Any
    """A JSON response's object, a stream's chunk objects, the text of a body cut short, or None: nothing sent."""


def pack_exchanges(exchanges: Iterable[tuple[int, Any, Any]]) -> bytes:
    """An episode's (seq, request, response) bodies as the store keeps them: one zlib-compressed JSON list."""
    listed = [{"seq": seq, "request": request, "response": response} for seq, request, response in exchanges]
    text = json.dumps(listed, separators=(",", ":"), ensure_ascii=False, default=str)
    return zlib.compress(text.encode("utf-8"), 9)


def unpack_exchanges(blob: bytes) -> list[Exchange]:
    """The exchanges :func:`pack_exchanges` packed; ``ValueError`` (or ``zlib.error``) when the blob is not theirs."""
    listed = json.loads(zlib.decompress(blob).decode("utf-8"))
    if not isinstance(listed, list):
        raise ValueError("the bodies are not a list")
    return [Exchange(int(item["seq"]), item.get("request"), item.get("response")) for item in listed]


@dataclass(frozen=True)
class EpisodeKey:
    """The natural key of an episode: (task@version, framework@version, variant, fault profile, seed, trial)."""

    task: str
    framework: str
    framework_version: str
    variant: str
    profile: str
    seed: int
    trial: int = 0
    """Which repeat of the same episode (``--trials``, live endpoints only), from 0; 0 is left out of ``str()``."""

    def __str__(self) -> str:
        text = f"{self.task}/{self.framework}@{self.framework_version}/{self.variant}/{self.profile}/{self.seed}"
        return f"{text}/t{self.trial}" if self.trial else text

    @classmethod
    def parse(cls, text: str) -> "EpisodeKey":
        """Read the ``task/framework@version/variant/profile/seed[/tK]`` form that ``str()`` writes."""
        parts = text.split("/")
        trial = parse_trial_segment(parts[5]) if len(parts) == 6 else 0
        if len(parts) not in (5, 6) or "@" not in parts[1] or not parts[4].lstrip("-").isdigit() or trial is None:
            raise ValueError(f"episode key {text!r}: expected {KEY_FORM}")
        framework, _, version = parts[1].partition("@")
        return cls(parts[0], framework, version, parts[2], parts[3], int(parts[4]), trial)


KEY_FORM = "TASK/FRAMEWORK@VERSION/VARIANT/PROFILE/SEED[/tTRIAL] (e.g. .../none/3 or .../none/3/t2)"
"""How an episode key is written, for error messages."""


def parse_trial_segment(segment: str) -> int | None:
    """The trial of a key's sixth segment (``t2`` -> 2); None when it is not ``t`` and a whole number."""
    digits = segment[1:]
    if not segment.startswith("t") or not digits.isdigit() or not digits.isascii():
        return None
    return int(digits)


def describe_error(exc: sqlite3.Error, path: Path) -> str:
    """A sentence for an SQLite error on the store at ``path``: what happened and what to do about it."""
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        return f"store {path} is read-only: choose a writable --store path"
    if "disk is full" in text or "database or disk is full" in text:
        return f"store {path}: the disk is full; nothing of the current episode was written, earlier ones are intact"
    if "unable to open" in text:
        return f"store {path} cannot be opened (does its folder exist and is it writable?)"
    if "not a database" in text:
        return f"{path} is not a coordlab store (not an SQLite file)"
    if "malformed" in text:
        return _damaged(path, text)
    if "database is locked" in text:
        return (f"store {path} is locked by another program (an open sqlite3 shell or database browser?): close it, "
                f"or use another --store")
    if "disk I/O error" in text:
        return f"store {path}: disk I/O error (a failing disk or a lost network share?); copy the file somewhere safe"
    return f"store {path}: {text}"


def _damaged(path: Path, problem: str) -> str:
    return (f"store {path} is damaged ({problem}); nothing was written to it. Keep the file for recovery "
            f"(`sqlite3 {path} .recover > recovered.sql`) and use another --store")


def lock_path(path: Path) -> Path:
    """The sidecar file whose OS lock marks a store's one writer (``results.sqlite`` -> ``results.sqlite.lock``)."""
    return path.with_name(path.name + ".lock")


class _WriterLock:
    """An exclusive, non-blocking ``flock`` on a store's sidecar lock file, holding the owner's pid and host.

    flock belongs to the open file and the kernel drops it when its process dies, so a
    SIGKILLed runner never leaves a stale lock behind. The file itself stays: removing it
    on close would let a newcomer lock a fresh file while a waiter still holds the old one.
    Two opens in one process conflict too (flock is per open file), which is what keeps two
    sweeps in two threads of one notebook apart.
    """

    def __init__(self, store: Path):
        self.path = lock_path(store)
        self._file: IO[bytes] | None = None
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        stream = os.fdopen(descriptor, "r+b")  # a file object, so a Store dropped unclosed still frees the lock
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = stream.read(200).decode("utf-8", "replace").split()
            stream.close()
            raise StoreError(_busy(store, holder)) from None
        except BaseException:
            stream.close()
            raise
        self._file = stream
        self._sign(stream)

    @staticmethod
    def _sign(stream: IO[bytes]) -> None:
        """Record who holds the lock, for the "busy" message; best effort (a full disk must not stop a resume)."""
        try:
            stream.truncate(0)
            stream.write(f"{os.getpid()} {socket.gethostname()}\n".encode())
            stream.flush()
        except OSError:
            return

    def release(self) -> None:
        """Drop the lock (closing the file does it); safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _busy(store: Path, holder: list[str]) -> str:
    """The "store busy" sentence, naming the holder's pid (and host, for a store on a shared disk) when known."""
    pid = holder[0] if holder and holder[0].isdigit() else None
    if pid == str(os.getpid()) and holder[1:2] == [socket.gethostname()]:
        return (f"store {store} is already open for writing in this process: close that Store first "
                f"(the runner is a store's only writer)")
    who = f"pid {pid}" + (f" on {holder[1]}" if len(holder) > 1 else "") if pid else "another process"
    return (f"store {store} is busy: {who} is writing to it (another `coordlab run`?); wait for it to finish or use "
            f"another --store")


def _open_failure(exc: sqlite3.Error | OSError, path: Path) -> str:
    """Why a store could not be opened: an SQLite error, or the folder or lock file that could not be made."""
    if isinstance(exc, sqlite3.Error):
        return describe_error(exc, path)
    if exc.filename is None:
        return f"store {path}: {exc.strerror or exc}"
    what = "its lock file" if Path(exc.filename) == lock_path(path) else "its folder"
    return (f"store {path} cannot be opened for writing: cannot create {what} {exc.filename} ({exc.strerror}); "
            f"choose a --store in a writable folder")


class Store:
    """A handle on one SQLite results file. The runner is its only writer."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        self._connection: sqlite3.Connection | None = None
        self._lock: _WriterLock | None = None
        if readonly and not self.path.exists():
            raise StoreError(f"no store at {self.path}: run `coordlab run --store {self.path}` first")
        if self.path.is_dir():
            raise StoreError(f"store {self.path} is a folder: give a file path, such as {self.path / 'results.sqlite'}")
        try:
            self._open(readonly)
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise StoreError(_open_failure(exc, self.path)) from None
        except BaseException:
            self.close()
            raise

    def _open(self, readonly: bool) -> None:
        """Lock (writers only), connect, and check the file is ours, sound and not newer, in that order."""
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _WriterLock(self.path)
        # Quoted: a '?' or '#' in a file name would otherwise end the name and open another file.
        uri = f"file:{urllib.parse.quote(str(self.path))}?mode={'ro' if readonly else 'rwc'}"
        self._connection = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
        self._connection.row_factory = sqlite3.Row
        self._connection.execute("PRAGMA foreign_keys = ON")
        self._check_schema(readonly)

    @property
    def connection(self) -> sqlite3.Connection:
        """The open SQLite connection (rows are ``sqlite3.Row``)."""
        if self._connection is None:
            raise StoreError(f"store {self.path} is closed")
        return self._connection

    def _schema_version(self) -> int | None:
        """The schema version the file records; None when it has no coordlab ``meta`` row."""
        if "meta" not in self.tables():
            return None
        row = self.connection.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            return None
        try:
            return int(row[0])
        except (TypeError, ValueError):
            raise StoreError(f"{self.path} is not a coordlab store (its schema version {row[0]!r} is not a number); "
                             f"choose another --store") from None

    def _check_schema(self, readonly: bool) -> None:
        version = self._schema_version()
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(f"store {self.path} was written by a newer coordlab (schema {version}; this one reads "
                             f"up to {SCHEMA_VERSION}): upgrade coordlab or use another --store")
        if readonly:
            if version is None:
                raise StoreError(f"{self.path} is not a coordlab store (no schema version)")
            return
        if version is None and self.connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreError(f"{self.path} is an SQLite database but not a coordlab store; nothing was written to "
                             f"it: choose another --store")
        self.check_integrity()
        # Only now that the file is known to be ours, sound and not newer may anything be written to it.
        self.connection.execute("PRAGMA journal_mode = WAL")
        self.connection.execute("PRAGMA synchronous = NORMAL")
        if version is not None and version < SCHEMA_VERSION:
            self._migrate(version)
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.connection.execute(statement)
            self.connection.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _migrate(self, version: int) -> None:
        """Bring a store of schema ``version`` up to :data:`SCHEMA_VERSION` in one transaction.

        Foreign keys are off while it runs: rebuilding the episodes table drops the old one,
        and with them on SQLite would delete every trace event with it. The transaction either
        commits a whole migrated store or leaves the old one exactly as it was.
        """
        connection = self.connection
        connection.execute("PRAGMA foreign_keys = OFF")  # a no-op inside a transaction, so set before it
        try:
            with self.transaction():
                for step in range(version, SCHEMA_VERSION):
                    _MIGRATIONS[step](connection)
                dangling = connection.execute("PRAGMA foreign_key_check").fetchall()
                if dangling:
                    raise StoreError(f"store {self.path}: migrating from schema {version} would leave "
                                     f"{len(dangling)} dangling reference(s); nothing was changed")
                connection.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        finally:
            connection.execute("PRAGMA foreign_keys = ON")

    def episode_columns(self) -> set[str]:
        """The columns this store's episodes table has (a store opened read-only may be of an older schema)."""
        return {row[1] for row in self.query("PRAGMA table_info(episodes)")}

    def check_integrity(self) -> None:
        """Refuse a damaged file (SQLite's ``quick_check``) before writing to it or exporting it.

        Writing into a damaged b-tree can spread the damage over results that are still
        whole, and an export would pass garbage on silently. The check reads the whole
        file, about a second per gigabyte, once per run or export.
        """
        try:
            problems = [row[0] for row in self.connection.execute("PRAGMA quick_check") if row[0] != "ok"]
        except sqlite3.Error as exc:
            raise StoreError(describe_error(exc, self.path)) from None
        if problems:
            raise StoreError(_damaged(self.path, problems[0].replace("*** in database main ***", "").strip()
                                      .splitlines()[0]))

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
        """Close the connection (SQLite checkpoints the WAL), then free the writer lock; safe to call twice.

        The lock goes last so that no other writer starts before the final checkpoint is done.
        """
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, action: Any) -> Any:
        try:
            with self.transaction() as connection:
                return action(connection)
        except sqlite3.Error as exc:
            raise StoreError(describe_error(exc, self.path)) from None

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        """Every row of a read query; an SQLite failure (a damaged page, say) is a :class:`StoreError`."""
        try:
            return self.connection.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(describe_error(exc, self.path)) from None

    def _one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    # -- runs ---------------------------------------------------------------------------------
    def latest_run(self, identity: str) -> sqlite3.Row | None:
        """The most recent run with ``identity`` (what a resume continues)."""
        return self._one("SELECT * FROM runs WHERE identity = ? ORDER BY created_at DESC LIMIT 1", (identity,))

    def create_run(self, run_id: str, identity: str, spec: dict[str, Any], metadata: dict[str, Any]) -> None:
        """Record a new run."""
        self._write(lambda c: c.execute("INSERT INTO runs VALUES (?, ?, ?, 'running', ?, ?)",
                                        (run_id, identity, time.time(), json.dumps(spec), json.dumps(metadata))))

    def set_run_status(self, run_id: str, status: str) -> None:
        """Mark a run ``running``, ``interrupted`` or ``finished``."""
        self._write(lambda c: c.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id)))

    def runs(self) -> list[sqlite3.Row]:
        """Every run, newest first."""
        return self.query("SELECT * FROM runs ORDER BY created_at DESC")

    # -- episodes -----------------------------------------------------------------------------
    def task_keys(self) -> set[str]:
        """Every task key with episodes in this store, whatever the run."""
        return {row[0] for row in self.query("SELECT DISTINCT task FROM episodes")}

    def finished_keys(self, run_id: str) -> set[EpisodeKey]:
        """Keys already recorded in ``run_id`` (infra errors excluded: those are run again)."""
        rows = self.query("SELECT task, framework, framework_version, variant, profile, seed, trial FROM episodes "
                          "WHERE run_id = ? AND status != 'infra_error'", (run_id,))
        return {EpisodeKey(*row) for row in rows}

    def record_episode(self, run_id: str, row: dict[str, Any], events: list[dict[str, Any]],
                       bodies: tuple[int, bytes] | None = None) -> int:
        """Write one episode, its trace and its model bodies in one transaction (replacing an earlier infra error
        of the key). ``bodies``: (how many requests, :func:`pack_exchanges`'s blob), or None to keep none."""
        columns = list(row)

        def write(connection: sqlite3.Connection) -> int:
            connection.execute(
                "DELETE FROM episodes WHERE run_id = ? AND task = ? AND framework = ? AND framework_version = ? "
                "AND variant = ? AND profile = ? AND seed = ? AND trial = ? AND status = 'infra_error'",
                (run_id, row["task"], row["framework"], row["framework_version"], row["variant"], row["profile"],
                 row["seed"], row.get("trial", 0)))
            cursor = connection.execute(
                f"INSERT INTO episodes (run_id, {', '.join(columns)}) VALUES (?, {', '.join('?' * len(columns))})",
                (run_id, *row.values()))
            episode_id = int(cursor.lastrowid or 0)
            connection.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(episode_id, seq, e["kind"], e["at_ms"], e.get("role"), e.get("step"), json.dumps(e["detail"]))
                 for seq, e in enumerate(events)])
            if bodies is not None:
                connection.execute("INSERT INTO exchanges VALUES (?, ?, ?)", (episode_id, *bodies))
            return episode_id

        return self._write(write)

    def episodes(self, run_id: str | None = None) -> list[sqlite3.Row]:
        """Episodes of one run (default: every run), in the order they finished."""
        if run_id is None:
            return self.query("SELECT * FROM episodes ORDER BY episode_id")
        return self.query("SELECT * FROM episodes WHERE run_id = ? ORDER BY episode_id", (run_id,))

    def find_episode(self, key: EpisodeKey, run_id: str | None = None) -> sqlite3.Row | None:
        """The newest episode with ``key`` (in ``run_id`` if given)."""
        query = ("SELECT * FROM episodes WHERE task = ? AND framework = ? AND framework_version = ? AND variant = ? "
                 "AND profile = ? AND seed = ?")
        params: list[Any] = [key.task, key.framework, key.framework_version, key.variant, key.profile, key.seed]
        if "trial" in self.episode_columns():
            query += " AND trial = ?"
            params.append(key.trial)
        elif key.trial:  # a store before schema 4, read as it is, holds trial 0 only
            return None
        if run_id is not None:
            query += " AND run_id = ?"
            params.append(run_id)
        return self._one(query + " ORDER BY episode_id DESC LIMIT 1", params)

    def events(self, episode_id: int) -> Iterator[sqlite3.Row]:
        """An episode's trace events in order (read at once, so a damaged page fails here, as a StoreError)."""
        return iter(self.query("SELECT * FROM events WHERE episode_id = ? ORDER BY seq", (episode_id,)))

    def tables(self) -> set[str]:
        """The tables this store has (a store opened read-only may be of an older schema)."""
        return {row[0] for row in self.query("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def exchanges(self, episode_id: int) -> list[Exchange] | None:
        """An episode's model exchanges in arrival order; None when the store's schema (before 3) kept none.

        An empty list means the episode was recorded without them (``--no-bodies``, or an
        episode the lab could not finish).
        """
        if "exchanges" not in self.tables():
            return None
        rows = self.query("SELECT bodies FROM exchanges WHERE episode_id = ?", (episode_id,))
        if not rows:
            return []
        try:
            return unpack_exchanges(rows[0]["bodies"])
        except (ValueError, TypeError, KeyError, zlib.error):
            raise StoreError(_damaged(self.path, f"the model bodies of episode {episode_id} cannot be read")) from None


def _migrate_1_to_2(connection: sqlite3.Connection) -> None:
    """Schema 1 to 2: the new counters are NULL for every recorded episode, the old ones are kept as ``legacy_*``.

    The old counters cannot be converted: "caught" (worked on again) is not "recovered" (did
    not reach the end state), and a count per request is not a count per handoff. Their values
    stay in the file under new names so nothing recorded is lost, and reports read the new
    counters of old episodes as unknown. SQLite cannot relax a NOT NULL column in place, so the
    episodes table is rebuilt beside the old one (keeping every ``episode_id``, which the trace
    events refer to) and swapped in; every row is counted across.
    """
    old_columns = [row[1] for row in connection.execute("PRAGMA table_info(episodes)")]
    legacy = {new: old for new, old in LEGACY_COLUMNS.items() if old in old_columns}
    connection.execute(_episodes_table("episodes_migrating", tuple(f"{new} INTEGER" for new in legacy), trial=False))
    kept = [c for c in old_columns if c not in legacy.values()]
    connection.execute(f"INSERT INTO episodes_migrating ({', '.join(kept + list(legacy))}) "
                       f"SELECT {', '.join(kept + list(legacy.values()))} FROM episodes")
    _swap_in_migrated_episodes(connection)


def _swap_in_migrated_episodes(connection: sqlite3.Connection) -> None:
    """Replace ``episodes`` with the rebuilt ``episodes_migrating``, once every row is known to have been copied."""
    before = connection.execute("SELECT count(*) FROM episodes").fetchone()[0]
    after = connection.execute("SELECT count(*) FROM episodes_migrating").fetchone()[0]
    if before != after:
        raise StoreError(f"migrating the episodes table copied {after} of {before} rows; nothing was changed")
    connection.execute("DROP TABLE episodes")
    connection.execute("ALTER TABLE episodes_migrating RENAME TO episodes")


def _migrate_2_to_3(connection: sqlite3.Connection) -> None:
    """Schema 2 to 3: add the ``exchanges`` table and the fault index; episodes recorded before have no bodies.

    Nothing recorded changes: the bodies of old episodes were never kept, and the viewer says so.
    """
    for statement in _EXCHANGES_SCHEMA.split(";"):
        if statement.strip():
            connection.execute(statement)


def _migrate_3_to_4(connection: sqlite3.Connection) -> None:
    """Schema 3 to 4: ``trial`` joins the episodes table and its natural key; every recorded episode is trial 0.

    SQLite cannot change a UNIQUE constraint in place, so the table is rebuilt the way SQLite
    documents (https://www.sqlite.org/lang_altertable.html#otheralter): the new table is made
    beside the old, every row copied with its ``episode_id`` (the trace events and bodies refer
    to it) and any column the old one had beyond schema 3's (the ``legacy_*`` counters of a
    store migrated from schema 1), counted across, the old dropped and the new renamed, then
    the old table's own indexes and triggers made again. :meth:`Store._migrate` runs it with
    foreign keys off, in the one transaction, and checks the references after.
    """
    old = [(row[1], row[2]) for row in connection.execute("PRAGMA table_info(episodes)")]
    dependants = [row[0] for row in connection.execute(
        "SELECT sql FROM sqlite_master WHERE tbl_name = 'episodes' AND type IN ('index', 'trigger') "
        "AND sql IS NOT NULL")]
    connection.execute(_episodes_table("episodes_migrating"))
    new = {row[1] for row in connection.execute("PRAGMA table_info(episodes_migrating)")}
    for column, kind in old:
        if column not in new:
            connection.execute(f"ALTER TABLE episodes_migrating ADD COLUMN {column} {kind}")
    copied = ", ".join(column for column, _ in old)
    connection.execute(f"INSERT INTO episodes_migrating ({copied}) SELECT {copied} FROM episodes")
    _swap_in_migrated_episodes(connection)
    for statement in dependants:
        connection.execute(statement)


_MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4}
"""Each schema's step up to the next, by the schema it starts from."""


def open_readonly(path: str | Path) -> Store:
    """Open an existing store for reading (reports, show, export)."""
    return Store(path, readonly=True)

