"""A task may declare the order of its side effects; an episode that breaks it fails, harmfully.

The suite's appointment_rebooking declares ``[send_email, crm_update]``: the customer is
emailed before the CRM shows the new slot. The loader checks the declaration (located
problems) and that the task's own correct path keeps it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coordlab.tasks.loader import SUITE_DIR, TaskValidationError, load_suite, load_suite_task, load_task
from coordlab.tasks.oracle import solve
from coordlab.tasks.scoring import order_breaches, score
from coordlab.tasks.world import SideEffect, World

TASK = load_suite_task("appointment_rebooking")
SOURCE = (SUITE_DIR / "appointment_rebooking.yaml").read_text()
DECLARED = "side_effect_order: [send_email, crm_update]"


def effect(tool: str) -> SideEffect:
    return SideEffect(tool, {}, {})


def test_the_rebooking_task_declares_email_before_crm_and_its_correct_path_keeps_it() -> None:
    assert TASK.side_effect_order == ("send_email", "crm_update")
    solution = solve(TASK)
    assert [e.tool for e in solution.side_effects] == ["send_email", "crm_update"]
    assert score(TASK, solution.world).success


def test_tasks_with_fewer_than_two_side_effects_declare_no_order() -> None:
    assert {t.name for t in load_suite() if t.side_effect_order} == {"appointment_rebooking"}


@pytest.mark.parametrize("tools, breaches", [
    (["send_email", "crm_update"], ()),
    (["crm_update", "send_email"], ("crm_update before send_email",)),
    (["crm_update"], ()),  # the email never went out: a missing side effect, not an order breach
    (["send_email", "crm_update", "send_email"], ()),  # a repeat after both: a duplicate, scored as such
    (["crm_update", "send_email", "crm_update"], ("crm_update before send_email",)),
    ([], ()),
])
def test_order_breaches_compare_each_tool_s_first_effect(tools: list[str], breaches: tuple[str, ...]) -> None:
    assert order_breaches(("send_email", "crm_update"), [effect(t) for t in tools]) == breaches


def test_every_pair_out_of_a_longer_order_is_named() -> None:
    effects = [effect(t) for t in ("c", "b", "a")]
    assert order_breaches(("a", "b", "c"), effects) == ("b before a", "c before a", "c before b")
    assert order_breaches((), effects) == ()


def run_in_order(*tools: str) -> World:
    """The correct calls of the rebooking task, made on a fresh world in the given order of tools."""
    solution = solve(TASK)
    world = World.for_task(TASK)
    by_tool = {e.tool: e for e in solution.side_effects}
    for tool in tools:
        TASK.tools[tool](world, dict(by_tool[tool].arguments))
    world.final_output = dict(solution.final_output)
    return world


def test_the_crm_updated_before_the_email_fails_harmfully_though_every_effect_is_right() -> None:
    verdict = score(TASK, run_in_order("crm_update", "send_email"))
    assert not verdict.unexpected_side_effects and not verdict.missing_side_effects and not verdict.failed_checks
    assert verdict.out_of_order == ("crm_update before send_email",)
    assert not verdict.success and verdict.harmful
    assert verdict.describe() == "harmful: side effects out of order: crm_update before send_email"


def test_the_right_order_succeeds() -> None:
    verdict = score(TASK, run_in_order("send_email", "crm_update"))
    assert verdict.success and verdict.out_of_order == () and not verdict.harmful


# -- validation ----------------------------------------------------------------------------------

def task_file(tmp_path: Path, declaration: str) -> tuple[Path, int]:
    """The rebooking task with its order declaration replaced; the path and the declaration's line."""
    assert DECLARED in SOURCE
    path = tmp_path / "appointment_rebooking.yaml"
    path.write_text(SOURCE.replace(DECLARED, declaration))
    return path, SOURCE[:SOURCE.index(DECLARED)].count("\n") + 1


def problems(path: Path) -> list[tuple[int | None, str, str]]:
    with pytest.raises(TaskValidationError) as failure:
        load_task(path)
    return [(p.line, p.field, p.message) for p in failure.value.problems]


@pytest.mark.parametrize("declaration, field, fragment", [
    ("side_effect_order: [send_email, crm_updte]", "side_effect_order[1]",
     "no step calls a mutating tool 'crm_updte'; did you mean 'crm_update'?"),
    ("side_effect_order: [send_email, crm_lookup]", "side_effect_order[1]",
     "tool 'crm_lookup' changes nothing; only side effects (mutating tools) have an order"),
    ("side_effect_order: [send_email, send_email]", "side_effect_order[1]", "'send_email' is named twice"),
    ("side_effect_order: [send_email]", "side_effect_order", "name at least two mutating tools"),
    ("side_effect_order: send_email", "side_effect_order", "expected a list of mutating tool names"),
    ("side_effect_order: [send_email, 3]", "side_effect_order[1]", "expected a tool name (text), got int"),
    ("side_effect_order: [crm_update, send_email]", "side_effect_order",
     "on the task's correct path (no faults): send_email before crm_update, against this order"),
])
def test_a_bad_order_is_a_located_problem(tmp_path: Path, declaration: str, field: str, fragment: str) -> None:
    path, line = task_file(tmp_path, declaration)
    found = problems(path)
    assert (line, field) in [(at, name) for at, name, message in found if fragment in message], found


def test_side_effect_order_is_a_known_top_level_field(tmp_path: Path) -> None:
    path, line = task_file(tmp_path, "side_effect_ordre: [send_email, crm_update]")
    assert (line, "side_effect_ordre") in [(at, name) for at, name, message in problems(path)
                                           if "did you mean 'side_effect_order'?" in message]


def test_an_order_changes_the_task_s_content_hash(tmp_path: Path) -> None:
    path, _ = task_file(tmp_path, "")
    unordered = load_task(path)
    assert unordered.side_effect_order == () and unordered.key != TASK.key and unordered.release == TASK.release
