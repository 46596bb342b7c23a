"""The lab proves it can see: every positive control is flagged beside its correct twin.

Each control in :mod:`coordlab.adapters.controls` is ``plain`` with one realistic bug,
installed through the public entry-point group. Its documented sweep (all six suite
tasks, the variant where the bug acts, a stochastic fault profile, fixed seeds) runs the
control and ``plain`` on the same episodes; the lab must flag it with a paired exact test
on success or on harm at p < 0.01, and the counter that matches the bug must move. The
fault draws are common random numbers, so the result is the same on every run.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordlab.reports.stats import mcnemar_exact
from coordlab.runners.runner import run_sweep
from coordlab.runners.sweep import Sweep
from coordlab.tasks.schema import split_task_key


@dataclass(frozen=True)
class ControlSweep:
    """Where a control's bug acts, and the counter that should show it."""

    control: str
    variant: str
    profile: str
    seeds: int
    counter: str


SWEEPS = [
    ControlSweep("control_drop_field", "linear", "answers_20pct", 20, "handoffs_lost"),
    ControlSweep("control_truncate", "linear", "answers_20pct", 20, "handoffs_lost"),
    ControlSweep("control_repeat_step", "linear", "answers_20pct", 20, "framework_retries"),
    ControlSweep("control_last_pending", "delegated", "answers_20pct", 20, "handoffs_lost"),
    ControlSweep("control_sticky_state", "gated", "semantic_10pct", 40, "gate_rejections"),
]


def paired(store: Path, control: str) -> list[tuple[sqlite3.Row, sqlite3.Row]]:
    """(control, plain) episode pairs on the same task, variant, profile and seed."""
    with sqlite3.connect(store) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT * FROM episodes").fetchall()
    by_key = {(r["framework"], split_task_key(r["task"])[0], r["variant"], r["profile"], r["seed"]): r for r in rows}
    return [(row, by_key[("plain", *key[1:])]) for key, row in by_key.items() if key[0] == control]


@pytest.mark.parametrize("sweep", SWEEPS, ids=[s.control for s in SWEEPS])
def test_each_positive_control_is_flagged(sweep: ControlSweep, tmp_path: Path) -> None:
    store = tmp_path / "controls.sqlite"
    run_sweep(Sweep.build(frameworks=["plain", sweep.control], variants=[sweep.variant], profiles=[sweep.profile],
                          seeds=sweep.seeds), store, workers=2)
    pairs = paired(store, sweep.control)
    assert len(pairs) == 6 * sweep.seeds
    success = mcnemar_exact(sum(c["status"] == "success" and p["status"] != "success" for c, p in pairs),
                            sum(c["status"] != "success" and p["status"] == "success" for c, p in pairs))
    harm = mcnemar_exact(sum(c["harmful"] and not p["harmful"] for c, p in pairs),
                         sum(p["harmful"] and not c["harmful"] for c, p in pairs))
    assert min(success, harm) < 0.01, f"{sweep.control} not flagged: success p={success:.3g}, harm p={harm:.3g}"
    moved = sum(c[sweep.counter] for c, _ in pairs) - sum(p[sweep.counter] for _, p in pairs)
    assert moved > 0, f"{sweep.control}: {sweep.counter} did not move"
