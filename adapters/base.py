"""The adapter protocol: build a task for a control variant against a model endpoint, run one episode.

An adapter is thin on purpose. It wires the task's roles and steps in its framework's own
idiom and hands every tool call, gate and handoff to the shared :class:`EpisodeContext`,
which executes tools on the episode's world and records the normalised trace. The lab
(simulator, scoring, trace joining) lives outside the adapter, so every framework is
measured by the same code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

from coordlab.tasks.schema import Task
from coordlab.tasks.world import World

from .trace import TraceRecorder


class Variant(StrEnum):
    """How a framework idiomatically wires the same task."""

    LINEAR = "linear"
    """The steps in order, outputs passed on, no verification."""
    GATED = "gated"
    """The task's gate before every mutating step, with a bounded number of retries."""
    DELEGATED = "delegated"
    """A model chooses who works next."""


class ToolTransport(StrEnum):
    """How an agent reaches the suite's tools."""

    NATIVE = "native"
    """The framework's own in-process tools, whose bodies are the lab's."""
    MCP = "mcp"
    """The lab's MCP server (:mod:`coordlab.runners.tool_server`), through the framework's own MCP client."""


class Termination(StrEnum):
    """How an episode ended, the same enum for every framework."""

    COMPLETED = "completed"
    """The flow ran to its end (the world is then scored)."""
    GATE_EXHAUSTED = "gate_exhausted"
    """A gate kept rejecting until the retry bound; the guarded step did not run."""
    MAX_TURNS = "max_turns"
    """The framework's iteration or recursion limit stopped it."""
    ROUTED_OUT = "routed_out"
    """A delegating model ended the flow (or looped) before every step ran."""
    ERROR = "error"
    """The framework raised (for example after the client gave up retrying)."""
    TIMEOUT = "timeout"
    """The lab killed the episode at its time limit."""


@dataclass(frozen=True)
class Knobs:
    """Every setting that could tilt a comparison, fixed in one place and recorded with each outcome."""

    temperature: float = 0.0
    """Sampling temperature sent to the model (the simulator ignores it; live models do not)."""
    max_iterations: int = 8
    """Model turns an agent may take within one step (CrewAI ``max_iter``, AutoGen tool iterations...)."""
    gate_retries: int = 2
    """How many times a rejected step is redone before the episode gives up."""
    max_routing_turns: int = 12
    """Routing decisions a delegating model may make in one episode."""
    tool_reflection: bool = False
    """Whether an agent makes an extra model call to reflect on a tool result (AutoGen ``reflect_on_tool_use``)."""
    client_max_retries: int | None = None
    """HTTP retries of the model client; None keeps the client's default (openai SDK: 2)."""
    client_timeout: float | None = None
    """Seconds before the model client gives up on a request; None keeps the client's default."""
    idempotency_keys: bool = False
    """Whether mutating tools carry an idempotency key (derived from the tool and its arguments) that the
    outside system honours: a repeated call returns the first result and changes nothing. A tool contract,
    the same for every framework; off by default, as most tools are written."""
    tool_transport: ToolTransport = ToolTransport.NATIVE
    """How agents reach the tools: the framework's native tools, or the lab's MCP server through the
    framework's own MCP client (the same schemas and tool bodies either way)."""

    def __post_init__(self) -> None:
        if isinstance(self.tool_transport, str) and self.tool_transport in {t.value for t in ToolTransport}:
            object.__setattr__(self, "tool_transport", ToolTransport(self.tool_transport))  # as read from YAML
        problems = knob_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The knobs as a JSON-ready dict (stored with every outcome)."""
        return asdict(self)

    def client_options(self) -> dict[str, Any]:
        """``max_retries``/``timeout`` for a model client, only where a knob sets them.

        Knobs left at None keep each client's own defaults (every framework's client takes
        these two keyword arguments).
        """
        options: dict[str, Any] = {}
        if self.client_max_retries is not None:
            options["max_retries"] = self.client_max_retries
        if self.client_timeout is not None:
            options["timeout"] = self.client_timeout
        return options


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def knob_problems(knobs: Knobs) -> list[str]:
    """Every knob whose type or range no framework could honour, as ``knobs.NAME: ...`` sentences."""
    checks: list[tuple[str, bool, str]] = [
        ("temperature", _is_finite(knobs.temperature) and 0 <= knobs.temperature <= 2, "a number in [0, 2]"),
        ("max_iterations", _is_int(knobs.max_iterations) and 1 <= knobs.max_iterations <= 100,
         "an integer in [1, 100]"),
        ("gate_retries", _is_int(knobs.gate_retries) and 0 <= knobs.gate_retries <= 20, "an integer in [0, 20]"),
        ("max_routing_turns", _is_int(knobs.max_routing_turns) and 1 <= knobs.max_routing_turns <= 200,
         "an integer in [1, 200]"),
        ("tool_reflection", isinstance(knobs.tool_reflection, bool), "true or false"),
        ("idempotency_keys", isinstance(knobs.idempotency_keys, bool), "true or false"),
        ("tool_transport", isinstance(knobs.tool_transport, ToolTransport),
         " or ".join(repr(t.value) for t in ToolTransport)),
        ("client_max_retries", knobs.client_max_retries is None
         or (_is_int(knobs.client_max_retries) and 0 <= knobs.client_max_retries <= 20),
         "an integer in [0, 20] (or unset for the client's default)"),
        ("client_timeout", knobs.client_timeout is None
         or (_is_finite(knobs.client_timeout) and 0 < knobs.client_timeout <= 3600),
         "seconds in (0, 3600] (or unset for the client's default)"),
    ]
    return [f"knobs.{name}: must be {what}, got {getattr(knobs, name)!r}" for name, ok, what in checks if not ok]


@dataclass(frozen=True)
class Endpoint:
    """Where an adapter's model clients point: one base URL per role (and one for the router)."""

    base_urls: dict[str, str]
    model: str
    api_key: str
    tool_urls: dict[str, str] = field(default_factory=dict)
    """Each role's MCP endpoint when the episode's tools are served over MCP (empty: native tools)."""

    def base_url(self, role: str) -> str:
        """The base URL the client of ``role`` must use."""
        return self.base_urls[role]

    def tool_url(self, role: str) -> str:
        """The MCP endpoint ``role``'s client must use (only when the tools are served over MCP)."""
        return self.tool_urls[role]


