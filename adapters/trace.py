"""The normalised episode trace: one ordered list of events, the same shape for every framework.

Adapters record what only the framework knows (tool calls, gates, handoffs, framework
retries) through a :class:`TraceRecorder`; the lab adds what only the simulator knows
(model calls, injected faults, transport retries) when it joins the two by time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    """Every kind of trace event."""

    MODEL_CALL = "model_call"
    TOOL_CALL = "tool_call"
    HANDOFF = "handoff"
    GATE = "gate"
    RETRY = "retry"
    FAULT = "fault"
    SIDE_EFFECT = "side_effect"
    STEP_OUTPUT = "step_output"
    TERMINATION = "termination"


@dataclass(frozen=True)
class TraceEvent:
    """One thing that happened in an episode."""

    kind: EventKind
    at: float
    """``time.perf_counter()`` when it happened (system-wide monotonic clock, comparable across processes)."""
    role: str | None = None
    step: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    """Kind-specific fields, e.g. tool ``name``/``mutating``/``ok``; handoff ``source``/``target``/``mechanism``."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


class TraceRecorder:
    """Thread-safe collector of the events an adapter reports (frameworks call tools from worker threads)."""

    def __init__(self) -> None:
        self._events: list[TraceEvent] = []
        self._lock = threading.Lock()

    def record(self, kind: EventKind, role: str | None = None, step: str | None = None, *,
               at: float | None = None, **detail: Any) -> None:
        """Append one event stamped with the current time, or with ``at`` (a ``time.perf_counter()`` value) for
        an event read back after the fact from a framework's own record (n8n's execution data)."""
        event = TraceEvent(kind, time.perf_counter() if at is None else at, role, step, detail)
        with self._lock:
            self._events.append(event)

    def tool_call(self, role: str | None, step: str | None, name: str, mutating: bool, ok: bool,
                  error: str | None = None, duration_ms: float = 0.0) -> None:
        """A tool call the framework made, recorded as it ends (``ok`` False when the tool or its arguments
        were rejected; ``duration_ms`` how long the tool itself ran)."""
        self.record(EventKind.TOOL_CALL, role, step, name=name, mutating=mutating, ok=ok, error=error,
                    duration_ms=duration_ms)

    def handoff(self, source: str | None, target: str, mechanism: str, step: str | None = None, *,
                at: float | None = None) -> None:
        """Work passed from ``source`` to ``target`` by ``mechanism`` (task boundary, edge, tool, message)."""
        self.record(EventKind.HANDOFF, source, step, at=at, source=source, target=target, mechanism=mechanism)

    def gate(self, step: str, passed: bool, reason: str = "") -> None:
        """The gate in front of ``step`` passed or rejected."""
        self.record(EventKind.GATE, None, step, passed=passed, reason=reason)

    def retry(self, step: str | None, source: str, reason: str, role: str | None = None, *,
              at: float | None = None) -> None:
        """The framework redid work (``source`` = ``framework`` here; transport retries come from the simulator)."""
        self.record(EventKind.RETRY, role, step, at=at, source=source, reason=reason)

    def step_output(self, role: str | None, step: str, outputs: dict[str, Any], *, at: float | None = None) -> None:
        """What a step handed on, as the framework holds it."""
        self.record(EventKind.STEP_OUTPUT, role, step, at=at, outputs=outputs)

    @property
    def events(self) -> list[TraceEvent]:
        """A snapshot of the events so far, in arrival order."""
        with self._lock:
            return list(self._events)
