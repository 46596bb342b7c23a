"""A sweep: the matrix of tasks x frameworks x variants x fault profiles x seeds (x trials), and its identity.

A sweep comes from flags or a YAML file and expands into episode jobs keyed by their
natural key. Its *identity* hashes what decides the outcomes (tasks and their versions,
framework versions, variants, profiles and their contents, forced faults, seeds, knobs,
endpoint, trials) and nothing that only decides speed (workers, time limit), so changing those resumes the same
run instead of starting another.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from coordlab.adapters.base import Knobs, ToolTransport, Variant
from coordlab.adapters.registry import adapter_names, adapter_version, is_adapter_name
from coordlab.tasks.loader import did_you_mean, load_suite_task, load_task, suite_names
from coordlab.tasks.schema import Task
from coordlab.tasks.yaml_files import read_yaml_file

from . import design
from .faults import (PROXY_CANNOT_ACT, Fault, FaultProfile, ForcedFault, ProfileError, check_forced, forced_faults,
                     forced_profile_key, load_profile)
from .store import EpisodeKey

DEFAULT_FRAMEWORKS = ("plain", "crewai", "autogen", "langgraph")
DEFAULT_VARIANTS = tuple(Variant(name) for name in design.VARIANTS)
DEFAULT_PROFILES = (design.DETERMINISTIC_PROFILE, *design.STOCHASTIC_PROFILES)
"""``none`` runs once per task and variant (it is deterministic); the two stochastic profiles are what the verdict tests."""
DEFAULT_SEEDS = design.SEEDS
"""Seeds per cell of the default sweep, from the power calculation in :mod:`coordlab.runners.design`; it also keeps
``make demo`` within 10 minutes on 2 cores."""
MAX_SEEDS = 100_000
"""Seeds one sweep may name: far beyond any comparison's need, and small enough to list in memory."""
MAX_EPISODES = 500_000
"""Episodes one sweep may expand to, trials counted (days of running); a typo such as --seeds 100000000 is refused
up front."""
MAX_TRIALS = 100
"""Repeats of one episode a sweep may ask for (tau-bench's pass^k uses k up to 8)."""


class SweepError(ValueError):
    """A sweep cannot be built from what was given; the message says which flag or field."""


@dataclass(frozen=True)
class TaskRef:
    """A task as a sweep names it: a suite name or a file path, plus parameter overrides."""

    name: str
    params: tuple[tuple[str, int], ...] = ()

    def load(self) -> Task:
        """The task itself."""
        params = dict(self.params)
        if self.name.endswith((".yaml", ".yml")):
            return load_task(self.name, params)
        return load_suite_task(self.name, params)

    @classmethod
    def parse(cls, text: str) -> "TaskRef":
        """``NAME`` or ``NAME:param=value[:param=value]`` (e.g. ``chain:n=8``)."""
        if not isinstance(text, str):
            raise SweepError(f"tasks: expected a task name or file, got {type(text).__name__} {text!r}")
        name, *assignments = text.strip().split(":")
        params = []
        for assignment in assignments:
            key, sep, value = assignment.partition("=")
            if not sep or not value.lstrip("-").isdigit():
                raise SweepError(f"task {text!r}: parameters are NAME:param=INTEGER, e.g. chain:n=8")
            params.append((key, int(value)))
        if not name.endswith((".yaml", ".yml")) and name not in suite_names():
            raise SweepError(f"no task {name!r} in the suite; {did_you_mean(name, suite_names())}")
        return cls(name, tuple(sorted(params)))

    def __str__(self) -> str:
        return ":".join([self.name, *(f"{k}={v}" for k, v in self.params)])


