"""Reliability benchmark: what the lab survives and how it answers bad input, measured in one run.

1. SIGKILL of a running sweep's whole process group at random moments, then a resume:
   episodes lost and duplicated, store integrity (target: 0 lost, 0 duplicated, integrity ok).
2. SIGKILL of single workers at random moments while the runner goes on, then a resume
   (target: the sweep finishes, 0 lost, 0 duplicated).
3. A corpus of bad inputs (hostile and careless task, sweep, profile and price files, flags,
   stores) each through the real command in a fresh process: handled means a clear message
   naming the file or flag, exit code 1 or 2, no traceback, within the time bound
   (target: every one handled).
4. The largest time-limit overshoot with 2 workers while the other slot starts a slow
   worker (target: well under a second beyond the limit).

Run: .venv/bin/python bench/reliability.py [--kills 10] [--worker-kills 5]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from coordlab.runners.runner import run_sweep
from coordlab.runners.store import Store
from coordlab.runners.sweep import Sweep

SWEEP = ["--frameworks", "plain", "--tasks", "chain:n=1", "refund_policy_answer", "--variants", "linear", "gated",
         "--faults", "none", "semantic_10pct", "--seeds", "50"]
SWEEP_SIZE = 2 * 2 * 2 * 50
INPUT_TIME_BOUND_S = 60.0
"""Seconds a bad input may take before it counts as a hang."""

HANG_PLUGIN = '''
import time
from coordlab.adapters.plain import PlainAdapter

class Hang(PlainAdapter):
    name = "hang"
    def run(self, spec):
        if spec.task.name == "refund_policy_answer":
            time.sleep(3600)
        return super().run(spec)

def hang():
    return Hang()

def slowstart():
    time.sleep(8)
    adapter = Hang()
    adapter.name = "slowstart"
    return adapter
'''


def coordlab(*argv: str) -> list[str]:
    return [sys.executable, "-m", "coordlab", *argv]


@dataclass
class StoreCheck:
    """What a store holds after the trials."""

    episodes: int
    distinct: int
    integrity: str
    orphan_events: int
    runs: int

    @classmethod
    def of(cls, path: Path) -> "StoreCheck":
        with sqlite3.connect(path) as connection:
            keys = connection.execute("SELECT task, framework, variant, profile, seed FROM episodes").fetchall()
            return cls(len(keys), len(set(keys)), connection.execute("PRAGMA integrity_check").fetchone()[0],
                       connection.execute("SELECT count(*) FROM events WHERE episode_id NOT IN "
                                          "(SELECT episode_id FROM episodes)").fetchone()[0],
                       connection.execute("SELECT count(*) FROM runs").fetchone()[0])


def recorded(path: Path) -> int:
    try:
        with sqlite3.connect(path) as connection:
            return connection.execute("SELECT count(*) FROM episodes").fetchone()[0]
    except sqlite3.Error:
        return 0


def group_kills(kills: int, folder: Path, rng: random.Random) -> tuple[StoreCheck, list[int]]:
    """SIGKILL the whole process group of a running sweep ``kills`` times, then let it finish."""
    store = folder / "group.sqlite"
    command = coordlab("run", *SWEEP, "--store", str(store), "--workers", "2")
    progress = []
    for _ in range(kills):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        time.sleep(rng.uniform(0.5, 2.5))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        progress.append(recorded(store))
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=600)
    return StoreCheck.of(store), progress


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def worker_kills(kills: int, folder: Path, rng: random.Random) -> tuple[StoreCheck, int, int]:
    """SIGKILL single workers of a running sweep; the runner must finish; a resume retries infra errors."""
    store = folder / "workers.sqlite"
    command = coordlab("run", *SWEEP, "--store", str(store), "--workers", "2")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    while done < kills and process.poll() is None:
        time.sleep(rng.uniform(0.5, 2.0))
        workers = _children(process.pid)
        if workers:
            try:
                os.kill(rng.choice(workers), signal.SIGKILL)
                done += 1
            except ProcessLookupError:
                pass
    first_exit = process.wait(timeout=600)
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    return StoreCheck.of(store), done, first_exit


@dataclass
class BadInput:
    """One bad input: the files it needs and the command that reads them."""

    name: str
    argv: list[str]
    files: dict[str, str | bytes] = field(default_factory=dict)
    expect: str = ""
    """Text the message must contain to count as located (default: the first file's path)."""


def _task(extra: str = "", steps: str | None = None) -> str:
    body = steps if steps is not None else """
steps:
  - id: lookup
    role: clerk
    instruction: Look up the customer.
    reads: [customer_id]
    tools: [{call: crm_lookup, args: {customer_id: customer_id}}]
    produces: {email: "crm_lookup['email']"}
"""
    return f"""schema_version: 1
name: probe
version: 1
description: A probe.
inputs: {{customer_id: C-1}}
roles:
  clerk: {{goal: Look up., instructions: Report.}}
  mailer: {{goal: Email., instructions: Once.}}
{body}
fixtures:
  crm: {{C-1: {{name: Ada, email: ada@example.com}}}}
  outbox: []
{extra}"""


def bad_inputs() -> list[BadInput]:
    """Hostile and careless inputs, each through the command a user would run."""
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9))
    secret = "fmt('{f.__globals__[re].enum.sys.modules[os].environ[HOME]}', f=get)"
    validate = ["tasks", "validate", "{0}"]
    run_task = ["run", "--tasks", "{0}", "--frameworks", "plain", "--variants", "linear", "--seeds", "1",
                "--store", "{dir}/s.sqlite"]
    cases = [
        BadInput("task: billion laughs", validate, {"t.yaml": laughs}),
        BadInput("task: deep nesting", validate, {"t.yaml": "a: " + "[" * 5000 + "]" * 5000 + "\n"}),
        BadInput("task: 30 MB file", validate, {"t.yaml": "# " + "x" * 30_000_000 + "\n"}),
        BadInput("task: not UTF-8", validate, {"t.yaml": b"name: \xff\xfe probe\n"}),
        BadInput("task: empty", validate, {"t.yaml": ""}),
        BadInput("task: a list", validate, {"t.yaml": "- 1\n- 2\n"}),
        BadInput("task: list as key", validate, {"t.yaml": "? [a, b]\n: 1\n"}),
        BadInput("task: secret via fmt", run_task,
                 {"t.yaml": _task(steps=f"""
steps:
  - id: lookup
    role: clerk
    instruction: Look up.
    reads: [customer_id]
    produces: {{email: "{secret}"}}
""")}, expect="t.yaml"),
        BadInput("task: attribute walk", validate,
                 {"t.yaml": _task(steps="""
steps:
  - id: lookup
    role: clerk
    instruction: Look up.
    reads: [customer_id]
    produces: {email: "customer_id.__class__"}
""")}),
        BadInput("task: lambda", validate, {"t.yaml": _task(steps="""
steps:
  - id: lookup
    role: clerk
    instruction: Look up.
    reads: [customer_id]
    produces: {email: "(lambda: 1)()"}
""")}),
        BadInput("task: huge repeat", validate, {"t.yaml": _task(steps="""
steps:
  - repeat: {count: 100000000, roles: [clerk]}
    id: s${i}
    instruction: Go.
    reads: []
    produces: {x: "1"}
""")}),
        BadInput("task: unknown role", validate, {"t.yaml": _task().replace("role: clerk", "role: clerc")}),
        BadInput("task: steps a string", validate, {"t.yaml": _task(steps="steps: lots\n")}),
        BadInput("task: version a string", validate, {"t.yaml": _task().replace("version: 1", "version: one")}),
        BadInput("task: missing file", validate, {}, expect="nope.yaml"),
        BadInput("sweep: billion laughs", ["run", "--sweep", "{0}", "--store", "{dir}/s.sqlite"], {"s.yaml": laughs}),
        BadInput("sweep: deep nesting", ["run", "--sweep", "{0}", "--store", "{dir}/s.sqlite"],
                 {"s.yaml": "tasks: " + "[" * 5000 + "]" * 5000 + "\n"}),
        BadInput("sweep: tasks a string", ["run", "--sweep", "{0}", "--store", "{dir}/s.sqlite"],
                 {"s.yaml": "tasks: chain\n"}),
        BadInput("sweep: task a mapping", ["run", "--sweep", "{0}", "--store", "{dir}/s.sqlite"],
                 {"s.yaml": "tasks: [{chain: 1}]\n"}),
        BadInput("sweep: knobs a list", ["run", "--sweep", "{0}", "--store", "{dir}/s.sqlite"],
                 {"s.yaml": "knobs: [1]\n"}),
        BadInput("sweep: temperature hot", ["run", "--sweep", "{0}", "--store", "{dir}/s.sqlite"],
                 {"s.yaml": "knobs: {temperature: hot}\n"}),
        BadInput("sweep: negative iterations", ["run", "--sweep", "{0}", "--store", "{dir}/s.sqlite"],
                 {"s.yaml": "knobs: {max_iterations: -1}\n"}),
        BadInput("sweep: float seeds", ["run", "--sweep", "{0}", "--store", "{dir}/s.sqlite"],
                 {"s.yaml": "seeds: [1.5]\n"}),
        BadInput("sweep: 100M seeds", ["run", "--sweep", "{0}", "--store", "{dir}/s.sqlite"],
                 {"s.yaml": "seeds: 100000000\n"}),
        BadInput("sweep: not UTF-8", ["run", "--sweep", "{0}", "--store", "{dir}/s.sqlite"],
                 {"s.yaml": b"seeds: \xff\n"}),
        BadInput("profile: billion laughs", ["run", "--faults", "{0}", "--store", "{dir}/s.sqlite"],
                 {"p.yaml": laughs}),
        BadInput("profile: faults a list", ["run", "--faults", "{0}", "--store", "{dir}/s.sqlite"],
                 {"p.yaml": "name: p\nrate: 0.1\nfaults: [wrong_value]\n"}),
        BadInput("profile: NaN weight", ["run", "--faults", "{0}", "--store", "{dir}/s.sqlite"],
                 {"p.yaml": "name: p\nrate: 0.1\nfaults: {wrong_value: .nan}\n"}),
        BadInput("profile: infinite stall", ["run", "--faults", "{0}", "--store", "{dir}/s.sqlite"],
                 {"p.yaml": "name: p\nrate: 0.1\nfaults: {stall: 1}\nstall_seconds: .inf\n"}),
        BadInput("profile: HTML name", ["run", "--faults", "{0}", "--store", "{dir}/s.sqlite"],
                 {"p.yaml": "name: '<img src=x>'\nrate: 0\n"}),
        BadInput("prices: billion laughs", ["report", "--store", "{dir}/none.sqlite", "--prices", "{0}"],
                 {"prices.yaml": laughs}),
        BadInput("flag: --workers 0", ["run", "--workers", "0", "--store", "{dir}/s.sqlite"], expect="--workers"),
        BadInput("flag: --time-limit nan", ["run", "--time-limit", "nan", "--store", "{dir}/s.sqlite"],
                 expect="--time-limit"),
        BadInput("flag: --time-limit inf", ["run", "--time-limit", "inf", "--store", "{dir}/s.sqlite"],
                 expect="--time-limit"),
        BadInput("flag: --seeds 100000000", ["run", "--seeds", "100000000", "--store", "{dir}/s.sqlite"],
                 expect="--seeds"),
        BadInput("flag: --client-timeout -1", ["run", "--client-timeout", "-1", "--store", "{dir}/s.sqlite"],
                 expect="client_timeout"),
        BadInput("flag: unknown framework", ["run", "--frameworks", "crewia", "--store", "{dir}/s.sqlite"],
                 expect="did you mean"),
        BadInput("flag: unset --api-key-env", ["run", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                                               "--api-key-env", "COORDLAB_BENCH_UNSET", "--store",
                                               "{dir}/s.sqlite"], expect="COORDLAB_BENCH_UNSET"),
        BadInput("store: foreign SQLite", ["run", "--tasks", "chain:n=1", "--frameworks", "plain", "--seeds", "1",
                                           "--store", "{0}"], {"foreign.sqlite": b""}),
        BadInput("store: not SQLite", ["report", "--store", "{0}", "--out", "{dir}/r"],
                 {"junk.sqlite": b"this is not a database" * 100}),
    ]
    return cases


