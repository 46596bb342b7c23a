"""What every framework's human in the loop does alike (each framework's own idiom is tested beside it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from review_support import PIPELINES, calls, run_reviewed, seed_where

from coordlab.adapters.base import Knobs, Termination, Variant
from coordlab.runners.durability.review import ReviewKind
from coordlab.runners.harness import Status
from coordlab.runners.simulator import Simulator

pytestmark = pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")


@pytest.mark.parametrize("framework", ["autogen", "langgraph", "crewai"])
def test_delegated_does_not_ask_and_says_so(simulator: Simulator, tmp_path: Path, framework: str) -> None:
    """A routing model decides the order of the work: no framework asks, each says so, the changes show unapproved."""
    result = run_reviewed(framework, simulator, tmp_path, Variant.DELEGATED, seed_where(ReviewKind.APPROVE))
    assert result.status is Status.SUCCESS, result.error
    assert result.reviews == {"approve": 0, "reject": 0, "late": 0, "unapproved": 2}  # measured, not hidden
    assert any(note.startswith("delegated: the approver is not asked") for note in result.notes)


@pytest.mark.parametrize("framework", ["autogen", "langgraph"])  # CrewAI's feedback cannot refuse: its own test
def test_rejections_past_the_bound_stop_before_the_change(simulator: Simulator, tmp_path: Path,
                                                          framework: str) -> None:
    result = run_reviewed(framework, simulator, tmp_path, Variant.LINEAR, seed_where(ReviewKind.REJECT),
                          Knobs(gate_retries=0))
    assert result.termination is Termination.GATE_EXHAUSTED
    assert result.reviews == {"approve": 0, "reject": 1, "late": 0, "unapproved": 0}
    assert calls(result, "send") == 0 and calls(result, "draft") == 1 and result.lost == 2


@pytest.mark.parametrize("variant", PIPELINES, ids=str)
@pytest.mark.parametrize("framework", ["autogen", "langgraph"])  # CrewAI redoes the task before: its own test
def test_a_rejection_with_nothing_to_redo_asks_again(simulator: Simulator, tmp_path: Path, framework: str,
                                                     variant: Variant) -> None:
    """`update_crm`'s gate retries `update_crm` itself: nothing before it can be redone; asked again, said so."""
    result = run_reviewed(framework, simulator, tmp_path, variant, seed_where(ReviewKind.APPROVE, ReviewKind.REJECT))
    assert result.status is Status.SUCCESS and result.exactly_once, result.error
    assert result.reviews == {"approve": 2, "reject": 1, "late": 0, "unapproved": 0}
    assert calls(result, "update_crm") == 1
    assert any("nothing before it can be redone" in note and "update_crm" in note for note in result.notes)
