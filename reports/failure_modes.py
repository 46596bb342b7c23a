"""How a failed episode failed: failure-mode labels read from its stored trace, mapped to MAST.

Every scored failure (``failed_check``, ``error``, ``timeout``) gets one or more of the lab's
own labels (:class:`FailureMode`), each detectable from what the store holds: the episodes
row (status, termination, verdict, error) and the trace events (model calls with their
handoff issues and routing targets, faults with whether they were recovered, gates,
retries, tool calls, side effects). Where a mode of the MAST taxonomy fits, the label
carries it (Cemri et al., 2025, "Why Do Multi-Agent LLM Systems Fail?", arXiv:2503.13657);
where none does (a crash, a timeout) it says so rather than forcing one.

Labels are ordered, primary first, by :class:`FailureMode`'s declaration order: how the
framework crashed, if it did; then the earliest link of the causal chain the trace shows
(a repeated effect, a misroute, a value lost or withheld); then what that let through (an
out-of-order or wrong side effect, verified or not); then how the episode ended (a gate
that ran out of retries, a turn limit, an early end). So a report that counts primary labels
counts causes, and one that counts every label also sees their consequences.

Adapter notes (``notes_json``) are not read: they say what a variant cannot express in a
framework, not what happened in this episode. A fault event without ``recovered`` (a store
before schema 2) is not counted as unrecovered: nothing shows that it was not made good.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any, Iterable, Mapping, Sequence

from coordlab.runners.faults import TRANSPORT_FAULTS
from coordlab.runners.store import Store, StoreError

from .data import SCORED_FAILURES, json_object

# -- the MAST taxonomy ------------------------------------------------------------------------------

MAST_CATEGORIES = {"FC1": "Specification issues", "FC2": "Inter-agent misalignment", "FC3": "Task verification"}
"""MAST's three failure categories by id (names as in arXiv:2503.13657 v2 and later)."""


@dataclass(frozen=True)
class MastMode:
    """One of the 14 failure modes of MAST."""

    id: str
    """``FM-1.1`` ... ``FM-3.3``; the digit after ``FM-`` is the category (``FC1`` ... ``FC3``)."""
    name: str
    """The mode's name as the paper gives it."""

    @property
    def category(self) -> str:
        """The category's id and name, e.g. ``FC1 Specification issues``."""
        category = f"FC{self.id[3]}"
        return f"{category} {MAST_CATEGORIES[category]}"

    def __str__(self) -> str:
        return f"{self.id} {self.name}"


MAST: Mapping[str, MastMode] = {mode.id: mode for mode in (
    MastMode("FM-1.1", "Disobey task specification"),
    MastMode("FM-1.2", "Disobey role specification"),
    MastMode("FM-1.3", "Step repetition"),
    MastMode("FM-1.4", "Loss of conversation history"),
    MastMode("FM-1.5", "Unaware of termination conditions"),
    MastMode("FM-2.1", "Conversation reset"),
    MastMode("FM-2.2", "Fail to ask for clarification"),
    MastMode("FM-2.3", "Task derailment"),
    MastMode("FM-2.4", "Information withholding"),
    MastMode("FM-2.5", "Ignored other agent's input"),
    MastMode("FM-2.6", "Reasoning-action mismatch"),
    MastMode("FM-3.1", "Premature termination"),
    MastMode("FM-3.2", "No or incomplete verification"),
    MastMode("FM-3.3", "Incorrect verification"),
)}
"""The MAST failure modes by id."""


# -- the lab's labels -------------------------------------------------------------------------------

