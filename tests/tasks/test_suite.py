"""The built-in suite: every task validates, has the promised shape, and its oracle solves it."""

from __future__ import annotations

import pytest

from coordlab.tasks.loader import load_suite, load_suite_task, suite_names, suite_paths, validate_files
from coordlab.tasks.oracle import solve
from coordlab.tasks.scoring import gate_passes, score

REQUIRED = {"appointment_rebooking", "refund_policy_answer", "invoice_reconciliation", "research_brief",
            "incident_triage", "chain"}


def test_every_suite_file_validates() -> None:
    assert validate_files(suite_paths()) == []


def test_suite_holds_the_required_tasks() -> None:
    assert REQUIRED <= set(suite_names())
    assert len(suite_names()) >= 6


@pytest.mark.parametrize("task", load_suite(), ids=lambda t: t.name)
def test_task_shape(task) -> None:
    assert 2 <= len(task.roles) <= 4
    if task.name != "chain":
        assert 3 <= len(task.steps) <= 8
    for step in task.steps:
        if step.mutating:
            assert task.gate_before(step.id) is not None, f"{step.id} is mutating and ungated"


@pytest.mark.parametrize("task", load_suite(), ids=lambda t: t.name)
def test_oracle_solution_scores_as_success_and_passes_every_gate(task) -> None:
    solution = solve(task)
    assert score(task, solution.world, solution).success
    for gate in task.gates:
        assert gate_passes(task, gate.before, solution.values, solution.world)


def test_distinct_coordination_shapes() -> None:
    shapes = {(len(t.roles), len(t.steps), sum(s.mutating for s in t.steps)) for t in load_suite()}
    assert len(shapes) >= 4


@pytest.mark.parametrize("n", [1, 6, 12])
def test_chain_length_is_a_parameter(n: int) -> None:
    task = load_suite_task("chain", {"n": n})
    assert len(task.steps) == n and task.release == f"chain@1[n={n}]"
    assert task.key == f"chain@1+{task.content_hash}[n={n}]"
    assert set(solve(task).final_output) == {f"value_{n}"}


def test_chain_length_out_of_range_is_a_located_error() -> None:
    with pytest.raises(ValueError, match=r"chain.yaml:\d+: params.n: n=13 is outside 1..12"):
        load_suite_task("chain", {"n": 13})


def test_unknown_suite_task_suggests_the_closest() -> None:
    with pytest.raises(KeyError, match="did you mean 'incident_triage'"):
        load_suite_task("incident_triag")


def test_expected_answers_are_the_ones_a_person_would_give() -> None:
    """Spot-check the oracle against answers worked out by hand from the fixtures."""
    assert solve(load_suite_task("appointment_rebooking")).values["slot"] == "2026-11-26T16:30"
    assert solve(load_suite_task("incident_triage")).values["team"] == "team-data"
    entries = solve(load_suite_task("invoice_reconciliation")).values["entries"]
    assert [(e["invoice"], e["amount"]) for e in entries] == [("INV-302", 45.5), ("INV-304", 99.99), ("INV-305", 100.0)]
    refund = solve(load_suite_task("refund_policy_answer")).values
    assert refund["policy_id"] == "POL-7" and "30 days" in refund["quote"]
