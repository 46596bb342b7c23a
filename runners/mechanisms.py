"""Request-dependent failure mechanisms: how likely a model is to go wrong given what it was sent.

A scheduled fault (``runners/faults.py``) meets a step attempt whatever the framework
sent. A mechanism is different: its chance of acting is a *threshold* computed from the
request itself (its length, where a value sits in it, how many versions of a value it
carries, how many tools it offers), compared with one uniform draw per (seed, task
release, step, attempt, mechanism[, field or call]). Two frameworks therefore meet the same
draws, and one of them fails where the other does not only because its request set a
higher threshold. Every threshold is non-decreasing in what makes a request harder (more
tokens, more conflicting values, more extra tools), so a leaner request never meets a
higher threshold than a fuller one for the same draw.

Every mechanism is a profile knob; at zero (the default) it never acts. The published
measurements each one is modelled on are cited in ``docs/mechanisms.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any, Mapping

from .draws import uniform


class Mechanism(StrEnum):
    """A way the simulated model goes wrong because of what the request holds."""

    CLASH = "clash"
    """Two or more different values for a field the step reads: the model takes an older one."""
    LENGTH = "length"
    """A long request: the step's answer is wrong with a probability growing with its length."""
    BURIED = "buried"
    """A needed value only in the middle of a long request: the model misses it."""
    TOOL_OVERLOAD = "tool_overload"
    """More tools offered than the step needs: the model calls a wrong one."""
    BRIEF_LOSS = "brief_loss"
    """A routing model writing a delegation brief drops one of the values it could read."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Clash:
    """``rate``: the chance that a model shown two values for a field uses the older one.

    With ``n`` different values the chance is ``min(1, rate * log2(n))``: proactive
    interference grows log-linearly with the number of overwritten values (Wang & Sun 2025).
    """

    rate: float = 0.0

    def threshold(self, distinct_values: int) -> float:
        """Zero with one value; ``rate`` with two; one more ``rate`` per doubling after that."""
        if distinct_values < 2:
            return 0.0
        return min(1.0, self.rate * math.log2(distinct_values))


@dataclass(frozen=True)
class Length:
    """The step's answer is wrong with probability ``min(cap, rate * (tokens / reference_tokens) ** elasticity)``."""

    rate: float = 0.0
    reference_tokens: int = 1000
    elasticity: float = 1.0
    cap: float = 0.5

    def threshold(self, prompt_tokens: int) -> float:
        """The error probability of an answer to a request of ``prompt_tokens`` tokens."""
        if self.rate <= 0 or prompt_tokens <= 0:
            return 0.0
        return min(self.cap, self.rate * (prompt_tokens / self.reference_tokens) ** self.elasticity)


@dataclass(frozen=True)
class Buried:
    """A value whose every mention lies in the middle ``band`` of the request is missed.

    The probability is ``rate * min(1, tokens / reference_tokens)``: a short prompt has no
    middle to get lost in, and ``rate`` is the miss probability at the reference size.
    """

    rate: float = 0.0
    reference_tokens: int = 2000
    band: tuple[float, float] = (0.25, 0.75)

    def threshold(self, prompt_tokens: int, positions: tuple[float, ...]) -> float:
        """The miss probability of a value mentioned at ``positions`` (0 = start, 1 = end of the request)."""
        low, high = self.band
        if self.rate <= 0 or not positions or not all(low <= p <= high for p in positions):
            return 0.0
        return self.rate * min(1.0, prompt_tokens / self.reference_tokens)


@dataclass(frozen=True)
class ToolOverload:
    """``rate``: the chance of calling a wrong tool per doubling of the tools offered over those the step uses.

    The right tool is picked with probability ``(1 - rate) ** log2(offered / needed)``:
    tool-selection accuracy falls by a constant factor each time the catalogue doubles.
    """

    rate: float = 0.0

    def threshold(self, offered: int, needed: int) -> float:
        """Zero when only the step's own tools are offered; grows with every doubling beyond them."""
        if self.rate <= 0 or offered <= needed or needed <= 0:
            return 0.0
        return 1.0 - (1.0 - self.rate) ** math.log2(offered / needed)