class FailureMode(StrEnum):
    """How a failed episode failed, as the lab detects it; declared in precedence order (primary first)."""

    TRANSPORT_ERROR = "transport_error"
    MALFORMED_OUTPUT_CRASH = "malformed_output_crash"
    FRAMEWORK_ERROR = "framework_error"
    TIMEOUT = "timeout"
    REPEATED_SIDE_EFFECT = "repeated_side_effect"
    MISROUTED = "misrouted"
    LOST_HANDOFF = "lost_handoff"
    WITHHELD_INFORMATION = "withheld_information"
    OUT_OF_ORDER = "out_of_order"
    GATE_PASSED_WRONG_VALUE = "gate_passed_wrong_value"
    UNVERIFIED_WRONG_VALUE = "unverified_wrong_value"
    GATE_EXHAUSTED = "gate_exhausted"
    TURN_LIMIT = "turn_limit"
    PREMATURE_TERMINATION = "premature_termination"
    UNEXPLAINED = "unexplained"

    @property
    def definition(self) -> str:
        """One line: what the label means, as the lab detects it."""
        return _LABELS[self][0]

    @property
    def mast(self) -> MastMode | None:
        """The MAST mode the label maps to; None where none fits."""
        mast_id = _LABELS[self][1]
        return MAST[mast_id] if mast_id else None

    @property
    def description(self) -> str:
        """A short phrase for sentences: the MAST mode's name where one fits, else the label in words."""
        mode = self.mast
        return mode.name.lower() if mode else self.value.replace("_", " ")


_LABELS: Mapping[FailureMode, tuple[str, str | None]] = {
    FailureMode.TRANSPORT_ERROR: (
        "the framework raised after HTTP failures its client's retries did not get past (an API error, or an "
        "unrecovered transport fault)", None),
    FailureMode.MALFORMED_OUTPUT_CRASH: (
        "the framework raised on a malformed model output: a tool call's arguments or an answer it could not "
        "parse or validate", None),
    FailureMode.FRAMEWORK_ERROR: ("the framework raised for any other reason", None),
    FailureMode.TIMEOUT: (
        "the lab killed the episode at its time limit (the store keeps no trace of it, so no looping can be "
        "shown)", None),
    FailureMode.REPEATED_SIDE_EFFECT: (
        "a side effect took effect more often than in the correct run (a repeated call, a blind retry after a "
        "tool error, a step run again)", "FM-1.3"),
    FailureMode.MISROUTED: (
        "a routing model sent a step to the wrong role and it was never made good: not recovered, or only ever "
        "worked on by the role it was wrongly sent to", "FM-2.3"),
    FailureMode.LOST_HANDOFF: (
        "the framework did not deliver intact a value the model had emitted right (missing or altered on the "
        "reader's last request), or kept the old values after a correct redo", "FM-1.4"),
    FailureMode.WITHHELD_INFORMATION: (
        "a value was left out and not made good: dropped from a routing model's delegation brief, or omitted "
        "by the model that produced it", "FM-2.4"),
    FailureMode.OUT_OF_ORDER: ("side effects happened out of the task's declared order", "FM-1.1"),
    FailureMode.GATE_PASSED_WRONG_VALUE: (
        "a wrong value reached a side effect or the final output through a gate that ran and passed it",
        "FM-3.3"),
    FailureMode.UNVERIFIED_WRONG_VALUE: (
        "a wrong value (or an action the correct run never takes) reached a side effect or the final output "
        "with no gate in front of it", "FM-3.2"),
    FailureMode.GATE_EXHAUSTED: (
        "a gate kept rejecting until its retries ran out (the gate did its job; the labels beside it say why "
        "the redo could not repair the value)", None),
    FailureMode.TURN_LIMIT: (
        "the framework hit its iteration or routing limit, working the same steps again and again",
        "FM-1.5"),
    FailureMode.PREMATURE_TERMINATION: (
        "the flow ended without error while required side effects were still missing, and no lost, withheld "
        "or misrouted work explains it (a skipped tool call, a step that stopped early, a router that "
        "finished early)", "FM-3.1"),
    FailureMode.UNEXPLAINED: ("the episode failed and its trace shows none of the patterns above", None),
}

_PRECEDENCE = {mode: index for index, mode in enumerate(FailureMode)}

TRANSPORT_ERROR_TEXT = ("apiconnectionerror", "apitimeouterror", "internalservererror", "ratelimiterror",
                        "serviceunavailable", "apistatuserror", "error code: 429", "error code: 5",
                        "connection error", "remoteprotocolerror", "incomplete chunked read",
                        "peer closed connection", "timed out")
"""Lower-case fragments of an error message that name a failed HTTP exchange."""
MALFORMED_ERROR_TEXT = ("jsondecodeerror", "validationerror", "validation error", "outputparserexception",
                        "invalid json", "could not parse", "failed to parse", "unterminated string",
                        "expecting value", "json_invalid")
