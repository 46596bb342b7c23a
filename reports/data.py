"""What a report reads: the episodes of a results store, the price table, and task sizes.

Reports read the store only through :func:`load_store`, which opens it read-only, selects
just the columns the tables need (no traces: a report never needs the events table, and
it is by far the largest), keeps one episode per natural key, and sets infra errors apart
so that no score can include them by accident.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from coordlab.runners.simulator import MODEL_NAME
from coordlab.runners.store import COUNT_COLUMNS, StoreError, describe_error, open_readonly
from coordlab.tasks.schema import Task, split_task_key
from coordlab.tasks.yaml_files import read_yaml_file

DEFAULT_PRICES = Path(__file__).parent / "prices.yaml"
"""The built-in price table (illustrative prices; pass your own with ``--prices``)."""

SCORED_FAILURES = ("failed_check", "error", "timeout")
"""Statuses that count as failures. ``infra_error`` is not among them: it is not scored at all."""

UNFAITHFUL_PREFIX = "variant not faithful:"
"""How the harness marks, in ``notes_json``, a variant a framework cannot express faithfully."""


class ReportError(RuntimeError):
    """A report cannot be built; the message says why and what to do (the CLI prints it, no traceback)."""


class PriceTableError(ReportError):
    """A price table file is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class EpisodeRecord:
    """One scored episode, with the columns the report needs and nothing else.

    ``system`` is the framework as the report labels it: its name, or ``name@version``
    when the store holds more than one version of that framework (so two versions are
    never pooled into one row).
    """

    episode_id: int
    run_id: str
    task: str
    framework: str
    framework_version: str
    variant: str
    profile: str
    seed: int
    status: str
    harmful: bool
    model_calls: int
    tool_calls: int
    tool_errors: int
    handoffs: int
    handoffs_lost: int | None
    """Failed handoffs the framework lost; None when not measured (store schema 1, or a live model: no oracle)."""
    handoff_model_errors: int | None
    """Failed handoffs the producing model got wrong; None when not measured (store schema 1, or a live model)."""
    framework_retries: int
    transport_retries: int
    gate_rejections: int
    faults_injected: int
    faults_recovered: int | None
    """Faults whose effect did not reach the end state; None when not measured (store schema 1)."""
    prompt_tokens: int
    completion_tokens: int
    wall_ms: float
    execution_ms: float
    simulator_ms: float
    system: str
    model: str
    """The model the episode's run talked to (what the price table is looked up by)."""
    live: bool
    """True for a run against a live endpoint. Its calls, tokens (the endpoint's own counts), faults and retries are
    measured by the fault proxy; its handoffs cannot be judged lost or wrong without the simulator's oracle (None)."""
    trial: int = 0
    """Which repeat of the same episode (``--trials``, live endpoints only), from 0; part of the natural key."""

    @property
    def success(self) -> bool:
        """Only ``success`` succeeds; ``failed_check``, ``error`` and ``timeout`` are failures."""
        return self.status == "success"

    @property
    def handoff_failures(self) -> int | None:
        """Every failed handoff, whatever its cause; None when the split was not measured."""
        if self.handoffs_lost is None or self.handoff_model_errors is None:
            return None
        return self.handoffs_lost + self.handoff_model_errors

    @property
    def harmful_failure(self) -> bool:
        """A failure that left a wrong, extra or repeated side effect behind."""
        return self.harmful and not self.success


@dataclass(frozen=True)
class RunInfo:
    """One run of the store, as provenance shows it."""

    run_id: str
    identity: str
    created_at: float
    status: str
    spec: dict[str, Any]
    metadata: dict[str, Any]

    @property
    def model(self) -> str:
        """The model this run's episodes talked to: the live endpoint's, else the simulator's."""
        live = self.spec.get("live") or {}
        return str(live.get("model") or MODEL_NAME)

    @property
    def live(self) -> bool:
        """Whether the run used a live endpoint instead of the simulator."""
        return bool(self.spec.get("live"))


@dataclass
class StoreData:
    """Everything a report is computed from."""

    path: Path
    runs: list[RunInfo]
    episodes: list[EpisodeRecord]
    """Scored episodes: the newest non-infra episode of each natural key, in episode order."""
    total_rows: int
    """Rows in the episodes table, before anything was set apart."""
    infra_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Keys whose only outcome is ``infra_error``, counted by (system, variant)."""
    superseded: int = 0
    """Rows left out because a newer episode of the same natural key exists (a rerun with --fresh)."""
    notes: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    """Adapter notes by (system, variant): each distinct note and how many episodes carry it."""
    replicates: int = 0
    """Episodes left out as copies: further seeds of a deterministic profile's cell (see :func:`collapse_replicates`)."""
    faults: dict[int, tuple["FaultMet", ...]] = field(default_factory=dict)
    """The faults each scored episode met, by episode id (episodes that met none are absent)."""

    @property
    def unmeasured(self) -> int:
        """Scored simulator episodes recorded before recovered faults and handoff causes were measured."""
        return sum(1 for e in self.episodes if not e.live and e.faults_recovered is None)


