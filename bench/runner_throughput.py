"""Runner benchmarks, measured side by side in one run:

1. episodes per second with 1 and 2 workers on the same sweep (target: 2 workers >= 1.7x one);
2. the lab's own share of episode time per framework: simulator time (server side, from the
   request log) plus recording time (writing the episode and its trace to the store),
   over the episode's wall time (target: <= 10% for every framework);
3. a worker's memory (RSS) after 50 and after N episodes, each framework in a fresh process
   running the same loop a worker runs (target: under 10% growth).

Run: .venv/bin/python bench/runner_throughput.py [--memory-episodes 1000] [--frameworks plain ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from coordlab.adapters.registry import AdapterUnavailable, adapter_version
from coordlab.runners.runner import run_sweep
from coordlab.runners.store import Store
from coordlab.runners.sweep import Sweep

FRAMEWORKS = ("plain", "crewai", "autogen", "langgraph")
THROUGHPUT_SWEEP = dict(tasks=["chain:n=3", "refund_policy_answer", "incident_triage"], frameworks=["plain"],
                        variants=["linear", "gated"], profiles=["none", "semantic_3pct"])


def throughput(workers: int, seeds: int, folder: Path) -> float:
    """Episodes per second of a fresh run of the throughput sweep (worker start-up included)."""
    sweep = Sweep.build(**THROUGHPUT_SWEEP, seeds=seeds)
    started = time.perf_counter()
    summary = run_sweep(sweep, folder / f"throughput-{workers}.sqlite", workers=workers, fresh=True,
                        progress_stream=open("/dev/null", "w"))
    return summary.ran / (time.perf_counter() - started)


def lab_share(framework: str, seeds: int, folder: Path) -> tuple[float, float, float] | str:
    """(simulator share, recording share, median episode ms) of one framework's episodes."""
    try:
        adapter_version(framework)
    except AdapterUnavailable as exc:
        return str(exc)
    store_path = folder / f"share-{framework}.sqlite"
    sweep = Sweep.build(tasks=["appointment_rebooking", "incident_triage"], frameworks=[framework],
                        variants=["linear", "gated"], profiles=["none"], seeds=seeds)
    run_sweep(sweep, store_path, workers=1, fresh=True, progress_stream=open("/dev/null", "w"))
    with Store(store_path) as store:
        rows = store.episodes()
        events = {r["episode_id"]: [dict(e) for e in store.events(r["episode_id"])] for r in rows}
    with Store(folder / f"rerecord-{framework}.sqlite") as scratch:
        scratch.create_run("bench", "bench", {}, {})
        recording_ms = []
        for row in rows:
            values = {k: row[k] for k in row.keys() if k not in ("episode_id", "run_id")}
            trace = [{"kind": e["kind"], "at_ms": e["at_ms"], "role": e["role"], "step": e["step"],
                      "detail": json.loads(e["detail_json"])} for e in events[row["episode_id"]]]
            started = time.perf_counter()
            scratch.record_episode("bench", values, trace)
            recording_ms.append((time.perf_counter() - started) * 1000)
    wall = sum(r["wall_ms"] for r in rows)
    return (sum(r["simulator_ms"] for r in rows) / wall, sum(recording_ms) / wall,
            statistics.median(r["wall_ms"] for r in rows))


MEMORY_PROBE = """
import json, sys
from coordlab.adapters.base import Variant
from coordlab.adapters.registry import get_adapter
from coordlab.runners.faults import FaultPlan, load_profile
from coordlab.runners.harness import run_episode
from coordlab.runners.simulator import Simulator
from coordlab.runners.worker import release_memory
from coordlab.tasks.loader import load_suite_task

def rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4

framework, total = sys.argv[1], int(sys.argv[2])
adapter, task = get_adapter(framework), load_suite_task("appointment_rebooking")
plan = FaultPlan(load_profile("semantic_3pct"), 0)
marks = {}
with Simulator() as simulator:
    for index in range(1, total + 1):
        run_episode(adapter, task, Variant.GATED, simulator, FaultPlan(plan.profile, index))
        release_memory(index)  # as the worker loop does after every episode
        if index in (50, total):
            marks[index] = rss_kb()
print(json.dumps(marks))
"""


def memory_growth(framework: str, episodes: int) -> tuple[int, int] | str:
    """RSS in kB after 50 and after ``episodes`` episodes, in a fresh worker-like process."""
    try:
        adapter_version(framework)
    except AdapterUnavailable as exc:
        return str(exc)
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, framework, str(episodes)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return result.stderr.strip().splitlines()[-1] if result.stderr else "probe failed"
    marks = json.loads(result.stdout.strip().splitlines()[-1])
    return marks["50"], marks[str(episodes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=30, help="seeds of the throughput sweep (x12 episodes)")
    parser.add_argument("--share-seeds", type=int, default=3)
    parser.add_argument("--memory-episodes", type=int, default=1000)
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        one, two = throughput(1, args.seeds, folder), throughput(2, args.seeds, folder)
        print(f"throughput ({args.seeds * 12} plain episodes, start-up included): "
              f"1 worker {one:.1f} eps/s, 2 workers {two:.1f} eps/s, ratio {two / one:.2f}x (target >= 1.7x)")
        rows = []
        for framework in args.frameworks:
            share = lab_share(framework, args.share_seeds, folder)
            memory = memory_growth(framework, args.memory_episodes)
            row = [framework]
            row += ["-", "-", "-", share[:50]] if isinstance(share, str) else \
                [f"{share[0]:.1%}", f"{share[1]:.1%}", f"{share[0] + share[1]:.1%}", f"{share[2]:.0f}"]
            row += ["-", "-", memory[:50]] if isinstance(memory, str) else \
                [f"{memory[0] / 1024:.1f}", f"{memory[1] / 1024:.1f}", f"{(memory[1] - memory[0]) / memory[0]:+.1%}"]
            rows.append(row)
    print(tabulate(rows, headers=["framework", "simulator", "recording", "lab share (<=10%)", "median episode ms",
                                  "RSS MiB @50", f"RSS MiB @{args.memory_episodes}", "growth (<10%)"]))


if __name__ == "__main__":
    main()
