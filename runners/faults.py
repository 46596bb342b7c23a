"""Seeded fault schedules: which fault, if any, meets a step on a given attempt.

The schedule is a pure function of (seed, episode key, step, attempt) and the profile's
rates. The framework and the control variant are not inputs, so every framework meets the
same fault on the same logical step, and a rerun meets it again. The profile is not part
of the hash either: the draw for a step is one uniform number compared with the profile's
rate, so the faults of the 1% profile are a subset of the 3% profile's (common random
numbers), which makes comparisons across rates less noisy.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Iterable, Mapping

from coordlab.tasks.loader import did_you_mean
from coordlab.tasks.schema import Step, Task
from coordlab.tasks.yaml_files import read_yaml_file

from .draws import uniform
from .mechanisms import Mechanisms, mechanisms_from_mapping

PROFILES_DIR = Path(__file__).parent / "profiles"
"""Where the built-in fault profiles live."""


class Fault(StrEnum):
    """Every fault the simulator can inject."""

    # model faults: the reply is well-formed HTTP but wrong as a model's answer can be wrong
    WRONG_VALUE = "wrong_value"
    OMITTED_FIELD = "omitted_field"
    MALFORMED_TOOL_ARGS = "malformed_tool_args"
    UNKNOWN_TOOL = "unknown_tool"
    SKIPPED_TOOL = "skipped_tool"
    PREMATURE_STOP = "premature_stop"
    WRONG_HANDOFF_TARGET = "wrong_handoff_target"
    REPEATED_SIDE_EFFECT = "repeated_side_effect"
    EMPTY_ANSWER = "empty_answer"
    FORMAT_DRIFT = "format_drift"
    """The answer's JSON comes wrapped in prose or a code fence, or followed by text (not under structured output)."""
    # a fault of the outside system: the tool applied its change, then its response was lost
    TOOL_ERROR_AFTER_EFFECT = "tool_error_after_effect"
    # transport faults: the HTTP exchange itself fails
    HTTP_429 = "http_429"
    HTTP_500 = "http_500"
    HTTP_503 = "http_503"
    STALL = "stall"
    CONNECTION_RESET = "connection_reset"
    TRUNCATED_BODY = "truncated_body"

    @property
    def is_transport(self) -> bool:
        """True for faults of the HTTP exchange rather than of the model's answer."""
        return self in TRANSPORT_FAULTS


TRANSPORT_FAULTS = frozenset({Fault.HTTP_429, Fault.HTTP_500, Fault.HTTP_503, Fault.STALL,
                              Fault.CONNECTION_RESET, Fault.TRUNCATED_BODY})
TOOL_FAULTS = frozenset({Fault.MALFORMED_TOOL_ARGS, Fault.UNKNOWN_TOOL, Fault.SKIPPED_TOOL})
OUTPUT_FAULTS = frozenset({Fault.WRONG_VALUE, Fault.OMITTED_FIELD, Fault.FORMAT_DRIFT})
MUTATION_FAULTS = frozenset({Fault.REPEATED_SIDE_EFFECT, Fault.TOOL_ERROR_AFTER_EFFECT})
PROXY_CANNOT_ACT = frozenset({Fault.SKIPPED_TOOL, Fault.WRONG_HANDOFF_TARGET})
"""Faults the fault proxy cannot act out on a real model's answer: each would need it to write the model's
decision (an answer without the tool call, another agent's name); in front of a live endpoint they lapse."""


def applicable_faults(step: Step, routed: bool = True) -> frozenset[Fault]:
    """The faults that can meet ``step``: tool faults need tools, a repeated effect a mutating tool.

    A wrong handoff target needs a model that routes (``routed``: the delegated variant);
    where nobody routes, the profile's weights are renormalised over the other faults, so a
    rate means the same share of step attempts meeting a fault in every variant.
    """
    faults = set(Fault) - TOOL_FAULTS - OUTPUT_FAULTS - MUTATION_FAULTS
    if step.tool_calls:
        faults |= TOOL_FAULTS
    if step.mutating:
        faults |= MUTATION_FAULTS
    if step.produces:
        faults |= OUTPUT_FAULTS
    if not routed:
        faults.discard(Fault.WRONG_HANDOFF_TARGET)
    return frozenset(faults)


