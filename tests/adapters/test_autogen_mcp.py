"""The AutoGen adapter with its tools over MCP: AutoGen's own ``McpWorkbench`` against the lab's tool server.

Each MCP episode is paired with a native one (``FunctionTool``s) on the same task, variant,
profile and seed; what is compared comes from the simulator's request log (what the model
was offered and read) and the harness's trace (tool calls, the world's side effects), never
from the adapter's account of itself.

Transport differences these tests pin down, so that a change in AutoGen shows up here:

- Schemas: over MCP the model is offered each tool's ``Tool.json_schema()`` exactly (AutoGen's
  ``McpWorkbench`` keeps ``properties``, ``required`` and ``additionalProperties``); natively
  AutoGen derives the schema from a pydantic model, which adds a ``title`` to every property
  and ``additionalProperties: true`` to an array's object items. Both are sent ``strict``:
  natively because the adapter builds strict FunctionTools, over MCP because the adapter marks
  the workbench's tools strict (stock ``McpWorkbench`` never does, and AutoGen's structured
  output refuses non-strict tools: every episode would end in ERROR before its first request).
- Tool errors: the model reads the tool's own text either way; over MCP AutoGen also flags the
  result ``is_error`` (which the model does not see).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordlab.adapters.base import Durability, Endpoint, EpisodeSpec, Knobs, Termination, ToolTransport, Variant
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import EventKind, TraceRecorder
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.harness import API_KEY, EpisodeResult, Status, run_episode
from coordlab.runners.simulator import MODEL_NAME, ROUTER_ROLE, Simulator
from coordlab.tasks.loader import load_suite, load_suite_task
from coordlab.tasks.schema import Task
from coordlab.tasks.tools import RESPONSE_LOST
from coordlab.tasks.world import World

pytest.importorskip("autogen_agentchat")
pytest.importorskip("autogen_ext.tools.mcp")
# the openai SDK's ParsedChatCompletion warns on every structured-output answer AutoGen logs, and autogen-ext
# 0.7.5 opens its session with the mcp SDK's deprecated ``streamablehttp_client`` (neither ours to fix)
pytestmark = [pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning"),
              pytest.mark.filterwarnings("ignore:Use `streamable_http_client` instead:DeprecationWarning")]

NONE = load_profile("none")
LOST = load_profile("lost_responses")
"""Mutating calls whose response is lost after the change: tool errors that cross the transport."""
MCP, NATIVE = Knobs(tool_transport=ToolTransport.MCP), Knobs(tool_transport=ToolTransport.NATIVE)
SUITE = load_suite()


def run(task: Task, variant: Variant, simulator: Simulator, plan: FaultPlan, knobs: Knobs) -> EpisodeResult:
    return run_episode(get_adapter("autogen"), task, variant, simulator, plan, knobs)


def forced(step: str, fault: Fault) -> FaultPlan:
    return FaultPlan(NONE, 0, (ForcedFault(step, fault),))


def tool_calls(result: EpisodeResult) -> list[tuple[Any, ...]]:
    """The trace's tool calls in order, without their timing (who, which step, which tool, how it went)."""
    return [(e.role, e.step, e.detail["name"], e.detail["mutating"], e.detail["ok"], e.detail["error"])
            for e in result.trace if e.kind is EventKind.TOOL_CALL]


def side_effects(result: EpisodeResult) -> list[tuple[str, dict[str, Any]]]:
    """The world's side effects as the harness appends them to the trace (tool and arguments, in order)."""
    return [(e.detail["tool"], e.detail["arguments"]) for e in result.trace if e.kind is EventKind.SIDE_EFFECT]


def offered_tools(result: EpisodeResult) -> list[list[dict[str, Any]]]:
    """The ``tools`` of every request the simulator logged, in order (``[]`` for a request without tools)."""
    return [list((r.request_body or {}).get("tools") or []) for r in result.records]


