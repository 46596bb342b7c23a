"""Report statistics, tables and plots against numbers worked out by hand.

(a) the statistics on cases small enough to compute on paper; (b) a golden store written
row by row with chosen statuses, counters and times, whose every table number is derived
below in comments and compared as a value (not as text) to 1e-9; (c) the errors a user
can meet; (d) plots exist exactly when their data does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from coordlab.reports.build import PriceTableError, ReportError, build_report
from coordlab.reports.data import load_prices
from coordlab.reports.model import Report, Table
from coordlab.reports.stats import mcnemar_exact, pass_hat_k, percentile, wilson_interval
from coordlab.runners.store import COUNT_COLUMNS, Store

TOL = 1e-9

# -- (a) statistics by hand ----------------------------------------------------------------------


def test_wilson_interval_by_hand() -> None:
    # 5 of 10 with z = 2: p = 0.5, z²/n = 0.4, denominator 1.4,
    # center = (0.5 + 4/20) / 1.4 = 0.5, half = (2 / 1.4) * sqrt(0.25/10 + 4/400) = sqrt(0.035) / 0.7.
    low, high = wilson_interval(5, 10, z=2)
    assert low == pytest.approx(0.5 - math.sqrt(0.035) / 0.7, abs=TOL)
    assert high == pytest.approx(0.5 + math.sqrt(0.035) / 0.7, abs=TOL)
    # 0 of 10 with z = 2: center = 0.2/1.4 = 1/7 and half = (2/1.4) * sqrt(4/400) = 1/7, so [0, 2/7];
    # the lower bound is exactly 0, not a rounding error below it.
    assert wilson_interval(0, 10, z=2) == (0.0, pytest.approx(2 / 7, abs=TOL))
    assert wilson_interval(10, 10, z=2) == (pytest.approx(5 / 7, abs=TOL), 1.0)
    # 6 of 8 at the default 95% z = 1.959963984540054, from the other form of Wilson's bounds,
    # the roots of (p̂ - π)² = z² π (1 - π) / n:
    #   π = (2 n p̂ + z² ± z sqrt(z² + 4 n p̂ (1 - p̂))) / (2 (n + z²))
    #     = (12 + 3.841458820694124 ± 1.959963984540054 · sqrt(3.841458820694124 + 6)) / (2 · 11.841458820694124)
    #     = (15.841458820694124 ∓ 6.148... ) / 23.682917641388248  -> 0.40927543..., 0.92852078...
    low, high = wilson_interval(6, 8)
    assert (low, high) == (pytest.approx(0.4092754303101689, abs=TOL), pytest.approx(0.928520787247891, abs=TOL))
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_pass_hat_k_by_hand() -> None:
    # C(3,2)/C(4,2) = 3/6; C(5,3)/C(10,3) = 10/120; C(4,4)/C(4,4) = 1; C(1,2) = 0.
    assert pass_hat_k(3, 4, 2) == pytest.approx(0.5, abs=TOL)
    assert pass_hat_k(5, 10, 3) == pytest.approx(1 / 12, abs=TOL)
    assert pass_hat_k(4, 4, 4) == 1.0
    assert pass_hat_k(1, 4, 2) == 0.0
    # pass^1 is the plain success rate.
    assert pass_hat_k(7, 10, 1) == pytest.approx(0.7, abs=TOL)
    with pytest.raises(ValueError):
        pass_hat_k(2, 3, 4)


def test_mcnemar_exact_by_hand() -> None:
    # b = 1, c = 5: n = 6, lower tail P(X <= 1) = (C(6,0) + C(6,1)) / 2^6 = 7/64; two-sided 14/64.
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64, abs=TOL)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64, abs=TOL)
    # b = 0, c = 6: 2 · 1/64.
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64, abs=TOL)
    # b = c = 3: 2 · (1 + 6 + 15 + 20)/64 = 84/64 > 1, capped at 1; no discordant pairs: 1.
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    # Large counts stay exact and fast: b = 400, c = 600 is far beyond chance.
    assert 0 < mcnemar_exact(400, 600) < 1e-9


def test_percentile_interpolates_between_order_statistics() -> None:
    # [100, 150, 200, 250, 300, 350, 400, 1000]: p50 at position 3.5 -> (250 + 300)/2;
    # p95 at position 7 · 0.95 = 6.65 -> 400 + 0.65 · 600 = 790.
    values = [400, 100, 1000, 150, 300, 200, 350, 250]
    assert percentile(values, 50) == pytest.approx(275, abs=TOL)
    assert percentile(values, 95) == pytest.approx(790, abs=TOL)
    assert percentile([7.0], 95) == 7.0


# -- (b) the golden store --------------------------------------------------------------------------

T1, T2 = "chain@1[n=3]", "refund_policy_answer@1"
PROFILE = "semantic_10pct"
S, F, H, E, TO = "success", "failed_check", "harmful", "error", "timeout"

# Per (framework, variant, task): the outcome of seeds 0..3 (H is a harmful failed_check).
OUTCOMES = {
    ("plain", "linear", T1): [S, S, F, S], ("plain", "linear", T2): [S, H, S, S],
    ("plain", "gated", T1): [S, S, S, S], ("plain", "gated", T2): [S, S, S, TO],
    ("langgraph", "linear", T1): [F, S, E, S], ("langgraph", "linear", T2): [S, H, F, S],
    ("langgraph", "gated", T1): [S, S, S, S], ("langgraph", "gated", T2): [S, S, F, S],
}
# Default counters: T1 3 calls, T2 4 calls; prompt/completion tokens per call 100/10 (T1, plain),
# 125/15 (T2, plain), 120/10 (T1, langgraph), 150/15 (T2, langgraph); 3 handoffs every episode.
BASE = {("plain", T1): (3, 300, 30), ("plain", T2): (4, 500, 60),
        ("langgraph", T1): (3, 360, 30), ("langgraph", T2): (4, 600, 60)}
# Deviations from the defaults, per (framework, variant, task, seed).
CHANGES: dict[tuple[str, str, str, int], dict[str, int]] = {
    ("plain", "linear", T1, 2): {"faults_injected": 1, "handoffs_lost": 1},
    ("plain", "linear", T2, 1): {"faults_injected": 1, "handoff_model_errors": 1},
    ("plain", "gated", T1, 1): {"faults_injected": 1, "faults_recovered": 1, "gate_rejections": 1,
                                "framework_retries": 1, "model_calls": 4, "prompt_tokens": 400,
                                "completion_tokens": 40},
    ("plain", "gated", T2, 3): {"model_calls": 2, "prompt_tokens": 250, "completion_tokens": 30,
                                "transport_retries": 2},
    ("langgraph", "linear", T1, 0): {"faults_injected": 1, "handoffs_lost": 1},
    ("langgraph", "linear", T1, 2): {"model_calls": 1, "prompt_tokens": 120, "completion_tokens": 10},
    ("langgraph", "linear", T2, 1): {"faults_injected": 1, "handoffs_lost": 1},
    ("langgraph", "linear", T2, 2): {"faults_injected": 1, "handoff_model_errors": 1},
    ("langgraph", "gated", T1, 2): {"faults_injected": 1, "faults_recovered": 1, "gate_rejections": 1,
                                    "framework_retries": 1, "model_calls": 4, "prompt_tokens": 480,
                                    "completion_tokens": 40},
    ("langgraph", "gated", T2, 2): {"faults_injected": 2, "faults_recovered": 1, "gate_rejections": 2,
                                    "framework_retries": 1, "model_calls": 5, "prompt_tokens": 750,
                                    "completion_tokens": 75},
}
# Framework overhead per model call (ms) of seeds 0..3: execution = simulator + overhead · calls.
OVERHEAD = {("plain", "linear", T1): [1, 2, 3, 10], ("plain", "linear", T2): [2, 2, 2, 2],
            ("plain", "gated", T1): [2, 2, 2, 2], ("plain", "gated", T2): [2, 2, 2, 2],
            ("langgraph", "linear", T1): [5, 5, 5, 5], ("langgraph", "linear", T2): [3, 3, 3, 3],
            ("langgraph", "gated", T1): [4, 4, 4, 4], ("langgraph", "gated", T2): [6, 6, 6, 6]}
# Wall time of seeds 0..3: plain linear as listed, gated +50 ms, langgraph twice plain.
WALL = {T1: [100, 200, 300, 400], T2: [150, 250, 350, 1000]}
VERSIONS = {"plain": "2.54.0", "langgraph": "1.2.22"}
UNFAITHFUL = "variant not faithful: test adapter routes the gate through its own node"


def episode_row(task: str, framework: str, variant: str, profile: str, seed: int, status: str, *,
                harmful: bool = False, counts: dict[str, int] | None = None, wall_ms: float = 100.0,
                execution_ms: float = 50.0, simulator_ms: float = 1.0, notes: list[str] | None = None,
                version: str | None = None) -> dict[str, Any]:
    """A row for ``Store.record_episode`` with every column the schema requires."""
    values = dict.fromkeys(COUNT_COLUMNS, 0) | (counts or {})
    return {"task": task, "framework": framework, "framework_version": version or VERSIONS.get(framework, "1.0"),
            "variant": variant, "profile": profile, "seed": seed, "status": status, "harmful": int(harmful),
            "termination": "completed", "verdict_json": "{}", **values, "wall_ms": wall_ms,
            "construction_ms": wall_ms - execution_ms, "execution_ms": execution_ms, "simulator_ms": simulator_ms,
            "knobs_json": "{}", "notes_json": json.dumps(notes or []), "error": None, "finished_at": 0.0}


def golden_rows() -> list[dict[str, Any]]:
    rows = []
    for (framework, variant, task), outcomes in OUTCOMES.items():
        for seed, outcome in enumerate(outcomes):
            calls, prompt, completion = BASE[(framework, task)]
            counts = {"model_calls": calls, "prompt_tokens": prompt, "completion_tokens": completion, "handoffs": 3}
            counts |= CHANGES.get((framework, variant, task, seed), {})
            simulator = 0.5 * counts["model_calls"]
            execution = simulator + OVERHEAD[(framework, variant, task)][seed] * counts["model_calls"]
            wall = (WALL[task][seed] + (50 if variant == "gated" else 0)) * (2 if framework == "langgraph" else 1)
            status = F if outcome == H else outcome
            notes = [UNFAITHFUL] if (framework, variant) == ("langgraph", "gated") else []
            rows.append(episode_row(task, framework, variant, PROFILE, seed, status, harmful=outcome == H,
                                    counts=counts, wall_ms=wall, execution_ms=execution, simulator_ms=simulator,
                                    notes=notes))
    # An infra error (the lab failed): excluded from every score, so langgraph/gated/T1 keeps n = 4.
    rows.append(episode_row(T1, "langgraph", "gated", PROFILE, 4, "infra_error"))
    return rows


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    """$1 per million prompt tokens and $2 per million completion tokens: costs easy to check by hand."""
    path = tmp_path / "prices.yaml"
    path.write_text("currency: USD\nmodels:\n  coordlab-sim: {input_per_mtok: 1.0, output_per_mtok: 2.0}\n")
    return path


def write_store(path: Path, rows: list[dict[str, Any]], run_id: str = "run-golden",
                spec: dict[str, Any] | None = None) -> Path:
    with Store(path) as store:
        store.create_run(run_id, f"identity-{run_id}", spec or {"tasks": [T1, T2], "live": None},
                         {"packages": {"coordlab": "0.1.0"}, "git_commit": "0123abc", "knobs": {"gate_retries": 2}})
        for row in rows:
            store.record_episode(run_id, row, [])
    return path


@pytest.fixture
def golden(tmp_path: Path, prices: Path) -> Report:
    return build_report(write_store(tmp_path / "golden.sqlite", golden_rows()), prices_path=prices)


def table(report: Report, key: str) -> Table:
    found = [t for t in report.tables if t.key == key]
    assert found, f"no table {key!r} among {[t.key for t in report.tables]}"
    return found[0]


def check(report: Report, key: str, label_columns: list[str], expected: dict[tuple[str, ...], dict[str, Any]]) -> None:
    """Every expected number equals the cell's value (to 1e-9); the rows are exactly the expected ones."""
    rows = {tuple(row[c] for c in label_columns): row for row in table(report, key).values()}
    assert set(rows) == set(expected), f"{key}: rows {sorted(rows)}"
    for label, numbers in expected.items():
        for column, value in numbers.items():
            actual = rows[label][column]
            if value is None or isinstance(value, str):
                assert actual == value, f"{key} {label} {column}: {actual!r} != {value!r}"
            else:
                assert actual == pytest.approx(value, abs=TOL), f"{key} {label} {column}: {actual!r} != {value!r}"