class ProfileError(ValueError):
    """A fault profile is malformed or unknown."""


@dataclass(frozen=True)
class FaultProfile:
    """A named mix of faults and the per-step rate at which one of them is injected."""

    name: str
    description: str
    rate: float
    """Probability that a step attempt meets a fault."""
    weights: Mapping[Fault, float]
    """Relative weight of each fault kind; renormalised over the kinds a step admits."""
    stall_seconds: float = 5.0
    """How long a stalled request hangs before the server drops it."""
    retry_after_ms: int = 20
    """The delay a 429 asks the client to wait."""
    burst: int = 1
    """How many consecutive requests of a step attempt a transport fault fails (beyond a client's retries when large)."""
    mechanisms: Mechanisms = field(default_factory=Mechanisms)
    """The request-dependent failure mechanisms and their strengths (all off by default)."""
    builtin: bool = False
    """True for a profile shipped with coordlab (read from its profiles folder)."""

    @property
    def key(self) -> str:
        """The profile as episode keys name it: a built-in's name, or ``name@digest`` for a user's file.

        The digest is over the profile's contents, so a user's profile never pools with a
        built-in of the same name, two files with the same contents are one profile, and an
        edited file is a new one; the same key is used for jobs, rows and resume.
        """
        if self.builtin:
            return self.name
        contents: list[Any] = [self.rate, sorted((f.value, w) for f, w in self.weights.items()), self.stall_seconds,
                               self.retry_after_ms]
        if self.burst != 1 or self.mechanisms.active:  # a profile without the newer knobs keeps its digest
            contents += [self.burst, self.mechanisms.to_dict()]
        return f"{self.name}@{hashlib.sha256(json.dumps(contents).encode()).hexdigest()[:8]}"

    @property
    def deterministic(self) -> bool:
        """True when the profile injects nothing, so against the simulator every seed is the same episode.

        The seed only picks fault draws; with no fault and no mechanism to draw, seeds 0 and 1
        of a cell are copies, and counting them as two observations would be pseudo-replication.
        """
        return not (self.rate > 0 and any(weight > 0 for weight in self.weights.values())) and not self.mechanisms.active


def scheduled_fault(profile: FaultProfile, seed: int, episode_key: str, step: Step, attempt: int,
                    routed: bool = True) -> Fault | None:
    """The fault scheduled for ``step`` on ``attempt`` (0-based) of episode ``episode_key``."""
    if profile.rate <= 0 or uniform(seed, episode_key, step.id, attempt, "draw") >= profile.rate:
        return None
    admitted = applicable_faults(step, routed)
    candidates = [(fault, weight) for fault, weight in sorted(profile.weights.items()) if fault in admitted and weight > 0]
    if not candidates:
        return None
    point = uniform(seed, episode_key, step.id, attempt, "kind") * sum(w for _, w in candidates)
    for fault, weight in candidates:
        point -= weight
        if point < 0:
            return fault
    return candidates[-1][0]


@dataclass(frozen=True, order=True)
class ForcedFault:
    """A fault pinned on one step and attempt, for tests and demonstrations."""

    step: str
    fault: Fault
    attempt: int = 0
    """The 0-based attempt of the step it meets; a later one only exists when the step is redone."""

    def __str__(self) -> str:
        """The canonical ``STEP:FAULT@ATTEMPT`` form (what ``--force`` reads back)."""
        return f"{self.step}:{self.fault.value}@{self.attempt}"


@dataclass(frozen=True)
class FaultPlan:
    """The schedule of one episode: profile and seed, plus any forced faults (which take precedence)."""

    profile: FaultProfile
    seed: int
    forced: tuple[ForcedFault, ...] = field(default=())
    routed: bool = True
    """Whether a model routes the work in this episode (the delegated variant); the harness sets it."""

    def fault_for(self, episode_key: str, step: Step, attempt: int) -> Fault | None:
        """The fault meeting ``step`` on ``attempt``; forced faults replace the drawn one."""
        for forced in self.forced:
            if forced.step == step.id and forced.attempt == attempt:
                return forced.fault
        return scheduled_fault(self.profile, self.seed, episode_key, step, attempt, self.routed)


