"""n8n, the workflow-automation platform, as its users build AI workflows: generated workflows on a real n8n.

n8n does its own job here: its AI Agent nodes run the model loop, its MCP Client Tool nodes
call the tools (the lab's MCP server, the only way n8n reaches tools), its IF nodes decide
after a gate, a Webhook trigger starts each episode and n8n keeps its own execution record.
Lab code only generates the workflow JSON from the task (:mod:`.n8n_workflow`), serves the
gate predicate over HTTP (:mod:`.n8n_gate`), and reads n8n's execution record back into the
lab's trace. The server is :mod:`.n8n_runtime`'s, one per worker process, started on the
first episode and reused; each (task, variant, knobs) gets one workflow, created and
activated once and then triggered once per episode with that episode's URLs.

What the execution record gives the trace: the order in which nodes ran (``executionIndex``),
so each step's Fields node is a finished step (its answer is the step's output; a change
of role between consecutive steps is a handoff along an n8n connection) and each time a
``Retry <step>`` IF node sent the work back is a framework retry. Tool calls are recorded by
the MCP server and gates by the gate endpoint, as they happen.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from .base import (
    AdapterOutcome, EpisodeSpec, FrameworkAdapter, Knobs, Termination, ToolTransport, Variant, VariantSupport,
)
from .n8n_gate import GateEpisode, GateService
from .n8n_runtime import N8nRuntime, npm_version
from .n8n_workflow import credential_data, delegation, fields_node, pipeline, retry_node
from .registry import register
from .toolkit import parse_output
from .trace import EventKind

DELEGATION_NOTE = (
    "delegated: n8n's agent tools take their prompt from the calling agent (a required 'Prompt__User_Message_' "
    "argument); the orchestrating model called one without it, so the role's agent got no prompt and n8n stopped "
    "the execution ('No prompt specified')")
"""Said when an orchestrator's call of an agent tool carried no prompt (n8n ends the execution)."""
_DELEGATED_SUPPORT_NOTE = (
    "each role's agent is called afresh by the orchestrator (an AI Agent Tool keeps no memory between calls) with "
    "the orchestrator's brief as its prompt; its system message lists the role's steps, so it knows its work")
_SUPPORT = {
    Variant.LINEAR: VariantSupport(True, "Webhook -> one AI Agent node per step -> Respond to Webhook",
                                   "values handed on by n8n expressions reading earlier nodes' outputs"),
    Variant.GATED: VariantSupport(
        True, "HTTP Request to the lab's gate + IF node before each gated step; a second IF on $runIndex "
              "loops back to the retry step or ends the workflow"),
    Variant.DELEGATED: VariantSupport(
        True, "an orchestrating AI Agent (router's model) with one AI Agent Tool per role, each tool's prompt "
              "written by the orchestrator ($fromAI), n8n's multi-agent idiom", _DELEGATED_SUPPORT_NOTE),
}
WEBHOOK_TIMEOUT_S = 900.0
"""How long the adapter waits for n8n to answer an episode's webhook (the lab's own time limit is shorter)."""
SETTLE_LIMIT_S = 30.0
"""How long n8n may take to save an execution after its Respond to Webhook node answered."""
MAX_ITERATIONS_ERROR = "Max iterations"
"""The start of the error the AI Agent node (v3) raises when a step uses up its iterations."""

_RUNTIME: N8nRuntime | None = None
_GATES: GateService | None = None
_WORKFLOWS: dict[tuple[str, str, str, str], "DeployedWorkflow"] = {}
"""Workflows deployed in this process, by (n8n's folder, task key, variant, knobs): every adapter instance
(the registry makes one per request) reuses them."""
_CREDENTIALS: dict[tuple[str, str, str], dict[str, str]] = {}
"""Credentials created in this process, by (n8n's folder, role, API key)."""


def shared_runtime() -> N8nRuntime:
    """This process's n8n (created on first use; started by :meth:`N8nRuntime.ensure_started`)."""
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = N8nRuntime()
    return _RUNTIME


def shared_gates() -> GateService:
    """This process's gate endpoint, started on first use."""
    global _GATES
    if _GATES is None:
        _GATES = GateService().start()
    return _GATES


@dataclass(frozen=True)
class DeployedWorkflow:
    """A workflow created and activated on this process's n8n."""

    id: str
    webhook_path: str