def tool_results(result: EpisodeResult) -> list[str]:
    """Every tool result the model read, in the order the requests carried them (each once)."""
    seen: dict[str, str] = {}
    for record in result.records:
        for message in (record.request_body or {}).get("messages", []):
            if message.get("role") == "tool":
                seen.setdefault(message["tool_call_id"], message["content"])
    return list(seen.values())


_PAIRS: dict[tuple[str, Variant], dict[ToolTransport, EpisodeResult]] = {}


def paired(simulator: Simulator, task: Task, variant: Variant) -> dict[ToolTransport, EpisodeResult]:
    """The native and the MCP episode of ``task`` under ``lost_responses``, seed 0 (run once per module)."""
    if (task.name, variant) not in _PAIRS:
        _PAIRS[task.name, variant] = {knobs.tool_transport: run(task, variant, simulator, FaultPlan(LOST, 0), knobs)
                                      for knobs in (NATIVE, MCP)}
    return _PAIRS[task.name, variant]


def pydantic_form(schema: dict[str, Any]) -> dict[str, Any]:
    """A suite parameter schema as AutoGen's ``FunctionTool`` derives it: pydantic's field ``title`` on every
    property, and an array's object items open to any key (``additionalProperties: true``)."""
    properties = {}
    for name, spec in schema["properties"].items():
        spec = {**spec, "title": name.replace("_", " ").title()}
        if spec.get("items") == {"type": "object"}:
            spec["items"] = {"type": "object", "additionalProperties": True}
        properties[name] = spec
    return {**schema, "properties": properties}


@pytest.mark.parametrize("variant", list(Variant), ids=str)
@pytest.mark.parametrize("task", SUITE, ids=lambda t: t.name)
def test_every_task_and_variant_succeeds_over_mcp(simulator: Simulator, task: Task, variant: Variant) -> None:
    result = run(task, variant, simulator, FaultPlan(NONE, 0), MCP)
    assert result.status is Status.SUCCESS, (result.verdict.describe(), result.error)
    assert result.termination is Termination.COMPLETED and result.knobs["tool_transport"] == "mcp"
    assert result.counts.handoff_failures == 0 and result.counts.faults_injected == 0
    assert not [note for note in result.notes if "tools" in note]  # no fallback to another transport
    assert [e.step for e in result.trace if e.kind is EventKind.STEP_OUTPUT] == [s.id for s in task.steps]
    planned = sum(len(s.tool_calls) for s in task.steps)
    assert len(tool_calls(result)) == planned and all(call[4] for call in tool_calls(result))


@pytest.mark.parametrize("variant", list(Variant), ids=str)
@pytest.mark.parametrize("task", SUITE, ids=lambda t: t.name)
def test_mcp_and_native_episodes_of_one_seed_have_the_same_effects_and_tool_calls(
        simulator: Simulator, task: Task, variant: Variant) -> None:
    pair = paired(simulator, task, variant)
    native, mcp = pair[ToolTransport.NATIVE], pair[ToolTransport.MCP]
    assert (mcp.status, mcp.termination, mcp.harmful) == (native.status, native.termination, native.harmful)
    assert side_effects(mcp) == side_effects(native)
    assert tool_calls(mcp) == tool_calls(native)  # each call once: the server's record, not the adapter's too
    assert tool_results(mcp) == tool_results(native)
    assert [(r.role, r.step, r.kind, r.fault) for r in mcp.records] == \
        [(r.role, r.step, r.kind, r.fault) for r in native.records]  # not one model request more or less


@pytest.mark.parametrize("task", [t for t in SUITE if t.tools], ids=lambda t: t.name)
def test_the_model_is_offered_the_suite_schemas_over_mcp_and_pydantics_natively(simulator: Simulator,
                                                                                task: Task) -> None:
    pair = paired(simulator, task, Variant.LINEAR)
    native, mcp = offered_tools(pair[ToolTransport.NATIVE]), offered_tools(pair[ToolTransport.MCP])
    assert [[t["function"]["name"] for t in tools] for tools in mcp] == \
        [[t["function"]["name"] for t in tools] for tools in native]  # the same tools on the same requests
    for tools in mcp:
        for tool in tools:
            suite = task.tools[tool["function"]["name"]]
            assert tool == {"type": "function", "function": {
                "name": suite.name, "description": suite.description, "parameters": suite.json_schema(),
                "strict": True}}
    for tools in native:
        for tool in tools:
            suite = task.tools[tool["function"]["name"]]
            assert tool == {"type": "function", "function": {
                "name": suite.name, "description": suite.description,
                "parameters": pydantic_form(suite.json_schema()), "strict": True}}


