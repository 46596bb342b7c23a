"""A minimal scripted loop: the task's steps in order through the official ``openai`` client.

This is the smallest honest driver of the simulator: one system and one user message per
step, native tool calls executed on the episode's world, the step's JSON answer passed on.
Tests use it to show that the oracle path solves every task and that faults have the
effects they should. It shares its prompts, tool execution and agent loop with the
``plain`` adapter, but bypasses the adapter harness so the simulator can be tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import openai

from coordlab.adapters.openai_loop import run_agent
from coordlab.adapters.toolkit import execute_tool, parse_output, role_prompt, step_prompt, tool_specs
from coordlab.tasks.schema import Task
from coordlab.tasks.scoring import Verdict, score
from coordlab.tasks.world import World

from .faults import FaultPlan
from .simulator import MODEL_NAME, RequestRecord, Simulator

API_KEY = "sk-coordlab-simulated"
"""Any key works with the simulator; clients insist on having one."""


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
    world = World.for_task(task)
    values: dict[str, Any] = dict(task.inputs)
    outputs: dict[str, dict[str, Any]] = {}
    clients = {role: openai.OpenAI(base_url=simulator.base_url(episode.id, role), api_key=API_KEY,
                                   timeout=timeout, max_retries=max_retries) for role in task.roles}
    try:
        for step in task.steps:
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": role_prompt(task.roles[step.role])},
                {"role": "user", "content": step_prompt(task, step, values)},
            ]
            answer = run_agent(clients[step.role], MODEL_NAME, messages, tool_specs(task, step.role),
                               lambda name, args: execute_tool(world, None, step.role, step.id, name, args),
                               max_turns, stream)
            outputs[step.id] = parse_output(answer)
            values.update(outputs[step.id])
        world.final_output = outputs.get(task.steps[-1].id, {})
    finally:
        for client in clients.values():
            client.close()
        simulator.close_episode(episode.id)
    return ScriptedResult(score(task, world), world, outputs, list(episode.records))