@dataclass(frozen=True)
class Durability:
    """Where an episode keeps the state its framework saves, and whether this run resumes from it.

    Set only by the durability experiment (:mod:`coordlab.runners.durability`). The first
    run saves the framework's own durable state under :attr:`folder` the way the
    framework's users would (a checkpointer, a saved team state, a journal); the lab then
    SIGKILLs the process at a scheduled point, and a fresh process runs the same episode
    again with :attr:`resume` set, reading that state back through the framework's own
    API. A framework with no resume path simply runs again from the start.
    """

    folder: Path
    """A directory that outlives the process: the framework's saved state goes here (beside the lab's own
    files there: the world's journal, the reviewer's inbox and the runs' framework log)."""
    resume: bool
    """False for the first run; True for the run in a fresh process after the crash."""
    thread_id: str
    """A stable name for the episode (LangGraph's ``thread_id``, a file stem...), the same in both runs."""


@dataclass(frozen=True)
class Review:
    """A human reviewer's answer to a request for approval."""

    approved: bool
    reason: str = ""
    """With a rejection: why, in words the work can be redone from."""


@runtime_checkable
class Approver(Protocol):
    """A human in the loop, asked before a step that changes the world (the lab's is scripted and seeded)."""

    def review(self, step: str, proposal: Mapping[str, Any]) -> Review:
        """Approve or reject running ``step`` with ``proposal`` (the values the framework would act on).

        Blocks until the human answers. A human who answers late outlives the process: the
        lab's reviewer then kills it while it waits, and answers the resumed run.
        """
        ...


@dataclass
class EpisodeSpec:
    """Everything an adapter needs to run one episode."""

    task: Task
    variant: Variant
    endpoint: Endpoint
    knobs: Knobs
    world: World
    trace: TraceRecorder
    durability: Durability | None = None
    """Set when the episode may crash and be resumed (the durability experiment); None otherwise."""
    approver: Approver | None = None
    """Set when a human must approve every step that has a gate (the steps that change the world), asked
    through the framework's own human-in-the-loop mechanism after the gate passes; None otherwise."""

    @property
    def router_role(self) -> str:
        """The role name a delegating model's client uses."""
        return "router"


@dataclass
class AdapterOutcome:
    """What an adapter reports after an episode (the lab adds the score and the simulator's log)."""

    termination: Termination
    final_output: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    """Where the variant departs from the ideal in this framework, said plainly."""
    construction_ms: float = 0.0
    execution_ms: float = 0.0
    resumed_from: str | None = None
    """With :attr:`EpisodeSpec.durability` resuming: what the run read back, in words
    ("checkpoint after step draft", "saved team state, 7 messages"), or None when it found
    nothing to resume from and started over."""


@dataclass(frozen=True)
class VariantSupport:
    """Whether a framework expresses a variant faithfully, and how."""

    faithful: bool
    mechanism: str
    """The framework feature used (e.g. "Task guardrail", "conditional edge", "Swarm handoffs")."""
    note: str = ""


class FrameworkAdapter:
    """Shared plumbing of the built-in adapters: the version is the framework distribution's,
    and how faithfully each variant is expressed is a table the adapter declares."""

    name: str
    distribution: str
    """The package whose installed version is part of the episode key."""
    variant_support: Mapping[Variant, VariantSupport]
    tool_transports: frozenset[ToolTransport] = frozenset({ToolTransport.NATIVE})
    """How this adapter can reach the tools; the harness uses the ``tool_transport`` knob when it is one of
    them and the adapter's only one otherwise (an adapter without the attribute has native tools only)."""
    resume_path: str = ""
    """How a crashed episode resumes in this framework (its own mechanism, as its docs recommend);
    empty when it has none and a resumed run starts over from the beginning."""

    def version(self) -> str:
        """The framework's installed version, read from package metadata."""
        return installed_version(self.distribution)

    def support(self, variant: Variant) -> VariantSupport:
        """How (and how faithfully) this framework expresses ``variant``."""
        return self.variant_support[variant]


@runtime_checkable
class Adapter(Protocol):
    """One framework (or the plain reference) behind the lab's single way in."""

    name: str

    def version(self) -> str:
        """The framework's installed version (part of the episode key)."""
        ...

    def support(self, variant: Variant) -> VariantSupport:
        """How (and how faithfully) this framework expresses ``variant``."""
        ...

    def run(self, spec: EpisodeSpec) -> AdapterOutcome:
        """Run one episode; raise only for defects of the adapter itself."""
        ...