def test_a_tool_error_reaches_the_model_in_the_tools_own_words_either_way(simulator: Simulator) -> None:
    # the email goes out, then its response is lost: the lab's tool body fails the call after the change
    task = load_suite_task("appointment_rebooking")
    native, mcp = (run(task, Variant.LINEAR, simulator, forced("send", Fault.TOOL_ERROR_AFTER_EFFECT), knobs)
                   for knobs in (NATIVE, MCP))
    error = f"Error: {RESPONSE_LOST}"
    assert error in tool_results(native) and tool_results(mcp) == tool_results(native)
    sends = [call for call in tool_calls(mcp) if call[2] == "send_email"]
    assert [call[4] for call in sends] == [False, True] and sends[0][5] == RESPONSE_LOST  # recorded once
    assert tool_calls(mcp) == tool_calls(native) and side_effects(mcp) == side_effects(native)
    assert mcp.harmful and native.harmful  # the model retried the timed-out send: two emails


def test_a_call_autogen_refuses_itself_is_recorded_by_the_adapter_over_mcp_too(simulator: Simulator) -> None:
    # an unknown tool never reaches the MCP client: AutoGen answers it with its own error, as it does natively
    task = load_suite_task("appointment_rebooking")
    native, mcp = (run(task, Variant.LINEAR, simulator, forced("find_slot", Fault.UNKNOWN_TOOL), knobs)
                   for knobs in (NATIVE, MCP))
    assert mcp.status is Status.SUCCESS and mcp.counts.tool_errors == 1
    refused = [call for call in tool_calls(mcp) if not call[4]]
    assert refused == [("scheduler", "find_slot", "crm_lookup_v2", False, False,
                        "rejected by AutoGen: Error: tool 'crm_lookup_v2' not found in any workbench")]
    assert tool_calls(mcp) == tool_calls(native) and tool_results(mcp) == tool_results(native)


def test_malformed_tool_arguments_fail_in_the_sdk_before_either_transport(simulator: Simulator) -> None:
    # strict tools under structured output: the openai SDK json-decodes the arguments itself and raises
    task = load_suite_task("appointment_rebooking")
    native, mcp = (run(task, Variant.LINEAR, simulator, forced("find_slot", Fault.MALFORMED_TOOL_ARGS), knobs)
                   for knobs in (NATIVE, MCP))
    assert mcp.status is Status.ERROR and (mcp.error or "").startswith("RuntimeError: JSONDecodeError")
    assert (mcp.error, len(mcp.records), tool_calls(mcp)) == (native.error, len(native.records), [])


def test_under_durability_the_tools_stay_native_with_a_note(simulator: Simulator, tmp_path: Path) -> None:
    # the crash experiment's endpoint has no tool URLs: the adapter keeps its FunctionTools and says so
    task = load_suite_task("appointment_rebooking")
    world = World.for_task(task)
    episode = simulator.open_episode(task, FaultPlan(NONE, 0), world=world)
    endpoint = Endpoint({r: simulator.base_url(episode.id, r) for r in [*task.roles, ROUTER_ROLE]}, MODEL_NAME, API_KEY)
    try:
        outcome = get_adapter("autogen").run(EpisodeSpec(task, Variant.LINEAR, endpoint, MCP, world, TraceRecorder(),
                                                         Durability(tmp_path, False, "mcp-durable")))
    finally:
        simulator.close_episode(episode.id)
    assert outcome.termination is Termination.COMPLETED, outcome.error
    assert any(note.startswith("tools native, not over MCP") for note in outcome.notes)
    assert [e.tool for e in world.side_effects] == ["send_email", "crm_update"]
