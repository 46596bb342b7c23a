"""Read a chat-completions request the way a model reads its prompt.

Nothing here knows which framework sent the request. The current step is found by the
step marker in the prompt; the values the step works from are whatever JSON objects the
prompt actually contains (so a value a framework dropped is really missing); the tool
results of the current step are the tool messages after the step's last marker.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from coordlab.tasks.oracle import parse_tool_result
from coordlab.tasks.schema import Step, Task
from coordlab.tasks.world import canonical_json

_MARKER = re.compile(r"\[coordlab:step=([a-z][a-z0-9_]*)\]")
_DECODER = json.JSONDecoder()


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message whether its content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


def json_objects(text: str) -> Iterable[dict[str, Any]]:
    """Every JSON object embedded in ``text``, outermost first, left to right."""
    position = text.find("{")
    while position != -1:
        try:
            value, end = _DECODER.raw_decode(text, position)
        except ValueError:
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict):
            yield value
        position = text.find("{", end)


def visible_values(messages: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Field values present anywhere in the prompt's text; later mentions override earlier ones."""
    values: dict[str, Any] = {}
    for message in messages:
        for obj in json_objects(message_text(message)):
            values.update(obj)
    return values


def find_step(task: Task, role: str, messages: list[Mapping[str, Any]]) -> tuple[Step | None, int]:
    """The step this request is about, and the index of the message holding its marker.

    The latest message naming one of ``role``'s steps decides, so history that mentions
    other agents' steps (or this role's earlier ones) does not confuse the identification.
    A message that names several of the role's steps at once (a role briefed on all its
    work, as a team's task text does) is read as a model would read it: it works on the
    first of them whose results it cannot yet see in the request, else the last. A step's
    results are its answer, so tool results do not count: a tool returning a field the
    step reports does not make the step answered.
    """
    own_steps = {s.id for s in task.steps_of(role)}
    for index in range(len(messages) - 1, -1, -1):
        named = [s for s in dict.fromkeys(_MARKER.findall(message_text(messages[index]))) if s in own_steps]
        if len(named) == 1:
            return task.step(named[0]), index
        if named:
            visible = visible_values([m for m in messages if m.get("role") != "tool"])
            steps = sorted((task.step(s) for s in named), key=task.steps.index)
            pending = next((s for s in steps if any(o not in visible for o in s.output_names)), steps[-1])
            return pending, index
    return None, -1


@dataclass(frozen=True)
class ToolExchange:
    """A tool call the model made in this step and the result the framework sent back."""

    name: str
    arguments: Any
    result: Any


@dataclass
class StepTranscript:
    """What happened in the current step so far: tool calls made and their results."""

    exchanges: list[ToolExchange] = field(default_factory=list)

    def result_for(self, tool: str, arguments: Mapping[str, Any]) -> tuple[bool, Any]:
        """Whether a call of ``tool`` with exactly ``arguments`` was answered, and its result."""
        wanted = canonical_json(dict(arguments))
        for exchange in self.exchanges:
            if exchange.name == tool and isinstance(exchange.arguments, dict) \
                    and canonical_json(exchange.arguments) == wanted:
                return True, exchange.result
        return False, None

    def calls_of(self, tool: str) -> int:
        """How many answered calls of ``tool`` the step has made."""
        return sum(1 for e in self.exchanges if e.name == tool)


def step_transcript(messages: list[Mapping[str, Any]], start: int) -> StepTranscript:
    """The tool exchanges in ``messages[start:]`` (an unparseable argument string stays a string)."""
    calls: dict[str, tuple[str, Any]] = {}
    transcript = StepTranscript()
    for message in messages[max(start, 0):]:
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            raw = function.get("arguments") or "{}"
            try:
                arguments = json.loads(raw) if isinstance(raw, str) else raw
            except ValueError:
                arguments = raw
            calls[str(call.get("id"))] = (str(function.get("name")), arguments)
        if message.get("role") == "tool" and str(message.get("tool_call_id")) in calls:
            name, arguments = calls[str(message.get("tool_call_id"))]
            transcript.exchanges.append(ToolExchange(name, arguments, parse_tool_result(message_text(message))))
    return transcript


def requested_fields(body: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The fields a structured-output request (``response_format`` of type ``json_schema``) asks for, else None."""
    response_format = body.get("response_format")
    if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
        return None
    declared = response_format.get("json_schema")
    schema = declared.get("schema") if isinstance(declared, Mapping) else None
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    return tuple(properties) if isinstance(properties, Mapping) else None


def offered_tools(body: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The tools the request offers the model, by name, with their parameter schemas."""
    offered: dict[str, Mapping[str, Any]] = {}
    for entry in body.get("tools") or []:
        function = entry.get("function") if isinstance(entry, Mapping) else None
        if isinstance(function, Mapping) and function.get("name"):
            offered[str(function["name"])] = function.get("parameters") or {}
    return offered
