"""Episodes as OpenTelemetry GenAI spans, built with the OpenTelemetry SDK and sent or written as OTLP.

An episode is one trace: an ``invoke_workflow`` root (the semantic conventions' own
example of a workflow is a Crew kickoff or a LangGraph invoke), one ``invoke_agent`` span
per turn a role takes, a ``chat`` span per model call and an ``execute_tool`` span per tool
call inside it, and gates, handoffs, retries, faults and side effects as span events with
typed attributes. Attribute names come from the installed semantic-conventions package.

Spans are built as the SDK's own :class:`~opentelemetry.sdk.trace.ReadableSpan` from what
the store recorded (they are replayed, not live), with ids derived from the episode, so an
export is reproducible and re-sending it to a receiver is idempotent. The SDK's OTLP
encoder turns them into ``ExportTraceServiceRequest`` messages: JSON Lines on disk (one
request per episode, the OTLP file format) or protobuf over OTLP/HTTP to any receiver.
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import threading
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME, SERVICE_VERSION
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from .netguard import url_address
from .simulator import MODEL_NAME
from .export import stored_json
from .store import EpisodeKey, Store

PROJECT_ATTRIBUTE = "openinference.project.name"
"""The resource attribute Arize Phoenix files traces under (a project)."""
SESSION_ATTRIBUTES = ("session.id", "langfuse.session.id")
"""Where Phoenix and Langfuse group spans into sessions: one session per episode."""
SIMULATOR_PROVIDER = "coordlab.simulator"
"""``gen_ai.provider.name`` of the lab's simulated model (a live endpoint is ``openai``: its API flavour)."""
DEFAULT_PROJECT = "coordlab"

_OPERATION = gen_ai.GenAiOperationNameValues
_TOOL_ERRORS = {"unknown tool": "unknown_tool", "malformed arguments": "malformed_arguments"}
_ID_KEYS = {"traceId", "spanId", "parentSpanId"}


class OtelError(RuntimeError):
    """Spans could not be sent or read back; the message names the endpoint or the line."""


def _coordlab_version() -> str:
    try:
        return version("coordlab")
    except PackageNotFoundError:
        return "unknown"


def resource(project: str = DEFAULT_PROJECT) -> Resource:
    """The resource every span carries: the lab as the service, and the project receivers file it under.

    Built directly rather than with ``Resource.create``, which would add a random instance
    id and whatever ``OTEL_RESOURCE_ATTRIBUTES`` holds, making exports irreproducible.
    """
    return Resource({SERVICE_NAME: "coordlab", SERVICE_VERSION: _coordlab_version(), PROJECT_ATTRIBUTE: project})


@dataclass(frozen=True)
class ModelEndpoint:
    """Which model a run talked to, as the spans name it."""

    provider: str
    model: str
    server_address: str | None = None
    server_port: int | None = None

    @classmethod
    def of_run(cls, spec: Mapping[str, Any]) -> "ModelEndpoint":
        """The simulator, or the live endpoint a run's sweep named."""
        live = spec.get("live")
        if not live:
            return cls(SIMULATOR_PROVIDER, MODEL_NAME)
        try:
            host, port = url_address(str(live.get("base_url", "")))
        except ValueError:
            host, port = None, None
        return cls("openai", str(live.get("model") or "unknown"), host, port)

    def attributes(self) -> dict[str, Any]:
        """``gen_ai.provider.name``, ``gen_ai.request.model`` and the server, where known."""
        return _present({gen_ai.GEN_AI_PROVIDER_NAME: self.provider, gen_ai.GEN_AI_REQUEST_MODEL: self.model,
                         SERVER_ADDRESS: self.server_address, SERVER_PORT: self.server_port})


def _trial(row: Mapping[str, Any]) -> int:
    """The episode's trial (``--trials``); 0 for a row written before trials existed."""
    try:
        return int(row["trial"] or 0)
    except (KeyError, IndexError):
        return 0


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    """Only the attributes that have a value: a missing value is left out, never written as "null"."""
    return {key: value for key, value in values.items() if value is not None}


