"""Typed records for a task: roles, ordered steps, gates, checks and the oracle.

A :class:`Task` is what the loader returns and what every adapter builds from. The oracle
(each step's tool plan and output expressions) travels with the task because the simulated
model answers from it; adapters must never show it to a framework.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .expressions import Expression
from .tools import Tool

SCHEMA_VERSION = 1
"""The task-file schema this loader reads (``schema_version`` in every task file)."""

_CONTENT_HASH = re.compile(r"\+([0-9a-f]+)(?=\[|$)")

STEP_MARKER = "[coordlab:step={step}]"
"""Tag placed in each step's instruction; the simulator finds the current step by it."""


def split_task_key(key: str) -> tuple[str, str | None]:
    """``chain@1+3f2a9c0d41be[n=6]`` -> (``chain@1[n=6]``, ``3f2a9c0d41be``); a key from before content hashes: (key, None)."""
    match = _CONTENT_HASH.search(key)
    return (key, None) if match is None else (key[:match.start()] + key[match.end():], match.group(1))


@dataclass(frozen=True)
class Role:
    """An agent: what it is for, how it should behave, and the tools it may use."""

    name: str
    goal: str
    instructions: str
    tools: tuple[str, ...]


@dataclass(frozen=True)
class ToolCallPlan:
    """One tool call a correct model makes during a step, with argument expressions."""

    tool: str
    arguments: Mapping[str, Expression]
    bind: str
    """Name under which the call's result is visible to later expressions of the step."""
    spec: Tool = field(compare=False, repr=False)
    """The tool itself, resolved when the task loads (built-in, plug-in or declared in the task)."""
    when: Expression | None = None
    """A branch: the call is made only when this holds over the step's reads and earlier results."""


@dataclass(frozen=True)
class OutputField:
    """One field a step produces: the correct value, and a plausible wrong one for faults."""

    name: str
    value: Expression
    wrong: Expression | None = None


@dataclass(frozen=True)
class Step:
    """One unit of work in the flow: who does it, what it reads, calls and produces."""

    id: str
    role: str
    instruction: str
    reads: tuple[str, ...]
    tool_calls: tuple[ToolCallPlan, ...]
    produces: tuple[OutputField, ...]

    @property
    def tools(self) -> tuple[Tool, ...]:
        """The distinct tools this step may use (on any branch), in plan order."""
        return tuple({c.tool: c.spec for c in self.tool_calls}.values())

    @property
    def mutating(self) -> bool:
        """True when the step may change the world on some branch (a gate belongs in front of it)."""
        return any(t.mutating for t in self.tools)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the produced fields, in order."""
        return tuple(f.name for f in self.produces)

    @property
    def marker(self) -> str:
        """The tag that identifies this step in a prompt."""
        return STEP_MARKER.format(step=self.id)


@dataclass(frozen=True)
class Gate:
    """A verification predicate that must hold before a mutating step runs."""

    before: str
    predicate: Expression
    retry: str
    """The step to redo when the gate rejects (by default the one right before ``before``)."""
    message: str


@dataclass(frozen=True)
class Check:
    """One end-state condition on the world after the episode."""

    predicate: Expression
    description: str


@dataclass(frozen=True)
class Task:
    """A versioned multi-step, multi-agent task with its fixtures and oracle."""

    name: str
    version: int
    description: str
    params: Mapping[str, int]
    inputs: Mapping[str, Any]
    roles: Mapping[str, Role]
    steps: tuple[Step, ...]
    gates: tuple[Gate, ...]
    checks: tuple[Check, ...]
    fixtures: Mapping[str, Any]
    tools: Mapping[str, Tool] = field(default_factory=dict, compare=False, repr=False)
    """Every tool the task's steps and gates use, by name."""
    side_effect_order: tuple[str, ...] = ()
    """Mutating tools whose side effects must happen in this order (empty: any order); scoring fails a breach."""
    content_hash: str = ""
    """A digest of everything that decides the task's episodes: its file's content and its tools' definitions."""
    source: Path | None = field(default=None, compare=False)
    schema_version: int = SCHEMA_VERSION

    @property
    def key(self) -> str:
        """``name@version+hash``, plus parameters when set (``chain@1+3f2a9c0d41be[n=6]``): part of an episode key.

        The content hash makes the key content-addressed: an edited task whose version was
        not bumped can never be mixed with the results of the old one.
        """
        return self._key(f"+{self.content_hash}" if self.content_hash else "")

    @property
    def release(self) -> str:
        """``name@version[params]``, the key without its content hash.

        Fault draws are seeded with it (editing a task's wording keeps its draws, so old and
        new versions stay paired), and a store refuses two content hashes for one release.
        """
        return self._key("")

    def _key(self, content: str) -> str:
        suffix = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.name}@{self.version}{content}" + (f"[{suffix}]" if suffix else "")

    def step(self, step_id: str) -> Step:
        """The step called ``step_id``."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(f"task {self.name!r} has no step {step_id!r}")

    def gate_before(self, step_id: str) -> Gate | None:
        """The gate guarding ``step_id``, if any."""
        return next((g for g in self.gates if g.before == step_id), None)

    def producer_of(self, field_name: str) -> Step | None:
        """The step that produces ``field_name`` (None for task inputs)."""
        return next((s for s in self.steps if field_name in s.output_names), None)

    def steps_of(self, role: str) -> tuple[Step, ...]:
        """The steps ``role`` performs, in flow order."""
        return tuple(s for s in self.steps if s.role == role)
