"""Traces as observability tools read them: OTLP JSON Lines parsed strictly, GenAI attribute names and types
checked against the installed semantic-conventions package, and OTLP/HTTP protobuf sent to a receiver."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai

from coordlab.runners.cli import main
from coordlab.runners.otel import PROJECT_ATTRIBUTE, SIMULATOR_PROVIDER, parse_json_line
from coordlab.runners.runner import run_sweep
from coordlab.runners.simulator import MODEL_NAME, Simulator
from coordlab.runners.sweep import LiveEndpoint, Sweep

GEN_AI_NAMES = {value for name, value in vars(gen_ai).items() if name.startswith("GEN_AI_") and isinstance(value, str)}
OPERATIONS = {member.value for member in gen_ai.GenAiOperationNameValues}
INT_ATTRIBUTES = {gen_ai.GEN_AI_USAGE_INPUT_TOKENS, gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS, "server.port"}
ARRAY_ATTRIBUTES = {gen_ai.GEN_AI_RESPONSE_FINISH_REASONS}
TOOL_ERROR_TYPES = {"unknown_tool", "malformed_arguments", "tool_error", "rejected_by_framework"}
EPISODES = 2 * 2 * 2 * 4
QUIET = str(Path(__file__).parents[1] / "data" / "quiet.yaml")
"""A stochastic profile that injects nothing in practice: unlike ``none``, every seed of it is its own episode."""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of 32 plain episodes under every kind of fault, gated and delegated."""
    path = tmp_path_factory.mktemp("otel") / "traces.sqlite"
    sweep = Sweep.build(tasks=["appointment_rebooking", "incident_triage"], frameworks=["plain"],
                        variants=["gated", "delegated"], profiles=["mixed_5pct", "transport"], seeds="0-3")
    run_sweep(sweep, path, workers=2)
    return path


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind)


def _attributes(message: Any) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in message.attributes}


def _export(store: Path, out: Path, *extra: str) -> list[ExportTraceServiceRequest]:
    assert main(["export", "--format", "otel", "--store", str(store), "--out", str(out), *extra]) == 0
    return [parse_json_line(line) for line in out.read_text().splitlines()]


def test_every_line_is_one_episodes_trace_with_a_sound_span_tree(recorded: Path, tmp_path: Path) -> None:
    requests = _export(recorded, tmp_path / "t.otel.jsonl")
    assert len(requests) == EPISODES
    trace_ids = set()
    for request in requests:
        (resource_spans,) = request.resource_spans
        (scope_spans,) = resource_spans.scope_spans
        spans = scope_spans.spans
        assert {s.trace_id for s in spans} == {spans[0].trace_id} and len(spans[0].trace_id) == 16
        trace_ids.add(spans[0].trace_id)
        by_id = {s.span_id: s for s in spans}
        assert len(by_id) == len(spans) and all(len(i) == 8 for i in by_id)
        roots = [s for s in spans if not s.parent_span_id]
        assert len(roots) == 1 and roots[0].name.startswith("invoke_workflow ")
        for span in spans:
            assert span.start_time_unix_nano <= span.end_time_unix_nano
            if span.parent_span_id:
                parent = by_id[span.parent_span_id]  # every parent is in the same trace
                assert parent.start_time_unix_nano <= span.start_time_unix_nano
                assert span.end_time_unix_nano <= parent.end_time_unix_nano
                for event in span.events:
                    assert span.start_time_unix_nano <= event.time_unix_nano or span is roots[0]
        kinds = Counter(s.name.split(" ")[0] for s in spans)
        assert kinds["invoke_agent"] >= 2 and kinds["chat"] >= 2
    assert len(trace_ids) == EPISODES


def test_attribute_names_and_types_follow_the_installed_semantic_conventions(recorded: Path, tmp_path: Path) -> None:
    requests = _export(recorded, tmp_path / "t.otel.jsonl", "--project", "review-7")
    seen: Counter[str] = Counter()
    for request in requests:
        resource = _attributes(request.resource_spans[0].resource)
        assert resource["service.name"] == "coordlab" and resource[PROJECT_ATTRIBUTE] == "review-7"
        for span in request.resource_spans[0].scope_spans[0].spans:
            attributes = _attributes(span)
            for key, value in attributes.items():
                assert value not in ("null", "None", ""), (span.name, key)
                if key.startswith("gen_ai."):
                    assert key in GEN_AI_NAMES, f"{key} is not a GenAI attribute of the installed semconv"
                if key in INT_ATTRIBUTES:
                    assert isinstance(value, int), (key, value)
                if key in ARRAY_ATTRIBUTES:
                    assert isinstance(value, list) and all(isinstance(v, str) for v in value), (key, value)
            operation = attributes[gen_ai.GEN_AI_OPERATION_NAME]
            assert operation in OPERATIONS and span.name.split(" ")[0] == operation
            seen[operation] += 1
            if operation == "chat":
                assert attributes[gen_ai.GEN_AI_PROVIDER_NAME] == SIMULATOR_PROVIDER
                assert attributes[gen_ai.GEN_AI_REQUEST_MODEL] == MODEL_NAME == span.name.split(" ")[1]
                assert span.kind == span.SPAN_KIND_CLIENT
                seen["chat error"] += span.status.code == span.status.STATUS_CODE_ERROR
            if operation == "execute_tool":
                assert attributes[gen_ai.GEN_AI_TOOL_NAME] == span.name.split(" ", 1)[1]
                seen["tool call id"] += gen_ai.GEN_AI_TOOL_CALL_ID in attributes
                seen["tool span with duration"] += span.end_time_unix_nano > span.start_time_unix_nano
                if span.status.code == span.status.STATUS_CODE_ERROR:
                    assert attributes["error.type"] in TOOL_ERROR_TYPES
            if operation == "invoke_workflow" and attributes["coordlab.status"] != "success":
                assert attributes["error.type"] == attributes["coordlab.status"]
    assert seen["invoke_workflow"] == EPISODES and seen["execute_tool"] > EPISODES
    assert seen["tool call id"] == seen["execute_tool"], "every executed call is matched to the id the model gave it"
    assert seen["tool span with duration"] == seen["execute_tool"]
    assert seen["chat error"] > 0, "mixed_5pct's transport faults show as failed chat spans"