def _materialise(case: BadInput, folder: Path) -> list[str]:
    paths = []
    for name, content in case.files.items():
        path = folder / name
        if name == "foreign.sqlite":
            with sqlite3.connect(path) as connection:
                connection.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        paths.append(str(path))
    if not paths:
        paths.append(str(folder / "nope.yaml"))
    return [arg.format(*paths, dir=folder) for arg in case.argv]


@dataclass
class InputResult:
    """How one bad input was answered."""

    name: str
    handled: bool
    exit_code: int | None
    seconds: float
    why: str


def try_input(case: BadInput, folder: Path) -> InputResult:
    """Run one bad input's command in a fresh process and judge the answer."""
    folder.mkdir(parents=True)
    argv = _materialise(case, folder)
    expect = case.expect or (argv[argv.index("{0}")] if "{0}" in argv else "")
    expect = expect or next((str(folder / n) for n in case.files), "")
    env = {k: v for k, v in os.environ.items() if k != "COORDLAB_BENCH_UNSET"}
    started = time.monotonic()
    try:
        done = subprocess.run(coordlab(*argv), capture_output=True, text=True, timeout=INPUT_TIME_BOUND_S, env=env)
    except subprocess.TimeoutExpired:
        return InputResult(case.name, False, None, INPUT_TIME_BOUND_S, "hang")
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    if "Traceback" in output:
        return InputResult(case.name, False, done.returncode, seconds, "traceback")
    if done.returncode not in (1, 2):
        return InputResult(case.name, False, done.returncode, seconds, f"exit {done.returncode}: accepted")
    if expect and expect not in output:
        return InputResult(case.name, False, done.returncode, seconds, "no location: " + output.strip()[:120])
    return InputResult(case.name, True, done.returncode, seconds, output.strip().splitlines()[-1][:100])