@register("n8n")
class N8nAdapter(FrameworkAdapter):
    """Generated n8n workflows on a real n8n server (npm), tools over MCP."""

    name = "n8n"
    distribution = "npm:n8n"
    variant_support = _SUPPORT
    tool_transports = frozenset({ToolTransport.MCP})

    def __init__(self, runtime: N8nRuntime | None = None):
        self.runtime = runtime
        """The n8n to use (default: the process's shared one)."""

    def version(self) -> str:
        """n8n's version, from its package.json in ``n8n/node_modules``."""
        return npm_version("n8n")

    def run(self, spec: EpisodeSpec) -> AdapterOutcome:
        """Trigger the (task, variant) workflow with this episode's URLs; read n8n's execution into the trace."""
        started = time.perf_counter()
        runtime = self.runtime or shared_runtime()
        first_start = runtime.process is None
        runtime.ensure_started()
        notes = [f"n8n started in {runtime.startup_s:.1f} s (once per worker; in this episode's construction time)"] \
            if first_start else []
        workflow = self.deploy(runtime, spec)
        built = time.perf_counter()
        gates, episode_id = shared_gates(), uuid.uuid4().hex[:12]
        body = {"model": spec.endpoint.model, "model_urls": dict(spec.endpoint.base_urls),
                "tool_urls": dict(spec.endpoint.tool_urls), "inputs": dict(spec.task.inputs),
                "gate_url": gates.open(episode_id, GateEpisode(spec.task, spec.world, spec.trace))}
        try:
            response = runtime.webhook(workflow.webhook_path, body, WEBHOOK_TIMEOUT_S)
        finally:
            gates.close(episode_id)
        answer = _json(response)
        execution = self.execution(runtime, workflow, answer.get("execution_id"))
        record_trace(spec, execution)
        termination, error = ending(spec, answer, execution)
        if spec.variant is Variant.DELEGATED and error and "No prompt specified" in error:
            notes.append(DELEGATION_NOTE)
        return AdapterOutcome(termination, dict(answer.get("final_output") or {}), error, notes,
                              (built - started) * 1000, (time.perf_counter() - built) * 1000)

    def deploy(self, runtime: N8nRuntime, spec: EpisodeSpec) -> DeployedWorkflow:
        """The (task, variant, knobs) workflow on ``runtime``: created and activated on first use."""
        key = (str(runtime.folder), spec.task.key, spec.variant.value, _knob_key(spec.knobs))
        if key not in _WORKFLOWS:
            path = str(uuid.uuid4())
            name = f"coordlab {spec.task.key} {spec.variant.value} {path[:8]}"
            roles = [*spec.task.roles, spec.router_role] if spec.variant is Variant.DELEGATED else list(spec.task.roles)
            credentials = {role: self.credential(runtime, role, spec.endpoint.api_key) for role in roles}
            workflow = delegation(spec.task, spec.knobs, credentials, spec.router_role, path, name) \
                if spec.variant is Variant.DELEGATED else pipeline(spec.task, spec.variant, spec.knobs, credentials,
                                                                   path, name)
            created = runtime.api("POST", "/workflows", json=workflow)
            runtime.api("POST", f"/workflows/{created['id']}/activate")
            _WORKFLOWS[key] = DeployedWorkflow(str(created["id"]), path)
        return _WORKFLOWS[key]

    def credential(self, runtime: N8nRuntime, role: str, api_key: str) -> dict[str, str]:
        """``role``'s OpenAI credential on ``runtime`` (its URL read per episode from the webhook's body)."""
        key = (str(runtime.folder), role, api_key)
        if key not in _CREDENTIALS:
            created = runtime.api("POST", "/credentials", json={
                "name": f"coordlab {role} model {len(_CREDENTIALS) + 1}", "type": "openAiApi",
                "data": credential_data(role, api_key)})
            _CREDENTIALS[key] = {"id": str(created["id"]), "name": str(created["name"])}
        return _CREDENTIALS[key]

    def execution(self, runtime: N8nRuntime, workflow: DeployedWorkflow, execution_id: Any) -> dict[str, Any]:
        """n8n's record of the episode's execution, once saved (the latest of the workflow when the webhook
        answered with an error and no id)."""
        deadline = time.monotonic() + SETTLE_LIMIT_S
        while True:
            if execution_id is None:
                listed = runtime.api("GET", "/executions", params={"workflowId": workflow.id, "limit": 1})["data"]
                execution = runtime.api("GET", f"/executions/{listed[0]['id']}", params={"includeData": "true"}) \
                    if listed else {}
            else:
                execution = runtime.api("GET", f"/executions/{execution_id}", params={"includeData": "true"})
            if execution.get("stoppedAt") or time.monotonic() > deadline:
                return execution
            time.sleep(0.05)


def _knob_key(knobs: Knobs) -> str:
    """The knobs a workflow is built with, as part of its cache key."""
    return repr(sorted(knobs.to_dict().items()))


