"""What a correct model does at each step, computed from the values it was actually given.

The simulator calls :func:`next_action` with the values it found in a request: missing
inputs are ``None`` and flow through the step's expressions the way a model would flow
through missing context, yielding a wrong answer instead of an exception. :func:`solve`
runs the whole task on a fresh world with no faults: the expected values and side
effects that scoring compares an episode against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from .expressions import Expression, ExpressionError
from .functions import HELPERS
from .schema import OutputField, Step, Task, ToolCallPlan
from .tools import TOOLS
from .world import SideEffect, World, canonical_json


def safe_evaluate(expression: Expression, namespace: Mapping[str, Any]) -> Any:
    """Evaluate; an expression that cannot be computed from what was given yields ``None``.

    A model given bad inputs answers badly; it does not crash. Every evaluation failure,
    over-budget work included, is an :class:`ExpressionError`.
    """
    try:
        return expression.evaluate(namespace)
    except ExpressionError:
        return None


def step_namespace(step: Step, values: Mapping[str, Any], tool_results: Mapping[str, Any]) -> dict[str, Any]:
    """The names a step's expressions see: its reads (``None`` when missing), tool results, helpers."""
    namespace: dict[str, Any] = dict(HELPERS)
    namespace.update({name: values.get(name) for name in step.reads})
    namespace.update({plan.bind: tool_results.get(plan.bind) for plan in step.tool_calls})
    return namespace


def call_arguments(plan: ToolCallPlan, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments a correct model passes to ``plan``'s tool."""
    return {name: safe_evaluate(expr, namespace) for name, expr in plan.arguments.items()}


def correct_outputs(step: Step, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The step's output fields computed from ``namespace``."""
    return {out.name: safe_evaluate(out.value, namespace) for out in step.produces}


def corrupt_value(output: OutputField, correct: Any, namespace: Mapping[str, Any]) -> Any:
    """A plausible wrong value for ``output``: the task's own ``wrong`` expression, else a typo-like change."""
    if output.wrong is not None:
        wrong = safe_evaluate(output.wrong, namespace)
        if wrong is not None and wrong != correct:
            return wrong
    return generic_corruption(correct)


def generic_corruption(value: Any) -> Any:
    """Change a value the way a careless model would: a digit off, a number off, an item lost."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return round(value + 10.0, 2)
    if isinstance(value, str):
        for index in range(len(value) - 1, -1, -1):
            if value[index].isdigit():
                return value[:index] + str((int(value[index]) + 1) % 10) + value[index + 1:]
        return value + " (unverified)"
    if isinstance(value, list):
        return value[:-1] if value else ["(unverified)"]
    if isinstance(value, dict) and value:
        first = next(iter(value))
        return {**value, first: generic_corruption(value[first])}
    return "(unverified)"


@dataclass(frozen=True)
class PlannedCall:
    """A tool call the oracle wants made next."""

    plan: ToolCallPlan
    arguments: dict[str, Any]


def next_action(step: Step, values: Mapping[str, Any], tool_results: Mapping[str, Any]) -> PlannedCall | None:
    """The next tool call a correct model makes, or ``None`` when it is ready to answer."""
    namespace = step_namespace(step, values, tool_results)
    for plan in step.tool_calls:
        if plan.bind not in tool_results:
            return PlannedCall(plan, call_arguments(plan, namespace))
    return None


def parse_tool_result(text: Any) -> Any:
    """A tool result as the model reads it: JSON when it is JSON, else the raw text."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass
class Solution:
    """The fault-free run of a task: what every step produces and every side effect made."""

    values: dict[str, Any]
    outputs: dict[str, dict[str, Any]]
    side_effects: list[SideEffect]
    world: World
    final_output: dict[str, Any] = field(default_factory=dict)


def solve(task: Task) -> Solution:
    """Run the oracle through every step on a fresh world, executing its tool plans."""
    world = World.from_fixtures(task.fixtures)
    values: dict[str, Any] = dict(task.inputs)
    outputs: dict[str, dict[str, Any]] = {}
    for step in task.steps:
        results: dict[str, Any] = {}
        while (call := next_action(step, values, results)) is not None:
            # Round-trip through JSON so the oracle sees tool results exactly as a model would.
            results[call.plan.bind] = parse_tool_result(canonical_json(TOOLS[call.plan.tool](world, call.arguments)))
        outputs[step.id] = correct_outputs(step, step_namespace(step, values, results))
        values.update(outputs[step.id])
    final = outputs[task.steps[-1].id] if task.steps else {}
    world.final_output = dict(final)
    return Solution(values, outputs, list(world.side_effects), world, dict(final))
