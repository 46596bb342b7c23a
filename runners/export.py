"""Read episodes back out of a store: one episode shown readably, CSV/JSONL, OpenTelemetry GenAI spans.

The span export follows the OpenTelemetry GenAI semantic conventions (``gen_ai.*``
attribute names) in OTLP/JSON, so a trace opens in Langfuse, Phoenix or any OTLP viewer:
one root span per episode, a ``chat`` span per model call, an ``execute_tool`` span per
tool call, and gates, handoffs, retries, faults and side effects as span events.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Iterable

from tabulate import tabulate

from .store import EpisodeKey, Store, StoreError

EXPORT_FORMATS = ("csv", "jsonl", "otel")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write to a temp file beside ``path`` and rename it into place (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; a report is for sharing
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def find_episode(store: Store, text: str) -> sqlite3.Row:
    """The newest episode matching ``TASK/FRAMEWORK[@VERSION]/VARIANT/PROFILE/SEED``."""
    parts = text.split("/")
    if len(parts) != 5 or not parts[4].lstrip("-").isdigit():
        raise StoreError(f"episode key {text!r}: expected TASK/FRAMEWORK[@VERSION]/VARIANT/PROFILE/SEED, "
                         "e.g. chain@1[n=6]/plain/linear/none/0")
    framework, _, version = parts[1].partition("@")
    query = "SELECT * FROM episodes WHERE task = ? AND framework = ? AND variant = ? AND profile = ? AND seed = ?"
    params: list[Any] = [parts[0], framework, parts[2], parts[3], int(parts[4])]
    if version:
        query += " AND framework_version = ?"
        params.append(version)
    row = store.connection.execute(query + " ORDER BY episode_id DESC LIMIT 1", params).fetchone()
    if row is None:
        raise StoreError(f"no episode {text} in {store.path}")
    return row


def episode_key(row: sqlite3.Row) -> EpisodeKey:
    """The natural key of a stored episode."""
    return EpisodeKey(row["task"], row["framework"], row["framework_version"], row["variant"], row["profile"],
                      row["seed"])


def render_episode(store: Store, row: sqlite3.Row) -> str:
    """One episode as text: its key, outcome, counters, and its trace as a table."""
    verdict = json.loads(row["verdict_json"] or "{}")
    lines = [f"episode {episode_key(row)}  (run {row['run_id']})",
             f"status {row['status']}{' (harmful)' if row['harmful'] else ''}; termination {row['termination']}; "
             f"wall {row['wall_ms']:.0f} ms",
             f"model calls {row['model_calls']}, tool calls {row['tool_calls']}, handoffs {row['handoffs']}, "
             f"handoff failures {row['handoff_failures']}, gate rejections {row['gate_rejections']}, "
             f"retries {row['framework_retries']} framework / {row['transport_retries']} transport, "
             f"faults {row['faults_caught']}/{row['faults_injected']} caught, "
             f"tokens {row['prompt_tokens']} in / {row['completion_tokens']} out"]
    if row["error"]:
        lines.append(f"error: {row['error']}")
    for reason in ("unexpected_side_effects", "missing_side_effects", "failed_checks"):
        for item in verdict.get(reason, []):
            lines.append(f"{reason.replace('_', ' ')}: {item}")
    table = []
    for event in store.events(row["episode_id"]):
        detail = json.loads(event["detail_json"])
        table.append([f"{event['at_ms']:.1f}", event["kind"], event["role"] or "", event["step"] or "",
                      _summarise(event["kind"], detail)])
    lines += ["", tabulate(table, headers=["ms", "event", "role", "step", "detail"])]
    return "\n".join(lines)


def _summarise(kind: str, detail: dict[str, Any]) -> str:
    if kind == "model_call":
        calls = ",".join(detail.get("tool_calls") or [])
        issues = "; ".join(f"{i['field']} {i['kind']}" for i in detail.get("handoff_issues") or [])
        text = f"{detail.get('kind')} attempt {detail.get('attempt')} tokens {detail.get('prompt_tokens')}/" \
               f"{detail.get('completion_tokens')}"
        return text + (f" calls {calls}" if calls else "") + (f" handoff failure: {issues}" if issues else "") + \
            (f" -> {detail['route_target']}" if detail.get("route_target") else "")
    if kind == "tool_call":
        return f"{detail['name']}{' (mutating)' if detail.get('mutating') else ''} " \
               f"{'ok' if detail.get('ok') else 'error: ' + str(detail.get('error'))}"
    if kind == "handoff":
        return f"{detail.get('source')} -> {detail.get('target')} via {detail.get('mechanism')}"
    if kind == "gate":
        return "pass" if detail.get("passed") else f"reject: {detail.get('reason')}"
    if kind == "fault":
        return f"{detail['fault']} ({'caught' if detail.get('caught') else 'not caught'})"
    if kind == "retry":
        return f"{detail.get('source')}: {detail.get('reason')}"
    return json.dumps(detail, default=str)[:120]


def _plain_rows(rows: Iterable[sqlite3.Row]) -> list[dict[str, Any]]:
    return [{k: row[k] for k in row.keys()} for row in rows]


def export_episodes(store: Store, out: Path, fmt: str, run_id: str | None = None) -> int:
    """Write the episodes (CSV or JSONL) or their traces (``otel``) to ``out``; the number of episodes."""
    if fmt not in EXPORT_FORMATS:
        raise StoreError(f"export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    rows = store.episodes(run_id)
    if fmt == "otel":
        write_atomically(out, json.dumps(otel_document(store, rows), indent=1))
        return len(rows)
    records = _plain_rows(rows)
    if fmt == "jsonl":
        write_atomically(out, "".join(json.dumps(r) + "\n" for r in records))
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else ["episode_id"])
        writer.writeheader()
        writer.writerows(records)
        write_atomically(out, buffer.getvalue())
    return len(records)


def _identifier(*parts: Any, size: int) -> str:
    return hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=size).hexdigest()


def _attributes(values: dict[str, Any]) -> list[dict[str, Any]]:
    attributes = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            attributes.append({"key": key, "value": {"boolValue": value}})
        elif isinstance(value, int):
            attributes.append({"key": key, "value": {"intValue": str(value)}})
        elif isinstance(value, float):
            attributes.append({"key": key, "value": {"doubleValue": value}})
        else:
            attributes.append({"key": key, "value": {"stringValue": str(value)}})
    return attributes


def otel_spans(store: Store, row: sqlite3.Row) -> list[dict[str, Any]]:
    """One episode as OTLP/JSON spans with GenAI semantic-convention attributes."""
    trace_id = _identifier(row["run_id"], row["episode_id"], size=16)
    root_id = _identifier(trace_id, "root", size=8)
    end_ns = int(row["finished_at"] * 1e9)
    start_ns = end_ns - int(row["wall_ms"] * 1e6)
    spans: list[dict[str, Any]] = []
    root_events: list[dict[str, Any]] = []
    for event in store.events(row["episode_id"]):
        detail = json.loads(event["detail_json"])
        at_ns = start_ns + int(event["at_ms"] * 1e6)
        span_id = _identifier(trace_id, event["seq"], size=8)
        if event["kind"] == "model_call":
            spans.append({"traceId": trace_id, "spanId": span_id, "parentSpanId": root_id,
                          "name": "chat coordlab-sim", "kind": 3, "startTimeUnixNano": str(at_ns),
                          "endTimeUnixNano": str(at_ns + int((detail.get("elapsed_ms") or 0.0) * 1e6)),
                          "attributes": _attributes({
                              "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                              "gen_ai.request.model": "coordlab-sim", "gen_ai.agent.name": event["role"],
                              "gen_ai.usage.input_tokens": detail.get("prompt_tokens"),
                              "gen_ai.usage.output_tokens": detail.get("completion_tokens"),
                              "gen_ai.response.finish_reasons": "tool_calls" if detail.get("tool_calls") else "stop",
                              "coordlab.step": event["step"], "coordlab.attempt": detail.get("attempt")})})
        elif event["kind"] == "tool_call":
            spans.append({"traceId": trace_id, "spanId": span_id, "parentSpanId": root_id,
                          "name": f"execute_tool {detail['name']}", "kind": 1, "startTimeUnixNano": str(at_ns),
                          "endTimeUnixNano": str(at_ns), "status": {"code": 1 if detail.get("ok") else 2},
                          "attributes": _attributes({
                              "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": detail["name"],
                              "gen_ai.agent.name": event["role"], "coordlab.step": event["step"],
                              "coordlab.tool.mutating": bool(detail.get("mutating")),
                              "error.type": None if detail.get("ok") else str(detail.get("error"))})})
        else:
            root_events.append({"timeUnixNano": str(at_ns), "name": f"coordlab.{event['kind']}",
                                "attributes": _attributes({"coordlab.step": event["step"],
                                                           "gen_ai.agent.name": event["role"],
                                                           **{f"coordlab.{k}": v if isinstance(v, (int, float, bool, str))
                                                              else json.dumps(v, default=str)
                                                              for k, v in detail.items()}})})
    root = {"traceId": trace_id, "spanId": root_id, "name": f"invoke_agent {row['task']}", "kind": 1,
            "startTimeUnixNano": str(start_ns), "endTimeUnixNano": str(end_ns),
            "status": {"code": 1 if row["status"] == "success" else 2},
            "attributes": _attributes({"gen_ai.operation.name": "invoke_agent", "gen_ai.system": row["framework"],
                                       "coordlab.framework.version": row["framework_version"],
                                       "coordlab.variant": row["variant"], "coordlab.profile": row["profile"],
                                       "coordlab.seed": row["seed"], "coordlab.status": row["status"],
                                       "coordlab.harmful": bool(row["harmful"])}),
            "events": root_events}
    return [root, *spans]


def otel_document(store: Store, rows: Iterable[sqlite3.Row]) -> dict[str, Any]:
    """An OTLP/JSON ``ExportTraceServiceRequest`` holding every episode's spans."""
    spans = [span for row in rows for span in otel_spans(store, row)]
    return {"resourceSpans": [{"resource": {"attributes": _attributes({"service.name": "coordlab"})},
                               "scopeSpans": [{"scope": {"name": "coordlab", "version": "0.1.0"}, "spans": spans}]}]}
