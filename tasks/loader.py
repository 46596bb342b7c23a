"""Load and validate task files.

One loader for every task. Validation does not stop at the first problem: it collects
every problem with its file, line and field, then raises once (:class:`TaskValidationError`),
so a task author fixes a file in one pass. Unknown names answer "did you mean".

Task files are untrusted: the YAML is read within size, depth and alias limits
(:mod:`coordlab.tasks.yaml_files`), every field is type-checked before it is used (a list
where a name belongs is a problem, not a ``TypeError``), repeats are bounded before they
are unrolled, and a file with more than :data:`MAX_PROBLEMS` problems stops there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from .expressions import Expression
from .problems import (
    MAX_PROBLEMS, FieldPath, Problem, ProblemCollector, TaskValidationError, TooManyProblems, clip, did_you_mean, show,
)
from .declared_tools import ToolDeclarations
from .oracle import SolveFailure, solve
from .scoring import order_breaches
from .schema import SCHEMA_VERSION, Check, Gate, OutputField, Role, Step, Task, ToolCallPlan
from .toolbox import ToolLookupError, find_tool, tool_names
from .tools import Tool, definition_digest
from .yaml_files import YamlFileError, read_yaml_document

SUITE_DIR = Path(__file__).parent / "suite"
"""Where the built-in suite's task files live."""

_TOP_LEVEL = {"schema_version", "name", "version", "description", "params", "inputs", "roles",
              "steps", "gates", "checks", "fixtures", "tools", "side_effect_order"}
_REQUIRED_TOP_LEVEL = ("schema_version", "name", "version", "description", "roles", "steps", "fixtures")
_ROLE_KEYS = {"goal", "instructions"}
_STEP_KEYS = {"id", "role", "instruction", "reads", "tools", "produces", "repeat"}
_CALL_KEYS = {"call", "args", "as", "when"}
_GATE_KEYS = {"before", "check", "retry", "message"}
_CHECK_KEYS = {"expr", "description"}
_PARAM_KEYS = {"default", "min", "max"}
_CHECK_NAMES = {"final", "expected", "side_effects", "inputs"}
_PLACEHOLDER = re.compile(r"\$\{([a-z_][a-z0-9_]*)\}")
_REPEAT_COUNT = re.compile(r"-?[0-9]{1,9}")

MAX_STEPS = 12
"""Most steps a task may have, counted after ``repeat`` is unrolled."""
MAX_PARAM_VALUE = 1_000_000
"""Largest parameter bound: ``${n}`` is substituted everywhere, so its text must stay short."""
MAX_INSTRUCTION_CHARS = 20_000
"""Longest step instruction once task inputs are substituted into it."""


def _filled_length(text: str, rendered: Mapping[str, str]) -> int:
    """How long ``text`` becomes once its ``${name}`` placeholders are replaced (without building it)."""
    return len(text) + sum(len(rendered[m.group(1)]) - len(m.group(0))
                           for m in _PLACEHOLDER.finditer(text) if m.group(1) in rendered)


def _substitute(value: Any, names: Mapping[str, Any]) -> Any:
    """Replace ``${name}`` placeholders in every string of ``value``."""
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: str(names[m.group(1)]) if m.group(1) in names else m.group(0), value)
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {_substitute(k, names): _substitute(v, names) for k, v in value.items()}
    return value