"""Lower-case fragments of an error message that name a model output the framework could not parse or validate."""
CRASHING_OUTPUT_FAULTS = frozenset({"malformed_tool_args", "unknown_tool", "format_drift", "omitted_field",
                                    "empty_answer", "tool_overload"})
"""Faults and mechanisms that spoil a model's output so that a strict framework may raise on it."""
WITHHOLDING_FAULTS = frozenset({"omitted_field", "empty_answer", "brief_loss"})
"""Faults and mechanisms that leave a value out of what a step hands on."""
STOPPING_FAULTS = frozenset({"skipped_tool", "premature_stop", "empty_answer", "unknown_tool",
                             "malformed_tool_args", "tool_overload"})
"""Faults and mechanisms after which a step may end without doing its part."""
WRONG_HANDOFF_TARGET = "wrong_handoff_target"
BRIEF_LOSS = "brief_loss"
MAX_ERROR_CHARS = 80
"""How much of an error message a summary quotes."""


@dataclass(frozen=True)
class Diagnosis:
    """A failed episode's failure modes, the injected faults behind them, and one sentence saying how it failed."""

    modes: tuple[FailureMode, ...]
    """Primary first; empty for a success (or an infra error, which is not scored)."""
    unrecovered_faults: tuple[str, ...]
    """Injected faults and mechanisms whose effect reached the end state, as ``STEP:FAULT@ATTEMPT``."""
    summary: str
    """One sentence: what happened for the primary label, its MAST mode, the other labels, the faults behind it."""
    unrecovered_kinds: tuple[str, ...] = ()
    """The kinds of :attr:`unrecovered_faults` (``wrong_value``, ``brief_loss``...), each once, in trace order."""

    @property
    def primary(self) -> FailureMode | None:
        """The primary label, or None for an episode that did not fail."""
        return self.modes[0] if self.modes else None


# -- reading stored rows ----------------------------------------------------------------------------

def _field(row: Any, name: str) -> Any:
    """``row[name]`` of a mapping or an ``sqlite3.Row``; None when the row has no such column."""
    try:
        return row[name]
    except (KeyError, IndexError, TypeError):
        return None


def _strings(value: Any) -> list[str]:
    """The strings in a stored list (anything else is ignored)."""
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The objects in a stored list (anything else is ignored)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _tool(signature: str) -> str:
    """The tool of a side effect's signature ``tool{arguments}``."""
    return signature.partition("{")[0]


@dataclass(frozen=True)
class _Event:
    kind: str
    role: str | None
    step: str | None
    detail: Mapping[str, Any]


def _event(row: Any) -> _Event:
    """One stored event (``detail_json`` text, or ``detail`` as :meth:`EpisodeResult.event_rows` gives it)."""
    stored = _field(row, "detail_json")
    detail = json_object(stored if stored is not None else _field(row, "detail"))
    kind, role, step = _field(row, "kind"), _field(row, "role"), _field(row, "step")
    return _Event(kind if isinstance(kind, str) else "", role if isinstance(role, str) else None,
                  step if isinstance(step, str) else None, detail)


@dataclass(frozen=True)
class _Fault:
    index: int
    """Position of the fault event in the trace."""
    name: str
    step: str | None
    attempt: int | None
    recovered: bool | None
    """None when the event does not say (a store before schema 2)."""

    def __str__(self) -> str:
        return f"{self.step or '?'}:{self.name}" + (f"@{self.attempt}" if self.attempt is not None else "")


def _faults(events: Sequence[_Event]) -> list[_Fault]:
    faults = []
    for index, event in enumerate(events):
        name = event.detail.get("fault")
        if event.kind != "fault" or not isinstance(name, str):
            continue
        attempt, recovered = event.detail.get("attempt"), event.detail.get("recovered")
        faults.append(_Fault(index, name, event.step, attempt if isinstance(attempt, int) else None,
                             recovered if isinstance(recovered, bool) else None))
    return faults


