"""The baseline sweep's outcomes are pinned: a change that moves them must do so on purpose.

``tests/data/baseline_outcomes.json`` holds every episode of the default sweep (status,
harm, counters, tokens), as ``make baseline`` recorded it (its ``command`` says when). It
held the built-in tools' outcomes unchanged when they became declarations; a change that
means to move outcomes (a fixed adapter, a new simulator behaviour) re-records it from a
fresh ``make baseline`` and says so. The fast test reruns the cells that exercise the most
(the deterministic ``none`` cells, run once each, and the ``realistic_3pct`` seed with the
most faults); the slow one reruns all 3,528.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from coordlab.runners.runner import run_sweep
from coordlab.runners.sweep import Sweep
from coordlab.tasks.schema import split_task_key

PIN = Path(__file__).parents[1] / "data" / "baseline_outcomes.json"


def recorded(store: Path, columns: list[str]) -> dict[str, list[object]]:
    """Each episode of ``store`` keyed as the pin keys it (task release: the content hash is new)."""
    with sqlite3.connect(store) as connection:
        rows = connection.execute(f"SELECT task, framework, variant, profile, seed, {', '.join(columns)} FROM episodes")
        return {f"{split_task_key(r[0])[0]}/{r[1]}/{r[2]}/{r[3]}/{r[4]}": list(r[5:]) for r in rows}


def assert_pinned(store: Path, sweeps: list[Sweep]) -> None:
    pin = json.loads(PIN.read_text())
    for sweep in sweeps:
        run_sweep(sweep, store, workers=2)
    actual = recorded(store, pin["columns"])
    expected = {key: pin["episodes"][key] for key in actual}
    changed = {key: dict(zip(pin["columns"], zip(expected[key], actual[key])))
               for key in actual if actual[key] != expected[key]}
    assert not changed, f"{len(changed)} of {len(actual)} episodes moved, e.g. {next(iter(changed.items()))}"


def test_the_richest_baseline_cells_are_unchanged(tmp_path: Path) -> None:
    assert_pinned(tmp_path / "pin.sqlite", [Sweep.build(profiles=["none"], seeds=[0]),
                                            Sweep.build(profiles=["realistic_3pct"], seeds=[6])])


@pytest.mark.slow
def test_the_whole_baseline_sweep_is_unchanged(tmp_path: Path) -> None:
    assert_pinned(tmp_path / "pin.sqlite", [Sweep.default()])
