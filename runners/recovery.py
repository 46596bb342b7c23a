"""Whether an injected fault was recovered: its effect did not reach the episode's final state.

"Worked on again" is not enough: a framework that re-sends a step after a repeated email
has worked on it again and the second email is still in the outbox. So each fault kind is
judged by what it could have spoiled, read from the simulator's request log (both ends of
every exchange) and from the end state the episode left behind:

==============================  ============================================================
fault                           recovered when
==============================  ============================================================
``repeated_side_effect``        never: the duplicate is in the world for good
transport faults                the same step later got an answer (a ``final`` or
(``http_*``, ``stall``,         ``tool_call`` reply): the failed exchange was made good
``connection_reset``,
``truncated_body``)
``malformed_tool_args``,        the same step later gave a fault-free final answer, and the
``unknown_tool``,               episode misses no side effect of that step's mutating tools
``skipped_tool``                (a tool call that never happened is a gap in the world)
``premature_stop``,             the same step later gave a fault-free final answer
``empty_answer``,
``omitted_field``
``wrong_value``                 the same step later gave a fault-free final answer, and none
                                of the values the faulty answer got wrong reached the end
                                state (the arguments of a side effect, the final output)
``wrong_handoff_target``        the step was later routed right (a fault-free routing
                                decision for it), worked on by its own role, or answered
                                without a fault by whoever got it (a worker asked for work
                                it does not own may do it well), and what the wrong role did
                                meanwhile left no side effect of its steps missing or extra
                                (a coordinator sent to draft that "sends" with nothing to
                                send has spoiled the send for good)
``format_drift``                the same step later gave a fault-free final answer, or the
                                framework read the wrapped answer right: every value it
                                emitted reached the final output, or the steps that read it,
                                intact (no handoff issue for it on any of their requests)
``tool_error_after_effect``     the same step later gave a fault-free final answer, and the
                                world holds neither an extra nor a missing side effect of the
                                step's mutating tools (a blind retry repeats the change)
any other kind                  the same step later gave a fault-free final answer (the
                                least a fault of an unknown kind needs to be made good)
==============================  ============================================================

Two approximations. A tool fault's gap is read per tool: a missing side effect of any
mutating tool of the step counts against it, whichever call went missing (this errs
towards "not recovered"). A wrong value is traced as itself (equal to a value in the end
state, or text inside its text), not through values computed from it: a wrong slot is
found in an email's body, but a wrong root cause that led to paging the wrong team is not
(this errs towards "recovered"; the verdict's harm still shows that episode). A wrong
value whose answer was logged without its outputs cannot be traced and is not recovered.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from coordlab.tasks.schema import Task
from coordlab.tasks.scoring import Verdict
from coordlab.tasks.world import SideEffect, World, canonical_json

from .faults import TOOL_FAULTS, TRANSPORT_FAULTS
from .simulator import RequestRecord

NEVER_RECOVERED = frozenset({"repeated_side_effect"})
"""Faults whose effect is in the world the moment they happen."""
WRONG_VALUE = "wrong_value"
WRONG_HANDOFF_TARGET = "wrong_handoff_target"
FORMAT_DRIFT = "format_drift"
"""A right answer in the wrong wrapping (prose, a code fence): harmless if the framework reads it anyway."""
EFFECT_THEN_ERROR = "tool_error_after_effect"
"""A mutating call that took effect and then reported an error: made good only if nobody repeated it."""

MIN_TEXT_MATCH = 3
"""Shortest wrong text searched for inside longer texts (shorter ones would match by accident)."""


@dataclass(frozen=True)
class EndState:
    """What an episode left behind: where a fault's effect would show if it was not made good."""

    task: Task
    side_effects: tuple[SideEffect, ...]
    final_output: Mapping[str, Any]
    missing_side_effects: tuple[str, ...]
    """Signatures (``tool{arguments}``) of the oracle's side effects the episode did not make."""
    unexpected_side_effects: tuple[str, ...] = ()
    """Signatures of side effects the episode made beyond the oracle's (extra, wrong or repeated)."""

    @classmethod
    def of(cls, task: Task, world: World, verdict: Verdict) -> "EndState":
        """The end state of an episode on ``world``, scored as ``verdict``."""
        return cls(task, tuple(world.side_effects), dict(world.final_output), verdict.missing_side_effects,
                   verdict.unexpected_side_effects)


def fault_recovered(record: RequestRecord, later: Sequence[RequestRecord], end: EndState) -> bool:
    """True when the fault injected into ``record`` did not reach the end state; see the module docstring.

    ``later`` holds the requests that came after ``record``, in order.
    """
    fault, step = record.fault, record.step
    if fault is None or step is None or fault in NEVER_RECOVERED:
        return False
    if fault in TRANSPORT_FAULTS:
        return any(r.step == step and r.kind in ("final", "tool_call") for r in later)
    correction = next((r for r in later if r.step == step and r.kind == "final" and r.fault is None), None)
    if fault == FORMAT_DRIFT and correction is None:
        return _read_intact(record, later, end)
    if fault == WRONG_HANDOFF_TARGET:
        made_good = correction is not None or _rerouted(step, later, end.task)
        return made_good and not _misrouted_work_spoiled(record, later, end)
    if correction is None:
        return False
    if fault in TOOL_FAULTS:
        return not _touches(step, end.missing_side_effects, end)
    if fault == EFFECT_THEN_ERROR:
        return not _touches(step, end.missing_side_effects + end.unexpected_side_effects, end)
    if fault == WRONG_VALUE:
        if record.outputs is None:
            return False
        return not any(_reaches_end(value, end) for value in wrong_values(record, correction))
    return True


