"""Positive controls: deliberately broken twins of the plain reference, each with one realistic bug.

A lab that cannot see a known bug is itself broken (the lab's fourth rule). Each control
here is :class:`~coordlab.adapters.plain.PlainAdapter` with one orchestration decision
made wrong, the kind of bug a framework or a hand-written pipeline really ships. They are
registered through the public entry-point group ``coordlab.adapters`` (see
``pyproject.toml``), exactly as a third party's adapter would be, and
``tests/runners/test_positive_controls.py`` runs each beside ``plain`` on a documented
sweep and requires the lab to flag it: a paired exact test on success or on harm with
p < 0.01, and the counter that matches the bug moved.

=========================  ===========  =====================================================
control                    variant      the bug, and the counter that shows it
=========================  ===========  =====================================================
``control_drop_field``     linear       hands a step only the task's inputs and the previous
                                        step's answer (handoff failures: missing)
``control_truncate``       linear       hands text values on cut to 60 characters, a
                                        log-preview habit (handoff failures: corrupted)
``control_sticky_state``   gated        merges without overwriting, so a redone step's
                                        corrected answer never replaces the first (gate
                                        rejections)
``control_repeat_step``    linear       redoes a whole step when its answer is unusable, tool
                                        calls included (framework retries; harmful repeats)
``control_last_pending``   delegated    a routed role takes its latest pending step instead
                                        of its earliest (handoff failures: missing)
=========================  ===========  =====================================================
"""

from __future__ import annotations

from typing import Any

from .plain import PlainAdapter, PlainEpisode

TRUNCATE_AT = 60
"""Characters a truncating orchestrator keeps of a text value."""


class DroppedFieldEpisode(PlainEpisode):
    """Only the task's inputs and the previous step's answer reach a step: a field from two steps back is lost."""

    def handed_on(self, index: int) -> dict[str, Any]:
        previous = self.outputs.get(self.task.steps[index - 1].id, {}) if index else {}
        return {**self.task.inputs, **previous}


class TruncatingEpisode(PlainEpisode):
    """Text values are handed on cut to :data:`TRUNCATE_AT` characters."""

    def handed_on(self, index: int) -> dict[str, Any]:
        return {name: value[:TRUNCATE_AT] if isinstance(value, str) else value for name, value in self.values.items()}


class StickyStateEpisode(PlainEpisode):
    """The first answer for a field wins: a redo after a gate rejection cannot correct it."""

    def merge(self, outputs: dict[str, Any]) -> None:
        for name, value in outputs.items():
            self.values.setdefault(name, value)


class RepeatingStepEpisode(PlainEpisode):
    """A step whose answer lacks a field is run again from the start, its side effects included."""

    def run_step(self, index: int, feedback: str = "", handoff: bool = True) -> None:
        super().run_step(index, feedback, handoff)
        step = self.task.steps[index]
        if any(name not in self.outputs[step.id] for name in step.output_names):
            self.spec.trace.retry(step.id, "framework", "answer unusable: step run again", step.role)
            super().run_step(index, feedback, handoff=False)


class LastPendingEpisode(PlainEpisode):
    """A routed role works on its latest pending step, not its earliest."""

    def next_pending(self, pending: list[int]) -> int:
        return pending[-1]


def _control(name: str, episode: type[PlainEpisode], doc: str) -> type[PlainAdapter]:
    """A :class:`PlainAdapter` subclass called ``name`` that runs ``episode``."""
    return type(f"Control_{name}", (PlainAdapter,), {"name": name, "episode_class": episode, "__doc__": doc,
                                                     "__module__": __name__})


DropField = _control("control_drop_field", DroppedFieldEpisode, DroppedFieldEpisode.__doc__ or "")
Truncate = _control("control_truncate", TruncatingEpisode, TruncatingEpisode.__doc__ or "")
StickyState = _control("control_sticky_state", StickyStateEpisode, StickyStateEpisode.__doc__ or "")
RepeatStep = _control("control_repeat_step", RepeatingStepEpisode, RepeatingStepEpisode.__doc__ or "")
LastPending = _control("control_last_pending", LastPendingEpisode, LastPendingEpisode.__doc__ or "")