@dataclass(frozen=True)
class LiveEndpoint:
    """Any OpenAI-compatible endpoint in place of the simulated model: no oracle; the lab's faults are acted
    out in front of it by the fault proxy (:mod:`coordlab.runners.simulator.proxy`)."""

    base_url: str
    model: str
    api_key_env: str | None
    """The environment variable holding the key (the key itself is never stored); None: the endpoint needs none."""
    local: str | None = None
    """For a model served on this machine for the run (``--local-model``): the model file, which identifies the
    run instead of the URL (its port is new every run)."""

    def describe(self) -> dict[str, Any]:
        """The endpoint as a run's spec records it (and its identity hashes it)."""
        if self.local is not None:
            return {"local_model": self.local, "model": self.model}
        return {"base_url": self.base_url, "model": self.model, "api_key_env": self.api_key_env}


@dataclass(frozen=True)
class EpisodeJob:
    """One episode to run: its key and how to rebuild everything it needs in a worker."""

    key: EpisodeKey
    task: TaskRef
    framework: str
    variant: Variant
    profile: str
    seed: int
    forced: tuple[ForcedFault, ...] = ()
    """Faults pinned on steps of this episode, on top of the profile's draws (already in ``key.profile``)."""
    trial: int = 0
    """Which repeat of the same episode this is (``key.trial``), from 0."""