def wrong_values(faulty: RequestRecord, correction: RequestRecord) -> list[Any]:
    """The values ``faulty`` emitted that its step's later correct answer does not: what the fault got wrong.

    A field the correct answer lacks counts as wrong (nothing shows that it was right).
    """
    emitted = faulty.outputs or {}
    right = correction.outputs or {}
    return [value for name, value in emitted.items()
            if name not in right or canonical_json(value) != canonical_json(right[name])]


def _rerouted(step_id: str, later: Sequence[RequestRecord], task: Task) -> bool:
    """The step was later routed right, or its own role worked on it anyway."""
    try:
        owner = task.step(step_id).role
    except KeyError:
        owner = None
    return any((r.kind == "route" and r.step == step_id and r.fault is None)
               or (r.step == step_id and r.role == owner and r.kind in ("final", "tool_call")) for r in later)


def _read_intact(answer: RequestRecord, later: Sequence[RequestRecord], end: EndState) -> bool:
    """Whether every value ``answer`` emitted reached the final output, or its readers with no issue for it."""
    if not answer.outputs:
        return False
    reads: dict[str, tuple[str, ...]] = {s.id: s.reads for s in end.task.steps}
    for name, value in answer.outputs.items():
        if name in end.final_output and canonical_json(end.final_output[name]) == canonical_json(value):
            continue
        readers = [r for r in later if name in reads.get(r.step or "", ())]
        if not readers or any(issue.field == name for r in readers for issue in r.handoff_issues):
            return False
    return True


def _misrouted_work_spoiled(route: RequestRecord, later: Sequence[RequestRecord], end: EndState) -> bool:
    """Whether the role wrongly routed to, before the next routing decision, worked on a step whose effects are off."""
    worked_on = set()
    for record in later:
        if record.kind == "route":
            break
        if record.role == route.route_target and record.step is not None:
            worked_on.add(record.step)
    spoiled = end.missing_side_effects + end.unexpected_side_effects
    return any(_touches(step, spoiled, end) for step in worked_on)


def _touches(step_id: str, signatures: tuple[str, ...], end: EndState) -> bool:
    """Whether any of ``signatures`` (side effects missing or extra) is of one of the step's mutating tools."""
    try:
        mutating = {tool.name for tool in end.task.step(step_id).tools if tool.mutating}
    except KeyError:
        return bool(signatures)  # a step the task lacks: nothing shows the gap is not its own
    return any(signature.partition("{")[0] in mutating for signature in signatures)


def _reaches_end(value: Any, end: EndState) -> bool:
    """Whether ``value`` shows in a side effect's arguments or in the final output."""
    places = [dict(effect.arguments) for effect in end.side_effects] + [dict(end.final_output)]
    return any(_occurs_in(value, place) for place in places)


def _occurs_in(value: Any, place: Any) -> bool:
    """Whether ``value`` is ``place``, is inside it, or is text in its text (type-strict: ``True`` is not ``1``)."""
    if canonical_json(value) == canonical_json(place):
        return True
    if isinstance(value, str) and isinstance(place, str):
        return len(value) >= MIN_TEXT_MATCH and value in place
    if isinstance(place, Mapping):
        return any(_occurs_in(value, item) for item in place.values())
    if isinstance(place, (list, tuple)):
        return any(_occurs_in(value, item) for item in place)
    return False


JUDGED_AS: Mapping[str, str] = {"length": WRONG_VALUE, "clash": WRONG_VALUE, "buried": WRONG_VALUE,
                                "tool_overload": "unknown_tool"}
"""Which fault's rule judges a mechanism: a misread or a long prompt makes a wrong answer; an overloaded
model calls a tool it should not (``brief_loss`` has its own rule, :func:`mechanism_recovered`)."""


def mechanism_recovered(mechanism: str, record: RequestRecord, later: Sequence[RequestRecord],
                        end: EndState) -> bool:
    """True when what ``mechanism`` did to ``record`` (the last request it acted on in its step attempt)
    did not reach the end state.

    A value lost from a delegation brief is made good when the step's last request shows no
    handoff issue (the value reached the worker after all); the other mechanisms are judged by
    the rule of the fault they amount to (:data:`JUDGED_AS`).
    """
    if mechanism == "brief_loss":
        worked = [r for r in later if r.step == record.step and r.kind != "route"]
        return bool(worked) and not worked[-1].handoff_issues
    judged = JUDGED_AS.get(mechanism)
    return fault_recovered(replace(record, fault=judged or mechanism), later, end)