_COLUMNS = ("episode_id", "run_id", "task", "framework", "framework_version", "variant", "profile", "seed",
            "status", "harmful", *COUNT_COLUMNS, "wall_ms", "execution_ms", "simulator_ms", "trial")

_ABSENT = {"trial": "0"}
"""What a column an older store lacks reads as, where that is known rather than unknown: before schema 4 every
episode was trial 0."""


def _selected(present: set[str]) -> list[str]:
    """The report's columns as SQL: a counter an older store never measured reads as NULL (unknown), not zero.

    A store of an older schema opened read-only is not migrated (a report never writes), so
    the columns it lacks are filled in here.
    """
    return [column if column in present else f"{_ABSENT.get(column, 'NULL')} AS {column}" for column in _COLUMNS]


def load_store(path: str | Path) -> StoreData:
    """Read a store read-only into :class:`StoreData`; a missing, foreign or damaged file raises :class:`ReportError`.

    The integrity check comes first because numbers read from a damaged file could be wrong
    without any error to show it, and a report must not publish them.
    """
    path = Path(path)
    try:
        store = open_readonly(path)
    except StoreError as exc:
        raise ReportError(str(exc)) from None
    try:
        store.check_integrity()
        connection = store.connection
        runs = [RunInfo(row["run_id"], row["identity"], row["created_at"], row["status"],
                        json_object(row["spec_json"]), json_object(row["metadata_json"]))
                for row in connection.execute("SELECT * FROM runs ORDER BY created_at, run_id")]
        by_run = {run.run_id: run for run in runs}
        versions: dict[str, set[str]] = {}
        for framework, version in connection.execute("SELECT DISTINCT framework, framework_version FROM episodes"):
            versions.setdefault(framework, set()).add(version)
        labels = {(f, v): (f if len(vs) == 1 else f"{f}@{v}") for f, vs in versions.items() for v in vs}

        cursor = connection.cursor()
        cursor.row_factory = None  # plain tuples: several times faster than sqlite3.Row for 100,000 rows
        rows = cursor.execute(f"SELECT {', '.join(_selected(store.episode_columns()))} FROM episodes "
                              f"ORDER BY episode_id").fetchall()
        latest: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        infra: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for row in rows:
            key = (row[2], row[3], row[4], row[5], row[6], row[7], row[-1])  # the natural key, trial last
            if row[8] == "infra_error":
                infra[key] = row
            else:
                latest[key] = row  # rows come in episode order: the newest of a key wins
        superseded = len(rows) - len(latest) - len(infra)
        infra_only = Counter((labels[(row[3], row[4])], row[5]) for key, row in infra.items() if key not in latest)
        superseded += sum(1 for key in infra if key in latest)
        episodes = []
        for row in sorted(latest.values(), key=lambda r: r[0]):
            run = by_run.get(row[1])
            episode = EpisodeRecord(*row[:9], bool(row[9]), *row[10:-1], labels[(row[3], row[4])],
                                    run.model if run else MODEL_NAME, run.live if run else False, row[-1])
            if episode.live:  # no oracle behind a live model: nobody knows what it meant to hand on
                episode = replace(episode, handoffs_lost=None, handoff_model_errors=None)
            episodes.append(episode)

        faults = _faults_met(connection)
        notes: dict[tuple[str, str], Counter[str]] = {}
        for framework, version, variant, notes_json, count in connection.execute(
                "SELECT framework, framework_version, variant, notes_json, COUNT(*) FROM episodes "
                "WHERE notes_json != '[]' AND status != 'infra_error' GROUP BY 1, 2, 3, 4"):
            bucket = notes.setdefault((labels[(framework, version)], variant), Counter())
            for note in _json_list(notes_json):
                bucket[str(note)] += count
    except StoreError as exc:
        raise ReportError(str(exc)) from None
    except sqlite3.Error as exc:  # a damaged or half-migrated file: a report error, not a traceback
        raise ReportError(describe_error(exc, path)) from None
    finally:
        store.close()
    episodes, replicates = collapse_replicates(episodes)
    scored = {e.episode_id for e in episodes}
    return StoreData(path, runs, episodes, len(rows), infra_only, superseded, notes, replicates,
                     {episode: met for episode, met in faults.items() if episode in scored})


@dataclass(frozen=True, slots=True)
class FaultMet:
    """One fault an episode met: its kind and the step it hit."""

    fault: str
    step: str | None


