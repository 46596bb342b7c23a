"""The headline experiments and the default comparison, each one command: run a sweep, write a report.

* ``compounding`` — the ``chain`` task at n = 1..12 with a 3% per-step error, ``linear``:
  the measured curve of ``plain`` should follow 0.97^n, and the report shows where each
  framework departs from it.
* ``gate`` — every suite task, ``linear`` vs ``gated``, at 3% and 10%, per framework: the
  lab's answer to the claim that one verification gate cuts failures from 23% to about 2%.
* ``default`` — the default comparison suite (what ``make demo`` runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from coordlab.tasks.loader import suite_names

from .runner import DEFAULT_TIME_LIMIT_S, RunSummary, run_sweep
from .sweep import DEFAULT_SEEDS, Sweep


@dataclass(frozen=True)
class Experiment:
    """A named sweep with the report that answers its question."""

    name: str
    question: str
    sweep: Callable[[int], Sweep]
    default_seeds: int
    """Seeds per cell when none are given: enough for a readable interval, tuned to the run time."""


def _compounding(seeds: int) -> Sweep:
    return Sweep.build(tasks=[f"chain:n={n}" for n in range(1, 13)], variants=["linear"],
                       profiles=["semantic_3pct"], seeds=seeds)


def _gate(seeds: int) -> Sweep:
    return Sweep.build(tasks=[n for n in suite_names() if n != "chain"], variants=["linear", "gated"],
                       profiles=["semantic_3pct", "semantic_10pct"], seeds=seeds)


def _default(seeds: int) -> Sweep:
    return Sweep.build(seeds=seeds)


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("compounding", "Does end-to-end success fall as (1-p)^n, and where does each framework depart "
                              "from it?", _compounding, 100),
    Experiment("gate", "How much does one verification gate before each side effect cut failures?", _gate, 40),
    Experiment("default", "The default comparison: every task, four adapters, linear and gated, none and 3%.",
               _default, DEFAULT_SEEDS),
)}


def run_experiment(name: str, out: Path, *, seeds: int | None = None, frameworks: list[str] | None = None,
                   workers: int | None = None, time_limit: float = DEFAULT_TIME_LIMIT_S, fresh: bool = False,
                   progress_stream: TextIO | None = None) -> tuple[RunSummary, Path]:
    """Run experiment ``name`` (resuming by default) into ``out/results.sqlite``; write its report to ``out``."""
    from coordlab.reports.build import build_report
    from coordlab.reports.render import write_report

    experiment = EXPERIMENTS[name]
    sweep = experiment.sweep(seeds or experiment.default_seeds)
    if frameworks:
        sweep = Sweep.build([str(t) for t in sweep.tasks], frameworks, [v.value for v in sweep.variants],
                            list(sweep.profiles), list(sweep.seeds), sweep.knobs)
    store = out / "results.sqlite"
    summary = run_sweep(sweep, store, workers=workers, time_limit=time_limit, fresh=fresh,
                        progress_stream=progress_stream)
    report = build_report(store)
    report.title = f"coordlab — {name}"
    report.provenance["question"] = experiment.question
    report.provenance["command"] = f"coordlab experiment {name}" + (f" --seeds {seeds}" if seeds else "")
    return summary, write_report(report, out / "report")
