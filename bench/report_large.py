"""Report benchmark: time ``build_report`` on a store of 100,000 synthetic episodes (target: < 15 s on 2 cores).

The store has the real schema (created by opening ``coordlab.runners.store.Store`` once)
and is filled directly with ``executemany`` in one transaction, which takes seconds
instead of the hours a real sweep of that size would. Outcomes are drawn so every table
and plot has data: four frameworks, linear and gated, the none/1%/3%/10% semantic
profiles, five suite tasks and the chain at six lengths; success follows (1-p)^n for
linear variants and a gate-repaired version of it for gated ones; a few episodes time out,
error, or end in infra_error.

Run: .venv/bin/python bench/report_large.py [--episodes 100000] [--keep out/large.sqlite]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from coordlab.reports.build import build_report
from coordlab.runners.store import COUNT_COLUMNS, Store

TARGET_SECONDS = 15.0
FRAMEWORKS = {"plain": ("2.54.0", 1.0, 4.0), "crewai": ("1.15.30", 0.93, 38.0),
              "autogen": ("0.7.5", 0.97, 14.0), "langgraph": ("1.2.22", 0.99, 9.0)}
"""name: (version, reliability factor, framework overhead per call in ms)."""
VARIANTS = ("linear", "gated")
PROFILES = {"none": 0.0, "semantic_1pct": 0.01, "semantic_3pct": 0.03, "semantic_10pct": 0.10}
TASKS = {"appointment_rebooking@1": 4, "incident_triage@1": 4, "invoice_reconciliation@1": 4,
         "refund_policy_answer@1": 3, "research_brief@1": 4,
         **{f"chain@1[n={n}]": n for n in (2, 4, 6, 8, 10, 12)}}
COLUMNS = ("run_id", "task", "framework", "framework_version", "variant", "profile", "seed", "status", "harmful",
           "termination", "verdict_json", *COUNT_COLUMNS, "wall_ms", "construction_ms", "execution_ms",
           "simulator_ms", "knobs_json", "notes_json", "error", "finished_at")


def episode_row(rng: random.Random, run_id: str, task: str, steps: int, framework: str, variant: str, profile: str,
                rate: float, seed: int) -> tuple[object, ...]:
    """One synthetic episode whose numbers behave like a real sweep's."""
    version, reliability, overhead = FRAMEWORKS[framework]
    faults = sum(rng.random() < rate for _ in range(steps))
    gated = variant == "gated"
    recovered = sum(rng.random() < 0.9 for _ in range(faults)) if gated else 0
    roll = rng.random()
    if roll < 0.003:
        status = "infra_error"
    elif roll < 0.013:
        status = "timeout"
    elif roll < 0.023:
        status = "error"
    else:
        survives = faults - recovered == 0 and rng.random() < reliability
        status = "success" if survives else "failed_check"
    harmful = int(status == "failed_check" and not task.startswith("chain") and rng.random() < 0.4)
    calls = steps + faults + recovered + (steps if gated else 0)
    prompt = calls * rng.randint(180, 260)
    completion = calls * rng.randint(20, 40)
    simulator_ms = calls * rng.uniform(0.1, 0.4)
    execution_ms = simulator_ms + calls * overhead * rng.uniform(0.7, 1.5)
    construction_ms = rng.uniform(5, 300)
    counts = {"model_calls": calls, "tool_calls": steps, "tool_errors": 0, "handoffs": steps,
              "handoffs_lost": 0, "handoff_model_errors": faults - recovered, "framework_retries": recovered,
              "transport_retries": 0, "gate_rejections": recovered, "faults_injected": faults,
              "faults_recovered": recovered,
              "prompt_tokens": prompt, "completion_tokens": completion}
    notes = json.dumps(["gated: guardrail retry"] if gated and framework == "crewai" else [])
    return (run_id, task, framework, version, variant, profile, seed, status, harmful,
            "completed" if status in ("success", "failed_check") else status, "{}",
            *(counts[c] for c in COUNT_COLUMNS), construction_ms + execution_ms, construction_ms, execution_ms,
            simulator_ms, "{}", notes, None, time.time())


def make_store(path: Path, episodes: int) -> None:
    """Create the schema through ``Store`` and insert ``episodes`` rows in one transaction."""
    with Store(path) as store:
        store.create_run("bench-large", "bench", {"tasks": sorted(TASKS), "frameworks": list(FRAMEWORKS),
                                                  "variants": list(VARIANTS), "profiles": list(PROFILES),
                                                  "live": None}, {"packages": {}, "git_commit": None, "knobs": {}})
    rng = random.Random(20240601)
    cells = [(t, n, f, v, p, r) for t, n in TASKS.items() for f in FRAMEWORKS for v in VARIANTS
             for p, r in PROFILES.items()]
    rows = []
    seed = 0
    while len(rows) < episodes:
        for task, steps, framework, variant, profile, rate in cells:
            if len(rows) == episodes:
                break
            rows.append(episode_row(rng, "bench-large", task, steps, framework, variant, profile, rate, seed))
        seed += 1
    connection = sqlite3.connect(path)
    with connection:
        connection.executemany(f"INSERT INTO episodes ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                               rows)
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="write the store here and keep it (default: a temporary file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = args.keep or Path(folder) / "large.sqlite"
        if path.exists():
            path.unlink()
        started = time.perf_counter()
        make_store(path, args.episodes)
        created = time.perf_counter() - started
        started = time.perf_counter()
        report = build_report(path, per_task=True)
        elapsed = time.perf_counter() - started
    rows = sum(len(t.rows) for t in report.tables)
    print(f"store of {args.episodes:,} synthetic episodes created in {created:.1f} s")
    print(f"build_report (per task): {elapsed:.2f} s for {len(report.tables)} tables ({rows:,} rows) and "
          f"{len(report.figures)} figures  (target < {TARGET_SECONDS:g} s: {'met' if elapsed < TARGET_SECONDS else 'MISSED'})")


if __name__ == "__main__":
    main()