class _Builder(ProblemCollector):
    """Turns one parsed task file into a :class:`Task`, collecting every problem on the way."""

    def __init__(self, file: str, data: Any, lines: dict[FieldPath, int], overrides: Mapping[str, int]):
        super().__init__(file, lines)
        self.data, self.overrides = data, overrides
        self.unresolved_steps: set[str] = set()
        """Steps naming an unknown tool: checks that depend on their tools are skipped, not cascaded."""
        self.unresolved_calls: set[str] = set()
        """The unknown tool names those steps call (already reported, so not again where the order names them)."""
        self.declared_outputs: dict[str, set[str]] = {}
        """Each step's output names as written, broken expressions included (so gates do not cascade)."""
        self.rendered_inputs: dict[str, str] = {}
        """Each task input as text, rendered once for every instruction that names it."""
        self.own_tools: dict[str, Tool] = {}
        """The tools this task file declares under ``tools:``."""
        self.fixture_names: set[str] = set()
        self.gate_tools: dict[str, Tool] = {}
        """Read-only tools that gates call (a gate may look at the world through them)."""
        self.step_paths: dict[str, FieldPath] = {}
        """Where each step is written (a repeated step: its template), to locate what solving finds."""

    # -- building -----------------------------------------------------------------------
    def build(self) -> Task | None:
        data = self.data
        if not isinstance(data, dict):
            self.problem((), "a task file must be a mapping at the top level")
            return None
        self.unknown_keys(data, _TOP_LEVEL, ())
        for key in _REQUIRED_TOP_LEVEL:
            if key not in data:
                self.problem((key,), "required field is missing")
        if "schema_version" in data and data["schema_version"] != SCHEMA_VERSION:
            self.problem(("schema_version",), f"this coordlab reads schema_version {SCHEMA_VERSION}, "
                                              f"the file has {show(data['schema_version'])}")
        name = data.get("name", "")
        if "name" in data and (not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name)):
            self.problem(("name",), "must be a lower-case identifier such as 'incident_triage'")
        version = data.get("version", 0)
        if "version" in data and self.expect(version, int, ("version",), "an integer") and version < 1:
            self.problem(("version",), "must be >= 1")
        params = self.params(data.get("params") or {})
        data = _substitute(data, params)
        inputs = data.get("inputs") or {}
        if not self.expect(inputs, dict, ("inputs",), "a mapping of input names to values"):
            inputs = {}
        fixtures = data.get("fixtures") or {}
        if not self.expect(fixtures, dict, ("fixtures",), "a mapping of world sections"):
            fixtures = {}
        self.fixture_names = {name for name in fixtures if isinstance(name, str)}
        self.own_tools = self.declared_tools(data.get("tools"))
        roles = self.roles(data.get("roles"))
        steps = self.steps(data.get("steps"), roles, inputs)
        gates = self.gates(data.get("gates") or [], steps, inputs)
        checks = self.checks(data.get("checks") or [], inputs, fixtures)
        order = self.side_effect_order(data.get("side_effect_order"), steps)
        if self.problems:
            return None
        role_tools = {r: tuple(dict.fromkeys(t.name for s in steps if s.role == r for t in s.tools)) for r in roles}
        tools = {t.name: t for s in steps for t in s.tools} | self.gate_tools
        return Task(
            name=name, version=version, description=str(data.get("description", "")).strip(),
            params=params, inputs=dict(inputs),
            roles={r: Role(r, spec["goal"], spec["instructions"], role_tools[r]) for r, spec in roles.items()},
            steps=tuple(steps), gates=tuple(gates), checks=tuple(checks), fixtures=dict(fixtures),
            tools=tools, side_effect_order=tuple(order),
            content_hash=definition_digest(self.data, params, {n: t.fingerprint for n, t in tools.items()}),
        )

    def verify(self, task: Task) -> None:
        """Solve the task on a fresh world with no faults; what fails on its correct path is a located problem.

        A task whose correct path fails its own gate, raises in an expression or a tool, or
        ends with a check that does not hold can never succeed, and would look like every
        framework failing; it is refused here instead.
        """
        try:
            solution = solve(task, strict=True)
        except SolveFailure as failure:
            where = failure.where if failure.step is None else self.step_paths[failure.step] + failure.where
            self.problem(where, f"on the task's correct path (no faults): {failure.reason}")
            return
        for breach in order_breaches(task.side_effect_order, solution.side_effects):
            self.problem(("side_effect_order",), f"on the task's correct path (no faults): {breach}, against this "
                                                 "order, so no episode could ever succeed")

    def declared_tools(self, spec: Any) -> dict[str, Tool]:
        """The task file's own tools; a name that a built-in or plug-in already has is refused."""
        if spec is None:
            return {}
        tools = ToolDeclarations(self, "task file", self.fixture_names).parse(spec, ("tools",))
        for name in sorted(set(tools) & tool_names()):
            self.problem(("tools", name), f"there is already a tool named {name!r} (built-in or plug-in); "
                                          "give this one another name")
            del tools[name]
        return tools

    def resolve_tool(self, name: Any, path: FieldPath) -> Tool | None:
        """The tool a call names: the task's own, else a built-in or plug-in; a located problem if none."""
        if isinstance(name, str) and name in self.own_tools:
            return self.own_tools[name]
        try:
            tool = find_tool(name) if isinstance(name, str) else None
        except ToolLookupError as exc:
            self.problem(path, str(exc))
            return None
        if tool is None:
            self.problem(path, f"unknown tool {show(name)}; {did_you_mean(str(name), tool_names() | set(self.own_tools))}")
            return None
        missing = sorted((tool.sections or set()) - self.fixture_names)
        if missing:
            self.problem(path, f"tool {name!r} ({tool.origin}) uses the world section(s) {', '.join(map(repr, missing))}, "
                               "which this task's fixtures lack")
        return tool

    def params(self, spec: Any) -> dict[str, int]:
        if not self.expect(spec, dict, ("params",), "a mapping of parameter names to {default, min, max}"):
            return {}
        resolved: dict[str, int] = {}
        for name, bounds in spec.items():
            path = ("params", name)
            if not self.expect_name(name, path, "a parameter name"):
                continue
            if not self.expect(bounds, dict, path, "a mapping with default, min and max"):
                continue
            self.unknown_keys(bounds, _PARAM_KEYS, path)
            if not all(self.expect(bounds.get(k), int, path + (k,), "an integer") for k in ("default", "min", "max")):
                continue
            if any(abs(bounds[k]) > MAX_PARAM_VALUE for k in ("default", "min", "max")):
                self.problem(path, f"bounds must lie within -{MAX_PARAM_VALUE:,}..{MAX_PARAM_VALUE:,}")
                continue
            value = self.overrides.get(name, bounds["default"])
            if not bounds["min"] <= value <= bounds["max"]:
                self.problem(path, f"{name}={value} is outside {bounds['min']}..{bounds['max']}")
            resolved[name] = value
        for name in self.overrides:
            if name not in spec:
                self.problem(("params",), f"no parameter {name!r} to set; {did_you_mean(name, spec)}")
        return resolved

    def roles(self, spec: Any) -> dict[str, dict[str, str]]:
        if spec is None or not self.expect(spec, dict, ("roles",), "a mapping of role names"):
            return {}
        roles: dict[str, dict[str, str]] = {}
        for name, body in spec.items():
            path = ("roles", name)
            if not self.expect_name(name, path, "a role name"):
                continue
            if not self.expect(body, dict, path, "a mapping with goal and instructions"):
                continue
            self.unknown_keys(body, _ROLE_KEYS, path)
            for key in sorted(_ROLE_KEYS):
                if key not in body or body[key] is None:
                    self.problem(path + (key,), "required text is missing")
                elif self.expect(body[key], str, path + (key,), "text") and not body[key].strip():
                    self.problem(path + (key,), "required text is empty")
            roles[name] = {k: str(body.get(k, "")).strip() for k in _ROLE_KEYS}
        if not 2 <= len(roles) <= 4:
            self.problem(("roles",), f"a task has 2 to 4 roles, this one has {len(roles)}")
        return roles

    def repeat_plan(self, repeat: Any, path: FieldPath) -> tuple[int, list[str]] | None:
        """The count and role cycle of a ``repeat``, checked before anything is unrolled."""
        path = path + ("repeat",)
        if not self.expect(repeat, dict, path, "a mapping with count and roles"):
            return None
        self.unknown_keys(repeat, {"count", "roles"}, path)
        count, roles = repeat.get("count"), repeat.get("roles")
        if isinstance(count, str) and _REPEAT_COUNT.fullmatch(count):
            count = int(count)  # a ${param} placeholder, already substituted
        if not (self.expect(count, int, path + ("count",), "an integer (use ${param})")
                and self.expect(roles, list, path + ("roles",), "a list of roles to cycle")):
            return None
        if not 1 <= count <= MAX_STEPS:
            self.problem(path + ("count",), f"must be 1 to {MAX_STEPS} (a task has at most {MAX_STEPS} steps), "
                                            f"got {show(count)}")
            return None
        if not roles:
            self.problem(path + ("roles",), "name at least one role to cycle")
            return None
        if not all(self.expect_name(role, path + ("roles", i), "a role name") for i, role in enumerate(roles)):
            return None
        return count, roles

    def expand_steps(self, spec: list[Any]) -> tuple[list[tuple[FieldPath, dict[Any, Any]]], int]:
        """Unroll ``repeat`` steps; each result keeps the path of its template for error lines.

        Returns the steps and how many the file asks for: past :data:`MAX_STEPS` repeats are
        counted but not unrolled, since the file is refused for its step count anyway.
        """
        expanded: list[tuple[FieldPath, dict[Any, Any]]] = []
        planned = 0
        for index, raw in enumerate(spec):
            path = ("steps", index)
            if not self.expect(raw, dict, path, "a step mapping"):
                continue
            if raw.get("repeat") is None:
                expanded.append((path, raw))
                planned += 1
                continue
            plan = self.repeat_plan(raw["repeat"], path)
            if plan is None:
                planned += 1  # counted as its template, so the step count adds no second problem
                continue
            count, roles = plan
            planned += count
            if planned > MAX_STEPS:
                continue
            template = {k: v for k, v in raw.items() if k != "repeat"}
            for i in range(1, count + 1):
                step = _substitute(template, {"i": i, "prev": i - 1})
                step["role"] = roles[(i - 1) % len(roles)]
                expanded.append((path, step))
        return expanded, planned

    def fill_instruction(self, text: str, inputs: Mapping[Any, Any], path: FieldPath) -> str:
        """``text`` with ``${input}`` placeholders filled, refused when that would make it huge."""
        for match in _PLACEHOLDER.finditer(text):
            name = match.group(1)
            if name in inputs and name not in self.rendered_inputs:
                self.rendered_inputs[name] = str(inputs[name])
        if _filled_length(text, self.rendered_inputs) > MAX_INSTRUCTION_CHARS:
            self.problem(path, f"the instruction would be longer than {MAX_INSTRUCTION_CHARS:,} characters "
                               "once task inputs are filled in")
            return text
        return _PLACEHOLDER.sub(lambda m: self.rendered_inputs.get(m.group(1), m.group(0)), text)

    def steps(self, spec: Any, roles: Mapping[str, Any], inputs: Mapping[Any, Any]) -> list[Step]:
        if spec is None or not self.expect(spec, list, ("steps",), "a list of steps"):
            return []
        steps: list[Step] = []
        available = {name for name in inputs if isinstance(name, str)}
        seen_ids: set[str] = set()
        expanded, planned = self.expand_steps(spec)
        for path, raw in expanded:
            self.unknown_keys(raw, _STEP_KEYS - {"repeat"}, path)
            step_id = raw.get("id")
            if not isinstance(step_id, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", step_id):
                self.problem(path + ("id",), "each step needs an id: a lower-case identifier")
                step_id = f"step{len(steps) + 1}"
            elif step_id in seen_ids:
                self.problem(path + ("id",), f"step id {step_id!r} is used twice")
            seen_ids.add(step_id)
            self.step_paths.setdefault(step_id, path)
            role = raw.get("role")
            if not isinstance(role, str) or role not in roles:
                self.problem(path + ("role",), f"unknown role {show(role)}; {did_you_mean(str(role), roles)}")
            instruction = raw.get("instruction")
            if not isinstance(instruction, str) or not instruction.strip():
                self.problem(path + ("instruction",), "required text is missing")
                instruction = ""
            reads = self.reads(raw.get("reads") or [], path + ("reads",), available)
            scope = set(reads)
            calls = self.tool_calls(raw.get("tools") or [], path + ("tools",), scope, step_id)
            produces = self.outputs(raw.get("produces"), path + ("produces",), scope)
            for output in produces:
                if output.name in available:
                    self.problem(path + ("produces", output.name), f"field {output.name!r} is already produced earlier")
            # Declared names count as available even when their expression is broken, so one
            # bad expression is reported once instead of at every step that reads the field.
            declared = raw.get("produces") if isinstance(raw.get("produces"), dict) else {}
            self.declared_outputs[step_id] = {o.name for o in produces} | {n for n in declared if isinstance(n, str)}
            available |= self.declared_outputs[step_id]
            instruction = self.fill_instruction(instruction, inputs, path + ("instruction",))
            steps.append(Step(step_id, str(role), instruction.strip(), tuple(reads), tuple(calls), tuple(produces)))
        if not 1 <= planned <= MAX_STEPS:
            self.problem(("steps",), f"a task has 1 to {MAX_STEPS} steps, this one has {planned}")
        return steps

    def reads(self, spec: Any, path: FieldPath, available: set[str]) -> list[str]:
        """The field names a step reads; each must be an input or an earlier step's output."""
        if not self.expect(spec, list, path, "a list of field names"):
            return []
        reads: list[str] = []
        for index, field_name in enumerate(spec):
            if not self.expect_name(field_name, path + (index,), "a field name"):
                continue
            if field_name not in available:
                self.problem(path + (index,),
                             f"{show(field_name)} is neither a task input nor produced by an earlier step; "
                             f"{did_you_mean(field_name, available)}")
            reads.append(field_name)
        return reads

    def tool_calls(self, spec: Any, path: FieldPath, scope: set[str], step_id: str) -> list[ToolCallPlan]:
        if not self.expect(spec, list, path, "a list of tool calls"):
            return []
        calls: list[ToolCallPlan] = []
        for index, raw in enumerate(spec):
            call_path = path + (index,)
            if not self.expect(raw, dict, call_path, "a mapping with call, args and optional as"):
                continue
            self.unknown_keys(raw, _CALL_KEYS, call_path)
            name = raw.get("call")
            bind = raw.get("as", name)
            if "as" in raw and not self.expect_name(bind, call_path + ("as",), "a name for the result"):
                bind = name
            tool = self.resolve_tool(name, call_path + ("call",))
            if tool is None:
                self.unresolved_steps.add(step_id)
                self.unresolved_calls.add(str(name))
                scope.add(str(bind))
                continue
            when = None
            if "when" in raw:
                when = self.expression(raw["when"], call_path + ("when",), scope)
            args = raw.get("args") or {}
            if not self.expect(args, dict, call_path + ("args",), "a mapping of argument expressions"):
                continue
            for missing in [p for p in tool.parameters if p not in args]:
                self.problem(call_path + ("args",), f"tool {name!r} needs argument {missing!r}")
            arguments: dict[str, Expression] = {}
            for arg, source in args.items():
                if arg not in tool.parameters:
                    self.problem(call_path + ("args", arg), f"tool {name!r} has no argument {show(arg)}; "
                                                            f"{did_you_mean(str(arg), tool.parameters)}")
                elif (expression := self.expression(source, call_path + ("args", arg), scope)) is not None:
                    arguments[arg] = expression
            calls.append(ToolCallPlan(tool.name, arguments, str(bind), tool, when))
            scope.add(str(bind))
        return calls

    def outputs(self, spec: Any, path: FieldPath, scope: set[str]) -> list[OutputField]:
        if spec is None:
            self.problem(path, "required field is missing: what the step produces")
            return []
        if not self.expect(spec, dict, path, "a mapping of output names to expressions"):
            return []
        outputs: list[OutputField] = []
        for name, body in spec.items():
            field_path = path + (name,)
            if not self.expect_name(name, field_path, "an output name"):
                continue
            wrong = None
            if isinstance(body, dict):
                self.unknown_keys(body, {"value", "wrong"}, field_path)
                if "wrong" in body:
                    wrong = self.expression(body["wrong"], field_path + ("wrong",), scope)
                body = body.get("value")
            value = self.expression(body, field_path, scope)
            if value is not None:
                outputs.append(OutputField(name, value, wrong))
        return outputs

    def gates(self, spec: Any, steps: list[Step], inputs: Mapping[Any, Any]) -> list[Gate]:
        if not self.expect(spec, list, ("gates",), "a list of gates"):
            return []
        by_id = {s.id: i for i, s in enumerate(steps)}
        gates: list[Gate] = []
        for index, raw in enumerate(spec):
            path = ("gates", index)
            if not self.expect(raw, dict, path, "a gate mapping"):
                continue
            self.unknown_keys(raw, _GATE_KEYS, path)
            before = raw.get("before")
            if not isinstance(before, str) or before not in by_id:
                self.problem(path + ("before",), f"unknown step {show(before)}; {did_you_mean(str(before), by_id)}")
                continue
            position = by_id[before]
            if not steps[position].mutating and before not in self.unresolved_steps:
                self.problem(path + ("before",), f"step {before!r} changes nothing; gates guard mutating steps")
            retry = raw.get("retry", steps[position - 1].id if position else before)
            if not isinstance(retry, str) or retry not in by_id or by_id[retry] > position:
                self.problem(path + ("retry",), f"retry step {show(retry)} must be {before!r} or a step before it; "
                                                f"{did_you_mean(str(retry), by_id)}")
            visible = {name for name in inputs if isinstance(name, str)}
            visible |= {o for s in steps[:position] for o in self.declared_outputs.get(s.id, s.output_names)}
            visible |= tool_names() | set(self.own_tools)
            predicate = self.expression(raw.get("check"), path + ("check",), visible)
            if predicate is not None:
                self.gate_lookups(predicate, path + ("check",))
            message = raw.get("message")
            if not isinstance(message, str) or not message.strip():
                self.problem(path + ("message",), "required text is missing: what a rejection tells the agent")
            if predicate is not None:
                gates.append(Gate(before, predicate, str(retry), str(message or "").strip()))
        gated = {g.before for g in gates}
        for position, step in enumerate(steps):
            if step.mutating and step.id not in gated and step.id not in self.unresolved_steps:
                self.problem(("steps", position), f"mutating step {step.id!r} has no gate")
        return gates

    def side_effect_order(self, spec: Any, steps: list[Step]) -> list[str]:
        """The declared order of side effects: two or more distinct mutating tools that the task's steps call."""
        if spec is None:
            return []
        path = ("side_effect_order",)
        if not self.expect(spec, list, path, "a list of mutating tool names, in the order their side effects "
                                             "must happen"):
            return []
        used = {tool.name: tool for step in steps for tool in step.tools}
        mutating = {name for name, tool in used.items() if tool.mutating}
        order: list[str] = []
        for index, name in enumerate(spec):
            if not self.expect_name(name, path + (index,), "a tool name"):
                continue
            if name in order:
                self.problem(path + (index,), f"{name!r} is named twice; name each tool once")
            elif name in used and name not in mutating:
                self.problem(path + (index,), f"tool {name!r} changes nothing; only side effects (mutating tools) "
                                              f"have an order")
            elif name not in used and name not in self.unresolved_calls:
                self.problem(path + (index,), f"no step calls a mutating tool {name!r}; "
                                              f"{did_you_mean(name, mutating)}")
            order.append(name)
        if len(spec) < 2:
            self.problem(path, "name at least two mutating tools: an order needs two side effects")
        return order

    def gate_lookups(self, predicate: Expression, path: FieldPath) -> None:
        """Record the tools a gate calls; a gate may only look, so a mutating one is a problem."""
        for name in sorted(predicate.called_names & (tool_names() | set(self.own_tools))):
            tool = self.resolve_tool(name, path)
            if tool is not None and tool.mutating:
                self.problem(path, f"a gate only looks at the world; {name!r} changes it")
            elif tool is not None:
                self.gate_tools[name] = tool

    def checks(self, spec: Any, inputs: Mapping[Any, Any], fixtures: Mapping[Any, Any]) -> list[Check]:
        if not self.expect(spec, list, ("checks",), "a list of checks"):
            return []
        visible = _CHECK_NAMES | {name for name in [*fixtures, *inputs] if isinstance(name, str)}
        checks: list[Check] = []
        for index, raw in enumerate(spec):
            path = ("checks", index)
            if not self.expect(raw, dict, path, "a mapping with expr and description"):
                continue
            self.unknown_keys(raw, _CHECK_KEYS, path)
            predicate = self.expression(raw.get("expr"), path + ("expr",), visible)
            if predicate is not None:
                checks.append(Check(predicate, str(raw.get("description", raw.get("expr")))))
        return checks


def _parse(path: Path, params: Mapping[str, int]) -> tuple[Task | None, list[Problem]]:
    try:
        document = read_yaml_document(path)
    except YamlFileError as exc:
        return None, [Problem(exc.file, exc.line, exc.field, exc.message)]
    builder = _Builder(str(path), document.data, document.lines, params)
    try:
        task = builder.build()
        if task is not None:
            builder.verify(task)
    except TooManyProblems:
        return None, builder.problems
    if task is not None:
        task = Task(**{**task.__dict__, "source": path})
    return task, builder.problems


def load_task(path: str | Path, params: Mapping[str, int] | None = None) -> Task:
    """Load one task file, raising :class:`TaskValidationError` with every problem found."""
    task, problems = _parse(Path(path), params or {})
    if problems or task is None:
        raise TaskValidationError(problems)
    return task


def validate_files(paths: Iterable[str | Path]) -> list[Problem]:
    """Every problem in every file (an empty list means all are valid)."""
    problems: list[Problem] = []
    for path in paths:
        problems += _parse(Path(path), {})[1]
    return problems


def suite_paths() -> list[Path]:
    """The built-in suite's task files, sorted by name."""
    return sorted(SUITE_DIR.glob("*.yaml"))


def suite_names() -> list[str]:
    """Names of the built-in tasks."""
    return [p.stem for p in suite_paths()]


def load_suite_task(name: str, params: Mapping[str, int] | None = None) -> Task:
    """A built-in task by name; an unknown name answers "did you mean"."""
    path = SUITE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"no task {name!r} in the suite; {did_you_mean(name, suite_names())}")
    return load_task(path, params)


def load_suite() -> list[Task]:
    """Every built-in task at its default parameters."""
    return [load_task(p) for p in suite_paths()]
