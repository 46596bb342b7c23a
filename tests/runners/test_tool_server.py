"""The MCP tool server: the native path's schemas and tool bodies, over streamable HTTP, per episode and role."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordlab.adapters.base import Knobs, ToolTransport, Variant
from coordlab.adapters.mcp_client import McpSessions
from coordlab.adapters.registry import AdapterUnavailable, get_adapter
from coordlab.adapters.toolkit import tool_specs
from coordlab.adapters.trace import EventKind, TraceRecorder
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.harness import EpisodeResult, Status, run_episode
from coordlab.runners.simulator import Simulator
from coordlab.runners.sweep import Sweep
from coordlab.runners.tool_server import ToolEpisode, ToolServer
from coordlab.tasks.loader import load_suite, load_suite_task
from coordlab.tasks.world import World

NONE = load_profile("none")
TOOL_TASKS = [t for t in load_suite() if t.tools]
MCP = Knobs(tool_transport=ToolTransport.MCP)


@pytest.fixture(scope="module")
def server() -> Any:
    with ToolServer() as running:
        yield running


def tool_events(result: EpisodeResult) -> list[tuple[Any, ...]]:
    return [(e.role, e.step, e.detail["name"], e.detail["ok"], e.detail.get("error"))
            for e in result.trace if e.kind is EventKind.TOOL_CALL]


def side_effects(result: EpisodeResult) -> list[Any]:
    """The changes the episode made to the outside world, in order."""
    return [e.detail for e in result.trace if e.kind is EventKind.SIDE_EFFECT]


def offered_tools(result: EpisodeResult) -> list[Any]:
    """The ``tools`` of every model request, in order: what the model was offered."""
    return [r.request_body.get("tools") for r in result.records]


def tool_messages(result: EpisodeResult) -> list[str]:
    """Every tool result the model was sent, in the order it first saw them."""
    seen: list[str] = []
    for record in result.records:
        for message in record.request_body.get("messages", []):
            if message.get("role") == "tool" and message["content"] not in seen:
                seen.append(message["content"])
    return seen


@pytest.mark.parametrize("task", TOOL_TASKS, ids=lambda t: t.name)
def test_the_server_lists_each_roles_tools_with_the_native_schemas(server: ToolServer, task) -> None:
    server.open("listing", ToolEpisode(task, World.for_task(task), TraceRecorder(), lambda role: None))
    sessions = McpSessions()
    try:
        for role in task.roles:
            assert sessions.openai_tools(server.url("listing", role)) == tool_specs(task, role)
    finally:
        sessions.close()
        server.close("listing")


def test_a_call_runs_the_tool_body_on_the_episodes_world_and_is_recorded_under_the_callers_step(
        server: ToolServer) -> None:
    task = load_suite_task("invoice_reconciliation")
    world, trace = World.for_task(task), TraceRecorder()
    role = next(r for r in task.roles if "post_journal_entries" in task.roles[r].tools)
    server.open("calls", ToolEpisode(task, world, trace, lambda asked: f"step-of-{asked}"))
    sessions = McpSessions()
    try:
        url = server.url("calls", role)
        answer = sessions.call(url, "post_journal_entries", json.dumps({"entries": []}))
        bad = sessions.call(url, "post_journal_entries", json.dumps({"entries": "nope"}))
    finally:
        sessions.close()
        server.close("calls")
    assert json.loads(answer) is not None and bad.startswith("Error: ")
    assert [(e.role, e.step, e.detail["name"], e.detail["ok"]) for e in trace.events] == [
        (role, f"step-of-{role}", "post_journal_entries", True), (role, f"step-of-{role}", "post_journal_entries", False)]
    assert [effect.tool for effect in world.side_effects] == ["post_journal_entries"]


def test_a_tool_error_is_flagged_as_one_for_the_client(server: ToolServer) -> None:
    task = load_suite_task("invoice_reconciliation")
    role = next(r for r in task.roles if task.roles[r].tools)
    server.open("errors", ToolEpisode(task, World.for_task(task), TraceRecorder(), lambda asked: None))
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "no_such_tool", "arguments": {}}}
    try:
        reply = httpx.post(server.url("errors", role), json=call, timeout=10, headers={
            "accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"})
    finally:
        server.close("errors")
    result = reply.json()["result"]
    assert result["isError"] is True and result["content"][0]["text"] == "Error: there is no tool named 'no_such_tool'."


def test_an_episode_that_is_not_open_is_a_404_naming_the_path(server: ToolServer) -> None:
    reply = httpx.post(server.url("closed", "writer"), json={}, timeout=10)
    assert reply.status_code == 404 and "/mcp?episode=closed&role=writer" in reply.text
    assert httpx.post(f"{server.url('x', 'y')}/elsewhere", json={}, timeout=10).status_code == 404


@pytest.mark.parametrize("variant", list(Variant), ids=str)
@pytest.mark.parametrize("task", TOOL_TASKS, ids=lambda t: t.name)
def test_plain_over_mcp_does_what_native_tools_do(simulator: Simulator, task, variant: Variant) -> None:
    native = run_episode(get_adapter("plain"), task, variant, simulator, FaultPlan(NONE, 3))
    mcp = run_episode(get_adapter("plain"), task, variant, simulator, FaultPlan(NONE, 3), MCP)
    assert mcp.status is Status.SUCCESS and native.status is Status.SUCCESS
    assert mcp.knobs["tool_transport"] == "mcp" and native.knobs["tool_transport"] == "native"
    assert side_effects(mcp) == side_effects(native) and side_effects(mcp)
    assert tool_events(mcp) == tool_events(native) and tool_events(mcp)
    assert offered_tools(mcp) == offered_tools(native)  # the same schemas, byte for byte


def test_a_tool_error_reaches_the_model_in_the_same_words_over_either_transport(simulator: Simulator) -> None:
    task = load_suite_task("invoice_reconciliation")
    plan = FaultPlan(NONE, 0, (ForcedFault("post", Fault.TOOL_ERROR_AFTER_EFFECT),))
    native = run_episode(get_adapter("plain"), task, Variant.LINEAR, simulator, plan)
    mcp = run_episode(get_adapter("plain"), task, Variant.LINEAR, simulator, plan, MCP)
    assert any(text.startswith("Error: ") for text in tool_messages(native))
    assert tool_messages(mcp) == tool_messages(native) and tool_events(mcp) == tool_events(native)


def test_name_plus_mcp_pins_the_transport_and_is_keyed_by_its_whole_name(simulator: Simulator) -> None:
    adapter = get_adapter("plain+mcp")
    assert adapter.name == "plain+mcp" and adapter.tool_transports == {ToolTransport.MCP}
    result = run_episode(adapter, load_suite_task("invoice_reconciliation"), Variant.LINEAR, simulator,
                         FaultPlan(NONE, 0))
    assert result.framework == "plain+mcp" and result.knobs["tool_transport"] == "mcp"
    assert any("tools over mcp, not native" in note for note in result.notes)
    assert result.status is Status.SUCCESS


def test_an_adapter_without_an_mcp_client_has_no_mcp_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from coordlab.adapters import registry
    from coordlab.adapters.base import FrameworkAdapter

    class NativeOnly(FrameworkAdapter):  # a plug-in that never heard of MCP
        name = "native_only"

    monkeypatch.setitem(registry._FACTORIES, "native_only", NativeOnly)
    assert get_adapter("control_drop_field+mcp").tool_transports == {ToolTransport.MCP}  # plain's own client
    with pytest.raises(AdapterUnavailable, match="'native_only' has no MCP client"):
        get_adapter("native_only+mcp")
    with pytest.raises(AdapterUnavailable, match="no adapter 'plian'"):
        get_adapter("plian+mcp")


def test_the_knob_reads_its_yaml_spelling_and_refuses_others() -> None:
    assert Knobs(tool_transport="mcp").tool_transport is ToolTransport.MCP  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="knobs.tool_transport: must be 'native' or 'mcp', got 'grpc'"):
        Knobs(tool_transport="grpc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"knobs.tool_transport: must be 'native' or 'mcp', got \['mcp'\]"):
        Knobs(tool_transport=["mcp"])  # type: ignore[arg-type]  # a YAML list: refused, not a TypeError


def test_native_tools_keep_a_sweeps_identity_and_mcp_changes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs recorded before the knob existed still resume: at its default it is not part of the identity."""
    sweep = Sweep.build(tasks=["chain"], frameworks=["plain"], seeds=1)
    now = sweep.identity()
    assert Sweep.build(tasks=["chain"], frameworks=["plain"], seeds=1, knobs=MCP).identity() != now
    monkeypatch.setattr(Knobs, "to_dict", lambda self: {k: v for k, v in asdict(self).items()
                                                        if k != "tool_transport"})  # the knobs before it
    assert sweep.identity() == now
    assert Sweep.build(tasks=["chain"], frameworks=["plain", "plain+mcp"], seeds=1).frameworks == ("plain", "plain+mcp")