def overshoot(folder: Path) -> float:
    """Seconds beyond a 2 s limit that hung episodes ran, with 2 workers and a slow-starting worker."""
    plugin = folder / "plugin"
    plugin.mkdir()
    (plugin / "coordlab_bench_plugins.py").write_text(HANG_PLUGIN)
    dist = plugin / "coordlab_bench_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: coordlab-bench-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[coordlab.adapters]\nhang = coordlab_bench_plugins:hang\n"
                                           "slowstart = coordlab_bench_plugins:slowstart\n")
    sys.path.insert(0, str(plugin))
    limit = 2.0
    sweep = Sweep.build(tasks=["chain:n=1", "refund_policy_answer"], frameworks=["hang", "slowstart"],
                        variants=["linear"], profiles=["none"], seeds=3)
    run_sweep(sweep, folder / "overshoot.sqlite", workers=2, time_limit=limit, progress_stream=open(os.devnull, "w"))
    with Store(folder / "overshoot.sqlite") as store:
        walls = [row["wall_ms"] / 1000 for row in store.episodes() if row["status"] == "timeout"]
    return max(walls) - limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the whole process group")
    parser.add_argument("--worker-kills", type=int, default=5, help="SIGKILLs of single workers")
    args = parser.parse_args()
    rng = random.Random(2026)
    with tempfile.TemporaryDirectory(prefix="coordlab-reliability-") as temporary:
        folder = Path(temporary)
        check, progress = group_kills(args.kills, folder, rng)
        print(f"1. process-group SIGKILLs: {args.kills} (recorded after each: {progress}); after resume "
              f"{check.episodes}/{SWEEP_SIZE} episodes, lost {SWEEP_SIZE - check.distinct}, duplicated "
              f"{check.episodes - check.distinct}, orphan events {check.orphan_events}, runs {check.runs}, "
              f"integrity {check.integrity}")
        check, done, first_exit = worker_kills(args.worker_kills, folder, rng)
        print(f"2. worker SIGKILLs: {done}; the runner finished (exit {first_exit}); after resume "
              f"{check.episodes}/{SWEEP_SIZE} episodes, lost {SWEEP_SIZE - check.distinct}, duplicated "
              f"{check.episodes - check.distinct}, integrity {check.integrity}")
        results = [try_input(case, folder / f"input-{i}") for i, case in enumerate(bad_inputs())]
        handled = sum(r.handled for r in results)
        print(f"3. bad inputs: {handled} of {len(results)} handled with a located error "
              f"(slowest {max(r.seconds for r in results):.1f} s)")
        print(tabulate([(r.name, "yes" if r.handled else "NO", r.exit_code, f"{r.seconds:.1f}", r.why)
                        for r in results], headers=["input", "handled", "exit", "s", "answer"]))
        print(f"4. largest time-limit overshoot with 2 workers (2 s limit, an 8 s worker start in the other slot): "
              f"{overshoot(folder):.2f} s")


if __name__ == "__main__":
    main()
