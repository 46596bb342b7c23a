"""Tools declared in YAML: a schema for the model and a body in the task expression language.

A declaration names and describes the tool, types its parameters (JSON schema), and says
what it does to the world in four ordered parts, all task expressions::

    crm_update:
      description: Set one field of a customer record.
      mutating: true
      parameters:
        customer_id: {type: string, description: Customer id}
        field: {type: string, description: Field name}
        value: {type: string, description: New value}
      errors:                       # checked first; the first that holds is the tool's error
        - when: customer_id not in crm
          message: fmt("no customer {c}", c=quoted(customer_id))
      let:                          # named intermediate values, in order
        record: crm[customer_id]
      effects:                      # changes to world sections: append, extend or set
        - set: crm[customer_id][field]
          value: value
      returns: "{'status': 'updated', 'customer_id': customer_id}"

Inside a body, a name is a parameter, a ``let``, ``args`` (every argument by name, for a
parameter named like a helper such as ``weekday``), ``new_id(prefix)`` (a fresh id such as
``msg-1``), a helper, or else a section of the world (``crm``, ``outbox``...). The sections
a tool touches are therefore known before it runs, so a task whose fixtures lack one is
refused when it loads. Effects are all resolved before any is applied, so a failing
effect leaves the world unchanged. A body cannot run code or read anything but the world:
it is made of task expressions, with their budget.
"""

from __future__ import annotations

import ast
import copy
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .expressions import Expression, ExpressionError
from .functions import HELPERS
from .problems import FieldPath, ProblemCollector, did_you_mean, show
from .tools import JSON_TYPES, Tool, ToolError, definition_digest

TOOL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
"""Tool names: lower-case identifiers of at most 64 characters (what every framework accepts)."""
_TOOL_KEYS = {"description", "mutating", "parameters", "errors", "let", "effects", "returns"}
_PARAMETER_KEYS = {"type", "description", "items", "enum"}
_ERROR_KEYS = {"when", "message"}
_EFFECT_KINDS = ("append", "extend", "set")
_BODY_NAMES = {"args", "new_id"}
_LOCAL_NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")
MAX_TOOLS_PER_FILE = 64
"""Most tools one file may declare."""


@dataclass(frozen=True)
class Effect:
    """One change to the world: append to, extend or set in a section at a path of keys."""

    kind: str
    section: str
    keys: tuple[Expression, ...]
    value: Expression
    target: str
    """The target as written (``crm[customer_id][field]``), for messages."""


@dataclass(frozen=True)
class DeclaredBody:
    """The body of a declared tool: errors, lets, effects and result, evaluated over the world."""

    name: str
    parameters: tuple[str, ...]
    errors: tuple[tuple[Expression, Expression], ...]
    lets: tuple[tuple[str, Expression], ...]
    effects: tuple[Effect, ...]
    returns: Expression
    reads: tuple[str, ...]
    """World sections the expressions read by name."""

    def __call__(self, world: Any, **arguments: Any) -> Any:
        namespace: dict[str, Any] = dict(HELPERS)
        namespace.update({section: world.section(section) for section in self.reads})
        namespace.update({name: value for name, value in arguments.items() if name not in HELPERS})
        namespace.update(args=dict(arguments), new_id=world.next_id)
        try:
            for when, message in self.errors:
                if when.evaluate(namespace) is True:
                    raise ToolError(f"{self.name}: {message.evaluate(namespace)}")
            for name, expression in self.lets:
                namespace[name] = expression.evaluate(namespace)
            changes = [self._resolve(effect, world, namespace) for effect in self.effects]
            for apply in changes:
                apply()
            return self.returns.evaluate(namespace)
        except ExpressionError as exc:
            raise ToolError(f"{self.name}: {exc}") from exc

    def _resolve(self, effect: Effect, world: Any, namespace: Mapping[str, Any]) -> Any:
        """A zero-argument function applying ``effect``; raises before anything changes."""
        container = world.section(effect.section)
        keys = [key.evaluate(namespace) for key in effect.keys]
        value = copy.deepcopy(effect.value.evaluate(namespace))
        last = keys.pop() if effect.kind == "set" else None
        for index, key in enumerate(keys):
            creating = effect.kind != "set" and index == len(keys) - 1
            if creating and isinstance(container, dict) and key not in container:
                container[key] = []
            container = _step_into(self.name, effect, container, key)
        if effect.kind == "set":
            _step_into(self.name, effect, container, last, assigning=True)
            return lambda: container.__setitem__(last, value)
        if not isinstance(container, list):
            raise ToolError(f"{self.name}: cannot {effect.kind} {effect.target}: it is not a list")
        if effect.kind == "extend":
            if not isinstance(value, list):
                raise ToolError(f"{self.name}: extend {effect.target} needs a list of items, got {type(value).__name__}")
            return lambda: container.extend(value)
        return lambda: container.append(value)


