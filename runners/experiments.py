"""The headline experiments and the default comparison, each one command: run a sweep, write a report.

* ``compounding`` — the ``chain`` task at n = 1..12 with a 3% per-step error, ``linear``:
  the measured curve of ``plain`` should follow 0.97^n, and the report shows where each
  framework departs from it.
* ``gate`` — every suite task, ``linear`` vs ``gated``, at 3% and 10%, per framework: the
  lab's answer to the claim that one verification gate cuts failures from 23% to about 2%.
* ``context`` — each request-dependent mechanism (``runners/mechanisms.py``) swept from 0 up,
  alone, on every suite task but ``chain``, in the variants where it can act: where each
  framework's success and harm part from ``plain``'s as the mechanism strengthens (paired, on
  common random numbers). 6 seeds by default: about 10 minutes on 2 cores (measured below).
* ``default`` — the default comparison suite (what ``make demo`` runs).
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, TextIO

import yaml

from coordlab.tasks.loader import suite_names

from .export import write_atomically
from .faults import FaultProfile, load_profile, profile_from_mapping
from .mechanisms import Mechanism
from .runner import DEFAULT_TIME_LIMIT_S, RunSummary, run_sweep
from .sweep import DEFAULT_SEEDS, Sweep

if TYPE_CHECKING:
    from coordlab.reports.model import Report


DEMO_FOLDER = Path("out/demo")
"""Where ``coordlab demo`` (the ``default`` experiment) writes unless told otherwise."""

EXPERIMENTS_FOLDER = Path("out/experiments")
"""Where ``coordlab experiment NAME`` writes unless told otherwise: ``out/experiments/NAME``."""

STORE_NAME = "results.sqlite"
"""An experiment's store, in its folder."""


def default_folder(name: str) -> Path:
    """The folder experiment ``name`` writes to when no ``--out`` is given."""
    return DEMO_FOLDER if name == "default" else EXPERIMENTS_FOLDER / name


@dataclass(frozen=True)
class Experiment:
    """A named set of sweeps with the report that answers its question."""

    name: str
    question: str
    sweeps: Callable[[int, Path], list[Sweep]]
    """The sweeps for a number of seeds per cell, all run into one store in the output folder (given, so an
    experiment can write files its sweeps name there, such as generated fault profiles)."""
    default_seeds: int
    """Seeds per cell when none are given: enough for a readable interval, tuned to the run time."""
    extend_report: Callable[["Report", Path], None] | None = None
    """Adds the experiment's own tables, figures and settings to the report built from the store in the folder."""


def _one(build: Callable[[int], Sweep]) -> Callable[[int, Path], list[Sweep]]:
    """An experiment of one sweep that writes nothing into its folder."""
    return lambda seeds, out: [build(seeds)]


def _compounding(seeds: int) -> Sweep:
    return Sweep.build(tasks=[f"chain:n={n}" for n in range(1, 13)], variants=["linear"],
                       profiles=["semantic_3pct"], seeds=seeds)


def _gate(seeds: int) -> Sweep:
    return Sweep.build(tasks=[n for n in suite_names() if n != "chain"], variants=["linear", "gated"],
                       profiles=["semantic_3pct", "semantic_10pct"], seeds=seeds)


def _default(seeds: int) -> Sweep:
    return Sweep.build(seeds=seeds)


def _default_report(report: "Report", out: Path) -> None:
    """The default suite's report records the power calculation its seed count comes from."""
    from . import design

    report.provenance["design"] = design.design().explain()


# -- the context experiment ----------------------------------------------------------------------

CONTEXT_PREFIX = "ctx_"
"""Generated context profiles are named ``ctx_<mechanism>_<strength>``, e.g. ``ctx_clash_0.30``."""

CONTEXT_BASELINE = "none"
"""Strength 0 of a mechanism without scheduled faults: the built-in profile with nothing on, run once for all."""

ALL_VARIANTS = ("linear", "gated", "delegated")


