"""What every adapter shares: step prompts, tool execution on the world, gates, output parsing.

Keeping these in one place is what makes the comparison fair: every framework shows the
model the same step text, executes the same tool code with the same error messages, and
applies the same gate predicate. Only the wiring differs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Mapping

from coordlab.runners.simulator.reading import json_objects
from coordlab.tasks.schema import Role, Step, Task
from coordlab.tasks.scoring import gate_passes
from coordlab.tasks.tools import ToolError
from coordlab.tasks.world import World, canonical_json

from .trace import TraceRecorder


def role_prompt(role: Role) -> str:
    """The role's standing instructions (an agent's system message, backstory or prompt)."""
    return (f"You are the {role.name}. Goal: {role.goal}\n{role.instructions}\n"
            "When a step is done, answer with one JSON object holding exactly the fields the step asks for.")


def step_prompt(task: Task, step: Step, values: Mapping[str, Any] | None = None) -> str:
    """The step's instruction with its marker, the inputs it is handed, and the fields to produce.

    ``values`` are the inputs an orchestrator passes explicitly; by default only the task's
    own inputs, so that everything else must reach the step through the framework.
    """
    given = dict(task.inputs) if values is None else dict(values)
    inputs = {name: given[name] for name in step.reads if name in given}
    text = f"{step.instruction} {step.marker}\n"
    if inputs:
        text += f"Inputs: {json.dumps(inputs)}\n"
    return text + f"Answer with one JSON object with exactly the fields: {', '.join(step.output_names)}."


def expected_output(step: Step) -> str:
    """A one-line description of the step's answer (CrewAI's ``expected_output`` and the like)."""
    return f"One JSON object with the fields {', '.join(step.output_names)}."


def parse_output(text: str | None) -> dict[str, Any]:
    """The last JSON object in an answer ({} when there is none): what a step hands on."""
    objects = list(json_objects(text or ""))
    return objects[-1] if objects else {}


@dataclass(frozen=True)
class ToolOutcome:
    """What a tool call gave the model: the text it reads, and whether that text reports an error.

    Native tools hand the model only the text; an MCP server also sets ``isError`` from
    :attr:`failed`, as the protocol asks, and each framework's MCP client decides what to do with it.
    """

    text: str
    failed: bool


def run_tool(world: World, trace: TraceRecorder | None, role: str | None, step: str | None,
             name: str, arguments: Mapping[str, Any] | str | None) -> ToolOutcome:
    """Run a model's tool call on the world and record it; errors come back as text the model can read.

    Results are JSON text so that every framework, and either transport, hands the model the same bytes.
    """
    tool = world.tools.get(name)
    if tool is None:
        if trace:
            trace.tool_call(role, step, name, False, False, "unknown tool")
        return ToolOutcome(f"Error: there is no tool named {name!r}.", True)
    if isinstance(arguments, str) or arguments is None:
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError as exc:
            if trace:
                trace.tool_call(role, step, name, tool.mutating, False, "malformed arguments")
            return ToolOutcome(f"Error: the arguments are not valid JSON ({exc}).", True)
    started = time.perf_counter()
    try:
        result = canonical_json(tool(world, arguments))
    except ToolError as exc:
        if trace:
            trace.tool_call(role, step, name, tool.mutating, False, str(exc), (time.perf_counter() - started) * 1000)
        return ToolOutcome(f"Error: {exc}", True)
    if trace:
        trace.tool_call(role, step, name, tool.mutating, True, duration_ms=(time.perf_counter() - started) * 1000)
    return ToolOutcome(result, False)


def execute_tool(world: World, trace: TraceRecorder | None, role: str | None, step: str | None,
                 name: str, arguments: Mapping[str, Any] | str | None) -> str:
    """:func:`run_tool`'s text: what a native tool hands the model."""
    return run_tool(world, trace, role, step, name, arguments).text


@dataclass(frozen=True)
class GateVerdict:
    """A gate's decision and the message a rejected step is sent back with."""

    passed: bool
    message: str


def check_gate(task: Task, world: World, trace: TraceRecorder | None, before: str,
               values: Mapping[str, Any]) -> GateVerdict:
    """Evaluate the gate in front of step ``before`` on the values the framework holds; record it."""
    gate = task.gate_before(before)
    if gate is None:
        return GateVerdict(True, "")
    passed = gate_passes(task, before, values, world)
    message = "" if passed else f"Rejected by the gate before '{before}': {gate.message}"
    if trace:
        trace.gate(before, passed, message)
    return GateVerdict(passed, message)


def tool_specs(task: Task, role: str) -> list[dict[str, Any]]:
    """The OpenAI tool specs of ``role``'s tools."""
    return [task.tools[name].openai_spec() for name in task.roles[role].tools]


def routing_tools(task: Task) -> list[dict[str, Any]]:
    """One ``transfer_to_<role>`` tool per role: how a routing model names who works next."""
    return [{"type": "function", "function": {
        "name": f"transfer_to_{role}", "description": f"Hand the next piece of work to the {role}.",
        "parameters": {"type": "object", "properties": {}}}} for role in task.roles]


def routing_messages(task: Task, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The routing model's prompt: the roster, the task, and the work so far (the same for every adapter)."""
    roster = ", ".join(f"{r.name} ({r.goal})" for r in task.roles.values())
    return [{"role": "system", "content": f"You route work between: {roster}. Say FINISH when every step is done."},
            {"role": "user", "content": f"Task: {task.description}\nWork so far: {json.dumps(dict(values))}"}]


def routed_role(message: Mapping[str, Any], roles: set[str]) -> str | None:
    """The role a routing reply names (a transfer tool call or the bare name); None means FINISH."""
    for call in message.get("tool_calls") or []:
        name = call["function"]["name"].removeprefix("transfer_to_")
        if name in roles:
            return name
    content = (message.get("content") or "").strip()
    return content if content in roles else None
