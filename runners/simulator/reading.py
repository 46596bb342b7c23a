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
from coordlab.tasks.world import effect_signature

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
    for _, value in json_objects_at(text):
        yield value


def json_objects_at(text: str) -> Iterable[tuple[int, dict[str, Any]]]:
    """Every JSON object embedded in ``text`` with the offset where it starts, left to right."""
    position = text.find("{")
    while position != -1:
        try:
            value, end = _DECODER.raw_decode(text, position)
        except ValueError:
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict):
            yield position, value
        position = text.find("{", end)


def _objects_read(text: str) -> Iterable[tuple[int, dict[str, Any]]]:
    """The JSON objects a model reads in ``text``: those embedded in it, and those quoted inside their string
    values (an answer handed on as a string field, as n8n's agent tool returns ``{"output": "{...}"}``),
    each at the position of the object quoting it."""
    for start, obj in json_objects_at(text):
        yield start, obj
        for value in obj.values():
            if isinstance(value, str) and "{" in value:
                yield from ((start, quoted) for _, quoted in _objects_read(value))


def json_kind(value: Any) -> str:
    """The JSON type of ``value``: object, array, string, number, boolean or null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    return "object"


@dataclass(frozen=True)
class Mention:
    """One place a request gives a value for a field."""

    value: Any
    position: float
    """Where the mention starts, as a share of the request's text (0 = first character, 1 = last)."""


@dataclass
class Reading:
    """What a request says about each field: every typed mention, in the order a model reads them.

    A value counts as a field's value only where a model would take it as one: in a
    message's content (tool schemas are not content), and with the field's JSON type, so a
    schema object echoed in an error message is not an array of entries. ``kinds`` maps a
    field to its type (from the task's fault-free solution); a field it does not know, or
    whose correct value is null, takes any value.
    """

    mentions: dict[str, list[Mention]] = field(default_factory=dict)
    characters: int = 0

    @classmethod
    def of(cls, messages: list[Mapping[str, Any]], kinds: Mapping[str, str] | None = None,
           skip_tool_results: bool = False) -> "Reading":
        """Read ``messages`` (all of them; with ``skip_tool_results``, not the tool messages)."""
        reading = cls()
        offset = 0
        texts = [message_text(m) for m in messages]
        total = sum(len(t) + 1 for t in texts) or 1
        for message, text in zip(messages, texts):
            if not (skip_tool_results and message.get("role") == "tool"):
                for start, obj in _objects_read(text):
                    for name, value in obj.items():
                        if _typed(name, value, kinds):
                            reading.mentions.setdefault(name, []).append(Mention(value, (offset + start) / total))
            offset += len(text) + 1
        reading.characters = total
        return reading

    def values(self) -> dict[str, Any]:
        """Each field's latest value: what a model takes when it reads the whole request."""
        return {name: mentions[-1].value for name, mentions in self.mentions.items()}

    def versions(self, name: str) -> list[Any]:
        """The different values the request gives ``name``, oldest first (by their last mention)."""
        ordered: list[Any] = []
        for mention in self.mentions.get(name, []):
            if mention.value in ordered:
                ordered.remove(mention.value)
            ordered.append(mention.value)
        return ordered

    def positions(self, name: str) -> tuple[float, ...]:
        """Where ``name``'s mentions start, as shares of the request."""
        return tuple(m.position for m in self.mentions.get(name, []))


def _typed(name: str, value: Any, kinds: Mapping[str, str] | None) -> bool:
    """Whether ``value`` can be ``name``'s value: null, or of the field's JSON type."""
    if kinds is None or value is None:
        return True
    kind = kinds.get(name)
    if kind is None or kind == "null":
        return True
    return json_kind(value) == kind