def _faults_met(connection: sqlite3.Connection) -> dict[int, tuple[FaultMet, ...]]:
    """Every episode's fault events (the only trace events a report reads: a few per episode under faults)."""
    met: dict[int, list[FaultMet]] = {}
    for episode_id, step, detail in connection.execute(
            "SELECT episode_id, step, detail_json FROM events WHERE kind = 'fault' ORDER BY episode_id, seq"):
        values = json_object(detail)
        met.setdefault(episode_id, []).append(FaultMet(str(values.get("fault")), step))
    return {episode: tuple(faults) for episode, faults in met.items()}


def json_object(text: Any) -> dict[str, Any]:
    """A JSON object from stored text (or a mapping already parsed); an empty dict for anything unreadable."""
    if isinstance(text, Mapping):
        return dict(text)
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _json_list(text: str) -> list[Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return []
    return value if isinstance(value, list) else []


# -- tasks ---------------------------------------------------------------------------------

_TASK_KEY = re.compile(r"^(?P<name>[^@\[\]]+)@(?P<version>[^\[\]]+)(?:\[(?P<params>[^\]]*)\])?$")


def parse_task_key(key: str) -> tuple[str, str, dict[str, int]]:
    """Split ``name@version[+content][p=v,...]`` (e.g. ``chain@1+3f2a9c0d41be[n=6]``) into name, version, params.

    The content hash is dropped: a store never holds two contents for one version (the
    runner refuses that), so the version names the task in tables.
    """
    match = _TASK_KEY.match(split_task_key(key)[0])
    if not match:
        raise ValueError(f"task key {key!r}: expected NAME@VERSION[param=value,...]")
    params: dict[str, int] = {}
    for part in filter(None, (match["params"] or "").split(",")):
        name, sep, value = part.partition("=")
        if not sep or not value.lstrip("-").isdigit():
            raise ValueError(f"task key {key!r}: parameter {part!r} is not NAME=INTEGER")
        params[name.strip()] = int(value)
    return match["name"], match["version"], params


@lru_cache(maxsize=None)
def suite_task(key: str) -> "Task | None":
    """The built-in suite's task with exactly this key, or None when that cannot be known.

    The store records task keys, not task shapes, so a shape comes from the built-in suite,
    and only when the suite still has that exact key (same version and params); a task from
    a user's file or an older version gives None, and whatever needs its shape (the
    analytical curve, the mutating steps) is left out for it rather than drawn wrong.
    """
    try:
        name, _, params = parse_task_key(key)
        from coordlab.tasks.loader import load_suite_task

        task = load_suite_task(name, params)
    except Exception:  # noqa: BLE001 - unknown name, changed version, invalid params: unknown
        return None
    return task if task.key == key else None


def task_steps(key: str) -> int | None:
    """How many steps the task ``key`` has, or None when that cannot be known (see :func:`suite_task`)."""
    task = suite_task(key)
    return None if task is None else len(task.steps)


def mutating_steps(key: str) -> frozenset[str] | None:
    """The ids of the steps of task ``key`` that call a mutating tool, or None when unknown."""
    task = suite_task(key)
    return None if task is None else frozenset(step.id for step in task.steps if step.mutating)


# -- prices --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Price:
    """What one model costs, in the table's currency per million tokens."""

    input_per_mtok: float
    output_per_mtok: float
    note: str = ""

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The cost of this many prompt and completion tokens."""
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1_000_000


@dataclass(frozen=True)
class PriceTable:
    """Prices per model, read from YAML so anyone can edit them without touching code."""

    source: str
    currency: str
    models: Mapping[str, Price]
    note: str = ""

    def price(self, model: str) -> Price | None:
        """The price of ``model``, or None when the table does not list it."""
        return self.models.get(model)


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Read a price table (default: the built-in ``reports/prices.yaml``).

    Format::

        currency: USD
        note: what these prices are
        models:
          MODEL_NAME: {input_per_mtok: 0.15, output_per_mtok: 0.60, note: optional}

    Any problem raises :class:`PriceTableError` naming the file and the field: a wrong
    price would silently skew every cost in the report, so nothing doubtful is accepted.
    """
    source = Path(path) if path is not None else DEFAULT_PRICES
    where = f"price table {source}"
    data = read_yaml_file(source, PriceTableError, where)
    if not isinstance(data, dict):
        raise PriceTableError(f"{where}: expected a mapping with a 'models' field")
    _refuse_unknown(data, ("currency", "note", "models"), where)
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise PriceTableError(f"{where}: models: expected a mapping of model name to prices")
    prices = {_model_name(name, where): _price(entry, f"{where}: models.{name}") for name, entry in models.items()}
    currency = data.get("currency", "USD")
    if not isinstance(currency, str) or not currency.strip():
        raise PriceTableError(f"{where}: currency: expected a currency code such as USD")
    label = "the built-in reports/prices.yaml" if path is None else str(source)  # no install path in a published report
    return PriceTable(label, currency.strip(), prices, _text(data.get("note"), f"{where}: note").strip())


def _refuse_unknown(mapping: dict[Any, Any], fields: tuple[str, ...], where: str) -> None:
    """A misspelt field would otherwise be ignored and its value silently lost."""
    unknown = sorted((key for key in mapping if key not in fields), key=str)
    if unknown:
        raise PriceTableError(f"{where}: unknown field {unknown[0]!r} (expected {', '.join(fields)})")


def _model_name(name: Any, where: str) -> str:
    """Model names must be text: YAML reads an unquoted ``on``, ``12`` or ``~`` as a bool, number or null."""
    if not isinstance(name, str) or not name.strip():
        raise PriceTableError(f"{where}: models: model name {name!r} is not text; put it in quotes")
    return name


def _price(entry: Any, where: str) -> Price:
    """One model's entry, every value checked: a finite, non-negative number per price, text for the note."""
    if not isinstance(entry, dict):
        raise PriceTableError(f"{where}: expected {{input_per_mtok: N, output_per_mtok: N}}")
    _refuse_unknown(entry, ("input_per_mtok", "output_per_mtok", "note"), where)
    values = [_amount(entry.get(name), f"{where}.{name}") for name in ("input_per_mtok", "output_per_mtok")]
    return Price(values[0], values[1], _text(entry.get("note"), f"{where}.note"))


def _amount(value: Any, where: str) -> float:
    """A price per million tokens; bools, NaN, infinities, negatives and numbers too big for a float are refused."""
    problem = PriceTableError(f"{where}: expected a non-negative number, got {value!r:.60}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise problem
    try:
        amount = float(value)
    except OverflowError:
        raise problem from None
    if not math.isfinite(amount) or amount < 0:
        raise problem
    return amount


def _text(value: Any, where: str) -> str:
    """An optional note: text or absent, never a list or mapping printed as Python."""
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise PriceTableError(f"{where}: expected text, got {value!r:.60}")
    return str(value)


# -- fault profiles ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ProfileInfo:
    """What the plots need to know about a fault profile: its per-step rate and whether it is semantic only."""

    rate: float
    transport: bool
    """True when the profile injects transport faults, which clients retry, so (1-p)^n does not apply."""
    deterministic: bool = False
    """True when the profile injects nothing: against the simulator every seed is the same episode."""


@lru_cache(maxsize=None)
def profile_info(name: str) -> ProfileInfo | None:
    """The built-in profile called ``name``, or None for a profile this coordlab does not ship.

    Like task sizes, rates are not in the store, so a profile from a user's file (or one
    whose built-in definition was renamed) has no known rate and stays off the rate axis.
    """
    from coordlab.runners.faults import ProfileError, load_profile

    try:
        profile = load_profile(name)
    except (ProfileError, OSError, ValueError):
        return None
    if profile.name != name:
        return None
    return ProfileInfo(profile.rate, any(fault.is_transport for fault, weight in profile.weights.items() if weight > 0),
                       profile.deterministic)


def is_deterministic(episode: EpisodeRecord) -> bool:
    """Whether ``episode`` is one of a deterministic profile's copies: a built-in profile that injects nothing, on the
    simulator. Live episodes (a stochastic model) and profiles this coordlab does not know are never."""
    info = profile_info(episode.profile)
    return info is not None and info.deterministic and not episode.live


def collapse_replicates(episodes: list[EpisodeRecord]) -> tuple[list[EpisodeRecord], int]:
    """Keep one seed per cell of a deterministic profile on the simulator; return the episodes kept and dropped.

    Under a profile that injects nothing the simulated model answers every seed alike, so a
    cell's 20 seeds are 20 copies of one episode: counting them would report "100% [83%,
    100%]" where one observation was made. The lowest seed stands for the cell. Live
    episodes (a stochastic model, the only ones with repeated trials) and profiles this
    coordlab does not know are kept whole.
    """
    kept: list[EpisodeRecord] = []
    seen: set[tuple[str, str, str, str]] = set()
    dropped = 0
    for episode in sorted(episodes, key=lambda e: (e.seed, e.episode_id)):
        if not is_deterministic(episode):
            kept.append(episode)
            continue
        cell = (episode.task, episode.system, episode.variant, episode.profile)
        if cell in seen:
            dropped += 1
        else:
            seen.add(cell)
            kept.append(episode)
    kept.sort(key=lambda e: e.episode_id)
    return kept, dropped