ROW = ["framework", "variant", "profile"]
PL, PG = ("plain", "linear", PROFILE), ("plain", "gated", PROFILE)
LL, LG = ("langgraph", "linear", PROFILE), ("langgraph", "gated", PROFILE)


def test_golden_success(golden: Report) -> None:
    # plain/linear: T1 S S F S + T2 S H S S = 6 of 8, 1 harmful, 2 failed checks.
    # plain/gated: 4 + 3 of 8; the T2 timeout is a failure.
    # langgraph/linear: T1 F S E S + T2 S H F S = 4 of 8, 3 failed checks (1 harmful), 1 error.
    # langgraph/gated: 4 + 3 of 8 (the infra error is not an episode here).
    # The interval is task-clustered: Wilson's at N / DEFF episodes, DEFF = CR1 variance / binomial variance (>= 1).
    # Equal rates in both tasks (plain/linear 3/4 + 3/4, langgraph/linear 2/4 + 2/4): CR1 variance 0, DEFF 1, so
    # Wilson's over 8 episodes by the quadratic form (see test_wilson_interval_by_hand): 6/8 -> 0.40928, 0.92852;
    # 4/8 -> 0.21522, 0.78478.
    # 4/4 + 3/4 (both gated rows): p = 7/8, binomial variance (7/8)(1/8)/8 = 7/512; CR1 variance
    # G/(G-1) · Σ(s_g - n_g p)² / N² = 2 · (0.5² + 0.5²) / 64 = 8/512; DEFF = 8/7, so 7 effective episodes with
    # 6.125 successes. Wilson at p = 0.875, n = 7: z² = 3.8414588, center = (0.875 + z²/14) / (1 + z²/7)
    # = 1.1493899 / 1.5487798 = 0.7421261; half = (z / 1.5487798) · sqrt(0.875 · 0.125 / 7 + z² / 196)
    # = 1.2654830 · sqrt(0.015625 + 0.0195993) = 1.2654830 · 0.1876813 = 0.2375114 -> 0.50462, 0.97963.
    w68, w48 = (0.4092754303101689, 0.928520787247891), (0.21521606221387757, 0.7847839377861224)
    z2 = 1.959963984540054 ** 2
    center, half = (0.875 + z2 / 14) / (1 + z2 / 7), 1.959963984540054 / (1 + z2 / 7) * math.sqrt(
        0.875 * 0.125 / 7 + z2 / 196)
    w78 = (center - half, center + half)
    assert w78 == (pytest.approx(0.50462, abs=1e-5), pytest.approx(0.97963, abs=1e-5))
    low, high = "95% CI (task-clustered) low", "95% CI (task-clustered) high"
    check(golden, "success", ROW, {
        PL: {"episodes": 8, "successes": 6, "success rate": 0.75, low: w68[0], high: w68[1],
             "harmful failures": 1, "harmful rate": 0.125, "failed check": 2, "error": 0, "timeout": 0},
        PG: {"episodes": 8, "successes": 7, "success rate": 0.875, low: w78[0], high: w78[1],
             "harmful failures": 0, "harmful rate": 0.0, "failed check": 0, "error": 0, "timeout": 1},
        LL: {"episodes": 8, "successes": 4, "success rate": 0.5, low: w48[0], high: w48[1],
             "harmful failures": 1, "harmful rate": 0.125, "failed check": 3, "error": 1, "timeout": 0},
        LG: {"episodes": 8, "successes": 7, "success rate": 0.875, low: w78[0], high: w78[1],
             "harmful failures": 0, "harmful rate": 0.0, "failed check": 1, "error": 0, "timeout": 0},
    })
    cell = table(golden, "success").rows[0][ROW.__len__() + 2]
    assert (cell.value, cell.text) == (0.75, "75.0%")  # the value and its display are kept apart