def parse_fault(name: str) -> Fault:
    """A fault by name, with "did you mean" on a typo."""
    try:
        return Fault(name)
    except ValueError:
        raise ProfileError(f"unknown fault {name!r}; {did_you_mean(name, [f.value for f in Fault])}") from None


_PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_PROFILE_FIELDS = {"name", "description", "rate", "faults", "stall_seconds", "retry_after_ms", "burst", "mechanisms"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _weights(spec: Any, problems: list[str]) -> dict[Fault, float]:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        problems.append(f"faults: expected a mapping of fault names to weights, got {type(spec).__name__}")
        return {}
    weights: dict[Fault, float] = {}
    for name, weight in spec.items():
        try:
            fault = parse_fault(str(name))
        except ProfileError as exc:
            problems.append(f"faults.{name}: {exc}")
            continue
        if not _is_number(weight) or weight < 0:
            problems.append(f"faults.{name}: weight must be a non-negative number (finite), got {weight!r}")
            continue
        weights[fault] = float(weight)
    return weights


def profile_from_mapping(data: Any, source: str, builtin: bool = False) -> FaultProfile:
    """Build a profile from parsed YAML, naming the file and field of every problem."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a fault profile must be a mapping")
    problems = [f"unknown field {k!r}; {did_you_mean(str(k), _PROFILE_FIELDS)}" for k in data if k not in _PROFILE_FIELDS]
    name = data.get("name")
    if not isinstance(name, str) or not _PROFILE_NAME.fullmatch(name):
        problems.append(f"name: required, lower-case letters, digits, '_', '.' or '-' (at most 64), got {name!r}")
    rate = data.get("rate", 0.0)
    if not _is_number(rate) or not 0.0 <= rate <= 1.0:
        problems.append(f"rate: must be a number in [0, 1], got {rate!r}")
    weights = _weights(data.get("faults"), problems)
    if _is_number(rate) and rate and not weights:
        problems.append("faults: a profile with a non-zero rate needs at least one fault")
    stall = data.get("stall_seconds", 5.0)
    if not _is_number(stall) or not 0 < stall <= 600:
        problems.append(f"stall_seconds: must be a number of seconds in (0, 600], got {stall!r}")
    retry_after = data.get("retry_after_ms", 20)
    if not isinstance(retry_after, int) or isinstance(retry_after, bool) or not 0 <= retry_after <= 600_000:
        problems.append(f"retry_after_ms: must be an integer in [0, 600000], got {retry_after!r}")
    burst = data.get("burst", 1)
    if not isinstance(burst, int) or isinstance(burst, bool) or not 1 <= burst <= 20:
        problems.append(f"burst: must be a whole number of consecutive failures in [1, 20], got {burst!r}")
    mechanisms = mechanisms_from_mapping(data.get("mechanisms"), problems)
    description = data.get("description", "")
    if not isinstance(description, str):
        problems.append(f"description: expected text, got {type(description).__name__}")
    if problems:
        raise ProfileError(f"{source}: " + "; ".join(problems))
    return FaultProfile(name=name, description=description.strip(), rate=float(rate), weights=weights,
                        stall_seconds=float(stall), retry_after_ms=retry_after, burst=burst, mechanisms=mechanisms,
                        builtin=builtin)


def profile_names() -> list[str]:
    """The built-in profiles' names."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> FaultProfile:
    """A built-in profile by name, or a profile file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        if str(name_or_path) not in profile_names():
            raise ProfileError(f"no fault profile {str(name_or_path)!r}; {did_you_mean(str(name_or_path), profile_names())}")
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    builtin = path.resolve().parent == PROFILES_DIR.resolve()
    return profile_from_mapping(read_yaml_file(path, ProfileError), str(path), builtin)


FORCE_FORM = "STEP:FAULT or STEP:FAULT@ATTEMPT (ATTEMPT a whole number from 0), e.g. send:http_429@1"
"""The form of one forced fault, as every error about one spells it."""


def forced_faults(specs: Iterable[str | ForcedFault], where: str = "--force") -> tuple[ForcedFault, ...]:
    """Parse ``STEP:FAULT[@ATTEMPT]`` strings (the CLI's ``--force``), deduplicated and sorted.

    ``where`` names the flag or field in errors. Two different faults pinned on the same step
    and attempt are refused: only one of them could ever act.
    """
    forced: dict[tuple[str, int], ForcedFault] = {}
    for spec in specs:
        if isinstance(spec, ForcedFault):
            item = spec
        else:
            if not isinstance(spec, str):
                raise ProfileError(f"{where} {spec!r}: expected text of the form {FORCE_FORM}")
            step, colon, rest = spec.strip().partition(":")
            fault, _, attempt = rest.partition("@")
            if not colon or not step or not fault or (attempt and not attempt.isdigit()):
                raise ProfileError(f"{where} {spec!r}: expected {FORCE_FORM}")
            try:
                item = ForcedFault(step, parse_fault(fault), int(attempt) if attempt else 0)
            except ProfileError as exc:
                raise ProfileError(f"{where} {spec!r}: {exc}") from None
        earlier = forced.setdefault((item.step, item.attempt), item)
        if earlier != item:
            raise ProfileError(f"{where}: {earlier} and {item} pin two faults on the same step and attempt; "
                               "only one can act, keep one")
    return tuple(sorted(forced.values()))


def forced_profile_key(profile_key: str, forced: Iterable[ForcedFault]) -> str:
    """A profile's key in episode keys with faults forced on top, e.g. ``none+force(send:repeated_side_effect@0)``.

    Forced faults decide outcomes, so they are part of the key; without any the key is the
    profile's own, unchanged. The form is sorted and canonical (``@0`` always written) and
    has no '/' (episode keys are split on it).
    """
    specs = sorted({str(f) for f in forced})
    return f"{profile_key}+force({','.join(specs)})" if specs else profile_key


def _why_not(fault: Fault, step: Step) -> str:
    """Why ``fault`` cannot meet ``step`` (one of the rules of :func:`applicable_faults`)."""
    if fault in TOOL_FAULTS:
        return f"{fault.value} is a tool-call fault and step {step.id!r} calls no tool"
    if fault in MUTATION_FAULTS:
        return f"{fault.value} acts on a mutating tool call and step {step.id!r} calls no mutating tool"
    if fault in OUTPUT_FAULTS:
        return f"{fault.value} alters an output and step {step.id!r} produces none"
    return f"{fault.value} cannot meet step {step.id!r}"


def check_forced(forced: Iterable[ForcedFault], task: Task, routed: bool = True, where: str = "--force") -> None:
    """Refuse forced faults that would silently do nothing in ``task``: unknown steps, faults a step cannot meet.

    ``routed`` says whether any episode has a model routing the work (the ``delegated``
    variant), the only place a ``wrong_handoff_target`` acts.
    """
    steps = {step.id: step for step in task.steps}
    for item in forced:
        step = steps.get(item.step)
        if step is None:
            raise ProfileError(f"{where} {str(item)!r}: task {task.key} has no step {item.step!r} "
                               f"({did_you_mean(item.step, steps)}); a forced step must exist in every task "
                               f"of the sweep, or it would do nothing there")
        if item.fault not in applicable_faults(step):
            raise ProfileError(f"{where} {str(item)!r}: in task {task.key}, {_why_not(item.fault, step)}, "
                               f"so it would never be injected; faults step {step.id!r} admits: "
                               f"{', '.join(sorted(f.value for f in applicable_faults(step)))}")
        if item.fault is Fault.WRONG_HANDOFF_TARGET and not routed:
            raise ProfileError(f"{where} {str(item)!r}: wrong_handoff_target only acts where a model routes "
                               f"the work (the delegated variant), and no episode of this sweep is delegated; "
                               f"add the delegated variant or force another fault")
