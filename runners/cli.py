"""The ``coordlab`` command: a thin skin over the Python API, one function per subcommand."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Sequence

from tabulate import tabulate

from coordlab.tasks.loader import TaskValidationError, load_suite, load_suite_task, load_task, validate_files

from .demo import DEFAULT_DEMO_OUTPUT, run_demo
from .faults import FaultPlan, ProfileError, forced_faults, load_profile, profile_names
from .simulator import Simulator, SimulatorError

EPILOG = """examples:
  coordlab tasks list
  coordlab tasks validate tasks/suite/*.yaml my_task.yaml
  coordlab faults list
  coordlab simulate serve --port 8800
  coordlab simulate run appointment_rebooking --profile semantic_10pct --seed 3
  coordlab simulate run chain --param n=12 --force stage_4:wrong_value
  coordlab demo --seeds 5
"""


class UsageError(Exception):
    """A flag or argument the user gave cannot be used; exit code 2."""


def _parse_params(items: Sequence[str]) -> dict[str, int]:
    params: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.lstrip("-").isdigit():
            raise UsageError(f"--param {item!r}: expected NAME=INTEGER, e.g. n=8")
        params[name] = int(value)
    return params


def _expand_paths(paths: Sequence[str]) -> list[Path]:
    expanded: list[Path] = []
    for raw in paths:
        path = Path(raw)
        expanded += sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    return expanded


# -- subcommands --------------------------------------------------------------------------

def cmd_tasks_list(args: argparse.Namespace) -> int:
    rows = []
    for task in load_suite():
        rows.append({"task": task.key, "roles": len(task.roles), "steps": len(task.steps),
                     "mutating steps": sum(s.mutating for s in task.steps), "gates": len(task.gates),
                     "description": task.description if args.json else task.description[:70] + "…"})
    print(json.dumps(rows, indent=2) if args.json else tabulate(rows, headers="keys"))
    return 0


def cmd_tasks_validate(args: argparse.Namespace) -> int:
    paths = _expand_paths(args.paths)
    problems = validate_files(paths)
    for problem in problems:
        print(problem, file=sys.stderr)
    bad_files = {p.file for p in problems}
    print(f"{len(paths) - len(bad_files)} of {len(paths)} task file(s) valid; {len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_faults_list(args: argparse.Namespace) -> int:
    rows = []
    for name in profile_names():
        profile = load_profile(name)
        rows.append({"profile": name, "rate per step": profile.rate,
                     "faults": ", ".join(f"{f.value}:{w:g}" for f, w in sorted(profile.weights.items()))})
    print(tabulate(rows, headers="keys"))
    return 0


def cmd_simulate_serve(args: argparse.Namespace) -> int:
    simulator = Simulator(args.host, args.port).start()
    print(f"coordlab simulator serving on {simulator.url}", flush=True)
    print("  POST /episodes {\"task\": NAME, \"profile\": P, \"seed\": S}  -> base_urls per role", flush=True)
    print("  GET  /episodes/<id>/log                              -> the request log", flush=True)
    try:
        threading.Event().wait(args.seconds if args.seconds else None)
    except KeyboardInterrupt:
        pass
    finally:
        simulator.stop()
    return 0


def cmd_simulate_run(args: argparse.Namespace) -> int:
    from .scripted import run_scripted

    params = _parse_params(args.param)
    task = load_task(args.task, params) if args.task.endswith((".yaml", ".yml")) else load_suite_task(args.task, params)
    plan = FaultPlan(load_profile(args.profile), args.seed, forced_faults(args.force))
    with Simulator() as simulator:
        result = run_scripted(task, simulator, plan, stream=args.stream)
    rows = [{"#": r.seq, "role": r.role, "step": r.step, "attempt": r.attempt, "kind": r.kind,
             "tools": ",".join(r.tool_calls), "fault": r.fault or "", "retry": r.retry_count,
             "handoff": "; ".join(f"{i.field} {i.kind}" for i in r.handoff_issues),
             "tokens in/out": f"{r.prompt_tokens}/{r.completion_tokens}"} for r in result.records]
    print(tabulate(rows, headers="keys"))
    print(f"\n{task.key} profile={plan.profile.name} seed={plan.seed}: {result.verdict.describe()}")
    return 0 if result.verdict.success else 1


def cmd_demo(args: argparse.Namespace) -> int:
    report = run_demo(Path(args.out), seeds=args.seeds, progress=sys.stderr)
    print(f"report written: {report}")
    return 0


# -- parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="coordlab", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tasks = commands.add_parser("tasks", help="list or validate task files").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    listing = tasks.add_parser("list", help="list the built-in suite")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=cmd_tasks_list)
    validate = tasks.add_parser("validate", help="validate task files; exit 1 on any problem")
    validate.add_argument("paths", nargs="+", metavar="PATH", help="task files or folders of them")
    validate.set_defaults(handler=cmd_tasks_validate)

    faults = commands.add_parser("faults", help="fault profiles").add_subparsers(dest="action", required=True)
    faults.add_parser("list", help="list the built-in fault profiles").set_defaults(handler=cmd_faults_list)

    simulate = commands.add_parser("simulate", help="the simulated model").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    serve = simulate.add_parser("serve", help="serve the simulated model on 127.0.0.1")
    serve.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="port (default: an ephemeral one)")
    serve.add_argument("--seconds", type=float, default=0, help="stop after this long (default: until Ctrl-C)")
    serve.set_defaults(handler=cmd_simulate_serve)
    run = simulate.add_parser("run", help="run one episode with the scripted reference loop and show its log")
    run.add_argument("task", help="a suite task name or a task file path")
    run.add_argument("--profile", default="none", help="fault profile name or file (default: none)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="task parameter, e.g. n=8")
    run.add_argument("--force", action="append", default=[], metavar="STEP:FAULT[@ATTEMPT]",
                     help="force one fault on one step, e.g. draft:wrong_value")
    run.add_argument("--stream", action="store_true", help="use streaming completions")
    run.set_defaults(handler=cmd_simulate_run)

    demo = commands.add_parser("demo", help="run the default comparison and write a report")
    demo.add_argument("--out", default=str(DEFAULT_DEMO_OUTPUT), help=f"output folder (default {DEFAULT_DEMO_OUTPUT})")
    demo.add_argument("--seeds", type=int, default=20, help="seeds per task and profile (default 20)")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coordlab`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (UsageError, ProfileError, KeyError) as exc:
        print(f"coordlab: {str(exc).strip(chr(39))}", file=sys.stderr)
        return 2
    except TaskValidationError as exc:
        print(f"coordlab: {exc}", file=sys.stderr)
        return 2
    except SimulatorError as exc:
        print(f"coordlab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