@dataclass(frozen=True)
class ContextSeries:
    """One mechanism's strengths in the context experiment, the knobs it keeps fixed, and where it can act."""

    mechanism: Mechanism
    strengths: tuple[float, ...]
    """The mechanism's ``rate`` at each point, from 0 (the mechanism off) up; at most two decimals (see names)."""
    variants: tuple[str, ...]
    """The variants in which the mechanism can act (elsewhere it would only repeat the baseline)."""
    knobs: Mapping[str, Any] = field(default_factory=dict)
    """The mechanism's other settings, the same at every strength."""
    fault_rate: float = 0.0
    """Scheduled faults per step attempt, the same at every strength (clash needs wrong answers to redo)."""
    faults: Mapping[str, float] = field(default_factory=dict)
    """The scheduled faults' weights."""


CONTEXT_SERIES: tuple[ContextSeries, ...] = (
    # Two versions of a value exist only where a step is redone: a gate's rejection, or a
    # router sending the work back; a linear flow never redoes a step.
    ContextSeries(Mechanism.CLASH, (0.0, 0.1, 0.3, 0.6, 1.0), ("gated", "delegated"),
                  fault_rate=0.1, faults={"wrong_value": 1}),
    ContextSeries(Mechanism.LENGTH, (0.0, 0.02, 0.05, 0.1, 0.2), ALL_VARIANTS,
                  {"reference_tokens": 1000, "elasticity": 0.56, "cap": 0.5}),
    ContextSeries(Mechanism.BURIED, (0.0, 0.1, 0.3, 0.6, 1.0), ALL_VARIANTS, {"reference_tokens": 3000}),
    ContextSeries(Mechanism.TOOL_OVERLOAD, (0.0, 0.1, 0.3, 0.6), ALL_VARIANTS),
    # Only a routing model writes a delegation brief.
    ContextSeries(Mechanism.BRIEF_LOSS, (0.0, 0.1, 0.3, 0.6), ("delegated",)),
)
"""The context experiment's design; strength settings follow the ``mechanism_*`` profiles (docs/mechanisms.md)."""

CONTEXT_TASKS = tuple(n for n in suite_names() if n != "chain")
"""The suite tasks the context experiment runs (``chain`` has no tools, gates or routing to stress)."""


@dataclass(frozen=True)
class ContextProfile:
    """One point of a series: the profile that sets the mechanism to a strength, and the variants it runs in."""

    mechanism: Mechanism
    strength: float
    variants: tuple[str, ...]
    data: Mapping[str, Any] | None
    """The profile file's contents; None for the shared baseline (the built-in ``none``)."""

    @property
    def name(self) -> str:
        """The profile's name: ``ctx_<mechanism>_<strength>``, or ``none`` for the shared baseline."""
        return CONTEXT_BASELINE if self.data is None else self.data["name"]

    def profile(self, folder: Path) -> FaultProfile:
        """The profile as a sweep loads it from ``folder`` (its key is what episode keys name)."""
        if self.data is None:
            return load_profile(CONTEXT_BASELINE)
        return profile_from_mapping(dict(self.data), str(self.path(folder)))

    def path(self, folder: Path) -> Path:
        """Where the profile file goes in ``folder``."""
        return folder / f"{self.name}.yaml"

    def reference(self, folder: Path) -> str:
        """How a sweep names this profile: the file's path, or the built-in's name."""
        return CONTEXT_BASELINE if self.data is None else str(self.path(folder))


def context_profile_name(mechanism: Mechanism | str, strength: float) -> str:
    """``ctx_<mechanism>_<strength with two decimals>``: what the report reads mechanism and strength back from."""
    return f"{CONTEXT_PREFIX}{Mechanism(mechanism).value}_{strength:.2f}"


