"""How the simulated model shapes an answer: field types it expects, and format drift.

Kept apart from the episode logic because both are about the text of a reply, not about
which step it answers or which fault meets it.
"""

from __future__ import annotations

from typing import Mapping

from coordlab.tasks.oracle import solve
from coordlab.tasks.schema import Task

from .reading import json_kind

_KINDS: dict[str, Mapping[str, str]] = {}

DRIFTS = (
    "Here is the result:\n```json\n{answer}\n```",
    "{answer}\nLet me know if you need anything else.",
    "Sure! I have finished the step. The answer is {answer} as requested.",
)
"""How a model's JSON answer drifts from bare JSON: a code fence, trailing text, prose around it."""


def field_kinds(task: Task) -> Mapping[str, str]:
    """Each field's JSON type on the task's fault-free path (inputs and every step's outputs), cached per task key."""
    kinds = _KINDS.get(task.key)
    if kinds is None:
        solution = solve(task)
        kinds = _KINDS.setdefault(task.key, {name: json_kind(value) for name, value in solution.values.items()})
    return kinds


def drifted(answer: str, draw: float) -> str:
    """``answer`` wrapped the way the draw picks from :data:`DRIFTS`."""
    return DRIFTS[min(len(DRIFTS) - 1, int(draw * len(DRIFTS)))].format(answer=answer)

