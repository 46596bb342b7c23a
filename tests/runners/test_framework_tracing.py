"""Frameworks' own tracing, opted in: their spans reach a local OTLP/HTTP receiver, and nothing does without the opt-in.

Each episode runs in a fresh interpreter, as a worker would: telemetry neutralised, framework
tracing enabled (or not), the framework imported and one real episode run against the
simulator, all under the network guard. The frameworks are never imported into the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from coordlab.runners.framework_tracing import enable_framework_tracing
from coordlab.runners.offline import OFFLINE_ENVIRONMENT, neutralise_telemetry
from coordlab.tasks.loader import load_suite_task

PROJECT = "tracing-check"
TASK = "appointment_rebooking"
"""A task whose steps call tools, so AutoGen's execute_tool spans show too."""
EPISODE_LIMIT_S = 120

EPISODE_SCRIPT = """
import json, sys
framework, endpoint, project, task_name = sys.argv[1:5]
from coordlab.runners import netguard
from coordlab.runners.offline import neutralise_telemetry
neutralise_telemetry()
with netguard.loopback_only(allow=[]):
    sentence = None
    if endpoint:
        from coordlab.runners.framework_tracing import enable_framework_tracing
        sentence = enable_framework_tracing(framework, endpoint, project)
    from coordlab.adapters.base import Variant
    from coordlab.adapters.registry import get_adapter
    from coordlab.runners.faults import FaultPlan, load_profile
    from coordlab.runners.harness import run_episode
    from coordlab.runners.simulator import Simulator
    from coordlab.tasks.loader import load_suite_task
    adapter = get_adapter(framework)
    with Simulator() as simulator:
        result = run_episode(adapter, load_suite_task(task_name), Variant.LINEAR, simulator,
                             FaultPlan(load_profile("none"), 0))
    if framework == "langgraph":
        from langchain_core.tracers.langchain import wait_for_all_tracers
        wait_for_all_tracers()  # LangSmith hands runs to OpenTelemetry from its own background thread
    from opentelemetry import trace
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()  # flushes the batch processor, inside the guard
print(json.dumps({"sentence": sentence, "status": result.status.value, "violations": netguard.violations()}))
"""

USER_EXPORTS = {"LANGSMITH_TRACING": "true", "LANGSMITH_TRACING_MODE": "otel", "CREWAI_TRACING_ENABLED": "true",
                "OTEL_SDK_DISABLED": "false", "AUTOGEN_DISABLE_RUNTIME_TRACING": "false"}
"""Tracing switches a user may have exported; without the opt-in, the worker's neutralising must still win."""


def _run_episode(framework: str, endpoint: str | None, extra_environment: dict[str, str] | None = None,
                 cwd: Any = None) -> dict[str, Any]:
    """One episode of ``framework`` in a fresh interpreter, tracing enabled towards ``endpoint`` (None: not)."""
    environment = {**os.environ, **(extra_environment or {})}
    completed = subprocess.run([sys.executable, "-c", EPISODE_SCRIPT, framework, endpoint or "", PROJECT, TASK],
                               env=environment, cwd=cwd, capture_output=True, text=True, timeout=EPISODE_LIMIT_S)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["status"] == "success", report
    assert report["violations"] == [], f"{framework} tried to leave 127.0.0.1: {report['violations']}"
    return report


def _spans(received: list[tuple[str, str, bytes]]) -> list[tuple[dict[str, str], str, str]]:
    """Every span received, as (resource attributes, instrumentation scope, span name)."""
    spans = []
    for path, _, body in received:
        assert path == "/v1/traces"
        for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                spans.extend((attributes, scope_spans.scope.name, span.name) for span in scope_spans.spans)
    return spans


def _step_ids() -> list[str]:
    return [step.id for step in load_suite_task(TASK).steps]


def test_autogen_sends_its_agent_tool_and_runtime_spans(receiver, tmp_path) -> None:
    url, received = receiver
    report = _run_episode("autogen", url, cwd=tmp_path)
    assert "AutoGen" in report["sentence"] and url in report["sentence"]
    spans = _spans(received)
    assert {attributes["service.name"] for attributes, _, _ in spans} == {"coordlab-autogen"}
    assert {attributes["openinference.project.name"] for attributes, _, _ in spans} == {PROJECT}
    names = {name for _, _, name in spans}
    roles = load_suite_task(TASK).roles
    assert {f"invoke_agent {role}" for role in roles} <= names  # agentchat's own spans, one agent per role
    assert {f"create_agent {role}" for role in roles} <= names
    assert any(name.startswith("execute_tool ") for name in names)
    scopes = {scope for _, scope, _ in spans}
    assert {"autogen-core", "autogen SingleThreadedAgentRuntime"} <= scopes
    assert any(name.startswith("autogen process ") for name in names)  # the runtime's messaging spans
    assert not any(name.startswith("invoke_workflow") for name in names)  # coordlab's spans are not sent here