def context_profiles() -> list[ContextProfile]:
    """Every point of :data:`CONTEXT_SERIES`, in order; strength 0 without scheduled faults is the shared baseline."""
    points = []
    for series in CONTEXT_SERIES:
        for strength in series.strengths:
            if round(strength, 2) != strength or not 0 <= strength <= 1:
                raise ValueError(f"context series {series.mechanism.value}: strength {strength} is not a rate with "
                                 "at most two decimals (the profile's name must tell it apart)")
            if strength == 0 and series.fault_rate == 0:
                points.append(ContextProfile(series.mechanism, 0.0, series.variants, None))
                continue
            name = context_profile_name(series.mechanism, strength)
            described = (f"the {series.mechanism.value} mechanism at rate {strength:g}"
                         + (f" ({', '.join(f'{k} {v:g}' for k, v in series.knobs.items())})" if series.knobs else ""))
            if series.fault_rate:
                described += (f", over scheduled faults at {series.fault_rate:.0%} of step attempts "
                              f"({', '.join(series.faults)})")
            data: dict[str, Any] = {
                "name": name,
                "description": f"Generated by `coordlab experiment context`: {described}. Rewritten on every run.",
                "rate": series.fault_rate,
            }
            if series.faults:
                data["faults"] = dict(series.faults)
            if strength > 0:
                data["mechanisms"] = {series.mechanism.value: {"rate": strength, **series.knobs}}
            points.append(ContextProfile(series.mechanism, strength, series.variants, data))
    return points


def write_context_profiles(folder: Path) -> list[ContextProfile]:
    """Write the context profiles into ``folder`` (atomically, each checked by loading it back); return them."""
    points = context_profiles()
    for point in points:
        if point.data is None:
            continue
        path = point.path(folder)
        write_atomically(path, yaml.safe_dump(dict(point.data), sort_keys=False, width=100))
        if load_profile(path).key != point.profile(folder).key:  # the file must say what the design says
            raise ValueError(f"{path}: the written profile does not load back as designed")
    return points


def _context(seeds: int, out: Path) -> list[Sweep]:
    """One sweep per set of variants: each profile runs only where its mechanism can act, the baseline once."""
    folder = out / "profiles"
    variants_of: dict[str, set[str]] = {}
    for point in write_context_profiles(folder):
        variants_of.setdefault(point.reference(folder), set()).update(point.variants)
    groups: dict[tuple[str, ...], list[str]] = {}
    for profile, variants in variants_of.items():
        groups.setdefault(tuple(v for v in ALL_VARIANTS if v in variants), []).append(profile)
    return [Sweep.build(tasks=list(CONTEXT_TASKS), variants=list(variants), profiles=profiles, seeds=seeds)
            for variants, profiles in sorted(groups.items(), key=lambda item: -len(item[0]))]


def context_settings(folder: Path) -> list[dict[str, Any]]:
    """Each context profile's settings as loaded from ``folder``: what the report prints beside the results."""
    settings = []
    for point in context_profiles():
        profile = point.profile(folder)
        settings.append({
            "profile": profile.key, "mechanism": point.mechanism.value, "strength": point.strength,
            "variants": list(point.variants), "fault rate": profile.rate,
            "faults": {fault.value: weight for fault, weight in sorted(profile.weights.items())} or "none",
            "mechanisms": profile.mechanisms.to_dict() or "all off",
        })
    return settings


def context_settings_note() -> str:
    """The context design in one paragraph (strengths, fixed knobs, variants), for the report's notes."""
    parts = []
    for series in CONTEXT_SERIES:
        text = f"{series.mechanism.value} rate {', '.join(f'{s:g}' for s in series.strengths)}"
        if series.knobs:
            text += f" with {', '.join(f'{k} {v:g}' for k, v in series.knobs.items())}"
        if series.fault_rate:
            text += (f", over {', '.join(series.faults)} faults at {series.fault_rate:.0%} of step attempts "
                     f"at every strength")
        parts.append(f"{text} ({', '.join(series.variants)})")
    return ("Context experiment settings (each mechanism alone, every suite task but chain): " + "; ".join(parts)
            + f". Strength 0 is the mechanism off: the built-in `{CONTEXT_BASELINE}` profile, run once and shared "
              "(for clash, its wrong answers alone). Every profile's full settings are under provenance, "
              "context profiles; the files are in the experiment's profiles/ folder.")


