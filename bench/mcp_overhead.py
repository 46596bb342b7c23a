"""What reaching the tools over MCP costs, per framework, relative to its native tools, in one run.

Each framework runs the same episodes with native tools and with its own MCP client against
the lab's MCP server, alternating episode by episode so that drift on a loaded machine hits
both sides alike. Both transports run the same tool bodies on the same world, so the
difference in execution time is the transport: the MCP client's sessions (handshake and
``tools/list``) and each call's HTTP round trip. Reported per tool call, and as the ratio of
median episode times. Medians over repeated episodes after warm-up episodes of each.

Run: .venv/bin/python bench/mcp_overhead.py [--task appointment_rebooking] [--episodes 10]
"""

from __future__ import annotations

import argparse
import statistics

from tabulate import tabulate

from coordlab.adapters.base import Knobs, ToolTransport, Variant
from coordlab.adapters.registry import AdapterUnavailable, get_adapter
from coordlab.runners.faults import FaultPlan, load_profile
from coordlab.runners.harness import Status, run_episode
from coordlab.runners.simulator import Simulator
from coordlab.tasks.loader import load_suite_task

FRAMEWORKS = ("plain", "crewai", "autogen", "langgraph")


def paired_times(framework: str, variant: Variant, task_name: str, episodes: int, warmup: int,
                 simulator: Simulator) -> tuple[list[float], list[float], int] | str:
    """(native execution ms, MCP execution ms, tool calls per episode), or why it could not run."""
    try:
        adapter = get_adapter(framework)
    except AdapterUnavailable as exc:
        return str(exc)
    if ToolTransport.MCP not in getattr(adapter, "tool_transports", ()):
        return "no MCP client"
    task, plan = load_suite_task(task_name), FaultPlan(load_profile("none"), 0)
    times: dict[ToolTransport, list[float]] = {ToolTransport.NATIVE: [], ToolTransport.MCP: []}
    tool_calls = 0
    for index in range(warmup + episodes):
        for transport in ToolTransport:
            result = run_episode(adapter, task, variant, simulator, plan, Knobs(tool_transport=transport))
            if result.status is not Status.SUCCESS:
                return f"{transport.value} episode failed: {result.status.value} {result.error or ''}"
            if index >= warmup:
                times[transport].append(result.execution_ms)
                tool_calls = result.counts.tool_calls
    return times[ToolTransport.NATIVE], times[ToolTransport.MCP], tool_calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="appointment_rebooking")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS))
    parser.add_argument("--variants", nargs="+", default=[v.value for v in Variant])
    args = parser.parse_args()
    rows = []
    with Simulator() as simulator:
        for variant in map(Variant, args.variants):
            for framework in args.frameworks:
                measured = paired_times(framework, variant, args.task, args.episodes, args.warmup, simulator)
                if isinstance(measured, str):
                    rows.append([framework, variant.value, "-", "-", "-", "-", "-", measured[:70]])
                    continue
                native, mcp, calls = measured
                native_ms, mcp_ms = statistics.median(native), statistics.median(mcp)
                rows.append([framework, variant.value, calls, f"{native_ms:.1f}", f"{mcp_ms:.1f}",
                             f"{(mcp_ms - native_ms) / calls:.2f}" if calls else "-", f"{mcp_ms / native_ms:.2f}x", ""])
    print(f"task {args.task}, {args.episodes} episodes per transport after {args.warmup} warm-up, profile none")
    print(tabulate(rows, headers=["framework", "variant", "tool calls", "native ms", "MCP ms",
                                  "extra ms / tool call", "MCP / native", "note"]))


if __name__ == "__main__":
    main()