def test_a_run_pairs_a_framework_with_its_mcp_twin_and_the_report_compares_them(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Through the CLI: workers start the MCP server, the store keys the twin by its name, the report pairs them."""
    from coordlab.runners.cli import main

    store = tmp_path / "s.sqlite"
    assert main(["run", "--frameworks", "plain", "plain+mcp", "--tasks", "invoice_reconciliation", "--variants",
                 "linear", "--faults", "mixed_5pct", "--seeds", "2", "--workers", "1", "--store", str(store)]) == 0
    assert "4 run (" in capsys.readouterr().out
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "report")]) == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    rows = next(t["rows"] for t in summary["tables"] if t["key"] == "transport")
    assert [(r["framework"], r["variant"], r["pairs"]) for r in rows] == [("plain", "linear", 2)]
    assert rows[0]["tool calls / episode (MCP)"] == rows[0]["tool calls / episode (native)"] > 0
    with pytest.raises(SystemExit) as refused:
        main(["run", "--frameworks", "plain", "--tool-transport", "grpc"])
    assert refused.value.code == 2 and "--tool-transport: invalid choice: 'grpc'" in capsys.readouterr().err


def test_the_simulated_model_calls_a_tool_by_the_name_it_is_offered_under(simulator: Simulator) -> None:
    """An MCP client may prefix a server's tools (CrewAI: ``<server>_<tool>``): a model calls what it is offered."""
    from coordlab.runners.simulator.reading import tool_aliases

    offered = {"srv_crm_lookup": {}, "crm_update": {}, "a_send_email": {}, "b_send_email": {}}
    assert tool_aliases(offered, ["crm_lookup", "crm_update", "send_email"]) == {"srv_crm_lookup": "crm_lookup"}
    task = load_suite_task("appointment_rebooking")
    episode = simulator.open_episode(task, FaultPlan(NONE, 0))
    try:
        step = next(s for s in task.steps if s.tool_calls)
        tools = [{"type": "function", "function": {**spec["function"], "name": f"srv_{spec['function']['name']}"}}
                 for spec in tool_specs(task, step.role)]
        prompt = [{"role": "user", "content": f"{step.instruction} {step.marker}\nInputs: {json.dumps(task.inputs)}"}]
        reply = httpx.post(f"{simulator.base_url(episode.id, step.role)}/chat/completions", timeout=10,
                           json={"model": "m", "messages": prompt, "tools": tools}).json()
    finally:
        simulator.close_episode(episode.id)
    call = reply["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call["name"] == f"srv_{step.tool_calls[0].tool}"
