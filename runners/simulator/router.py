"""What a routing model writes when it delegates: a brief built only from what it read.

A manager model briefing a coworker can pass on only the instruction and the values its own
request showed; nothing comes from the task's oracle. The ``brief_loss`` mechanism makes
the brief lossy the way a model summarising for a colleague is: one value left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from coordlab.runners.mechanisms import BriefLoss, Draws, Mechanism
from coordlab.tasks.schema import Step

from .reading import message_text

VAGUE_BRIEF = "Please carry on with the next part of the task."
"""The brief of a router whose request does not show the step's instruction."""


@dataclass(frozen=True)
class Brief:
    """A delegation brief: the instruction, the values handed on, and the mechanisms that acted."""

    instruction: str
    context: str
    mechanisms: tuple[Mechanism, ...] = ()


def instruction_as_read(step: Step, messages: list[Mapping[str, Any]]) -> str | None:
    """The step's instruction as the router's request shows it (latest mention), marker included; None if absent."""
    for message in reversed(messages):
        text = message_text(message)
        at = text.rfind(step.marker)
        if at < 0:
            continue
        end = at + len(step.marker)
        if text[:at].rstrip().endswith(step.instruction):
            return f"{step.instruction} {step.marker}"
        return text[text.rfind("\n", 0, at) + 1:end].strip()
    return None


def delegation_brief(step: Step, messages: list[Mapping[str, Any]], values: Mapping[str, Any],
                     loss: BriefLoss, draws: Draws) -> Brief:
    """The brief a router that read ``messages`` (values ``values``) writes for ``step``'s worker."""
    handed = {name: values[name] for name in step.reads if name in values}
    acted: tuple[Mechanism, ...] = ()
    if handed and draws(Mechanism.BRIEF_LOSS) < loss.threshold(len(handed)):
        names = sorted(handed)
        del handed[names[int(draws(Mechanism.BRIEF_LOSS, "which") * len(names))]]
        acted = (Mechanism.BRIEF_LOSS,)
    return Brief(instruction_as_read(step, messages) or VAGUE_BRIEF, json.dumps(handed), acted)