def _listing(items: Iterable[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(dict.fromkeys(items))
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _times(count: int) -> str:
    return {1: "once", 2: "twice"}.get(count, f"{count} times")


def _raised(error: str) -> str:
    """The head of an error message: its first line, without a response body, at most about 80 characters."""
    head = error.strip().splitlines()[0] if error.strip() else "an error"
    head = head.split(" - {", 1)[0].split(" - [", 1)[0]
    return head if len(head) <= MAX_ERROR_CHARS else head[:MAX_ERROR_CHARS].rsplit(" ", 1)[0] + "..."


# -- the classifier ---------------------------------------------------------------------------------

class _Episode:
    """The facts of one stored episode the detectors read, each computed once."""

    def __init__(self, episode: Any, events: Sequence[Any]):
        self.events = [_event(row) for row in events]
        ending = next((e.detail for e in reversed(self.events) if e.kind == "termination"), {})
        self.status = str(_field(episode, "status") or "")
        self.termination = str(_field(episode, "termination") or ending.get("termination") or "")
        error = _field(episode, "error") or ending.get("error") or ""
        self.error = error if isinstance(error, str) else str(error)
        verdict = json_object(_field(episode, "verdict_json"))
        self.unexpected = Counter(_tool(s) for s in _strings(verdict.get("unexpected_side_effects")))
        self.missing = Counter(_tool(s) for s in _strings(verdict.get("missing_side_effects")))
        self.failed_checks = _strings(verdict.get("failed_checks"))
        self.out_of_order = _strings(verdict.get("out_of_order"))
        self.faults = _faults(self.events)
        self.unrecovered = [f for f in self.faults if f.recovered is False]
        effects = [e.detail for e in self.events if e.kind == "side_effect" and isinstance(e.detail.get("tool"), str)]
        self.effects = Counter(d["tool"] for d in effects)
        self.duplicated = {tool for (tool, _), n in Counter(
            (d["tool"], json.dumps(d.get("arguments"), sort_keys=True, default=str)) for d in effects).items() if n > 1}
        self.misroute_windows, self.misrouted = self._misroutes()

    # -- small queries --------------------------------------------------------------------------

    def model_calls(self) -> list[tuple[int, _Event]]:
        """Model calls with their positions in the trace."""
        return [(i, e) for i, e in enumerate(self.events) if e.kind == "model_call"]

    def steps_calling(self, tool: str) -> set[str]:
        """Steps whose mutating call of ``tool`` went through (where its side effects came from).

        A tool call recorded without its step (a worker that does not know it) belongs to the
        step of the latest model call that asked for that tool.
        """
        steps, asked = set(), None
        for event in self.events:
            if event.kind == "model_call" and tool in _strings(event.detail.get("tool_calls")):
                asked = event.step
            elif (event.kind == "tool_call" and event.detail.get("name") == tool and event.detail.get("ok")
                  and event.detail.get("mutating") and (event.step or asked)):
                steps.add(event.step or asked)
        return steps

    def gate_passed(self, step: str | None) -> bool:
        return any(e.kind == "gate" and e.step == step and e.detail.get("passed") is True for e in self.events)

    def unrecovered_in(self, names: frozenset[str], steps: set[str] | None = None) -> list[_Fault]:
        return [f for f in self.unrecovered if f.name in names and (steps is None or f.step in steps)]

    def after(self, faults: list[_Fault]) -> str:
        """`` after send:skipped_tool@0`` naming the faults behind a consequence, or nothing."""
        return f" after {_listing(str(f) for f in faults)}" if faults else ""

    # -- side effects ---------------------------------------------------------------------------

    def repeated_effects(self) -> dict[str, tuple[int, int | None]]:
        """Tools that took effect more often than in the correct run: (times, times the correct run makes it)."""
        repeated: dict[str, tuple[int, int | None]] = {}
        for tool, extra in self.unexpected.items():
            surplus = extra - self.missing[tool]
            if surplus <= 0:
                continue
            expected = self.effects[tool] - surplus if self.effects else None
            if expected is None or expected > 0 or tool in self.duplicated:
                repeated[tool] = (self.effects[tool] if self.effects else surplus, expected)
        return repeated

    def wrong_effects(self) -> set[str]:
        """Tools that took effect with other arguments than in the correct run, or that it never calls."""
        wrong = {tool for tool in self.unexpected if self.missing[tool] > 0}
        repeated = self.repeated_effects()
        return wrong | {tool for tool in self.unexpected if tool not in repeated and self.unexpected[tool] >
                        self.missing[tool]}

    def missing_only(self) -> list[str]:
        """Tools of the correct run that never took effect (not merely with other arguments)."""
        return sorted(tool for tool, n in self.missing.items() if n > min(n, self.unexpected[tool]))

    def wrong_final_output(self) -> bool:
        """Checks failed with every side effect right: what is wrong is the final output (or state it drives)."""
        return (self.status == "failed_check" and bool(self.failed_checks) and not self.unexpected
                and not self.missing and self.termination in ("completed", "routed_out"))

    def final_step(self) -> str | None:
        for event in reversed(self.events):
            if event.kind in ("step_output", "model_call") and event.step:
                return event.step
        return None

    # -- routing --------------------------------------------------------------------------------

    def _misroutes(self) -> tuple[set[int], list[str]]:
        """Indices of events done on a misroute's account (up to the next routing decision), and a phrase for
        each misroute never made good.

        Beyond the recovery rule (:mod:`coordlab.runners.recovery`), which judges a misroute by
        the side effects it spoiled, a misroute is not made good when the misrouted step was only
        ever worked on by the role it was wrongly sent to, or when that role ran a step without
        its inputs and nobody ran that step again (a spoiled value, not a spoiled side effect).
        """
        windows: set[int] = set()
        never_made_good: list[str] = []
        for fault in (f for f in self.faults if f.name == WRONG_HANDOFF_TARGET):
            found = next((e.detail.get("route_target") for e in reversed(self.events[:fault.index])
                          if e.kind == "model_call" and e.detail.get("kind") == "route"), None)
            target = found if isinstance(found, str) else None
            window, end = [], len(self.events)
            for index in range(fault.index + 1, len(self.events)):
                event = self.events[index]
                if event.kind == "model_call" and event.detail.get("kind") == "route":
                    end = index
                    break
                window.append(index)
            windows.update(window)
            work = [e for e in self.events[fault.index + 1:]
                    if e.kind == "model_call" and e.detail.get("kind") != "route"]
            made_good = any(e.step == fault.step and e.role not in (target, None) for e in work)
            early = sorted({self.events[i].step or "?" for i in window if self.events[i].kind == "model_call"
                            and self.events[i].detail.get("handoff_issues")})
            redone = {e.step for e in self.events[end:] if e.kind == "model_call" and e.detail.get("kind") != "route"}
            spoiled = [step for step in early if step not in redone]
            sent = f"the router sent {fault.step} to {target or 'the wrong role'}"
            if fault.recovered is False:
                never_made_good.append(f"{sent} and it was never made good")
            elif fault.recovered is True and not made_good:
                never_made_good.append(f"{sent}, which did it in its owner's place")
            elif fault.recovered is True and spoiled:
                never_made_good.append(f"{sent}, which ran {_listing(spoiled)} without its inputs and nobody "
                                       f"ran it again")
        return windows, never_made_good

    # -- handoffs -------------------------------------------------------------------------------

    @cached_property
    def open_issues(self) -> list[tuple[int, _Event, dict[str, Any]]]:
        """Handoff issues still showing on the last request of their step (not made good), outside misroutes."""
        latest: dict[tuple[str | None, str], tuple[int, _Event, dict[str, Any]] | None] = {}
        for index, event in self.model_calls():
            if event.detail.get("kind") == "route":
                continue
            issues = {i["field"]: i for i in _dicts(event.detail.get("handoff_issues"))
                      if isinstance(i.get("field"), str)}
            for key in [k for k in latest if k[0] == event.step and k[1] not in issues]:
                latest[key] = None
            for name, issue in issues.items():
                latest[(event.step, name)] = (index, event, issue)
        return [item for item in latest.values() if item is not None and item[0] not in self.misroute_windows]

    def brief_lost(self, event: _Event) -> bool:
        """Whether a routing model's brief for this request's step attempt left a value out."""
        attempt = event.detail.get("attempt")
        return any(f.name == BRIEF_LOSS and f.step == event.step
                   and (f.attempt is None or not isinstance(attempt, int) or f.attempt == attempt)
                   for f in self.faults)

    def lost_values(self) -> list[str]:
        """``a and b (missing) to the redo of step``, per step, for the values the framework did not deliver
        as the model emitted them."""
        lost: dict[tuple[str, str], list[str]] = {}
        for _, event, issue in self.open_issues:
            if issue.get("cause") == "model_error" or self.brief_lost(event):
                continue
            if issue.get("expected") is None and issue.get("kind") == "missing":
                continue  # never emitted yet: the step ran too early (a misroute, an order breach), nothing was lost
            attempt = event.detail.get("attempt")
            reader = ("the redo of " if isinstance(attempt, int) and attempt > 0 else "") + (event.step or "a step")
            lost.setdefault((reader, str(issue.get("kind") or "lost")), []).append(issue["field"])
        return [f"{_listing(sorted(fields))} ({kind}) to {reader}" for (reader, kind), fields in lost.items()]

    def discarded_redos(self) -> list[str]:
        """Gates that rejected again after a redo the model answered right with its inputs intact.

        Only where no fault was left unrecovered before the rejection: a value spoiled upstream
        of the redo (and so not visible on its requests) would explain the rejection as well.
        """
        rejections = [i for i, e in enumerate(self.events) if e.kind == "gate" and e.detail.get("passed") is False]
        discarded = []
        for earlier, later in zip(rejections, rejections[1:]):
            between = self.events[earlier + 1:later]
            calls = [e for e in between if e.kind == "model_call"]
            if (self.events[earlier].step == self.events[later].step and calls
                    and not any(f.index < later for f in self.unrecovered)
                    and any(e.kind == "retry" and e.detail.get("source") == "framework" for e in between)
                    and not any(e.kind == "fault" for e in between)
                    and not any(e.detail.get("handoff_issues") or e.detail.get("mechanisms") for e in calls)):
                discarded.append(f"the gate before {self.events[later].step} rejected a redo of "
                                 f"{_listing(e.step or '?' for e in calls)} that the model answered right")
        return list(dict.fromkeys(discarded))

    def withheld_values(self) -> list[str]:
        """Values left out (of a brief, or by their producer) and not made good."""
        withheld = []
        for _, event, issue in self.open_issues:
            if self.brief_lost(event) and issue.get("cause") != "model_error":
                withheld.append(f"the value '{issue['field']}' was left out of the routing model's brief "
                                f"for {event.step}")
            elif issue.get("cause") == "model_error" and issue.get("received") is None:
                withheld.append(f"the value '{issue['field']}' never reached {event.step}: its producer left it out")
        if not withheld:  # no reader ran after the omission: only the fault shows it
            withheld += [f"{fault.step} left a value out ({fault}) and it was never made good"
                         for fault in self.unrecovered_in(WITHHOLDING_FAULTS)]
        return list(dict.fromkeys(withheld))

    # -- the detectors, one per label -----------------------------------------------------------

    def crash(self) -> tuple[FailureMode, str] | None:
        if self.status != "error" and self.termination != "error":
            return None
        text, raised = self.error.lower(), _raised(self.error)
        transport = self.unrecovered_in(frozenset(f.value for f in TRANSPORT_FAULTS))
        output = self.unrecovered_in(CRASHING_OUTPUT_FAULTS)
        if any(fragment in text for fragment in TRANSPORT_ERROR_TEXT) or (
                transport and not any(fragment in text for fragment in MALFORMED_ERROR_TEXT)):
            return FailureMode.TRANSPORT_ERROR, f"the framework raised {raised}{self.after(transport)}"
        if any(fragment in text for fragment in MALFORMED_ERROR_TEXT) or output:
            return FailureMode.MALFORMED_OUTPUT_CRASH, f"the framework raised {raised}{self.after(output)}"
        return FailureMode.FRAMEWORK_ERROR, f"the framework raised {raised}"

    def timeout(self) -> str | None:
        if self.status == "timeout" or self.termination == "timeout":
            return "the lab stopped the episode at its time limit" + (f": {_raised(self.error)}" if self.error else "")
        return None

    def repeated(self) -> str | None:
        repeated = self.repeated_effects()
        if not repeated:
            return None
        steps = set().union(*(self.steps_calling(tool) for tool in repeated))
        causes = [str(f) for f in self.faults if f.step in steps]
        retried = sorted({e.step for e in self.events if e.kind == "retry" and e.step in steps
                          and e.detail.get("source") == "framework"})
        causes += [f"a framework retry of {step}" for step in retried]
        what = _listing(f"{tool} took effect {_times(times)}" + (f" (the correct run: {_times(expected)})"
                        if expected else "") for tool, (times, expected) in sorted(repeated.items()))
        return what + (f" after {_listing(causes)}" if causes else "")

    def misroute(self) -> str | None:
        return _listing(self.misrouted) if self.misrouted else None

    def lost(self) -> str | None:
        lost, discarded = self.lost_values(), self.discarded_redos()
        if not lost and not discarded:
            return None
        parts = ([f"the framework did not deliver {_listing(lost)}"] if lost else []) + discarded
        return "; ".join(parts) + (": the framework kept the old values" if discarded and not lost else "")

    def withheld(self) -> str | None:
        withheld = self.withheld_values()
        return _listing(withheld) if withheld else None

    def order(self) -> str | None:
        return f"side effects out of order: {_listing(self.out_of_order)}" if self.out_of_order else None

    def wrong_value(self) -> tuple[str | None, str | None]:
        """(through a gate that passed it, with no gate) evidence of a wrong value that reached the end state."""
        reached: list[tuple[str, list[str]]] = [(tool, sorted(self.steps_calling(tool)))
                                                 for tool in sorted(self.wrong_effects())]
        if self.wrong_final_output():
            final = self.final_step()
            reached.append(("the final output", [final] if final else []))
        passed = [(what, [step for step in steps if self.gate_passed(step)]) for what, steps in reached]
        gated = [(what, steps) for what, steps in passed if steps]
        unverified = [what for what, steps in passed if not steps]
        wrong = self.after(self.unrecovered_in(frozenset({"wrong_value", "clash", "length", "buried"})))
        return ((f"the gate before {_listing(s for _, steps in gated for s in steps)} passed a wrong value that "
                 f"reached {_listing(what for what, _ in gated)}{wrong}") if gated else None,
                f"a wrong value reached {_listing(unverified)} with no gate in front of it{wrong}" if unverified
                else None)

    def gate_exhausted(self) -> str | None:
        if self.termination != "gate_exhausted":
            return None
        rejected = Counter(e.step or "?" for e in self.events if e.kind == "gate" and e.detail.get("passed") is False)
        if not rejected:
            return "a gate kept rejecting until its retries ran out"
        return _listing(f"the gate before {step} rejected {_times(n)}" for step, n in rejected.items()) + \
            " and the flow stopped there"

    def turn_limit(self) -> str | None:
        if self.termination != "max_turns":
            return None
        routes = Counter(e.step or "?" for _, e in self.model_calls() if e.detail.get("kind") == "route")
        if routes:
            step, n = routes.most_common(1)[0]
            return f"the router made {sum(routes.values())} routing decisions ({n} for {step}) until the turn limit"
        calls = Counter(e.step or "?" for _, e in self.model_calls())
        if calls:
            step, n = calls.most_common(1)[0]
            return f"the framework called the model {n} times for {step} until its turn limit"
        return "the framework hit its turn limit"

    def premature(self, explained: bool) -> str | None:
        missing = self.missing_only()
        if self.termination == "routed_out" and (missing or self.failed_checks):
            stopped = self.unrecovered_in(STOPPING_FAULTS)
            return ("the router ended the flow before every step ran" +
                    (f", leaving {_listing(missing)} undone" if missing else "") + self.after(stopped))
        if self.termination == "completed" and missing and not explained:
            stopped = self.unrecovered_in(STOPPING_FAULTS)
            return f"the flow completed with {_listing(missing)} never done{self.after(stopped)}"
        return None


def _diagnose(episode: Any, events: Sequence[Any]) -> Diagnosis:
    facts = _Episode(episode, events)
    unrecovered = tuple(dict.fromkeys(str(f) for f in facts.unrecovered))
    kinds = tuple(dict.fromkeys(f.name for f in facts.unrecovered))
    if facts.status not in SCORED_FAILURES:
        what = "not scored: the lab could not finish it" if facts.status == "infra_error" else "did not fail"
        return Diagnosis((), unrecovered, f"the episode {what}", kinds)
    found: dict[FailureMode, str] = {}
    crash = facts.crash()
    if crash:
        found[crash[0]] = crash[1]
    detected = {
        FailureMode.TIMEOUT: facts.timeout(), FailureMode.REPEATED_SIDE_EFFECT: facts.repeated(),
        FailureMode.MISROUTED: facts.misroute(), FailureMode.LOST_HANDOFF: facts.lost(),
        FailureMode.WITHHELD_INFORMATION: facts.withheld(), FailureMode.OUT_OF_ORDER: facts.order(),
        FailureMode.GATE_EXHAUSTED: facts.gate_exhausted(), FailureMode.TURN_LIMIT: facts.turn_limit(),
    }
    detected[FailureMode.GATE_PASSED_WRONG_VALUE], detected[FailureMode.UNVERIFIED_WRONG_VALUE] = facts.wrong_value()
    found.update({mode: evidence for mode, evidence in detected.items() if evidence})
    explained = bool(found.keys() & {FailureMode.MISROUTED, FailureMode.LOST_HANDOFF, FailureMode.WITHHELD_INFORMATION})
    premature = facts.premature(explained)
    if premature:
        found[FailureMode.PREMATURE_TERMINATION] = premature
    if not found:
        checks = _listing(facts.failed_checks) or "no check named"
        found[FailureMode.UNEXPLAINED] = f"the episode failed ({checks}) and its trace shows no known pattern"
    modes = tuple(sorted(found, key=_PRECEDENCE.__getitem__))
    primary = modes[0]
    tag = f"{primary.description}, MAST {primary.mast.id}" if primary.mast else f"{primary.description}, no MAST mode"
    summary = f"{found[primary]} ({tag})"
    if modes[1:]:
        summary += f"; also {', '.join(mode.value for mode in modes[1:])}"
    if unrecovered:
        summary += f"; unrecovered faults: {', '.join(unrecovered)}"
    return Diagnosis(modes, unrecovered, summary, kinds)


def diagnose(episode: Any, events: Sequence[Any]) -> Diagnosis:
    """How one episode failed: its labels (primary first), the unrecovered faults behind them, one sentence.

    ``episode`` is a row of the store's ``episodes`` table (an ``sqlite3.Row`` or any mapping,
    e.g. :meth:`EpisodeResult.to_row`); ``events`` are its ``events`` rows in trace order (with
    ``detail_json`` text, or ``detail`` dicts as :meth:`EpisodeResult.event_rows` gives them).
    Unknown event kinds and unreadable details are ignored.
    """
    return _diagnose(episode, events)


def classify(episode: Any, events: Sequence[Any]) -> list[FailureMode]:
    """The failure modes of one stored episode, primary first; empty for a success (see :func:`diagnose`)."""
    return list(_diagnose(episode, events).modes)


# -- reading a store --------------------------------------------------------------------------------

def _stored(store: Store, episode_ids: Iterable[int]) -> list[tuple[int, Any, list[Any]]]:
    """(id, episode row, its events) for each id, read with one query for the episodes and one for the events."""
    ids = sorted({int(episode_id) for episode_id in episode_ids})
    if not ids:
        return []
    # One JSON parameter instead of one per id: SQLite caps the number of bound parameters.
    wanted = "(SELECT value FROM json_each(?))"
    rows = {row["episode_id"]: row for row in
            store.query(f"SELECT * FROM episodes WHERE episode_id IN {wanted}", (json.dumps(ids),))}
    absent = [episode_id for episode_id in ids if episode_id not in rows]
    if absent:
        shown = ", ".join(map(str, absent[:5])) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        raise StoreError(f"store {store.path} has no episode {shown}")
    events: dict[int, list[Any]] = {episode_id: [] for episode_id in ids}
    for event in store.query(f"SELECT episode_id, seq, kind, role, step, detail_json FROM events "
                             f"WHERE episode_id IN {wanted} ORDER BY episode_id, seq", (json.dumps(ids),)):
        events[event["episode_id"]].append(event)
    return [(episode_id, rows[episode_id], events[episode_id]) for episode_id in ids]


def diagnose_episodes(store: Store, episode_ids: Iterable[int]) -> dict[int, Diagnosis]:
    """:func:`diagnose` for each of ``episode_ids`` in an open (read-only) store, by id.

    Two queries in all, however many episodes; an id the store lacks raises :class:`StoreError`.
    """
    return {episode_id: _diagnose(row, events) for episode_id, row, events in _stored(store, episode_ids)}


def failure_modes(store: Store, episode_ids: Iterable[int]) -> dict[int, list[FailureMode]]:
    """:func:`classify` for each of ``episode_ids`` in an open (read-only) store, by id."""
    return {episode_id: list(diagnosis.modes)
            for episode_id, diagnosis in diagnose_episodes(store, episode_ids).items()}