def test_golden_pass_k(golden: Report) -> None:
    # K defaults to the largest seed count of a task group: 4. Each task's pass^k = C(c,k)/C(4,k), C(4,k) = 4,6,4,1:
    # c=4: 1, 1, 1, 1   c=3: 3/4, 3/6, 1/4, 0   c=2: 2/4, 1/6, 0, 0
    # plain/linear: T1 c=3, T2 c=3 -> mean .75 .5 .25 0
    # plain/gated: T1 c=4, T2 c=3 -> .875 .75 .625 .5 ; langgraph/gated the same (infra error excluded: n stays 4)
    # langgraph/linear: T1 c=2, T2 c=2 -> .5 1/6 0 0
    columns = ["pass^1", "pass^2", "pass^3", "pass^4"]
    expected = {PL: [0.75, 0.5, 0.25, 0.0], PG: [0.875, 0.75, 0.625, 0.5], LL: [0.5, 1 / 6, 0.0, 0.0],
                LG: [0.875, 0.75, 0.625, 0.5]}
    check(golden, "pass_k", ROW, {k: {"tasks": 2, "episodes": 8, **dict(zip(columns, v))} for k, v in expected.items()})
    assert table(golden, "pass_k").columns[-1] == "pass^4"
    by_task = {(r["framework"], r["variant"], r["task"]): r for r in table(golden, "pass_k_by_task").values()}
    assert by_task[("langgraph", "linear", T1)]["seeds"] == 4
    assert by_task[("langgraph", "linear", T1)]["pass^2"] == pytest.approx(1 / 6, abs=TOL)
    assert by_task[("plain", "gated", T1)]["pass^4"] == pytest.approx(1.0, abs=TOL)