def _context_report(report: "Report", out: Path) -> None:
    """Put the context figure and paired table first, and print every profile's settings beside them."""
    from coordlab.reports.context import context_figure, context_table
    from coordlab.reports.data import load_store

    folder = out / "profiles"
    settings = context_settings(folder)
    keys = {entry["profile"] for entry in settings}
    episodes = load_store(out / STORE_NAME).episodes
    table = context_table(episodes, keys)
    if table.rows:
        report.tables.insert(0, table)
    figure = context_figure(episodes, keys)
    if figure is not None:
        report.figures.insert(0, figure)
    report.notes.append(context_settings_note())
    report.provenance["context_profiles"] = settings


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("compounding", "Does end-to-end success fall as (1-p)^n, and where does each framework depart "
                              "from it?", _one(_compounding), 100),
    Experiment("gate", "How much does one verification gate before each side effect cut failures?", _one(_gate), 40),
    # 6 seeds: 5,880 episodes (5 tasks x 4 frameworks x 49 variant-profile cells x 6 seeds). Measured on 2 cores
    # (2 workers): 4 seeds, 3,920 episodes, ran in 396 s (9.9 episodes/s; 6 min 42 s with the report), so the
    # default takes about 10 minutes.
    Experiment("context", "As each request-dependent mechanism strengthens (clash, length, buried value, tool "
                          "overload, brief loss), where do the frameworks' success and harm part from plain's?",
               _context, 6, _context_report),
    Experiment("default", "Which framework does better or worse than the framework-free reference, under which "
                          "conditions, and why? Every task, four adapters, three variants; no faults once, then "
                          "realistic_3pct and mixed_5pct.", _one(_default), DEFAULT_SEEDS, _default_report),
)}


def _with_frameworks(sweep: Sweep, frameworks: list[str]) -> Sweep:
    return Sweep.build([str(t) for t in sweep.tasks], frameworks, [v.value for v in sweep.variants],
                       list(sweep.profiles), list(sweep.seeds), sweep.knobs)


def _combined(summaries: list[RunSummary]) -> RunSummary:
    """One summary for the sweeps of an experiment (their runs share the store)."""
    if len(summaries) == 1:
        return summaries[0]
    statuses: Counter[str] = Counter()
    for summary in summaries:
        statuses.update(summary.statuses)
    logs = [s.framework_log for s in summaries if s.framework_log is not None]
    return RunSummary("+".join(s.run_id for s in summaries), all(s.resumed for s in summaries),
                      sum(s.total for s in summaries), sum(s.skipped for s in summaries),
                      sum(s.ran for s in summaries), statuses, sum(s.elapsed_s for s in summaries),
                      logs[-1] if logs else None)


def _command(name: str, out: Path, seeds: int | None, frameworks: list[str] | None) -> str:
    """The command that regenerates experiment ``name``'s report, as the CLI spells it, with the options given.

    The default comparison is ``coordlab demo`` (``coordlab experiment`` does not offer it);
    ``--out`` appears when ``out`` is not the CLI's default folder for the command.
    """
    words = ["coordlab", "demo"] if name == "default" else ["coordlab", "experiment", name]
    if Path(out) != default_folder(name):
        words += ["--out", str(out)]
    words += (["--seeds", str(seeds)] if seeds else []) + (["--frameworks", *frameworks] if frameworks else [])
    return shlex.join(words)


def run_experiment(name: str, out: Path, *, seeds: int | None = None, frameworks: list[str] | None = None,
                   workers: int | None = None, time_limit: float = DEFAULT_TIME_LIMIT_S, fresh: bool = False,
                   progress_stream: TextIO | None = None) -> tuple[RunSummary, Path]:
    """Run experiment ``name`` (resuming by default) into its store in ``out``; write its report to ``out/report``."""
    from coordlab.reports.build import build_report
    from coordlab.reports.render import write_report

    experiment = EXPERIMENTS[name]
    sweeps = experiment.sweeps(seeds or experiment.default_seeds, out)
    if frameworks:
        sweeps = [_with_frameworks(sweep, frameworks) for sweep in sweeps]
    store = out / STORE_NAME
    summary = _combined([run_sweep(sweep, store, workers=workers, time_limit=time_limit, fresh=fresh,
                                   progress_stream=progress_stream) for sweep in sweeps])
    report = build_report(store)
    report.title = f"coordlab — {name}"
    report.provenance["question"] = experiment.question
    report.provenance["command"] = _command(name, out, seeds, frameworks)
    if experiment.extend_report is not None:
        experiment.extend_report(report, out)
    return summary, write_report(report, out / "report")