def _step_into(tool: str, effect: Effect, container: Any, key: Any, assigning: bool = False) -> Any:
    """``container[key]`` for a path walk, or a :class:`ToolError` naming the effect's target."""
    if not isinstance(key, (str, int)):
        raise ToolError(f"{tool}: {effect.target}: a key is text or a whole number, got {type(key).__name__}")
    if isinstance(container, dict):
        if assigning or key in container:
            return container.get(key)
    elif isinstance(container, list) and isinstance(key, int) and not isinstance(key, bool):
        if -len(container) <= key < len(container):
            return container[key]
    raise ToolError(f"{tool}: {effect.target}: there is no {show(key)} to {effect.kind} in")


class ToolDeclarations:
    """Parses a ``tools:`` mapping into :class:`Tool` objects, reporting problems to a collector."""

    def __init__(self, collector: ProblemCollector, origin: str, sections: set[str] | None = None):
        self.collector, self.origin = collector, origin
        self.sections = sections
        """The world sections that exist (a task's fixtures), or None for a library with no world of its own."""

    def parse(self, spec: Any, path: FieldPath) -> dict[str, Tool]:
        """Every well-formed tool of ``spec``; the rest are reported."""
        c = self.collector
        if not c.expect(spec, dict, path, "a mapping of tool names to declarations"):
            return {}
        if len(spec) > MAX_TOOLS_PER_FILE:
            c.problem(path, f"{len(spec)} tools; a file declares at most {MAX_TOOLS_PER_FILE}")
            return {}
        tools: dict[str, Tool] = {}
        for name, body in spec.items():
            tool_path = path + (name,)
            if not c.expect_name(name, tool_path, "a tool name"):
                continue
            if not TOOL_NAME.fullmatch(name):
                c.problem(tool_path, "a tool name is a lower-case identifier of at most 64 characters")
                continue
            if c.expect(body, dict, tool_path, "a tool declaration (description, parameters, returns...)"):
                tool = self.tool(name, body, tool_path)
                if tool is not None:
                    tools[name] = tool
        return tools

    def tool(self, name: str, spec: Mapping[str, Any], path: FieldPath) -> Tool | None:
        c = self.collector
        before = len(c.problems)
        c.unknown_keys(spec, _TOOL_KEYS, path)
        description = spec.get("description")
        if not isinstance(description, str) or not description.strip():
            c.problem(path + ("description",), "required text is missing: what the tool does, for the model")
        mutating = spec.get("mutating", False)
        if not isinstance(mutating, bool):
            c.problem(path + ("mutating",), f"expected true or false, got {show(mutating)}")
            mutating = False
        parameters = self.parameters(spec.get("parameters") or {}, path + ("parameters",))
        local = {p for p in parameters if p not in HELPERS} | _BODY_NAMES
        errors = self.errors(spec.get("errors") or [], path + ("errors",), local)
        lets = self.lets(spec.get("let") or {}, path + ("let",), local)
        effects = self.effects(spec.get("effects") or [], path + ("effects",), local)
        if effects and not mutating:
            c.problem(path + ("mutating",), "this tool has effects, so it changes the world: say mutating: true")
        if "returns" not in spec:
            c.problem(path + ("returns",), "required field is missing: the expression the tool answers with")
            returns = None
        else:
            returns = self.body_expression(spec["returns"], path + ("returns",), local)
        if len(c.problems) > before or returns is None:
            return None
        expressions = [e for pair in errors for e in pair] + [e for _, e in lets] + [returns]
        expressions += [e for effect in effects for e in (*effect.keys, effect.value)]
        reads = sorted({n for e in expressions for n in e.free_names} - local - set(HELPERS) - {n for n, _ in lets})
        sections = frozenset(reads) | {e.section for e in effects}
        body = DeclaredBody(name, tuple(parameters), tuple(errors), tuple(lets), tuple(effects), returns, tuple(reads))
        return Tool(name, str(description).strip(), parameters, mutating, body, sections, origin=self.origin,
                    fingerprint=definition_digest("declared", name, dict(spec)))

    def parameters(self, spec: Any, path: FieldPath) -> dict[str, dict[str, Any]]:
        c = self.collector
        if not c.expect(spec, dict, path, "a mapping of parameter names to JSON-schema types"):
            return {}
        parameters: dict[str, dict[str, Any]] = {}
        for name, schema in spec.items():
            field_path = path + (name,)
            if not c.expect_name(name, field_path, "a parameter name"):
                continue
            if not _LOCAL_NAME.fullmatch(name) or name in _BODY_NAMES:
                c.problem(field_path, "a parameter name is a lower-case identifier other than "
                                      f"{' and '.join(sorted(_BODY_NAMES))}")
                continue
            if not c.expect(schema, dict, field_path, "a mapping with type and description"):
                continue
            c.unknown_keys(schema, _PARAMETER_KEYS, field_path)
            kind = schema.get("type")
            if kind not in JSON_TYPES:
                c.problem(field_path + ("type",), f"type {show(kind)} is not a JSON-schema type; "
                                                  f"{did_you_mean(str(kind), JSON_TYPES)}")
            if not isinstance(schema.get("description"), str) or not schema["description"].strip():
                c.problem(field_path + ("description",), "required text is missing: what the model should pass")
            if "items" in schema and (kind != "array" or not isinstance(schema["items"], dict)):
                c.problem(field_path + ("items",), "items is a JSON-schema mapping, and only for type: array")
            enum = schema.get("enum")
            if enum is not None and (not isinstance(enum, list) or not enum or
                                     not all(isinstance(v, JSON_TYPES.get(str(kind), ())) for v in enum)):
                c.problem(field_path + ("enum",), f"enum is a non-empty list of {kind} values")
            parameters[name] = dict(schema)
        return parameters

    def errors(self, spec: Any, path: FieldPath, local: set[str]) -> list[tuple[Expression, Expression]]:
        c = self.collector
        if not c.expect(spec, list, path, "a list of {when, message} error cases"):
            return []
        errors = []
        for index, case in enumerate(spec):
            case_path = path + (index,)
            if not c.expect(case, dict, case_path, "a mapping with when and message"):
                continue
            c.unknown_keys(case, _ERROR_KEYS, case_path)
            when = self.body_expression(case.get("when"), case_path + ("when",), local)
            message = self.body_expression(case.get("message"), case_path + ("message",), local)
            if when is not None and message is not None:
                errors.append((when, message))
        return errors

    def lets(self, spec: Any, path: FieldPath, local: set[str]) -> list[tuple[str, Expression]]:
        c = self.collector
        if not c.expect(spec, dict, path, "a mapping of names to expressions"):
            return []
        lets = []
        for name, source in spec.items():
            if not c.expect_name(name, path + (name,), "a name"):
                continue
            if not _LOCAL_NAME.fullmatch(name) or name in _BODY_NAMES or name in HELPERS:
                c.problem(path + (name,), "a let name is a lower-case identifier that is not a helper, "
                                          f"{' or '.join(sorted(_BODY_NAMES))}")
                continue
            expression = self.body_expression(source, path + (name,), local)
            local.add(name)
            if expression is not None:
                lets.append((name, expression))
        return lets

    def effects(self, spec: Any, path: FieldPath, local: set[str]) -> list[Effect]:
        c = self.collector
        if not c.expect(spec, list, path, "a list of effects (append, extend or set)"):
            return []
        effects = []
        for index, raw in enumerate(spec):
            effect_path = path + (index,)
            if not c.expect(raw, dict, effect_path, "a mapping such as {append: outbox, value: ...}"):
                continue
            kinds = [k for k in _EFFECT_KINDS if k in raw]
            c.unknown_keys(raw, {*_EFFECT_KINDS, "value"}, effect_path)
            if len(kinds) != 1:
                c.problem(effect_path, "an effect has exactly one of append, extend or set")
                continue
            kind = kinds[0]
            target = self.target(raw[kind], effect_path + (kind,), local, kind)
            value = self.body_expression(raw.get("value"), effect_path + ("value",), local)
            if target is not None and value is not None:
                section, keys = target
                effects.append(Effect(kind, section, keys, value, str(raw[kind])))
        return effects

    def target(self, source: Any, path: FieldPath, local: set[str], kind: str
               ) -> tuple[str, tuple[Expression, ...]] | None:
        """A section name and key expressions from ``section[key]...`` (the form an effect's target takes)."""
        c = self.collector
        if not c.expect_name(source, path, "a target such as outbox or crm[customer_id]['appointment']"):
            return None
        try:
            node = ast.parse(source.strip(), mode="eval").body
        except SyntaxError:
            node = None
        keys: list[ast.expr] = []
        while isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Slice):
            keys.insert(0, node.slice)
            node = node.value
        if not isinstance(node, ast.Name) or node.id in local or node.id in HELPERS:
            c.problem(path, f"{show(source)} is not a world section followed by [key]...; "
                            "e.g. outbox, tickets[ticket_id] or crm[customer_id]['appointment']")
            return None
        if kind == "set" and not keys:
            c.problem(path, f"set replaces one entry: name it, e.g. {node.id}[key]; a whole section cannot be replaced")
            return None
        self.check_section(node.id, path)
        compiled = [self.body_expression(ast.unparse(key), path, local) for key in keys]
        if any(k is None for k in compiled):
            return None
        return node.id, tuple(k for k in compiled if k is not None)

    def body_expression(self, source: Any, path: FieldPath, local: set[str]) -> Expression | None:
        """An expression of the body; names that are not local are sections, checked when sections are known."""
        if source is None:
            self.collector.problem(path, "required expression is missing")
            return None
        expression = self.collector.expression(source, path, None)
        if expression is None:
            return None
        for name in sorted(expression.free_names - local - set(HELPERS)):
            if name in expression.called_names:
                self.collector.problem(path, f"unknown function {name!r} in {show(source)}; "
                                             f"{did_you_mean(name, HELPERS)}")
            else:
                self.check_section(name, path, local)
        return expression

    def check_section(self, name: str, path: FieldPath, local: set[str] | None = None) -> None:
        """A problem when sections are known and ``name`` is none of them."""
        if self.sections is not None and name not in self.sections:
            self.collector.problem(path, f"{name!r} is not a parameter, a let or a world section of this task; "
                                         f"{did_you_mean(name, self.sections | (local or set()))}")