def test_golden_coordination_and_faults(golden: Report) -> None:
    # Per episode over 8 episodes: handoffs 3 each; plain/linear 1 lost, 1 model error -> .125 each;
    # plain/gated retries 1 -> .125, transport retries 2 -> .25, gate rejections 1 -> .125;
    # langgraph/linear 2 lost -> .25, 1 model error -> .125; langgraph/gated retries 2 -> .25, rejections 3 -> .375.
    check(golden, "coordination", ROW, {
        PL: {"handoffs / ep": 3, "handoffs lost / ep": 0.125, "handoff model errors / ep": 0.125,
             "framework retries / ep": 0, "transport retries / ep": 0, "gate rejections / ep": 0},
        PG: {"handoffs lost / ep": 0, "handoff model errors / ep": 0, "framework retries / ep": 0.125,
             "transport retries / ep": 0.25, "gate rejections / ep": 0.125},
        LL: {"handoffs lost / ep": 0.25, "handoff model errors / ep": 0.125, "framework retries / ep": 0,
             "gate rejections / ep": 0},
        LG: {"handoffs lost / ep": 0, "framework retries / ep": 0.25, "transport retries / ep": 0,
             "gate rejections / ep": 0.375},
    })
    # Faults: plain/linear 2 injected, 0 recovered; plain/gated 1 and 1; langgraph/linear 3 and 0; langgraph/gated 3, 2.
    check(golden, "faults", ROW, {
        PL: {"faults injected": 2, "faults recovered": 0, "recovered share": 0.0, "injected / ep": 0.25},
        PG: {"faults injected": 1, "faults recovered": 1, "recovered share": 1.0, "injected / ep": 0.125},
        LL: {"faults injected": 3, "faults recovered": 0, "recovered share": 0.0, "injected / ep": 0.375},
        LG: {"faults injected": 3, "faults recovered": 2, "recovered share": 2 / 3, "injected / ep": 0.375},
    })
    assert table(golden, "faults").title == "Faults injected and recovered"


