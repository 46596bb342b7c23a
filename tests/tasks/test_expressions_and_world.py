"""The task expression language, tools on the world, and scoring of side effects."""

from __future__ import annotations

import pytest

from coordlab.tasks.expressions import ExpressionError, compile_expression
from coordlab.tasks.loader import load_suite_task
from coordlab.tasks.oracle import generic_corruption, solve
from coordlab.tasks.scoring import score
from coordlab.tasks.toolbox import builtin_tools
from coordlab.tasks.tools import ToolError
from coordlab.tasks.world import World


@pytest.mark.parametrize("source", [
    "__import__('os')", "x.__class__", "(lambda: 1)()", "x.upper()", "[y := 1]",
])
def test_unsafe_or_foreign_syntax_is_rejected(source: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(source)


def test_free_names_exclude_comprehension_variables() -> None:
    expression = compile_expression("[p['team'] for p in pager] == [expected['team']]")
    assert expression.free_names == {"pager", "expected"}
    assert expression.evaluate({"pager": [{"team": "a"}], "expected": {"team": "a"}}) is True


def test_builtins_are_not_reachable() -> None:
    with pytest.raises(ExpressionError, match="cannot evaluate 'len\\(x\\)': unknown name 'len'") as caught:
        compile_expression("len(x)").evaluate({"x": [1]})
    assert isinstance(caught.value.__cause__, NameError)


def test_tool_validation_names_every_problem() -> None:
    world = World.from_fixtures({"outbox": []})
    with pytest.raises(ToolError, match="missing argument 'subject'.*unknown argument 'cc'.*must be string"):
        builtin_tools()["send_email"](world, {"to": 1, "body": "x", "cc": "y"})
    assert world.side_effects == [] and world.state["outbox"] == []


def test_worlds_are_independent_per_episode() -> None:
    task = load_suite_task("appointment_rebooking")
    first, second = World.from_fixtures(task.fixtures), World.from_fixtures(task.fixtures)
    builtin_tools()["send_email"](first, {"to": "a@b.c", "subject": "s", "body": "b"})
    assert len(first.state["outbox"]) == 1 and second.state["outbox"] == [] and task.fixtures["outbox"] == []


def test_duplicated_side_effect_is_a_harmful_failure() -> None:
    task = load_suite_task("incident_triage")
    solution = solve(task)
    world = World.from_fixtures(task.fixtures)
    for effect in solution.side_effects * 2:
        builtin_tools()[effect.tool](world, effect.arguments)
    verdict = score(task, world, solution)
    assert not verdict.success and verdict.harmful and len(verdict.unexpected_side_effects) == 1


def test_missing_side_effect_fails_without_harm() -> None:
    task = load_suite_task("incident_triage")
    verdict = score(task, World.from_fixtures(task.fixtures))
    assert not verdict.success and not verdict.harmful and verdict.missing_side_effects


def test_wrong_team_paged_is_harmful() -> None:
    task = load_suite_task("incident_triage")
    world = World.from_fixtures(task.fixtures)
    builtin_tools()["page_team"](world, {"team": "team-platform", "message": "checkout latency above SLO: root cause database"})
    verdict = score(task, world)
    assert verdict.harmful and "exactly one page went to the team owning the root cause" in verdict.failed_checks


@pytest.mark.parametrize("value", [7, 2.5, "2026-11-26T16:30", "no digits", [1, 2], {"a": 1}, True])
def test_generic_corruption_always_changes_the_value(value) -> None:
    assert generic_corruption(value) != value
