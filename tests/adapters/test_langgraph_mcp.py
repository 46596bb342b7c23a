"""LangGraph with its tools over MCP (``langchain-mcp-adapters`` on the lab's tool server) against its native tools.

Each task and variant runs once per transport on the same seed (cached for the module), and
what is compared comes from outside the framework: the world's side effects, the trace's
tool calls, and the request bodies the simulator logged. What differs between the transports,
each asserted exactly below:

- a tool's result reaches the model as ``[{"type": "text", "text": ...}]`` content parts over
  MCP (``langchain-mcp-adapters`` returns content blocks), as a string natively; the text is
  the same, and nothing else in any request body differs but the tool-call ids;
- in ``delegated``, a native tool call is traced with no step (the agent chose its step; the
  tool cannot know it), the MCP server traces the step of the role's latest model request.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
from mcp.shared.exceptions import McpError

from coordlab.adapters.base import Durability, Endpoint, EpisodeSpec, Knobs, Termination, ToolTransport, Variant
from coordlab.adapters.langgraph_adapter import LangGraphAdapter, LangGraphEpisode
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import EventKind, TraceRecorder
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.harness import API_KEY, EpisodeResult, Status, run_episode
from coordlab.runners.simulator import MODEL_NAME, ROUTER_ROLE, Simulator
from coordlab.runners.tool_server import ToolEpisode, served_tools, shared_tool_server
from coordlab.tasks.loader import load_suite, load_suite_task
from coordlab.tasks.schema import Task
from coordlab.tasks.world import World

from review_support import RecordingApprover

NONE = load_profile("none")
TASKS = load_suite()
VARIANTS = pytest.mark.parametrize("variant", list(Variant), ids=lambda v: v.value)
EVERY_TASK = pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
CALL_ID = re.compile(r"call_[0-9a-f]+_(\d+)")
"""The simulator's tool-call ids: the episode's id, then the call's number in it (compared by number only)."""


class Kept(LangGraphEpisode):
    """Keeps the last episode built, so a test can read its world and its transport (changes nothing else)."""

    last: ClassVar[Kept | None] = None

    def __init__(self, spec: EpisodeSpec):
        super().__init__(spec)
        Kept.last = self


class Paired:
    """One episode's result and what the adapter's episode held: its world and its transport."""

    def __init__(self, result: EpisodeResult, episode: LangGraphEpisode):
        self.result, self.world, self.over_mcp = result, episode.spec.world, episode.over_mcp


_RUNS: dict[tuple[str, Variant, ToolTransport, tuple[ForcedFault, ...]], Paired] = {}


def episode(simulator: Simulator, task: Task, variant: Variant, transport: ToolTransport,
            *faults: ForcedFault) -> Paired:
    """``task`` in ``variant`` over ``transport`` on seed 0 (run once per module: the pairs share the runs)."""
    key = (task.name, variant, transport, faults)
    if key not in _RUNS:
        adapter = LangGraphAdapter()
        adapter.episode_class = Kept
        result = run_episode(adapter, task, variant, simulator, FaultPlan(NONE, 0, faults),
                             Knobs(tool_transport=transport))
        assert Kept.last is not None
        _RUNS[key] = Paired(result, Kept.last)
    return _RUNS[key]


def pair(simulator: Simulator, task: Task, variant: Variant, *faults: ForcedFault) -> tuple[Paired, Paired]:
    """The native and the MCP episode of the same task, variant, seed and forced faults."""
    return (episode(simulator, task, variant, ToolTransport.NATIVE, *faults),
            episode(simulator, task, variant, ToolTransport.MCP, *faults))


def tool_calls(result: EpisodeResult) -> list[tuple[str | None, str | None, str, bool, bool, str | None]]:
    """The trace's tool calls: role, step, tool, mutating, ok, error (not how long the tool ran)."""
    return [(e.role, e.step, e.detail["name"], e.detail["mutating"], e.detail["ok"], e.detail["error"])
            for e in result.trace if e.kind is EventKind.TOOL_CALL]


def effects(world: World) -> list[tuple[str, dict[str, Any], Any]]:
    return [(effect.tool, dict(effect.arguments), effect.result) for effect in world.side_effects]


def tool_results(result: EpisodeResult) -> dict[str, Any]:
    """Every tool result the model was sent, by call number, as its request body carried it."""
    return {CALL_ID.sub(r"\1", m["tool_call_id"]): m["content"]
            for record in result.records for m in record.request_body.get("messages", []) if m["role"] == "tool"}