def _json(response: httpx.Response) -> dict[str, Any]:
    """The webhook's JSON answer ({} when n8n answered with an error page or non-object)."""
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def node_runs(execution: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every node run of the execution as (node name, run), in the order n8n ran them."""
    run_data = ((execution.get("data") or {}).get("resultData") or {}).get("runData") or {}
    runs = [(name, run) for name, node_runs in run_data.items() for run in node_runs
            if run.get("executionStatus")]  # an agent tool's first entry is a placeholder with no status
    return sorted(runs, key=lambda item: (item[1].get("executionIndex", 0), item[1].get("startTime", 0)))


def finished_at(run: dict[str, Any]) -> float | None:
    """When a node run ended, on the trace's clock (``time.perf_counter()``), from n8n's wall-clock
    ``startTime`` and ``executionTime`` (ms): the events read back after the execution then sit where
    they happened, among the tool calls and gates recorded live. None when n8n gave no start time."""
    if not isinstance(run.get("startTime"), (int, float)):
        return None
    ended = (run["startTime"] + (run.get("executionTime") or 0)) / 1000
    return time.perf_counter() - (time.time() - ended)


def run_items(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Every item a node run emitted, on any connection type (an agent tool's answer is on ``ai_tool``)."""
    return [item.get("json", {}) for outputs in (run.get("data") or {}).values() for output in outputs or []
            for item in output or []]


def main_output(run: dict[str, Any], output: int = 0) -> list[dict[str, Any]]:
    """The items a node run emitted on main output ``output``."""
    outputs = (run.get("data") or {}).get("main") or []
    return [item.get("json", {}) for item in (outputs[output] or [])] if len(outputs) > output else []


def record_trace(spec: EpisodeSpec, execution: dict[str, Any]) -> None:
    """Turn the execution's node runs into the lab's trace: step outputs, handoffs along connections, retries."""
    if spec.variant is Variant.DELEGATED:
        record_delegation(spec, execution)
        return
    task, trace = spec.task, spec.trace
    fields = {fields_node(step): step for step in task.steps}
    retries = {retry_node(step): task.gate_before(step.id) for step in task.steps if task.gate_before(step.id)}
    previous_role: str | None = None
    for name, run in node_runs(execution):
        if name in fields and main_output(run):
            step = fields[name]
            if step.role != previous_role:
                trace.handoff(previous_role, step.role, "connection", step.id, at=finished_at(run))
            previous_role = step.role
            trace.step_output(step.role, step.id, dict(main_output(run)[0].get("answer") or {}), at=finished_at(run))
        elif name in retries and main_output(run, 0):
            gate = retries[name]
            assert gate is not None
            trace.retry(gate.retry, "framework", "gate rejected", task.step(gate.retry).role, at=finished_at(run))


def record_delegation(spec: EpisodeSpec, execution: dict[str, Any]) -> None:
    """Delegated: each run of a role's AI Agent Tool is a handoff from the router (a tool call); its answer is
    the output of the role's earliest step whose fields it gives."""
    task, trace = spec.task, spec.trace
    for name, run in node_runs(execution):
        if name not in task.roles:
            continue
        trace.handoff(spec.router_role, name, "agent tool call", at=finished_at(run))
        answer = parse_output(next((i["output"] for i in run_items(run) if isinstance(i.get("output"), str)), ""))
        step = next((s for s in task.steps_of(name) if any(f in answer for f in s.output_names)), None)
        if step is not None:
            trace.step_output(name, step.id, {f: answer[f] for f in step.output_names if f in answer},
                              at=finished_at(run))


def ending(spec: EpisodeSpec, answer: dict[str, Any], execution: dict[str, Any]) -> tuple[Termination, str | None]:
    """How the episode ended: the Respond node's termination, or the execution's error.

    Delegated completes when the answers handed back gave every step's fields, and is routed out otherwise.
    """
    if answer.get("termination") == Termination.COMPLETED.value and spec.variant is Variant.DELEGATED:
        given = {name for e in spec.trace.events if e.kind is EventKind.STEP_OUTPUT for name in e.detail["outputs"]}
        done = all(f in given for step in spec.task.steps for f in step.output_names)
        return (Termination.COMPLETED if done else Termination.ROUTED_OUT), None
    if answer.get("termination") in (Termination.COMPLETED.value, Termination.GATE_EXHAUSTED.value):
        return Termination(answer["termination"]), None
    error = ((execution.get("data") or {}).get("resultData") or {}).get("error") or {}
    message = f"{error.get('name', 'n8n error')}: {error.get('message', 'the workflow did not answer')}"
    if str(error.get("message", "")).startswith(MAX_ITERATIONS_ERROR):
        return Termination.MAX_TURNS, message
    return Termination.ERROR, message