@dataclass(frozen=True)
class BriefLoss:
    """``rate``: the chance that a delegation brief leaves out one of the values the router could read."""

    rate: float = 0.0

    def threshold(self, values_in_brief: int) -> float:
        """``rate`` when the brief carries a value to lose, else zero."""
        return self.rate if values_in_brief > 0 else 0.0


@dataclass(frozen=True)
class Mechanisms:
    """A profile's mechanism knobs; all zero unless the profile sets them."""

    clash: Clash = field(default_factory=Clash)
    length: Length = field(default_factory=Length)
    buried: Buried = field(default_factory=Buried)
    tool_overload: ToolOverload = field(default_factory=ToolOverload)
    brief_loss: BriefLoss = field(default_factory=BriefLoss)

    @property
    def active(self) -> bool:
        """True when any mechanism can act."""
        return any(getattr(self, m.value).rate > 0 for m in Mechanism)

    def to_dict(self) -> dict[str, Any]:
        """The non-zero knobs, as a profile file writes them (part of a user profile's digest)."""
        return {m.value: asdict(getattr(self, m.value)) for m in Mechanism if getattr(self, m.value).rate > 0}


@dataclass(frozen=True)
class Draws:
    """The draws one step attempt meets: a uniform per mechanism and field (or call)."""

    seed: int
    task_release: str
    step: str
    attempt: int

    def __call__(self, mechanism: Mechanism | str, *detail: Any) -> float:
        """The uniform for ``mechanism`` (and a field name or call index) on this step attempt."""
        return uniform(self.seed, self.task_release, self.step, self.attempt, str(mechanism), *detail)


_KNOBS: dict[Mechanism, Any] = {Mechanism(f.name): f.default_factory for f in fields(Mechanisms)}
"""Each mechanism's settings class, read off :class:`Mechanisms` so the two cannot drift apart."""


def _probability(name: str, value: Any, problems: list[str]) -> float:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        problems.append(f"{name}: must be a probability in [0, 1], got {value!r}")
        return 0.0
    return float(value)


def _knob(mechanism: Mechanism, spec: Any, problems: list[str]) -> Any:
    where = f"mechanisms.{mechanism.value}"
    if not isinstance(spec, Mapping):
        problems.append(f"{where}: expected a mapping of settings, got {type(spec).__name__}")
        return _KNOBS[mechanism]()
    defaults = _KNOBS[mechanism]()
    allowed = set(asdict(defaults))
    settings: dict[str, Any] = {}
    for key, value in spec.items():
        name = f"{where}.{key}"
        if key not in allowed:
            problems.append(f"{name}: unknown setting; {mechanism.value} takes {', '.join(sorted(allowed))}")
        elif key in ("rate", "cap"):
            settings[key] = _probability(name, value, problems)
        elif key == "reference_tokens":
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name}: must be a positive whole number of tokens, got {value!r}")
            else:
                settings[key] = value
        elif key == "elasticity":
            if not _is_number(value) or not 0 <= value <= 10:
                problems.append(f"{name}: must be a number in [0, 10], got {value!r}")
            else:
                settings[key] = float(value)
        elif key == "band":
            if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)
                    and 0 <= value[0] < value[1] <= 1):
                problems.append(f"{name}: must be [low, high] with 0 <= low < high <= 1, got {value!r}")
            else:
                settings[key] = (float(value[0]), float(value[1]))
    return type(defaults)(**settings)


def mechanisms_from_mapping(spec: Any, problems: list[str]) -> Mechanisms:
    """Parse a profile's ``mechanisms:`` section, appending located problems."""
    if spec is None:
        return Mechanisms()
    if not isinstance(spec, Mapping):
        problems.append(f"mechanisms: expected a mapping of mechanism names to settings, got {type(spec).__name__}")
        return Mechanisms()
    knobs: dict[str, Any] = {}
    for name, settings in spec.items():
        try:
            mechanism = Mechanism(str(name))
        except ValueError:
            problems.append(f"mechanisms.{name}: unknown mechanism; known: {', '.join(m.value for m in Mechanism)}")
            continue
        knobs[mechanism.value] = _knob(mechanism, settings, problems)
    return Mechanisms(**knobs)
