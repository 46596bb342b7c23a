"""The simulator's request log: one record per HTTP request it answered (or failed on purpose)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

BODY_FIELDS = ("request_body", "response_body")
"""The fields of a :class:`RequestRecord` that hold the exchange's bodies (kept out of ``to_dict``)."""


@dataclass(frozen=True)
class HandoffIssue:
    """A step's input that differs from what its producer emitted, or is missing."""

    field: str
    kind: str
    """``missing`` (not in the prompt) or ``corrupted`` (present but different)."""
    expected: Any
    """What the producing step last emitted for the field (the task's input for an input)."""
    received: Any
    cause: str = "lost"
    """``lost``: the model emitted the field right and the framework did not deliver it intact;
    ``model_error``: the producing model emitted it wrong or never emitted it."""


@dataclass(frozen=True)
class RequestRecord:
    """Everything the simulator knows about one request."""

    seq: int
    """Order of arrival within the episode, from 0."""
    episode_id: str
    role: str
    step: str | None
    """The step identified from the prompt; None when no marker of the role's steps was found."""
    attempt: int | None
    """How many answers the step had already given before this request (0 = first try)."""
    kind: str
    """``tool_call``, ``final``, ``route``, ``transport_fault`` or ``unidentified``."""
    fault: str | None
    """The fault injected into this request, if any."""
    prompt_tokens: int
    completion_tokens: int
    retry_count: int
    """The client's own retry counter (header ``x-stainless-retry-count``), 0 on a first send."""
    stream: bool
    status: int
    """HTTP status sent (0 when the connection was dropped on purpose)."""
    handoff_issues: tuple[HandoffIssue, ...] = field(default=())
    route_target: str | None = None
    """For routing requests: the role the simulated router named."""
    tool_calls: tuple[str, ...] = field(default=())
    """Names of the tools the reply called."""
    tool_call_ids: tuple[str, ...] = field(default=())
    """The ids the reply gave those calls, in the same order (a framework echoes them with each result)."""
    mechanisms: tuple[str, ...] = field(default=())
    """The request-dependent mechanisms that acted on the reply (``clash``, ``length``...)."""
    outputs: dict[str, Any] | None = None
    """For a final answer: the field values it emitted (as sent, faults included)."""
    elapsed_ms: float = 0.0
    received_at: float = 0.0
    """``time.perf_counter()`` on arrival: orders the request among the adapter's own trace events."""
    request_body: Any = field(default=None, repr=False, compare=False)
    """The request's JSON body as received, kept for the episode viewer; no answer is read from this copy."""
    response_body: Any = field(default=None, repr=False, compare=False)
    """What was sent back: a JSON response's object, a stream's chunk objects (those sent, when cut short), the text
    of a body cut short, or None when nothing was sent (a stall or a reset)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of this record, without the bodies (the request log stays small)."""
        record = asdict(replace(self, request_body=None, response_body=None))
        for name in BODY_FIELDS:
            del record[name]
        return record
