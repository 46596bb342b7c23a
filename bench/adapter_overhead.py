"""Framework overhead per model call, per framework and variant, relative to ``plain``, in one run.

Overhead of an episode = its execution time minus the time the simulator spent answering
(server-side handler time from the request log), divided by its model calls. What is left
is the framework's own work plus the HTTP client, which ``plain`` pays too, so the ratio
to ``plain`` on the same task is the framework's cost. Medians over repeated episodes after
warm-up episodes (the openai SDK's first-use warm-up would otherwise land in one framework).

n8n (when installed: ``make n8n``) reaches the tools only over MCP, so ``plain+mcp`` is
measured too: n8n's ratio to it is its cost without the transport's. Its server starts
during the warm-up episodes, not inside a measured one.

Run: .venv/bin/python bench/adapter_overhead.py [--task appointment_rebooking] [--episodes 10]
"""

from __future__ import annotations

import argparse
import statistics

from tabulate import tabulate

from coordlab.adapters.base import Variant
from coordlab.adapters.registry import AdapterUnavailable, get_adapter
from coordlab.runners.faults import FaultPlan, load_profile
from coordlab.runners.harness import Status, run_episode
from coordlab.runners.simulator import Simulator
from coordlab.tasks.loader import load_suite_task

FRAMEWORKS = ("plain", "crewai", "autogen", "langgraph", "plain+mcp", "n8n")


def overhead_per_call(framework: str, variant: Variant, task_name: str, episodes: int, warmup: int,
                      simulator: Simulator) -> tuple[float, float, int] | str:
    """(median overhead ms per call, median execution ms, calls per episode) or why it could not run."""
    try:
        adapter = get_adapter(framework)
    except AdapterUnavailable as exc:
        return str(exc)
    task, plan = load_suite_task(task_name), FaultPlan(load_profile("none"), 0)
    per_call, execution, calls = [], [], 0
    for index in range(warmup + episodes):
        result = run_episode(adapter, task, variant, simulator, plan)
        if result.status is not Status.SUCCESS:
            return f"episode failed: {result.status.value} {result.error or result.verdict.describe()}"
        if index < warmup:
            continue
        served = sum(r.elapsed_ms for r in result.records)
        calls = result.counts.model_calls
        per_call.append((result.execution_ms - served) / calls)
        execution.append(result.execution_ms)
    return statistics.median(per_call), statistics.median(execution), calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="appointment_rebooking")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS))
    args = parser.parse_args()
    rows, floor, mcp_floor = [], {}, {}
    with Simulator() as simulator:
        for variant in Variant:
            for framework in args.frameworks:
                measured = overhead_per_call(framework, variant, args.task, args.episodes, args.warmup, simulator)
                if isinstance(measured, str):
                    rows.append([framework, variant.value, "-", "-", "-", "-", "-", measured[:60]])
                    continue
                per_call, execution, calls = measured
                if framework == "plain":
                    floor[variant] = per_call
                if framework == "plain+mcp":
                    mcp_floor[variant] = per_call
                ratio = f"{per_call / floor[variant]:.2f}x" if variant in floor else "-"
                mcp_ratio = f"{per_call / mcp_floor[variant]:.2f}x" if variant in mcp_floor else "-"
                rows.append([framework, variant.value, calls, f"{execution:.1f}", f"{per_call:.2f}", ratio,
                             mcp_ratio, ""])
    print(f"task {args.task}, {args.episodes} episodes after {args.warmup} warm-up, profile none")
    print(tabulate(rows, headers=["framework", "variant", "model calls", "median episode ms",
                                  "overhead ms / call", "vs plain", "vs plain+mcp", "note"]))


if __name__ == "__main__":
    main()
