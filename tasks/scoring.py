"""Score an episode's end state against the task's fault-free solution.

Success needs exactly the expected side effects (a duplicate or an extra one is *harmful*:
something wrong happened in the world), in the task's declared order if it has one, and
every end-state check to hold. A missing side effect fails the task without harm.

Side effects out of the declared order are harmful too: each one happened in the world at
a moment the correct run would not have made it. A CRM that records a new appointment
before the customer was emailed shows staff a slot the customer was never told about (and
keeps showing it if the email then fails); no later step can undo that the change was made
first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .functions import HELPERS
from .oracle import Solution, safe_evaluate, solve
from .schema import Task
from .world import SideEffect, World


@dataclass(frozen=True)
class Verdict:
    """The scored end state of one episode."""

    success: bool
    harmful: bool
    """A side effect happened that the correct run would not make (wrong, extra, repeated or out of order)."""
    unexpected_side_effects: tuple[str, ...]
    missing_side_effects: tuple[str, ...]
    failed_checks: tuple[str, ...]
    out_of_order: tuple[str, ...] = ()
    """Breaches of the task's side-effect order, each as ``"crm_update before send_email"``."""

    def describe(self) -> str:
        """One line saying why the episode failed (or that it succeeded)."""
        if self.success:
            return "success"
        parts = [f"unexpected side effect {s}" for s in self.unexpected_side_effects]
        parts += [f"missing side effect {s}" for s in self.missing_side_effects]
        parts += [f"side effects out of order: {s}" for s in self.out_of_order]
        parts += [f"check failed: {c}" for c in self.failed_checks]
        return ("harmful: " if self.harmful else "failed: ") + "; ".join(parts)


def check_namespace(task: Task, world: World, solution: Solution) -> dict[str, Any]:
    """Names an end-state check can read: world sections, the final output, the expected values."""
    namespace: dict[str, Any] = dict(HELPERS)
    namespace.update(world.state)
    namespace.update(task.inputs)
    namespace.update({
        "final": world.final_output,
        "expected": solution.values,
        "inputs": dict(task.inputs),
        "side_effects": [{"tool": e.tool, "arguments": dict(e.arguments)} for e in world.side_effects],
    })
    return namespace


def order_breaches(order: Sequence[str], side_effects: Sequence[SideEffect]) -> tuple[str, ...]:
    """Where ``side_effects`` break ``order``: a tool's first effect before the first effect of a tool listed earlier.

    Only tools that took effect are compared: one that never did is a missing side effect,
    not an order breach. A repeat after both happened is a duplicate, scored as such.
    """
    first: dict[str, int] = {}
    for position, effect in enumerate(side_effects):
        first.setdefault(effect.tool, position)
    present = [tool for tool in order if tool in first]
    return tuple(f"{later} before {earlier}" for index, earlier in enumerate(present)
                 for later in present[index + 1:] if first[later] < first[earlier])


def score(task: Task, world: World, solution: Solution | None = None) -> Verdict:
    """Compare ``world`` after an episode with the task's fault-free solution."""
    solution = solution or solve(task)
    actual = Counter(e.signature for e in world.side_effects)
    expected = Counter(e.signature for e in solution.side_effects)
    unexpected = tuple(sorted((actual - expected).elements()))
    missing = tuple(sorted((expected - actual).elements()))
    out_of_order = order_breaches(task.side_effect_order, world.side_effects)
    namespace = check_namespace(task, world, solution)
    failed = tuple(c.description for c in task.checks if safe_evaluate(c.predicate, namespace) is not True)
    return Verdict(not (unexpected or missing or failed or out_of_order), bool(unexpected or out_of_order),
                   unexpected, missing, failed, out_of_order)


def gate_namespace(task: Task, values: Mapping[str, Any], world: World) -> dict[str, Any]:
    """Names a gate can read: the values about to be used and the world's read-only tools."""
    namespace: dict[str, Any] = dict(HELPERS)
    namespace.update(task.inputs)
    namespace.update(values)
    for name, tool in task.tools.items():
        if not tool.mutating:
            namespace[name] = (lambda t: lambda **kwargs: t(world, kwargs))(tool)
    return namespace


def gate_passes(task: Task, before_step: str, values: Mapping[str, Any], world: World) -> bool:
    """Evaluate the gate in front of ``before_step`` on ``values``; no gate means pass."""
    gate = task.gate_before(before_step)
    if gate is None:
        return True
    return safe_evaluate(gate.predicate, gate_namespace(task, values, world)) is True