def as_native(body: dict[str, Any]) -> dict[str, Any]:
    """A request body with call ids reduced to their number and tool results' content parts joined into a
    string: what an MCP episode's body is once the two known differences are taken out."""
    messages = []
    for message in body.get("messages", []):
        if message["role"] == "tool" and isinstance(message["content"], list):
            message = {**message, "content": "".join(part["text"] for part in message["content"])}
        messages.append(message)
    return json.loads(CALL_ID.sub(r"call_\1", json.dumps({**body, "messages": messages})))


def is_transfer(content: Any) -> bool:
    """Whether a tool result is the supervisor's answer to a ``transfer_to_<role>`` call (no tool's result)."""
    return isinstance(content, str) and (content.startswith("Transferred to ") or content == "Not transferred.")


def sent_tools(result: EpisodeResult) -> list[Any]:
    """The ``tools`` of every request the episode sent (None where a request offered none)."""
    return [record.request_body.get("tools") for record in result.records]


@VARIANTS
@EVERY_TASK
def test_every_task_solves_over_mcp(simulator: Simulator, task: Task, variant: Variant) -> None:
    mcp = episode(simulator, task, variant, ToolTransport.MCP)
    result = mcp.result
    assert result.status is Status.SUCCESS, (result.verdict.describe(), result.error)
    assert result.termination is Termination.COMPLETED and result.notes == []
    assert mcp.over_mcp and result.knobs["tool_transport"] == ToolTransport.MCP.value
    assert not any(r.handoff_issues or r.kind == "unidentified" for r in result.records)
    # the tools really went over MCP: every tool result the model read is langchain-mcp-adapters' content blocks
    results = [content for content in tool_results(result).values() if not is_transfer(content)]
    assert all(isinstance(content, list) for content in results) and bool(results) == bool(task.tools)


@VARIANTS
@EVERY_TASK
def test_mcp_and_native_make_the_same_side_effects_and_tool_calls(simulator: Simulator, task: Task,
                                                                    variant: Variant) -> None:
    native, mcp = pair(simulator, task, variant)
    assert not native.over_mcp and native.result.status is Status.SUCCESS
    assert effects(mcp.world) == effects(native.world)
    assert bool(native.world.side_effects) == any(tool.mutating for tool in task.tools.values())
    native_calls, mcp_calls = tool_calls(native.result), tool_calls(mcp.result)
    assert bool(native_calls) == bool(task.tools)
    if variant is Variant.DELEGATED:  # the one traced difference: only the MCP server knows the step
        assert {step for _, step, *_ in native_calls} <= {None}
        assert all(step is not None for _, step, *_ in mcp_calls)
        assert [(role, *rest) for role, _, *rest in mcp_calls] == [(role, *rest) for role, _, *rest in native_calls]
    else:
        assert mcp_calls == native_calls


@VARIANTS
@EVERY_TASK
def test_the_model_is_offered_the_same_tools_and_sent_the_same_requests(simulator: Simulator, task: Task,
                                                                         variant: Variant) -> None:
    native, mcp = pair(simulator, task, variant)
    assert sent_tools(mcp.result) == sent_tools(native.result)  # schemas byte for byte, in every request
    assert any(r.request_body.get("tools") for r in native.result.records if r.role != ROUTER_ROLE) == bool(task.tools)
    # no extra model requests, and nothing else differs but the tool results' shape and the call ids
    assert len(mcp.result.records) == len(native.result.records)
    for ours, theirs in zip(mcp.result.records, native.result.records):
        assert as_native(ours.request_body) == as_native(theirs.request_body)
    for call, content in tool_results(mcp.result).items():
        native_content = tool_results(native.result)[call]
        if is_transfer(content):  # the supervisor's answers are no tool's: the same on both transports
            assert content == native_content
        else:
            assert content == [{"type": "text", "text": native_content}]