def visible_values(messages: list[Mapping[str, Any]], kinds: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Field values present in the prompt's messages; later mentions override earlier ones."""
    return Reading.of(messages, kinds).values()


def find_step(task: Task, role: str, messages: list[Mapping[str, Any]],
              kinds: Mapping[str, str] | None = None) -> tuple[Step | None, int]:
    """The step this request is about, and the index of the message holding its marker (-1: none).

    The latest message naming one of ``role``'s steps decides, so history that mentions
    other agents' steps (or this role's earlier ones) does not confuse the identification.
    A message that names several of the role's steps at once (a role briefed on all its
    work, as a team's task text does) is read as a model would read it: it works on the
    first of them whose results it cannot yet see and whose inputs it can (a worker called
    afresh with only the inputs of its third step does that one), else the first whose
    results it cannot see, else the last. A step's
    results are its answer, so tool results do not count: a tool returning a field the
    step reports does not make the step answered.

    A worker asked for work its role does not own does it anyway, as a real model would:
    with no marker of its own steps, the latest message naming any step decides. With no
    marker at all the request is vague, and the model works on the first of its role's
    steps whose results it cannot see.
    """
    own_steps = {s.id for s in task.steps_of(role)}
    visible: dict[str, Any] | None = None

    def first_pending(steps: list[Step]) -> Step | None:
        nonlocal visible
        if visible is None:
            visible = Reading.of(messages, kinds, skip_tool_results=True).values()
        pending = [s for s in steps if any(o not in visible for o in s.output_names)]
        return next((s for s in pending if all(r in visible for r in s.reads)), pending[0] if pending else None)

    def named_in(index: int, candidates: set[str]) -> list[Step]:
        named = [s for s in dict.fromkeys(_MARKER.findall(message_text(messages[index]))) if s in candidates]
        return sorted((task.step(s) for s in named), key=task.steps.index)

    for candidates in (own_steps, {s.id for s in task.steps}):
        for index in range(len(messages) - 1, -1, -1):
            named = named_in(index, candidates)
            if len(named) == 1:
                return named[0], index
            if named:
                return first_pending(named) or named[-1], index
    return first_pending(list(task.steps_of(role))), -1


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
        """Whether a call of ``tool`` with exactly ``arguments`` was answered, and its (first) result.

        A transient error (a call that timed out) is no answer: a model retries such a call.
        """
        wanted = effect_signature(tool, arguments)  # the world's sameness: numbers by value, 100 and 100.0 alike
        for exchange in self.exchanges:
            if isinstance(exchange.arguments, dict) and effect_signature(exchange.name, exchange.arguments) == wanted \
                    and not is_transient_error(exchange.result):
                return True, exchange.result
        return False, None

    def calls_of(self, tool: str) -> int:
        """How many answered calls of ``tool`` the step has made."""
        return sum(1 for e in self.exchanges if e.name == tool)


def is_transient_error(result: Any) -> bool:
    """Whether a tool result reports a transient failure (a timeout) that a model would retry."""
    return isinstance(result, str) and result.startswith("Error") and "timed out" in result


def tool_aliases(offered: Mapping[str, Any], known: Iterable[str]) -> dict[str, str]:
    """Offered tool names that are a known tool under a prefix -> that tool (``mcp_host_8000_mcp_crm_lookup``).

    Some MCP clients name a server's tools ``<server>_<tool>`` (CrewAI derives the server
    part from its URL); a model reads the offered name and its description and calls what
    it is offered, so the simulator does too. A name offered exactly, or a prefixed name
    that would fit two tools, is no alias.
    """
    aliases: dict[str, str] = {}
    for tool in known:
        if tool in offered:
            continue
        fits = [name for name in offered if name.endswith(f"_{tool}")]
        if len(fits) == 1:
            aliases[fits[0]] = tool
    return aliases


def step_transcript(messages: list[Mapping[str, Any]], start: int, aliases: Mapping[str, str] | None = None,
                    known: Iterable[str] = ()) -> StepTranscript:
    """The tool exchanges in ``messages[start:]`` (an unparseable argument string stays a string), each under
    its tool's own name: ``aliases`` maps an offered name back to it, and a call replayed under a toolkit's
    name with the tool in its arguments (n8n's agent: ``Tools_role`` with ``{"tool": "crm_lookup", ...}``)
    is read as that tool's call. A result wrapped in MCP content parts is read as its text."""
    aliases, known = aliases or {}, set(known)
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
            name = str(function.get("name"))
            name, arguments = _toolkit_call(aliases.get(name, name), arguments, known)
            calls[str(call.get("id"))] = (name, arguments)
        if message.get("role") == "tool" and str(message.get("tool_call_id")) in calls:
            name, arguments = calls[str(message.get("tool_call_id"))]
            transcript.exchanges.append(ToolExchange(name, arguments, _unwrapped(parse_tool_result(
                message_text(message)))))
    return transcript


def _toolkit_call(name: str, arguments: Any, known: set[str]) -> tuple[str, Any]:
    """A call replayed under a toolkit's name, read as the call of the tool its arguments name."""
    if name in known or not isinstance(arguments, dict) or arguments.get("tool") not in known:
        return name, arguments
    return arguments["tool"], {k: v for k, v in arguments.items() if k not in ("tool", "id")}


def _unwrapped(result: Any) -> Any:
    """A tool result as its text says it: MCP content parts (``[{"type": "text", "text": ...}]``, possibly
    under a ``response`` key, as n8n replays them) read as the JSON or text they carry."""
    if isinstance(result, list) and len(result) == 1 and isinstance(result[0], dict) and set(result[0]) == {"response"}:
        result = result[0]["response"]
    if isinstance(result, list) and result and all(isinstance(p, dict) and p.get("type") == "text" for p in result):
        return parse_tool_result("".join(str(p.get("text", "")) for p in result))
    return result


def _json_schema_format(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``json_schema`` entry of a structured-output request's ``response_format``, else None."""
    response_format = body.get("response_format")
    if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
        return None
    declared = response_format.get("json_schema")
    return declared if isinstance(declared, Mapping) else {}


def _schema(declared: Mapping[str, Any]) -> Mapping[str, Any]:
    schema = declared.get("schema")
    return schema if isinstance(schema, Mapping) else {}


def requested_fields(body: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The fields a structured-output request (``response_format`` of type ``json_schema``) asks for, else None."""
    declared = _json_schema_format(body)
    properties = _schema(declared).get("properties") if declared is not None else None
    return tuple(properties) if isinstance(properties, Mapping) else None


def strictly_required(body: Mapping[str, Any]) -> frozenset[str]:
    """The fields a *strict* structured-output request requires: a strict API always returns each of them.

    Empty for any other request (no ``json_schema`` response format, or one without ``strict``).
    """
    declared = _json_schema_format(body)
    if declared is None or declared.get("strict") is not True:
        return frozenset()
    required = _schema(declared).get("required")
    return frozenset(str(name) for name in required) if isinstance(required, list) else frozenset()


def offered_tools(body: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The tools the request offers the model, by name, with their parameter schemas."""
    offered: dict[str, Mapping[str, Any]] = {}
    for entry in body.get("tools") or []:
        function = entry.get("function") if isinstance(entry, Mapping) else None
        if isinstance(function, Mapping) and function.get("name"):
            offered[str(function["name"])] = function.get("parameters") or {}
    return offered
