"""The README's first command: run the default comparison on the simulated model and write a report.

Until the framework adapters land, the comparison has one contestant, the scripted
reference loop; the report says so. Every number in it comes from the episodes this run
executes, on the built-in suite, under the ``none`` and ``semantic_3pct`` profiles.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import TextIO

from tabulate import tabulate

from coordlab.tasks.loader import load_suite

from .faults import FaultPlan, load_profile
from .scripted import run_scripted
from .simulator import Simulator

DEFAULT_DEMO_OUTPUT = Path("out/demo")
DEMO_PROFILES = ("none", "semantic_3pct")


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def run_demo(out: Path, seeds: int = 20, progress: TextIO | None = None) -> Path:
    """Run the suite under each demo profile for ``seeds`` seeds; write ``REPORT.md``; return its path."""
    tasks = load_suite()
    profiles = [load_profile(name) for name in DEMO_PROFILES]
    total, done = len(tasks) * len(profiles) * seeds, 0
    tallies: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with Simulator() as simulator:
        for task in tasks:
            for profile in profiles:
                for seed in range(seeds):
                    result = run_scripted(task, simulator, FaultPlan(profile, seed))
                    tally = tallies[(task.key, profile.name)]
                    tally["episodes"] += 1
                    tally["success"] += result.verdict.success
                    tally["harmful"] += result.verdict.harmful
                    tally["faults"] += sum(1 for r in result.records if r.fault)
                    tally["model calls"] += len(result.records)
                    done += 1
                    if progress is not None:
                        progress.write(f"\r[{done}/{total}] {task.key} {profile.name} seed {seed}   ")
    if progress is not None:
        progress.write("\n")
    rows = [{"task": task, "profile": profile, "episodes": t["episodes"],
             "success rate": f"{t['success'] / t['episodes']:.2f}",
             "harmful": t["harmful"], "faults injected": t["faults"],
             "model calls / episode": f"{t['model calls'] / t['episodes']:.1f}"}
            for (task, profile), t in sorted(tallies.items())]
    report = out / "REPORT.md"
    write_atomically(report, "\n".join([
        "# coordlab demo report",
        "",
        "Contestant: the framework-free scripted reference loop (official `openai` client, linear,",
        "no gate). Framework adapters (CrewAI, AutoGen, LangGraph) are not wired in yet.",
        f"Regenerate with `coordlab demo --seeds {seeds}`.",
        "",
        tabulate(rows, headers="keys", tablefmt="github"),
        "",
    ]))
    return report