def test_langgraph_sends_its_graph_and_node_runs_through_langsmith_otel_mode(receiver, tmp_path) -> None:
    url, received = receiver
    report = _run_episode("langgraph", url, cwd=tmp_path)
    assert "LangSmith" in report["sentence"] and url in report["sentence"]
    spans = _spans(received)
    assert {attributes["service.name"] for attributes, _, _ in spans} == {"coordlab-langgraph"}
    assert {attributes["openinference.project.name"] for attributes, _, _ in spans} == {PROJECT}
    assert {scope for _, scope, _ in spans} == {"langsmith"}
    names = {name for _, _, name in spans}
    assert "LangGraph" in names  # the graph run
    for step in _step_ids():
        assert any(step in name for name in names - {"LangGraph"}), f"no node span for step {step}: {names}"


def test_crewai_tracing_stays_off_because_it_only_goes_to_crewais_platform(receiver, tmp_path) -> None:
    url, received = receiver
    report = _run_episode("crewai", url, cwd=tmp_path)
    assert "left off" in report["sentence"]
    assert received == []


@pytest.mark.parametrize("framework", ["autogen", "langgraph", "crewai"])
def test_without_the_opt_in_nothing_reaches_the_receiver(framework: str, receiver, tmp_path) -> None:
    """Even with the user's own tracing switches exported and the receiver named as the OTel endpoint."""
    url, received = receiver
    exports = {**USER_EXPORTS, "OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{url}/v1/traces"}
    report = _run_episode(framework, None, exports, cwd=tmp_path)
    assert report["sentence"] is None
    assert received == []


def test_langgraph_switches_send_nothing_to_langsmith() -> None:
    environ: dict[str, str] = {}
    neutralise_telemetry(environ)
    sentence = enable_framework_tracing("langgraph", "http://127.0.0.1:6006/", PROJECT, environ)
    assert environ["LANGSMITH_TRACING_MODE"] == "otel"
    for name in ("LANGSMITH_TRACING", "LANGSMITH_TRACING_V2", "LANGCHAIN_TRACING_V2"):
        assert environ[name] == "true"
    assert environ["LANGCHAIN_TRACING"] == "false"  # the retired v1 tracer stays off
    assert environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == "http://127.0.0.1:6006/v1/traces"
    assert environ["OTEL_SDK_DISABLED"] == "false"
    assert environ["LANGSMITH_PROJECT"] == PROJECT
    assert sentence.endswith(".") and "http://127.0.0.1:6006/v1/traces" in sentence


def test_autogen_switches_undo_only_what_stops_its_tracing() -> None:
    environ: dict[str, str] = {}
    neutralise_telemetry(environ)
    enable_framework_tracing("autogen", "http://127.0.0.1:6006/v1/traces", PROJECT, environ)
    assert environ["OTEL_SDK_DISABLED"] == "false" and environ["AUTOGEN_DISABLE_RUNTIME_TRACING"] == "false"
    untouched = {name for name in OFFLINE_ENVIRONMENT if name != "OTEL_SDK_DISABLED"}
    assert {name: environ[name] for name in untouched} == {name: OFFLINE_ENVIRONMENT[name] for name in untouched}


@pytest.mark.parametrize("framework", ["crewai", "plain", "some_plugin"])
def test_frameworks_without_a_usable_native_tracer_change_nothing(framework: str) -> None:
    environ: dict[str, str] = {}
    neutralise_telemetry(environ)
    before = dict(environ)
    sentence = enable_framework_tracing(framework, "http://127.0.0.1:6006", PROJECT, environ)
    assert environ == before
    assert sentence.startswith(framework if framework != "crewai" else "CrewAI") and sentence.endswith(".")


def test_a_mapping_other_than_os_environ_leaves_this_process_alone() -> None:
    provider, environment = trace.get_tracer_provider(), dict(os.environ)
    for framework in ("autogen", "langgraph"):
        enable_framework_tracing(framework, "http://127.0.0.1:6006", PROJECT, {})
    assert trace.get_tracer_provider() is provider
    assert dict(os.environ) == environment


def test_an_endpoint_that_is_not_an_http_url_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        enable_framework_tracing("autogen", "127.0.0.1:6006", PROJECT, {})