def test_golden_usage_and_cost(golden: Report) -> None:
    # plain/linear: T1 4 x (3 calls, 300, 30), T2 4 x (4, 500, 60) -> calls 28, prompt 3200, completion 360.
    #   cost at $1/$2 per million = (3200 + 2·360)/1e6 = 0.00392; / 8 episodes; / 6 successes.
    # plain/gated: T1 3 x (3,300,30) + (4,400,40); T2 3 x (4,500,60) + (2,250,30) -> 27, 3050, 340; cost 0.00373.
    # langgraph/linear: T1 3 x (3,360,30) + (1,120,10); T2 4 x (4,600,60) -> 26, 3600, 340; cost 0.00428.
    # langgraph/gated: T1 3 x (3,360,30) + (4,480,40); T2 3 x (4,600,60) + (5,750,75) -> 30, 4110, 385; cost 0.00488.
    check(golden, "usage", ROW, {
        PL: {"episodes": 8, "model calls / ep": 3.5, "prompt tokens / ep": 400, "completion tokens / ep": 45,
             "prompt tokens / call": 3200 / 28, "cost / ep": 0.00392 / 8, "cost / successful ep": 0.00392 / 6},
        PG: {"model calls / ep": 27 / 8, "prompt tokens / ep": 3050 / 8, "completion tokens / ep": 340 / 8,
             "prompt tokens / call": 3050 / 27, "cost / ep": 0.00373 / 8, "cost / successful ep": 0.00373 / 7},
        LL: {"model calls / ep": 26 / 8, "prompt tokens / ep": 450, "completion tokens / ep": 42.5,
             "prompt tokens / call": 3600 / 26, "cost / ep": 0.00428 / 8, "cost / successful ep": 0.00428 / 4},
        LG: {"model calls / ep": 30 / 8, "prompt tokens / ep": 4110 / 8, "completion tokens / ep": 385 / 8,
             "prompt tokens / call": 137.0, "cost / ep": 0.00488 / 8, "cost / successful ep": 0.00488 / 7},
    })


