"""A minimal tool-calling agent loop on the official ``openai`` client, with no framework.

Used by the ``plain`` reference adapter and by the scripted loop the simulator is tested
with: ask, run the tool calls, feed the results back, until the model answers in text.
"""

from __future__ import annotations

from typing import Any, Callable

import openai

from .base import EpisodeSpec, Variant

ToolRunner = Callable[[str, str], str]
"""Executes one tool call: (name, raw JSON arguments) -> result text."""


def openai_clients(spec: EpisodeSpec) -> dict[str, openai.OpenAI]:
    """One official-SDK client per role (and the router's in ``delegated``), retries and timeout from the knobs.

    Knobs left at None keep the SDK's defaults, as every framework's own client does.
    """
    options = spec.knobs.client_options()
    roles = [*spec.task.roles] + ([spec.router_role] if spec.variant is Variant.DELEGATED else [])
    return {role: openai.OpenAI(base_url=spec.endpoint.base_url(role), api_key=spec.endpoint.api_key, **options)
            for role in roles}
"""Executes one tool call: (name, raw JSON arguments) -> result text."""


def complete(client: openai.OpenAI, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
             stream: bool = False, temperature: float | None = None) -> dict[str, Any]:
    """One chat completion as an assistant message dict, streamed or not."""
    options: dict[str, Any] = {"model": model, "messages": messages}
    if tools:
        options["tools"] = tools
    if temperature is not None:
        options["temperature"] = temperature
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


def run_agent(client: openai.OpenAI, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
              run_tool: ToolRunner, max_turns: int, stream: bool = False,
              temperature: float | None = None) -> str | None:
    """Loop until the model answers without tool calls; its text, or None after ``max_turns``.

    ``messages`` is extended in place, so a caller can send a rejected step back with the
    whole exchange plus its feedback.
    """
    for _ in range(max_turns):
        message = complete(client, model, messages, tools, stream, temperature)
        messages.append(message)
        if not message.get("tool_calls"):
            return message.get("content") or ""
        for call in message["tool_calls"]:
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": run_tool(call["function"]["name"], call["function"]["arguments"])})
    return None
