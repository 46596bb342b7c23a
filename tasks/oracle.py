"""What a correct model does at each step, computed from the values it was actually given.

The simulator calls :func:`next_action` with the values it found in a request: missing
inputs are ``None`` and flow through the step's expressions the way a model would flow
through missing context, yielding a wrong answer instead of an exception. :func:`solve`
runs the whole task on a fresh world with no faults: the expected values and side
effects that scoring compares an episode against; ``solve(task, strict=True)`` is the
validator's run, where anything that fails on the correct path is an error naming the step
and expression.

A step's tool plan may branch: a call with ``when:`` is made only when its condition holds
over the step's reads and earlier results (:func:`walk_plan`), and the oracle, the
simulator, the gates and scoring all follow the branch through that one function.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .expressions import Expression, ExpressionError
from .functions import HELPERS
from .schema import OutputField, Step, Task, ToolCallPlan
from .tools import ToolError
from .world import SideEffect, World, canonical_json

Where = tuple[Any, ...]
"""Where an expression is written, relative to its step (``("tools", 0, "args", "to")``) or to the file."""
Evaluate = Callable[[Expression, Mapping[str, Any], Where], Any]
"""How expressions are evaluated: leniently in episodes (``None`` on failure), strictly when validating."""
Lookup = Callable[[ToolCallPlan, dict[str, Any]], tuple[bool, Any]]
"""Whether a planned call (with its arguments) has been answered, and its result."""


class SolveFailure(Exception):
    """The task's correct path fails: in ``step`` (None for a gate or check) at ``where``, for ``reason``."""

    def __init__(self, step: str | None, where: Where, reason: str):
        self.step, self.where, self.reason = step, where, reason
        super().__init__(f"{step or 'task'} {where}: {reason}")


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


def lenient(expression: Expression, namespace: Mapping[str, Any], where: Where) -> Any:
    """:func:`safe_evaluate` in the :data:`Evaluate` shape: a model answers badly, it does not crash."""
    return safe_evaluate(expression, namespace)


def call_arguments(plan: ToolCallPlan, namespace: Mapping[str, Any], evaluate: Evaluate = lenient,
                   where: Where = ()) -> dict[str, Any]:
    """The arguments a correct model passes to ``plan``'s tool."""
    return {name: evaluate(expr, namespace, where + ("args", name)) for name, expr in plan.arguments.items()}


def correct_outputs(step: Step, namespace: Mapping[str, Any], evaluate: Evaluate = lenient) -> dict[str, Any]:
    """The step's output fields computed from ``namespace``."""
    return {out.name: evaluate(out.value, namespace, ("produces", out.name)) for out in step.produces}


def walk_plan(step: Step, values: Mapping[str, Any], lookup: Lookup,
              evaluate: Evaluate = lenient) -> tuple[dict[str, Any], "PlannedCall | None"]:
    """Follow the step's tool plan: the results so far and the next call to make (None: ready to answer).

    Calls are taken in plan order; one whose ``when`` does not hold is skipped (its result
    stays ``None``). ``lookup`` says whether a call was already answered: the oracle
    executes it, the simulator looks for it in the request's transcript.
    """
    results: dict[str, Any] = {}
    for index, plan in enumerate(step.tool_calls):
        namespace = step_namespace(step, values, results)
        if plan.when is not None and evaluate(plan.when, namespace, ("tools", index, "when")) is not True:
            continue
        arguments = call_arguments(plan, namespace, evaluate, ("tools", index))
        answered, result = lookup(plan, arguments)
        if not answered:
            return results, PlannedCall(plan, arguments)
        results[plan.bind] = result
    return results, None


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
    return walk_plan(step, values, lambda plan, _: (plan.bind in tool_results, tool_results.get(plan.bind)))[1]


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


def _strict_evaluate(step: str | None) -> Evaluate:
    """An :data:`Evaluate` for the validator: an expression that cannot be computed is a :class:`SolveFailure`."""
    def evaluate(expression: Expression, namespace: Mapping[str, Any], where: Where) -> Any:
        try:
            return expression.evaluate(namespace)
        except ExpressionError as exc:
            raise SolveFailure(step, where, str(exc)) from exc
    return evaluate


def solve(task: Task, strict: bool = False) -> Solution:
    """Run the oracle through every step on a fresh world, executing its tool plans.

    With ``strict`` (the validator), the correct path must go through cleanly: every
    expression evaluates, every tool call succeeds, every gate passes on the values it
    would see, and every end-state check holds; the first that does not raises
    :class:`SolveFailure`.
    """
    from .scoring import check_namespace, gate_namespace  # scoring builds on solutions, so it comes in late

    world = World.for_task(task)
    values: dict[str, Any] = dict(task.inputs)
    outputs: dict[str, dict[str, Any]] = {}
    for step in task.steps:
        evaluate = _strict_evaluate(step.id) if strict else lenient
        gate = task.gate_before(step.id)
        if strict and gate is not None:
            where = ("gates", task.gates.index(gate), "check")
            passed = _strict_evaluate(None)(gate.predicate, gate_namespace(task, values, world), where)
            if passed is not True:
                raise SolveFailure(None, where, f"the gate before {step.id!r} rejects the correct values "
                                                f"(it gives {passed!r}), so the gated variant could never succeed")

        def execute(plan: ToolCallPlan, arguments: dict[str, Any], step: Step = step) -> tuple[bool, Any]:
            try:
                result = plan.spec(world, arguments)
            except (ToolError, KeyError) as exc:
                if not strict:
                    raise
                index = step.tool_calls.index(plan)
                raise SolveFailure(step.id, ("tools", index, "call"),
                                   f"the call of {plan.tool!r} fails: {exc}") from exc
            # Round-trip through JSON so the oracle sees tool results exactly as a model would.
            return True, parse_tool_result(canonical_json(result))

        results, _ = walk_plan(step, values, execute, evaluate)
        outputs[step.id] = correct_outputs(step, step_namespace(step, values, results), evaluate)
        values.update(outputs[step.id])
    final = outputs[task.steps[-1].id] if task.steps else {}
    world.final_output = dict(final)
    solution = Solution(values, outputs, list(world.side_effects), world, dict(final))
    if strict:
        namespace = check_namespace(task, world, solution)
        for index, check in enumerate(task.checks):
            where = ("checks", index, "expr")
            holds = _strict_evaluate(None)(check.predicate, namespace, where)
            if holds is not True:
                raise SolveFailure(None, where, f"the check {check.description!r} does not hold "
                                                f"(it gives {holds!r})")
    return solution