def test_golden_latency_and_overhead(golden: Report) -> None:
    # plain/linear walls [100,200,300,400,150,250,350,1000]: p50 275, p95 790 (see the percentile test);
    # gated adds 50 to each: 325, 840; langgraph doubles plain: 550, 1580 and 650, 1680.
    check(golden, "latency", ROW, {PL: {"p50 wall (ms)": 275, "p95 wall (ms)": 790},
                                   PG: {"p50 wall (ms)": 325, "p95 wall (ms)": 840},
                                   LL: {"p50 wall (ms)": 550, "p95 wall (ms)": 1580},
                                   LG: {"p50 wall (ms)": 650, "p95 wall (ms)": 1680}})
    # Overhead per call: plain/linear [1,2,3,10] (T1, median 2.5) and [2,2,2,2] (T2, median 2); all 8: median 2.
    # langgraph/linear T1 5 (ratio 5/2.5 = 2), T2 3 (ratio 3/2 = 1.5): median of all 8 = 4, ratio sqrt(2·1.5).
    # plain/gated 2 everywhere; langgraph/gated T1 4 (ratio 2), T2 6 (ratio 3): median 5, ratio sqrt(6).
    check(golden, "overhead", ROW, {
        PL: {"episodes": 8, "median overhead / call (ms)": 2.0, "ratio to plain": 1.0, "tasks compared": 2},
        PG: {"episodes": 8, "median overhead / call (ms)": 2.0, "ratio to plain": 1.0, "tasks compared": 2},
        LL: {"episodes": 8, "median overhead / call (ms)": 4.0, "ratio to plain": math.sqrt(3.0), "tasks compared": 2},
        LG: {"episodes": 8, "median overhead / call (ms)": 5.0, "ratio to plain": math.sqrt(6.0), "tasks compared": 2},
    })


def test_golden_paired(golden: Report) -> None:
    # linear, by (task, seed): T1 plain S S F S vs langgraph F S E S -> A-only, both, neither, both;
    # T2 plain S F S S vs langgraph S F F S -> both, neither, A-only, both. Both 4, only A 2, only B 0, neither 2.
    # McNemar(2, 0) = 2 · C(2,0)/2^2 = 0.5.
    # gated: T1 all both; T2 plain S S S T vs langgraph S S F S -> both, both, A-only, B-only.
    # McNemar(1, 1) = min(1, 2 · (C(2,0) + C(2,1))/4) = 1.
    check(golden, "paired", ["variant", "profile", "framework A", "framework B"], {
        ("linear", PROFILE, "plain", "langgraph"): {"pairs": 8, "both succeed": 4, "only A": 2, "only B": 0,
                                                   "neither": 2, "A success": 0.75, "B success": 0.5,
                                                   "difference": 0.25, "McNemar p": 0.5,
                                                   # both harmed on T2 seed 1: no discordant harm
                                                   "only A harmful": 0, "only B harmful": 0, "harm McNemar p": 1.0},
        ("gated", PROFILE, "plain", "langgraph"): {"pairs": 8, "both succeed": 6, "only A": 1, "only B": 1,
                                                  "neither": 0, "A success": 0.875, "B success": 0.875,
                                                  "difference": 0.0, "McNemar p": 1.0,
                                                  "only A harmful": 0, "only B harmful": 0, "harm McNemar p": 1.0},
    })


def test_the_paired_table_tests_harm_beside_success() -> None:
    """A retry that rescues answers and repeats side effects: more successes and more harm, seen on both tests."""
    from dataclasses import replace

    from coordlab.reports.data import EpisodeRecord
    from coordlab.reports.tables import paired_table

    base = EpisodeRecord(0, "r", "t@1", "plain", "1", "linear", PROFILE, 0, S, False, *([0] * len(COUNT_COLUMNS)),
                         100.0, 100.0, 10.0, "plain", "m", False)
    records = []
    for seed in range(10):  # plain fails softly on every seed; the "retrying" twin succeeds on 3 and harms on 7
        records.append(replace(base, seed=seed, status=F))
        records.append(replace(base, seed=seed, framework="retrying", system="retrying",
                               status=S if seed < 3 else F, harmful=seed >= 3))
    row = paired_table(records).values()[0]
    assert (row["only A"], row["only B"], row["only A harmful"], row["only B harmful"]) == (0, 3, 0, 7)
    assert row["McNemar p"] == 0.25 and row["harm McNemar p"] == 2 / 2**7