@dataclass(frozen=True)
class Sweep:
    """The matrix to run, and the knobs every episode of it shares."""

    tasks: tuple[TaskRef, ...]
    frameworks: tuple[str, ...] = DEFAULT_FRAMEWORKS
    variants: tuple[Variant, ...] = DEFAULT_VARIANTS
    profiles: tuple[str, ...] = DEFAULT_PROFILES
    seeds: tuple[int, ...] = tuple(range(DEFAULT_SEEDS))
    knobs: Knobs = field(default_factory=Knobs)
    live: LiveEndpoint | None = None
    forced: tuple[ForcedFault, ...] = ()
    """Faults pinned on steps of every episode (``--force``), on top of each profile's draws."""
    trials: int = 1
    """How many times every episode (same seed, hence the same fault schedule) is run: pass^k's trials (live only)."""

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def default(cls) -> "Sweep":
        """The default comparison: every suite task, four adapters, three variants, none once and two fault profiles."""
        return cls(tasks=tuple(TaskRef(name) for name in suite_names()))

    @classmethod
    def build(cls, tasks: Iterable[str] | None = None, frameworks: Iterable[str] | None = None,
              variants: Iterable[str] | None = None, profiles: Iterable[str] | None = None,
              seeds: str | int | Iterable[int] | None = None, knobs: Knobs | None = None,
              live: LiveEndpoint | None = None, forced: Iterable[str | ForcedFault] | None = None,
              where_forced: str = "--force", trials: int | None = None) -> "Sweep":
        """A sweep from flag-like values; anything not given keeps the default suite's value.

        ``forced`` takes ``STEP:FAULT[@ATTEMPT]`` specs, checked against every task and
        variant of the sweep (``where_forced`` names them in errors). ``trials`` (1..100)
        repeats every episode; more than 1 needs ``live`` by the time the sweep runs (see
        :meth:`check_trials`).
        """
        sweep = cls.default()
        changes: dict[str, Any] = {}
        if tasks:
            changes["tasks"] = tuple(TaskRef.parse(t) for t in _names("tasks", tasks))
        if frameworks:
            known = adapter_names()
            for name in _names("frameworks", frameworks):
                if not is_adapter_name(name):
                    raise SweepError(f"--frameworks: no adapter {name!r}; {did_you_mean(name, known)}")
            changes["frameworks"] = tuple(dict.fromkeys(frameworks))
        if variants:
            changes["variants"] = tuple(_variant(v) for v in dict.fromkeys(_names("variants", variants)))
        if profiles:
            by_key: dict[str, str] = {}
            for profile in _names("profiles", profiles):
                by_key.setdefault(load_profile(profile).key, profile)  # ProfileError says "did you mean"
            changes["profiles"] = tuple(by_key.values())
        if seeds is not None:
            changes["seeds"] = parse_seeds(seeds)
        if knobs is not None:
            changes["knobs"] = knobs
        if trials is not None:
            changes["trials"] = parse_trials(trials)
        if live is not None:
            changes["live"] = live
        if forced:
            if isinstance(forced, (str, dict)):
                raise SweepError(f"{where_forced}: expected a list of STEP:FAULT[@ATTEMPT], got "
                                 f"{type(forced).__name__} {forced!r}")
            try:
                changes["forced"] = forced_faults(forced, where_forced)
            except ProfileError as exc:
                raise SweepError(str(exc)) from None
        built = replace(sweep, **changes)
        built.check_forced(where=where_forced)
        size = (len(built.tasks) * len(built.frameworks) * len(built.variants) * len(built.profiles)
                * len(built.seeds) * built.trials)
        if size > MAX_EPISODES:
            raise SweepError(f"the sweep expands to {size:,} episodes, more than the {MAX_EPISODES:,} one run may hold; "
                             "split it into smaller sweeps")
        return built

    @classmethod
    def from_file(cls, path: str | Path) -> "Sweep":
        """A sweep from YAML with the fields of the flags: tasks, frameworks, variants, profiles, seeds, trials, knobs,
        force."""
        data = read_yaml_file(path, SweepError) or {}
        if not isinstance(data, dict):
            raise SweepError(f"{path}: a sweep file is a mapping")
        allowed = {"tasks", "frameworks", "variants", "profiles", "seeds", "trials", "knobs", "force"}
        for key in data:
            if key not in allowed:
                raise SweepError(f"{path}: unknown field {key!r}; {did_you_mean(str(key), allowed)}")
        knob_fields = set(Knobs.__dataclass_fields__)
        knobs = data.get("knobs") or {}
        if not isinstance(knobs, dict):
            raise SweepError(f"{path}: knobs: expected a mapping of knob names to values, got {type(knobs).__name__}")
        for key in knobs:
            if key not in knob_fields:
                raise SweepError(f"{path}: knobs.{key}: unknown knob; {did_you_mean(str(key), knob_fields)}")
        try:
            trials = None if data.get("trials") is None else parse_trials(data["trials"], "trials")
            return cls.build(data.get("tasks"), data.get("frameworks"), data.get("variants"),
                             data.get("profiles"), data.get("seeds"), Knobs(**knobs) if knobs else None,
                             forced=data.get("force"), where_forced="force", trials=trials)
        except (SweepError, ProfileError, ValueError) as exc:
            raise SweepError(f"{path}: {exc}") from None

    # -- expansion and identity ---------------------------------------------------------------------
    def loaded_tasks(self) -> list[tuple[TaskRef, Task]]:
        """Each task reference with its loaded task (validated)."""
        return [(ref, ref.load()) for ref in self.tasks]

    def versions(self) -> dict[str, str]:
        """Framework versions, read from package metadata (the parent never imports a framework)."""
        return {name: adapter_version(name) for name in self.frameworks}

    def check_forced(self, tasks: list[tuple[TaskRef, Task]] | None = None, where: str = "--force") -> None:
        """Refuse forced faults that would do nothing: on a step missing from one of the tasks, that the step
        cannot meet (see :func:`faults.check_forced`), or, with a live endpoint, that the fault proxy cannot act
        out on a real answer."""
        if not self.forced:
            return
        if self.live is not None:
            for item in self.forced:
                if item.fault in PROXY_CANNOT_ACT:
                    raise SweepError(f"{where} {item}: the fault proxy in front of a live endpoint cannot act "
                                     f"{item.fault.value} out (it would have to write the model's decision for it); "
                                     f"faults it can: {', '.join(sorted(f.value for f in set(Fault) - PROXY_CANNOT_ACT))}")
        routed = Variant.DELEGATED in self.variants
        for _, task in tasks if tasks is not None else self.loaded_tasks():
            try:
                check_forced(self.forced, task, routed, where)
            except ProfileError as exc:
                raise SweepError(str(exc)) from None

    def check_trials(self) -> None:
        """Refuse repeated trials against the simulator, where every trial of a seed would be the same episode.

        Checked when the sweep runs, not only when built: ``--sweep FILE --base-url`` sets the
        live endpoint after the file is read.
        """
        if self.trials > 1 and self.live is None:
            raise SweepError(f"--trials {self.trials} (or trials: in a sweep file) needs a live endpoint (--base-url): "
                             f"the simulated model answers a seed the same way every time, so every trial of a seed "
                             f"would be the same episode; against the simulator use more seeds instead "
                             f"(e.g. --seeds {self.trials * len(self.seeds)}), each of which draws its own faults")

    def jobs(self) -> list[EpisodeJob]:
        """Every episode of the matrix, grouped by framework so workers rarely switch frameworks; each seed's
        trials follow one another."""
        self.check_trials()
        versions = self.versions()
        tasks = self.loaded_tasks()
        self.check_forced(tasks)
        profile_keys = {name: forced_profile_key(key, self.forced) for name, key in self.profile_keys().items()}
        seeds = {profile: self.seeds_for(profile) for profile in self.profiles}
        jobs = []
        for framework in self.frameworks:
            for ref, task in tasks:
                for variant in self.variants:
                    for profile in self.profiles:
                        for seed in seeds[profile]:
                            for trial in range(self.trials):
                                key = EpisodeKey(task.key, framework, versions[framework], variant.value,
                                                 profile_keys[profile], seed, trial)
                                jobs.append(EpisodeJob(key, ref, framework, variant, profile, seed, self.forced,
                                                       trial))
        return jobs

    def seeds_for(self, profile: str) -> tuple[int, ...]:
        """The seeds ``profile`` runs: all of them, but only the first for a deterministic profile on the simulator.

        A profile that injects nothing makes every seed the same episode (the simulator is
        deterministic), so its replicates would add copies, not evidence. A live endpoint is
        not deterministic: there every seed is a trial.
        """
        if self.live is None and load_profile(profile).deterministic:
            return self.seeds[:1]
        return self.seeds

    def collapsed_profiles(self) -> list[str]:
        """The profiles whose seeds :meth:`seeds_for` collapses to one (for a note to the user)."""
        return [p for p in self.profiles if len(self.seeds_for(p)) < len(self.seeds)]

    def live_notes(self) -> list[str]:
        """What a live run of this sweep does not do that a simulated one would (for notes to the user)."""
        notes = []
        for name in self.profiles:
            profile = load_profile(name)
            if profile.mechanisms.active:
                notes.append(f"{name}'s request-dependent mechanisms ({', '.join(profile.mechanisms.to_dict())}) are the "
                             "simulated model's; a live model brings its own, so only the profile's faults are "
                             "acted out in front of it")
            lapsing = sorted(f.value for f, weight in profile.weights.items() if weight > 0 and f in PROXY_CANNOT_ACT)
            if profile.rate > 0 and lapsing:
                notes.append(f"{name}: {', '.join(lapsing)} cannot be acted out on a real answer; where the schedule "
                             "draws one it lapses, and the episode's notes say so")
        return notes

    def profile_keys(self) -> dict[str, str]:
        """Each profile as the sweep names it (a name or a file) -> its own key (episode keys add any forced faults)."""
        return {name: load_profile(name).key for name in self.profiles}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description of the sweep (stored with the run)."""
        described = {"tasks": [str(t) for t in self.tasks], "frameworks": list(self.frameworks),
                     "variants": [v.value for v in self.variants], "profiles": list(self.profiles),
                     "seeds": list(self.seeds), "knobs": self.knobs.to_dict(),
                     "live": None if self.live is None else self.live.describe()}
        if self.forced:  # only when given, so a sweep without forced faults keeps its identity (and resumes)
            described["force"] = sorted(str(f) for f in self.forced)
        described["trials"] = self.trials
        return described

    def identity(self) -> str:
        """A hash of everything that decides outcomes (not workers or time limits)."""
        profiles: dict[str, Any] = {}
        for name in self.profiles:
            profile: FaultProfile = load_profile(name)
            profiles[profile.key] = [profile.rate, sorted((f.value, w) for f, w in profile.weights.items()),
                                     profile.stall_seconds, profile.retry_after_ms]
        # Profiles by key, not by how they were named: the same file reached by another path
        # (or from another folder) is the same run.
        material = {**self.to_dict(), "profiles": list(profiles), "task_keys": [t.key for _, t in self.loaded_tasks()],
                    "versions": self.versions(), "profile_contents": profiles}
        if self.trials == 1:  # one trial is what every sweep before --trials ran: its runs keep their identity
            del material["trials"]
        if not self.knobs.idempotency_keys:  # likewise the tools as every sweep before the knob had them
            material["knobs"].pop("idempotency_keys", None)
        if self.knobs.tool_transport is ToolTransport.NATIVE:  # and native tools, as before the MCP server
            material["knobs"].pop("tool_transport", None)
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def _variant(name: str) -> Variant:
    try:
        return Variant(name)
    except ValueError:
        raise SweepError(f"--variants: no variant {name!r}; {did_you_mean(name, [v.value for v in Variant])}") from None


def _names(field_name: str, values: Any) -> list[str]:
    """``values`` as a list of names; a single string, a mapping or a non-text item is a clear error."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise SweepError(f"{field_name}: expected a list of names, got {type(values).__name__} {values!r}")
    for value in values:
        if not isinstance(value, str):
            raise SweepError(f"{field_name}: expected names (text), got {type(value).__name__} {value!r}")
    return list(values)


