"""Tools: what a model can call to read or change an episode's :class:`~coordlab.tasks.world.World`.

There is one kind of tool, however it was made. A :class:`Tool` has a JSON schema for its
arguments (what every framework shows the model), a ``mutating`` flag, the world sections
it touches, and a body. Bodies come from a declaration in YAML (the built-in library in
``builtin_tools/``, or a task file's own ``tools:``; see
:mod:`coordlab.tasks.declared_tools`) or from Python plug-ins registered under the
entry-point group ``coordlab.tools`` with :func:`python_tool`.

Every call goes through :meth:`Tool.__call__`: arguments are validated against the schema
first (a bad call raises :class:`ToolError`, a message a model can act on), the body runs
under the world's lock, the result is copied out as plain JSON (so no caller can hold a
live reference into the world), and a mutating tool logs its side effect only when it
succeeds. That is the sandbox every tool gets, built-in or not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from .world import World

JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "array": (list,),
    "object": (dict,), "boolean": (bool,),
}
"""The JSON-schema types a tool parameter may have, and the Python values each admits."""


RESPONSE_LOST = ("the call timed out before its response arrived; the change may or may not have been applied "
                 "(a transient error: the call can be retried)")
"""What a tool says when its change was applied but its response was lost (the ``tool_error_after_effect`` fault)."""


class ToolError(Exception):
    """A tool was called with bad arguments or could not do what was asked (the model sees the message)."""


@dataclass(frozen=True)
class Tool:
    """A named tool: its schema for the model, whether it changes the world, and its body."""

    name: str
    description: str
    parameters: Mapping[str, Mapping[str, Any]]
    mutating: bool
    function: Callable[..., Any]
    """The body, called as ``function(world, **arguments)`` with validated arguments."""
    sections: frozenset[str] | None = None
    """World sections the body reads or changes; None when the tool does not say (a plug-in may not)."""
    origin: str = "built-in"
    """Where the tool comes from, for messages: ``built-in``, ``task file``, ``plug-in dist 1.0``."""
    fingerprint: str = ""
    """A digest of the tool's definition: part of a task's content hash, so editing a tool re-keys its tasks."""

    def json_schema(self) -> dict[str, Any]:
        """The OpenAI-style ``parameters`` schema for this tool."""
        return {
            "type": "object",
            "properties": {name: dict(spec) for name, spec in self.parameters.items()},
            "required": list(self.parameters),
            "additionalProperties": False,
        }

    def openai_spec(self) -> dict[str, Any]:
        """The tool as an entry of an OpenAI ``tools`` list."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.json_schema()}}

    def validate(self, arguments: Mapping[str, Any]) -> None:
        """Raise :class:`ToolError` naming every missing, unknown, mistyped or out-of-enum argument."""
        if not isinstance(arguments, Mapping):
            raise ToolError(f"{self.name}: arguments must be an object, got {type(arguments).__name__}")
        problems = [f"missing argument {n!r}" for n in self.parameters if n not in arguments]
        problems += [f"unknown argument {n!r}" for n in arguments if n not in self.parameters]
        for name, value in arguments.items():
            spec = self.parameters.get(name, {})
            expected = spec.get("type")
            if expected and (not isinstance(value, JSON_TYPES[expected]) or
                             (expected in ("integer", "number") and isinstance(value, bool))):
                problems.append(f"argument {name!r} must be {expected}, got {type(value).__name__}")
            elif "enum" in spec and value not in spec["enum"]:
                problems.append(f"argument {name!r} must be one of {', '.join(map(repr, spec['enum']))}")
        if problems:
            raise ToolError(f"{self.name}: " + "; ".join(problems))

    def __call__(self, world: World, arguments: Mapping[str, Any]) -> Any:
        """Validate, run against ``world``, copy the result out as JSON, and log the side effect if mutating."""
        self.validate(arguments)
        with world.lock:
            if self.mutating and world.made_before(self.name, arguments):
                # The idempotency key matched: the outside system answers as before and changes nothing.
                return world.earlier_result(self.name, arguments)
            result = json.loads(json.dumps(self.function(world, **arguments), default=str))
            if self.mutating:
                world.record_side_effect(self.name, arguments, result)
                if world.response_lost(self.name, arguments):
                    raise ToolError(RESPONSE_LOST)
        return result


def definition_digest(*parts: Any) -> str:
    """A short, stable digest of ``parts`` (a tool's or a task's parsed definition).

    Mapping keys are ordered by type and text, so keys of mixed types (YAML allows
    ``1:`` beside ``a:``) digest as reliably as plain names.
    """
    text = json.dumps(_ordered(parts), separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _ordered(value: Any) -> Any:
    """``value`` with every mapping turned into a list of (typed key, value) pairs in a fixed order."""
    if isinstance(value, Mapping):
        return sorted(([f"{type(k).__name__}:{k}", _ordered(v)] for k, v in value.items()), key=lambda kv: kv[0])
    if isinstance(value, (list, tuple)):
        return [_ordered(v) for v in value]
    return value


def python_tool(name: str, description: str, *, mutating: bool = False, sections: tuple[str, ...] | None = None,
                **parameters: Mapping[str, Any]) -> Callable[[Callable[..., Any]], Tool]:
    """Make a Python function a :class:`Tool` (for a plug-in's entry point in group ``coordlab.tools``).

    The function is called as ``function(world, **arguments)`` after the arguments passed
    schema validation; it reads and changes the world through ``world.section(name)`` and
    ``world.next_id(prefix)`` and raises :class:`ToolError` for a call it cannot serve.
    ``sections`` names the world sections it touches, so a task that lacks one is refused
    when it loads instead of failing in every episode.
    """
    for parameter, spec in parameters.items():
        if not isinstance(spec, Mapping) or spec.get("type") not in JSON_TYPES:
            raise TypeError(f"python_tool {name!r}: parameter {parameter!r} needs a JSON-schema type, "
                            f"one of {', '.join(JSON_TYPES)}")

    def make(function: Callable[..., Any]) -> Tool:
        origin = f"{function.__module__}.{function.__qualname__}"
        digest = definition_digest("python", origin, description, mutating, parameters)
        return Tool(name, description, dict(parameters), mutating, function,
                    None if sections is None else frozenset(sections), origin=f"python {origin}", fingerprint=digest)
    return make