def test_an_export_is_reproducible(recorded: Path, tmp_path: Path) -> None:
    _export(recorded, tmp_path / "a.jsonl")
    _export(recorded, tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_a_live_run_names_its_model_and_endpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COORDLAB_OTEL_KEY", "sk-otel-test-key")
    with Simulator() as simulator:  # an OpenAI-compatible endpoint posing as a live model
        live = LiveEndpoint(f"{simulator.url}/v1", "my-model", "COORDLAB_OTEL_KEY")
        sweep = Sweep.build(tasks=["chain:n=1"], frameworks=["plain"], variants=["linear"], profiles=["none"],
                            seeds=1, live=live)
        run_sweep(sweep, tmp_path / "live.sqlite", workers=1)
    (request,) = _export(tmp_path / "live.sqlite", tmp_path / "live.jsonl")
    root = next(s for s in request.resource_spans[0].scope_spans[0].spans if not s.parent_span_id)
    attributes = _attributes(root)
    assert attributes[gen_ai.GEN_AI_PROVIDER_NAME] == "openai" and attributes[gen_ai.GEN_AI_REQUEST_MODEL] == "my-model"
    assert attributes["server.address"] == "127.0.0.1" and attributes["server.port"] == simulator.port


def _sent_spans(received: list[tuple[str, str, bytes]]) -> list[Any]:
    spans = []
    for path, content_type, body in received:
        assert path == "/v1/traces" and content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans += [s for r in request.resource_spans for ss in r.scope_spans for s in ss.spans]
    return spans


def test_export_sends_otlp_protobuf_to_a_receiver(recorded: Path, receiver, capsys) -> None:
    url, received = receiver
    assert main(["export", "--store", str(recorded), "--otlp-endpoint", url]) == 0
    assert f"{EPISODES} episode(s) sent to {url}/v1/traces" in capsys.readouterr().out
    spans = _sent_spans(received)
    assert sum(1 for s in spans if not s.parent_span_id) == EPISODES


def test_run_streams_each_episode_to_the_receiver_as_it_finishes(tmp_path: Path, receiver, capsys) -> None:
    url, received = receiver
    # Three distinct episodes: `none` would run its one seed only (it is deterministic), so the quiet test profile.
    code = main(["run", "--tasks", "chain:n=2", "--frameworks", "plain", "--variants", "linear", "--faults", QUIET,
                 "--seeds", "3", "--store", str(tmp_path / "s.sqlite"), "--otlp-endpoint", url, "--workers", "1"])
    assert code == 0 and "3 episode(s) sent" in capsys.readouterr().err
    roots = [s for s in _sent_spans(received) if not s.parent_span_id]
    assert len(roots) == 3 and len(received) == 3


def test_a_dead_receiver_is_a_clear_error_and_never_fails_a_run(recorded: Path, tmp_path: Path, capsys,
                                                               unused_port) -> None:
    dead = f"http://127.0.0.1:{unused_port()}"
    assert main(["export", "--store", str(recorded), "--otlp-endpoint", dead]) == 1
    assert "did not accept the spans" in capsys.readouterr().err
    code = main(["run", "--tasks", "chain:n=1", "--frameworks", "plain", "--variants", "linear", "--faults", "none",
                 "--seeds", "1", "--store", str(tmp_path / "d.sqlite"), "--otlp-endpoint", dead, "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 0 and "0 episode(s) sent" in err and "1 could not be sent" in err


def test_a_receiver_url_that_is_not_http_is_refused(recorded: Path, capsys) -> None:
    assert main(["export", "--store", str(recorded), "--otlp-endpoint", "ftp://127.0.0.1/x"]) == 2
    assert "--otlp-endpoint" in capsys.readouterr().err


def _services(received: list[tuple[str, str, bytes]]) -> Counter[str]:
    services: Counter[str] = Counter()
    for _, _, body in received:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            service = _attributes(resource_spans.resource)["service.name"]
            services[service] += sum(len(scope.spans) for scope in resource_spans.scope_spans)
    return services


def test_framework_tracing_sends_the_frameworks_own_spans_beside_coordlabs(tmp_path: Path, receiver, capsys) -> None:
    url, received = receiver
    argv = ["run", "--tasks", "chain:n=2", "--frameworks", "autogen", "langgraph", "--variants", "linear",
            "--faults", "none", "--seeds", "1", "--store", str(tmp_path / "f.sqlite"), "--otlp-endpoint", url,
            "--workers", "2"]
    assert main([*argv, "--framework-tracing"]) == 0
    services = _services(received)
    assert services["coordlab"] > 0 and services["coordlab-autogen"] > 0 and services["coordlab-langgraph"] > 0, services
    received.clear()
    assert main([*argv, "--fresh"]) == 0  # off unless asked for
    assert set(_services(received)) == {"coordlab"}


def test_framework_tracing_needs_a_receiver(tmp_path: Path, capsys) -> None:
    assert main(["run", "--framework-tracing", "--store", str(tmp_path / "x.sqlite")]) == 2
    assert "--framework-tracing needs --otlp-endpoint" in capsys.readouterr().err
