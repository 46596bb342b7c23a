"""A minimal scripted loop: the task's steps in order through the official ``openai`` client.

This is the smallest honest driver of the simulator: one system and one user message per
step, native tool calls executed on the episode's world, the step's JSON answer passed on.
Tests use it to show that the oracle path solves every task and that faults have the
effects they should; the framework-free ``plain`` adapter grows from the same pieces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import openai

from coordlab.tasks.schema import Role, Step, Task
from coordlab.tasks.scoring import Verdict, score
from coordlab.tasks.tools import TOOLS, ToolError
from coordlab.tasks.world import World, canonical_json

from .faults import FaultPlan
from .simulator import MODEL_NAME, RequestRecord, Simulator
from .simulator.reading import json_objects

API_KEY = "sk-coordlab-simulated"
"""Any key works with the simulator; clients insist on having one."""


def system_prompt(role: Role) -> str:
    """The role's standing instructions."""
    return f"You are the {role.name}. Goal: {role.goal}\n{role.instructions}\n" \
           "Answer with one JSON object holding exactly the fields the step asks for."


def step_prompt(step: Step, values: Mapping[str, Any]) -> str:
    """The step's instruction, its marker, and the inputs it reads as JSON."""
    inputs = {name: values[name] for name in step.reads if name in values}
    return (f"{step.instruction} {step.marker}\n"
            f"Inputs: {json.dumps(inputs)}\n"
            f"Produce a JSON object with the fields: {', '.join(step.output_names)}.")


def run_tool(world: World, name: str, raw_arguments: str) -> str:
    """Execute a model's tool call on the world; errors come back as text the model can read."""
    tool = TOOLS.get(name)
    if tool is None:
        return f"Error: there is no tool named {name!r}."
    try:
        arguments = json.loads(raw_arguments or "{}")
    except ValueError as exc:
        return f"Error: the arguments are not valid JSON ({exc})."
    try:
        return canonical_json(tool(world, arguments))
    except ToolError as exc:
        return f"Error: {exc}"


def parse_answer(text: str | None) -> dict[str, Any]:
    """The last JSON object in a model's answer ({} when there is none)."""
    objects = list(json_objects(text or ""))
    return objects[-1] if objects else {}


@dataclass
class ScriptedResult:
    """What one scripted episode did and how it scored."""

    verdict: Verdict
    world: World
    outputs: dict[str, dict[str, Any]]
    records: list[RequestRecord] = field(default_factory=list)


def run_scripted(task: Task, simulator: Simulator, plan: FaultPlan, *, stream: bool = False,
                 max_turns: int = 8, timeout: float = 30.0, max_retries: int = 2) -> ScriptedResult:
    """Drive ``task`` once through ``simulator`` with the plain ``openai`` client."""
    episode = simulator.open_episode(task, plan)
    world = World.from_fixtures(task.fixtures)
    values: dict[str, Any] = dict(task.inputs)
    outputs: dict[str, dict[str, Any]] = {}
    clients = {role: openai.OpenAI(base_url=simulator.base_url(episode.id, role), api_key=API_KEY,
                                   timeout=timeout, max_retries=max_retries) for role in task.roles}
    try:
        for step in task.steps:
            role = task.roles[step.role]
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": system_prompt(role)},
                {"role": "user", "content": step_prompt(step, values)},
            ]
            tools = [TOOLS[name].openai_spec() for name in role.tools]
            answer: dict[str, Any] = {}
            for _ in range(max_turns):
                message = _complete(clients[step.role], messages, tools, stream)
                if not message.get("tool_calls"):
                    answer = parse_answer(message.get("content"))
                    break
                messages.append(message)
                for call in message["tool_calls"]:
                    messages.append({"role": "tool", "tool_call_id": call["id"],
                                     "content": run_tool(world, call["function"]["name"], call["function"]["arguments"])})
            outputs[step.id] = answer
            values.update(answer)
        world.final_output = outputs.get(task.steps[-1].id, {})
    finally:
        for client in clients.values():
            client.close()
        simulator.close_episode(episode.id)
    return ScriptedResult(score(task, world), world, outputs, list(episode.records))


def _complete(client: openai.OpenAI, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
              stream: bool) -> dict[str, Any]:
    """One chat completion as an assistant message dict, streamed or not."""
    options: dict[str, Any] = {"model": MODEL_NAME, "messages": messages}
    if tools:
        options["tools"] = tools
    if not stream:
        return client.chat.completions.create(**options).choices[0].message.model_dump(exclude_none=True)
    content, calls = "", {}
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **options):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "type": "function",
                                                      "function": {"name": "", "arguments": ""}})
                call["id"] = delta.id or call["id"]
                if delta.function:
                    call["function"]["name"] += delta.function.name or ""
                    call["function"]["arguments"] += delta.function.arguments or ""
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message