def test_golden_notes_provenance_and_options(golden: Report, tmp_path: Path, prices: Path) -> None:
    assert any("1 episode(s) ended in infra_error" in note and "langgraph/gated 1" in note for note in golden.notes)
    assert any(note.startswith("langgraph/gated: " + UNFAITHFUL) and "(8 episode(s))" in note for note in golden.notes)
    assert any("4 characters a token" in note for note in golden.notes)
    provenance = golden.provenance
    assert [run["run_id"] for run in provenance["runs"]] == ["run-golden"]
    assert provenance["git_commit"] == "0123abc" and provenance["knobs"] == {"gate_retries": 2}
    assert provenance["packages"] == {"coordlab": "0.1.0"} and provenance["store"].endswith("golden.sqlite")
    assert golden.provenance["episodes"] == {"recorded": 33, "scored": 32, "infra_errors": 1, "superseded": 0,
                                             "deterministic_replicates": 0}
    keys = [t.key for t in golden.tables]
    # No fault events are recorded in the golden store, so the fault exposure table has no rows and is left out.
    assert keys == ["success", "verdict", "failure_modes", "pass_k", "coordination", "faults", "usage", "latency",
                    "overhead", "paired", "compounding", "pass_k_by_task"]
    compounding = table(golden, "compounding").values()  # T1 is chain n=3 at 10% per step: 0.9^3 = 0.729
    assert {row["framework"] for row in compounding} == {"plain", "langgraph"}
    assert all(row["n"] == 3 and row["(1-p)^n"] == pytest.approx(0.729, abs=1e-9) for row in compounding)
    store = tmp_path / "golden.sqlite"
    detailed = build_report(store, per_task=True, prices_path=prices, max_k=2)
    assert table(detailed, "pass_k").columns[-2:] == ["pass^1", "pass^2"]
    by_task = {(r["framework"], r["variant"], r["task"]): r for r in table(detailed, "overhead_by_task").values()}
    assert by_task[("langgraph", "linear", T1)]["ratio to plain"] == pytest.approx(2.0, abs=TOL)
    assert by_task[("langgraph", "linear", T1)]["plain median (ms)"] == pytest.approx(2.5, abs=TOL)
    success = {(r["framework"], r["variant"], r["task"]): r for r in table(detailed, "success_by_task").values()}
    assert success[("langgraph", "linear", T1)]["success rate"] == pytest.approx(0.5, abs=TOL)
    with pytest.raises(ReportError, match="max_k"):
        build_report(store, prices_path=prices, max_k=0)


def test_a_newer_episode_of_the_same_key_replaces_the_older_one(tmp_path: Path, prices: Path) -> None:
    path = tmp_path / "rerun.sqlite"
    write_store(path, [episode_row(T1, "plain", "linear", PROFILE, 0, F)], run_id="first")
    write_store(path, [episode_row(T1, "plain", "linear", PROFILE, 0, S)], run_id="second")
    report = build_report(path, prices_path=prices)
    assert table(report, "success").values()[0]["successes"] == 1
    assert table(report, "success").values()[0]["episodes"] == 1
    assert any("1 recorded episode(s) were superseded" in note for note in report.notes)


def test_live_runs_are_counted_from_the_proxy_log_but_not_costed_at_an_unknown_price_nor_judged_on_handoffs(
        tmp_path: Path, prices: Path) -> None:
    path = write_store(tmp_path / "live.sqlite", [episode_row(T2, "plain", "linear", "none", 0, S)],
                       spec={"live": {"base_url": "http://127.0.0.1:1/v1", "model": "local-model"}})
    report = build_report(path, prices_path=prices)
    assert table(report, "success").values()[0]["successes"] == 1
    usage = table(report, "usage").values()[0]
    assert usage["episodes"] == 1 and usage["model calls / ep"] is not None  # the fault proxy logged its calls
    assert usage["cost / successful ep"] is None  # local-model is in no price table
    coordination = table(report, "coordination").values()[0]
    assert coordination["handoffs lost / ep"] is None and coordination["handoff model errors / ep"] is None
    assert any("live endpoint behind the fault proxy" in note for note in report.notes)


# -- (c) errors a user can meet ---------------------------------------------------------------------


