"""The crash schedule: where the lab kills an episode's process, the same point for every framework.

A crash point is a pure function of (seed, task release), like every other fault: no
framework is a coordinate, so every framework is killed at the same logical moment of the
same episode. There are two kinds, as production deaths come:

* ``after_effect`` — right after the world applied the episode's N-th change (the email is
  sent) and before the framework could record the step as done. The kill happens inside
  the tool call, once the change is durable in the world's journal.
* ``before_step`` — between two steps: the first model request of a step (other than the
  first) arrives at the simulator, which kills the process before answering it.
* ``awaiting_review`` — in the human-in-the-loop episodes, the process dies while it waits
  for a reviewer who answers late (:mod:`.review`); ``step`` is None when no answer is late.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from coordlab.runners.draws import uniform
from coordlab.tasks.oracle import solve
from coordlab.tasks.schema import Task

CrashKind = Literal["after_effect", "before_step", "awaiting_review"]

AFTER_EFFECT_SHARE = 0.5
"""The share of scheduled crashes that follow a side effect (the rest fall between two steps)."""


@dataclass(frozen=True)
class CrashPoint:
    """Where an episode's first run is SIGKILLed."""

    kind: CrashKind
    effect: int | None = None
    """``after_effect``: the 1-based index of the world change after which the process dies."""
    step: str | None = None
    """``before_step``: the step whose first model request the process does not live to see answered;
    ``after_effect``: the step that makes that change on the correct path (for reports)."""

    def __post_init__(self) -> None:
        if self.kind == "after_effect" and (self.effect is None or self.effect < 1):
            raise ValueError("an after_effect crash needs effect >= 1 (the N-th change to the world)")
        if self.kind == "before_step" and not self.step:
            raise ValueError("a before_step crash needs the step it comes before")
        if self.kind not in ("after_effect", "before_step", "awaiting_review"):
            raise ValueError(f"unknown crash kind {self.kind!r}: after_effect, before_step or awaiting_review")

    def describe(self) -> str:
        """``after change 2 (step send)`` or ``before step send``."""
        if self.kind == "after_effect":
            return f"after change {self.effect}" + (f" (step {self.step})" if self.step else "")
        if self.kind == "awaiting_review":
            return f"awaiting a late review of step {self.step}" if self.step else "no review comes late"
        return f"before step {self.step}"


def effect_steps(task: Task) -> list[str]:
    """The step that makes each of the correct run's side effects, in order."""
    remaining = {s.id: [p.tool for p in s.tool_calls if task.tools[p.tool].mutating] for s in task.steps}
    steps = []
    for effect in solve(task).side_effects:
        owner = next(s for s, tools in remaining.items() if effect.tool in tools)
        remaining[owner].remove(effect.tool)
        steps.append(owner)
    return steps


def has_side_effects(task: Task) -> bool:
    """Whether the correct run changes the world at all (only then can a crash duplicate or lose a change)."""
    return bool(solve(task).side_effects)


def crash_point(task: Task, seed: int) -> CrashPoint:
    """The crash scheduled for ``seed``'s episode of ``task``: a kind, then a point of that kind, each one draw."""
    effects = effect_steps(task)
    between = [s.id for s in task.steps[1:]]
    if not effects and not between:
        raise ValueError(f"task {task.name!r} has one step and no side effect: there is no point to crash at")
    after = effects and (not between or uniform(seed, task.release, "crash", "kind") < AFTER_EFFECT_SHARE)
    if after:
        index = int(uniform(seed, task.release, "crash", "effect") * len(effects))
        return CrashPoint("after_effect", effect=index + 1, step=effects[index])
    return CrashPoint("before_step", step=between[int(uniform(seed, task.release, "crash", "step") * len(between))])