@pytest.mark.parametrize("fault, tool, error", [
    # the tool ran and failed: the server answers with isError, langchain-mcp-adapters hands its text on
    (Fault.TOOL_ERROR_AFTER_EFFECT, "send_email", "the call timed out before its response arrived"),
    # no tool ran: ToolNode refuses an unknown tool itself, on either transport
    (Fault.UNKNOWN_TOOL, "send_email_v2", "unknown tool"),
], ids=lambda value: value.value if isinstance(value, Fault) else None)
def test_a_tool_error_reaches_the_model_as_the_same_text(simulator: Simulator, fault: Fault, tool: str,
                                                         error: str) -> None:
    native, mcp = pair(simulator, load_suite_task("appointment_rebooking"), Variant.LINEAR,
                       ForcedFault("send", fault))
    failed = [c for c in tool_calls(native.result) if not c[4]]
    assert len(failed) == 1 and failed[0][2] == tool and failed[0][5].startswith(error)
    assert tool_calls(mcp.result) == tool_calls(native.result)  # the MCP tool's error is traced once, not twice
    answered = {call: text for call, text in tool_results(native.result).items() if text.startswith("Error: ")}
    assert len(answered) == 1
    (call, text), = answered.items()
    over_mcp = tool_results(mcp.result)[call]
    if fault is Fault.UNKNOWN_TOOL:
        assert over_mcp == text  # ToolNode's own message, a string on both transports
    else:
        assert over_mcp == [{"type": "text", "text": text}]
    assert effects(mcp.world) == effects(native.world)


def test_a_reviewed_episode_asks_and_resumes_over_mcp(simulator: Simulator) -> None:
    """``interrupt`` in a sync review node, answered with ``Command(resume=...)``, under the async MCP run."""
    task = load_suite_task("appointment_rebooking")
    approver, world, trace = RecordingApprover(), World.for_task(task), TraceRecorder()
    opened = simulator.open_episode(task, FaultPlan(NONE, 0), world=world)
    endpoint = Endpoint({role: simulator.base_url(opened.id, role) for role in [*task.roles, ROUTER_ROLE]},
                        MODEL_NAME, API_KEY)
    try:
        with served_tools(opened.id, ToolEpisode(task, world, trace, opened.current_step), list(task.roles)) as urls:
            spec = EpisodeSpec(task, Variant.GATED, replace(endpoint, tool_urls=urls),
                               Knobs(tool_transport=ToolTransport.MCP), world, trace, approver=approver)
            outcome = get_adapter("langgraph").run(spec)
    finally:
        simulator.close_episode(opened.id)
    assert outcome.termination is Termination.COMPLETED, outcome.error
    assert [step for step, _ in approver.asked] == ["send", "update_crm"]
    assert len(world.side_effects) == 2 and all(e.detail["ok"] for e in trace.events if e.kind is EventKind.TOOL_CALL)


def test_a_lost_tool_server_fails_as_itself_not_as_a_task_group(simulator: Simulator) -> None:
    """The MCP client's task groups wrap a connection failure in an ExceptionGroup; the adapter raises what is in it."""
    task = load_suite_task("appointment_rebooking")
    world = World.for_task(task)
    opened = simulator.open_episode(task, FaultPlan(NONE, 0), world=world)
    endpoint = Endpoint({role: simulator.base_url(opened.id, role) for role in [*task.roles, ROUTER_ROLE]},
                        MODEL_NAME, API_KEY, {role: shared_tool_server().url("closed", role) for role in task.roles})
    spec = EpisodeSpec(task, Variant.LINEAR, endpoint, Knobs(tool_transport=ToolTransport.MCP), world, TraceRecorder())
    try:
        with pytest.raises(McpError):
            get_adapter("langgraph").run(spec)
    finally:
        simulator.close_episode(opened.id)
    assert world.side_effects == []


def test_a_durable_episode_keeps_native_tools_and_says_so(tmp_path: Path) -> None:
    task = load_suite_task("appointment_rebooking")
    endpoint = Endpoint({role: "http://127.0.0.1:9/v1" for role in [*task.roles, ROUTER_ROLE]}, MODEL_NAME, API_KEY)
    spec = EpisodeSpec(task, Variant.LINEAR, endpoint, Knobs(tool_transport=ToolTransport.MCP),
                       World.for_task(task), TraceRecorder(), durability=Durability(tmp_path, False, "e"))
    episode = LangGraphEpisode(spec)
    try:
        assert not episode.over_mcp and episode.agents and any(episode.tools.values())
        assert any("tools native, not over MCP" in note for note in episode.notes)
    finally:
        episode.close()


def test_the_adapter_offers_both_transports() -> None:
    assert LangGraphAdapter.tool_transports == frozenset(ToolTransport)
    assert get_adapter("langgraph+mcp").tool_transports == frozenset({ToolTransport.MCP})