def test_missing_store_raises_a_report_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no store at .*missing.sqlite: run `coordlab run"):
        build_report(tmp_path / "missing.sqlite")


def test_a_file_that_is_not_a_store_raises_a_report_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(ReportError, match="not a coordlab store"):
        build_report(path)


def test_empty_store_raises_a_report_error(tmp_path: Path) -> None:
    path = write_store(tmp_path / "empty.sqlite", [])
    with pytest.raises(ReportError, match=r"no episodes recorded yet: run `coordlab run` first"):
        build_report(path)


def test_a_store_of_infra_errors_only_raises_a_report_error(tmp_path: Path) -> None:
    rows = [episode_row(T1, "plain", "linear", PROFILE, seed, "infra_error") for seed in range(3)]
    path = write_store(tmp_path / "infra.sqlite", rows)
    with pytest.raises(ReportError, match="all 3 recorded episode\\(s\\) ended in infra_error"):
        build_report(path)


@pytest.mark.parametrize("text, message", [
    ("models: [a, b]\n", "models: expected a mapping"),
    ("models:\n  coordlab-sim: {input_per_mtok: 0.1}\n", "models.coordlab-sim.output_per_mtok: expected a non-negative"),
    ("models:\n  coordlab-sim: {input_per_mtok: cheap, output_per_mtok: 1}\n", "models.coordlab-sim.input_per_mtok"),
    ("models:\n  coordlab-sim: {input_per_mtok: 1, output_per_mtok: 1, outptu: 2}\n", "unknown field 'outptu'"),
    ("currency: USD\nmodel: {}\n", "unknown field 'model'"),
    ("models: {a: 1\n", "invalid YAML"),
])
def test_a_malformed_price_table_names_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad_prices.yaml"
    path.write_text(text)
    with pytest.raises(PriceTableError, match=message) as caught:
        load_prices(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ReportError)  # the CLI prints it like every other report error


def test_the_built_in_price_table_prices_the_simulated_model() -> None:
    table_ = load_prices()
    price = table_.price("coordlab-sim")
    assert price is not None and price.cost(1_000_000, 1_000_000) == pytest.approx(0.15 + 0.60, abs=TOL)
    assert "llustrative" in table_.note


# -- (d) plots exist exactly when their data does -------------------------------------------------


def figure_keys(report: Report) -> set[str]:
    for figure in report.figures:
        assert figure.png.startswith(b"\x89PNG\r\n\x1a\n") and "<svg" in figure.svg and figure.title
    return {figure.key for figure in report.figures}


def test_golden_store_gets_only_the_plots_its_data_supports(golden: Report) -> None:
    # One fault profile (no rate axis), one chain length (no length axis); linear and gated (gate plot),
    # priced model (cost plot).
    assert figure_keys(golden) == {"gate_effect", "cost_vs_reliability"}


def test_no_gate_or_cost_plot_without_gated_episodes_or_prices(tmp_path: Path) -> None:
    rows = [episode_row(T1, "plain", "linear", PROFILE, seed, S, counts={"model_calls": 3}) for seed in range(3)]
    path = write_store(tmp_path / "linear.sqlite", rows)
    unpriced = tmp_path / "other_prices.yaml"
    unpriced.write_text("models:\n  some-other-model: {input_per_mtok: 1, output_per_mtok: 1}\n")
    report = build_report(path, prices_path=unpriced)
    assert figure_keys(report) == set()
    assert table(report, "usage").values()[0]["cost / successful ep"] is None
    assert "No price for coordlab-sim" in table(report, "usage").note


def test_rate_and_length_plots_appear_with_two_rates_and_two_lengths(tmp_path: Path, prices: Path) -> None:
    rows = []
    for n in (2, 4):
        for profile in ("none", "semantic_3pct"):
            for seed in range(4):
                status = S if profile == "none" or seed < 4 - n // 2 else F
                rows.append(episode_row(f"chain@1[n={n}]", "plain", "linear", profile, seed, status,
                                        counts={"model_calls": n}))
    report = build_report(write_store(tmp_path / "chain.sqlite", rows), prices_path=prices)
    assert figure_keys(report) == {"success_vs_fault_rate", "success_vs_length", "cost_vs_reliability"}


def test_compounding_table_against_the_analytical_curve(tmp_path: Path, prices: Path) -> None:
    # chain n=2 at 10% per step: (0.9)^2 = 0.81. 8 of 10 succeed -> Wilson 95% [0.490, 0.943] holds 0.81.
    # chain n=6: 0.9^6 = 0.531441. 10 of 10 succeed -> Wilson [0.722, 1.0] excludes it: a departure.
    rows = [episode_row("chain@1[n=2]", "plain", "linear", "semantic_10pct", seed, "success" if seed < 8 else F)
            for seed in range(10)]
    rows += [episode_row("chain@1[n=6]", "plain", "linear", "semantic_10pct", seed, "success") for seed in range(10)]
    report = build_report(write_store(tmp_path / "chain.sqlite", rows), prices_path=prices)
    values = {row["n"]: row for row in table(report, "compounding").values()}
    assert values[2]["(1-p)^n"] == pytest.approx(0.81, abs=1e-9)
    assert values[2]["success rate"] == pytest.approx(0.8, abs=1e-9) and values[2]["within CI"] is True
    assert values[6]["(1-p)^n"] == pytest.approx(0.9 ** 6, abs=1e-9) and values[6]["within CI"] is False
    low, high = wilson_interval(8, 10)
    assert (values[2]["95% CI low"], values[2]["95% CI high"]) == (pytest.approx(low, abs=1e-9),
                                                                    pytest.approx(high, abs=1e-9))