def _typed(value: Any) -> Any:
    """An attribute value of a type OTLP carries: scalars as they are, anything else as JSON text."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return json.dumps(value, default=str, sort_keys=True)


def _derived_id(size: int, *parts: Any) -> int:
    """A ``size``-byte id derived from ``parts`` (never 0, which OTLP reads as "no id")."""
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=size).digest(), "big") or 1


@dataclass
class _Timeline:
    """Places an episode's events in wall-clock time, inside the root span."""

    start_ns: int
    end_ns: int

    def at(self, at_ms: float) -> int:
        return self.clamp(self.start_ns + int(at_ms * 1e6))

    def clamp(self, ns: int) -> int:
        return max(self.start_ns, min(self.end_ns, ns))


@dataclass
class _SpanDraft:
    """A span being assembled; becomes a ReadableSpan once its children are known."""

    name: str
    span_id: int
    parent_id: int | None
    kind: SpanKind
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    status: Status = field(default_factory=lambda: Status(StatusCode.UNSET))


class EpisodeSpans:
    """The spans of one stored episode."""

    def __init__(self, row: Mapping[str, Any], events: Sequence[Mapping[str, Any]], endpoint: ModelEndpoint,
                 span_resource: Resource):
        self.row, self.events, self.endpoint, self.resource = row, events, endpoint, span_resource
        self.key = str(EpisodeKey(row["task"], row["framework"], row["framework_version"], row["variant"],
                                  row["profile"], row["seed"], _trial(row)))
        self.trace_id = _derived_id(16, row["run_id"], self.key)
        end_ns = int(row["finished_at"] * 1e9)
        self.timeline = _Timeline(end_ns - int(row["wall_ms"] * 1e6), end_ns)
        self.drafts: list[_SpanDraft] = []
        self.emitted_calls: dict[tuple[Any, str], list[str]] = {}
        """(step, tool name) -> tool-call ids the model emitted and no tool span has claimed yet."""

    def build(self) -> list[ReadableSpan]:
        """Root, agent turns, model calls and tool calls, with every other event attached where it happened."""
        root = self._draft(f"invoke_workflow {self.row['task']}", None, SpanKind.INTERNAL, self.timeline.start_ns,
                           self.timeline.end_ns, self._root_attributes())
        if self.row["status"] != "success":
            root.attributes[ERROR_TYPE] = self.row["status"]
            root.status = Status(StatusCode.ERROR, self.row["error"] or self.row["status"])
        turn: _SpanDraft | None = None
        for event in self.events:
            role = event["role"]
            if role is not None and (turn is None or turn.attributes[gen_ai.GEN_AI_AGENT_NAME] != role):
                turn = self._turn(root, role, event)
            owner = turn if role is not None and turn is not None else root
            self._add(owner, root, event)
        for draft in self.drafts:
            if draft.parent_id == root.span_id and draft is not root:
                children = [d for d in self.drafts if d.parent_id == draft.span_id]
                if children:
                    draft.start_ns = min(draft.start_ns, *(c.start_ns for c in children))
                    draft.end_ns = max(draft.end_ns, *(c.end_ns for c in children))
        return [self._readable(d) for d in self.drafts]

    # -- assembling ---------------------------------------------------------------------------
    def _root_attributes(self) -> dict[str, Any]:
        row = self.row
        present = set(row.keys())  # a store of schema 1, read as it is, lacks the newer counters
        counters = {f"coordlab.{name}": row[name] for name in ("model_calls", "tool_calls", "handoffs",
                                                              "handoffs_lost", "handoff_model_errors",
                                                              "framework_retries", "transport_retries",
                                                              "gate_rejections", "faults_injected",
                                                              "faults_recovered") if name in present}
        return _present({
            gen_ai.GEN_AI_OPERATION_NAME: _OPERATION.INVOKE_WORKFLOW.value, gen_ai.GEN_AI_WORKFLOW_NAME: row["task"],
            gen_ai.GEN_AI_CONVERSATION_ID: self.key, **dict.fromkeys(SESSION_ATTRIBUTES, self.key),
            **self.endpoint.attributes(),
            gen_ai.GEN_AI_USAGE_INPUT_TOKENS: row["prompt_tokens"],
            gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS: row["completion_tokens"],
            "coordlab.framework": row["framework"], "coordlab.framework.version": row["framework_version"],
            "coordlab.variant": row["variant"], "coordlab.profile": row["profile"], "coordlab.seed": row["seed"],
            "coordlab.trial": _trial(row),
            "coordlab.status": row["status"], "coordlab.harmful": bool(row["harmful"]),
            "coordlab.termination": row["termination"], "coordlab.run_id": row["run_id"], **counters})

    def _draft(self, name: str, parent: _SpanDraft | None, kind: SpanKind, start_ns: int, end_ns: int,
               attributes: dict[str, Any]) -> _SpanDraft:
        draft = _SpanDraft(name, _derived_id(8, self.trace_id, len(self.drafts)), parent.span_id if parent else None,
                           kind, start_ns, max(start_ns, end_ns), attributes)
        self.drafts.append(draft)
        return draft

    def _turn(self, root: _SpanDraft, role: str, event: Mapping[str, Any]) -> _SpanDraft:
        at = self.timeline.at(event["at_ms"])
        return self._draft(f"invoke_agent {role}", root, SpanKind.INTERNAL, at, at, _present({
            gen_ai.GEN_AI_OPERATION_NAME: _OPERATION.INVOKE_AGENT.value, gen_ai.GEN_AI_AGENT_NAME: role,
            gen_ai.GEN_AI_CONVERSATION_ID: self.key, **self.endpoint.attributes()}))

    def _add(self, owner: _SpanDraft, root: _SpanDraft, event: Mapping[str, Any]) -> None:
        detail = event["detail"]
        if event["kind"] == "model_call":
            self._chat(owner, event, detail)
        elif event["kind"] == "tool_call":
            self._tool(owner, event, detail)
        else:
            attributes = {f"coordlab.{key}": _typed(value) for key, value in detail.items() if value is not None}
            attributes.update(_present({"coordlab.step": event["step"], gen_ai.GEN_AI_AGENT_NAME: event["role"]}))
            owner.events.append(Event(f"coordlab.{event['kind']}", attributes, self.timeline.at(event["at_ms"])))

    def _chat(self, owner: _SpanDraft, event: Mapping[str, Any], detail: Mapping[str, Any]) -> None:
        start = self.timeline.at(event["at_ms"])
        calls = list(detail.get("tool_calls") or [])
        for name, call_id in zip(calls, detail.get("tool_call_ids") or []):
            self.emitted_calls.setdefault((event["step"], name), []).append(call_id)
        http_status = detail.get("status")
        attributes = _present({
            gen_ai.GEN_AI_OPERATION_NAME: _OPERATION.CHAT.value, **self.endpoint.attributes(),
            gen_ai.GEN_AI_RESPONSE_MODEL: self.endpoint.model if http_status == 200 else None,
            gen_ai.GEN_AI_AGENT_NAME: event["role"],
            gen_ai.GEN_AI_USAGE_INPUT_TOKENS: detail.get("prompt_tokens"),
            gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS: detail.get("completion_tokens"),
            gen_ai.GEN_AI_RESPONSE_FINISH_REASONS: (("tool_calls",) if calls else ("stop",))
            if http_status == 200 else None,
            "coordlab.step": event["step"], "coordlab.attempt": detail.get("attempt"),
            "coordlab.request_kind": detail.get("kind"), "coordlab.stream": detail.get("stream"),
            "coordlab.route_target": detail.get("route_target")})
        draft = self._draft(f"chat {self.endpoint.model}", owner, SpanKind.CLIENT, start,
                            self.timeline.clamp(start + int((detail.get("elapsed_ms") or 0.0) * 1e6)), attributes)
        if http_status not in (None, 200):
            draft.attributes[ERROR_TYPE] = str(http_status) if http_status else "connection_dropped"
            draft.status = Status(StatusCode.ERROR, f"HTTP {http_status}" if http_status else "connection dropped")
        for issue in detail.get("handoff_issues") or []:
            draft.events.append(Event("coordlab.handoff_failure", _present({
                "coordlab.field": str(issue.get("field")), "coordlab.kind": str(issue.get("kind")),
                "coordlab.cause": issue.get("cause")}), start))

    def _tool(self, owner: _SpanDraft, event: Mapping[str, Any], detail: Mapping[str, Any]) -> None:
        end = self.timeline.at(event["at_ms"])
        start = self.timeline.clamp(end - int((detail.get("duration_ms") or 0.0) * 1e6))
        pending = self.emitted_calls.get((event["step"], detail["name"])) or []
        draft = self._draft(f"execute_tool {detail['name']}", owner, SpanKind.INTERNAL, start, end, _present({
            gen_ai.GEN_AI_OPERATION_NAME: _OPERATION.EXECUTE_TOOL.value, gen_ai.GEN_AI_TOOL_NAME: detail["name"],
            gen_ai.GEN_AI_TOOL_TYPE: "function", gen_ai.GEN_AI_TOOL_CALL_ID: pending.pop(0) if pending else None,
            gen_ai.GEN_AI_AGENT_NAME: event["role"], "coordlab.step": event["step"],
            "coordlab.tool.mutating": bool(detail.get("mutating"))}))
        if not detail.get("ok"):
            error = str(detail.get("error") or "")
            draft.attributes[ERROR_TYPE] = _TOOL_ERRORS.get(error, "rejected_by_framework"
                                                            if error.startswith("rejected by") else "tool_error")
            draft.status = Status(StatusCode.ERROR, error)

    def _readable(self, draft: _SpanDraft) -> ReadableSpan:
        context = SpanContext(self.trace_id, draft.span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        parent = None if draft.parent_id is None else SpanContext(self.trace_id, draft.parent_id, is_remote=False,
                                                                  trace_flags=TraceFlags(TraceFlags.SAMPLED))
        return ReadableSpan(draft.name, context=context, parent=parent, resource=self.resource,
                            attributes=draft.attributes, events=draft.events, kind=draft.kind, status=draft.status,
                            start_time=draft.start_ns, end_time=draft.end_ns,
                            instrumentation_scope=InstrumentationScope("coordlab", _coordlab_version()))


# -- reading a store ---------------------------------------------------------------------------

def stored_episode_spans(store: Store, rows: Iterable[Any], project: str = DEFAULT_PROJECT) -> Iterator[list[ReadableSpan]]:
    """The spans of each stored episode in ``rows``, one list per episode."""
    endpoints = {run["run_id"]: ModelEndpoint.of_run(stored_json(store, run["spec_json"] or "{}",
                                                                f"the sweep of run {run['run_id']}"))
                 for run in store.runs()}
    span_resource = resource(project)
    for row in rows:
        events = [{"kind": e["kind"], "at_ms": e["at_ms"], "role": e["role"], "step": e["step"],
                   "detail": stored_json(store, e["detail_json"], f"event {e['seq']} of episode {row['episode_id']}")}
                  for e in store.events(row["episode_id"])]
        endpoint = endpoints.get(row["run_id"], ModelEndpoint(SIMULATOR_PROVIDER, MODEL_NAME))
        yield EpisodeSpans(row, events, endpoint, span_resource).build()


# -- OTLP JSON Lines -----------------------------------------------------------------------------

def _map_ids(value: Any, convert: Any) -> Any:
    if isinstance(value, dict):
        return {k: convert(v) if k in _ID_KEYS and isinstance(v, str) else _map_ids(v, convert) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_ids(v, convert) for v in value]
    return value


def request_of(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """The OTLP request carrying ``spans`` (the SDK's own encoder)."""
    return encode_spans(spans)


def json_line(request: ExportTraceServiceRequest) -> str:
    """One OTLP JSON line: lowerCamelCase keys, integer enums, trace and span ids in hex (not base64)."""
    data = json_format.MessageToDict(request, use_integers_for_enums=True)
    return json.dumps(_map_ids(data, lambda b64: base64.b64decode(b64).hex()), separators=(",", ":"))


def parse_json_line(line: str) -> ExportTraceServiceRequest:
    """Parse one OTLP JSON line strictly (unknown fields and bad ids raise :class:`OtelError`)."""
    try:
        data = _map_ids(json.loads(line), lambda hexadecimal: base64.b64encode(bytes.fromhex(hexadecimal)).decode())
        return json_format.ParseDict(data, ExportTraceServiceRequest())
    except (ValueError, json_format.ParseError) as exc:
        raise OtelError(f"not an OTLP JSON line: {exc}") from None


def json_lines(store: Store, rows: Iterable[Any], project: str = DEFAULT_PROJECT) -> str:
    """Every episode of ``rows`` as OTLP JSON Lines, one ``ExportTraceServiceRequest`` per episode."""
    return "".join(json_line(request_of(spans)) + "\n" for spans in stored_episode_spans(store, rows, project))


# -- OTLP/HTTP -----------------------------------------------------------------------------------

def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a receiver: ``/v1/traces`` appended unless the URL already names it."""
    url_address(endpoint)
    return endpoint if endpoint.rstrip("/").endswith("/v1/traces") else endpoint.rstrip("/") + "/v1/traces"


class OtlpSender:
    """Sends episodes' spans to an OTLP/HTTP receiver as protobuf, with the SDK's exporter (and its retries)."""

    def __init__(self, endpoint: str, timeout: float = 10.0):
        self.url = traces_url(endpoint)
        self._exporter = OTLPSpanExporter(endpoint=self.url, timeout=timeout)

    def send(self, spans: Sequence[ReadableSpan]) -> None:
        """Send one batch; :class:`OtelError` when the receiver does not accept it."""
        if self._exporter.export(spans) is not SpanExportResult.SUCCESS:
            raise OtelError(f"the OTLP receiver at {self.url} did not accept the spans (is it running? see the log "
                            "above for its answer)")

    def close(self) -> None:
        """Release the exporter's HTTP session."""
        self._exporter.shutdown()


def send_stored(store: Store, rows: Iterable[Any], endpoint: str, project: str = DEFAULT_PROJECT) -> int:
    """Send every episode of ``rows`` to the receiver at ``endpoint``; the number of episodes sent."""
    sender = OtlpSender(endpoint)
    sent = 0
    try:
        for spans in stored_episode_spans(store, rows, project):
            sender.send(spans)
            sent += 1
    finally:
        sender.close()
    return sent


class OtlpStream:
    """Streams episodes to a receiver while a run records them, on a thread of its own.

    The runner hands over episode ids as it commits them; a slow or dead receiver then never
    holds up the runner's loop (which watches every episode's time limit). Failures are
    counted and reported at :meth:`close`, never raised into the run.
    """

    def __init__(self, endpoint: str, store_path: str | Path, project: str = DEFAULT_PROJECT):
        self.sender = OtlpSender(endpoint)
        self.store_path, self.project = Path(store_path), project
        self.sent = 0
        self.failures: list[str] = []
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, name="coordlab-otlp", daemon=True)
        self._thread.start()

    def __call__(self, episode_id: int) -> None:
        """Queue one recorded episode for sending."""
        self._queue.put(episode_id)

    def _drain(self) -> None:
        from .store import open_readonly

        store: Store | None = None
        while (episode_id := self._queue.get()) is not None:
            try:
                store = store or open_readonly(self.store_path)
                rows = store.query("SELECT * FROM episodes WHERE episode_id = ?", (episode_id,))
                for spans in stored_episode_spans(store, rows, self.project):
                    self.sender.send(spans)
                    self.sent += 1
            except Exception as exc:  # noqa: BLE001 - reported at close; a run never fails for its traces
                self.failures.append(str(exc))
        if store is not None:
            store.close()

    def close(self, timeout: float = 60.0) -> None:
        """Send what is queued (waiting at most ``timeout`` seconds), then stop."""
        self._queue.put(None)
        self._thread.join(timeout)
        self.sender.close()