def _seed_count(count: int, text: str) -> int:
    if count < 1:
        raise SweepError(f"--seeds {text}: need at least 1 seed")
    if count > MAX_SEEDS:
        raise SweepError(f"--seeds {text}: {count:,} seeds is more than the {MAX_SEEDS:,} a sweep may use")
    return count


def _seed(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SweepError(f"--seeds: each seed is a whole number from 0, got {value!r}")
    return value


def parse_trials(trials: Any, where: str = "--trials") -> int:
    """How many times to run each episode: a whole number from 1 to :data:`MAX_TRIALS` (``where`` names the flag)."""
    if isinstance(trials, str) and trials.strip().isdigit():
        trials = int(trials)
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS:
        raise SweepError(f"{where}: expected a whole number of trials from 1 to {MAX_TRIALS}, got {trials!r}")
    return trials


def parse_seeds(seeds: Any) -> tuple[int, ...]:
    """``5`` (seeds 0..4), ``"3-7"`` (inclusive), ``"1,4,9"``, or a list of whole numbers from 0."""
    if isinstance(seeds, bool) or not isinstance(seeds, (int, str, list, tuple)):
        raise SweepError(f"--seeds: expected a count (5), a range (3-7) or a list (1,4,9), got {seeds!r}")
    if isinstance(seeds, int):
        return tuple(range(_seed_count(seeds, str(seeds))))
    if isinstance(seeds, str):
        text = seeds.strip()
        if text.isdigit():
            return parse_seeds(int(text))
        low, dash, high = text.partition("-")
        if dash and low.strip().isdigit() and high.strip().isdigit():
            first, last = int(low), int(high)
            if first > last:
                raise SweepError(f"--seeds {text!r}: the range is empty")
            _seed_count(last - first + 1, repr(text))
            return tuple(range(first, last + 1))
        items = [p.strip() for p in text.split(",") if p.strip()]
        if not items or not all(p.isdigit() for p in items):
            raise SweepError(f"--seeds {text!r}: expected a count (5), a range (3-7) or a list (1,4,9)")
        seeds = items
    if not seeds:
        raise SweepError("--seeds: the list is empty")
    _seed_count(len(seeds), "list")
    return tuple(dict.fromkeys(_seed(s) for s in seeds))
