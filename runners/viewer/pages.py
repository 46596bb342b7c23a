"""What each viewer page shows, read from a store with SQL: runs, a filtered page of episodes, one episode's timeline.

Nothing here knows HTTP or HTML: each function takes an open (read-only) store and returns
plain values for a template, so a notebook can call them too. A store may hold 100,000
episodes: lists are one ``LIMIT``/``OFFSET`` query plus one count, and the fault filter uses
the schema-3 index on fault events (a schema-2 store opened read-only scans its events).
"""

from __future__ import annotations

import json
import math
import shlex
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Mapping

from coordlab.runners.export import episode_key, fault_outcome, stored_json
from coordlab.runners.store import Exchange, Store

PAGE_SIZE = 50
"""Episodes per page of the list."""

LONG_TEXT = 600
"""Characters (or, at 12, lines) past which a message or value is collapsed under a ``<details>``."""
_LONG_LINES = 12

FILTERS = ("run", "task", "framework", "variant", "profile", "status", "fault", "harmful")
"""The episode list's filters, as query-string names."""

_COLUMN_FILTERS = {"run": "run_id", "task": "task", "framework": "framework", "variant": "variant",
                   "profile": "profile", "status": "status"}
_FAULTS_MET = ("episode_id IN (SELECT episode_id FROM events WHERE kind = 'fault' "
               "AND json_extract(detail_json, '$.fault') = ?)")
"""Episodes that met a fault kind; written exactly as the ``events_by_fault`` index is, so SQLite uses it."""
_LIST_COLUMNS = ("episode_id, run_id, task, framework, framework_version, variant, profile, seed, status, harmful, "
                 "termination, model_calls, faults_injected, wall_ms")
"""Columns every store schema has (a schema-1 store opened read-only lacks the newer counters); ``trial`` (schema 4)
is added where the store has it, and reads 0 where it does not."""


class BadRequest(ValueError):
    """A query-string value the viewer cannot use; the message says which and what it takes."""


@dataclass(frozen=True)
class EpisodeFilter:
    """The episode list's filters; an empty value means "any"."""

    values: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_query(cls, query: Mapping[str, list[str]]) -> "EpisodeFilter":
        """The filters of a parsed query string (``urllib.parse.parse_qs``); unknown names are ignored."""
        chosen = []
        for name in FILTERS:
            value = (query.get(name) or [""])[-1].strip()
            if not value:
                continue
            if name == "harmful" and value not in ("yes", "no"):
                raise BadRequest(f"harmful={value!r}: choose yes or no (or leave it out)")
            chosen.append((name, value))
        return cls(tuple(chosen))

    def get(self, name: str) -> str:
        """The value of filter ``name`` ("" when not set)."""
        return dict(self.values).get(name, "")

    def where(self) -> tuple[str, list[Any]]:
        """The SQL ``WHERE`` clause (or "") and its parameters."""
        clauses, params = [], []
        for name, value in self.values:
            if name in _COLUMN_FILTERS:
                clauses.append(f"{_COLUMN_FILTERS[name]} = ?")
                params.append(value)
            elif name == "fault":
                clauses.append(_FAULTS_MET)
                params.append(value)
            elif name == "harmful":
                clauses.append("harmful = ?")
                params.append(1 if value == "yes" else 0)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


@dataclass
class EpisodePage:
    """One page of the filtered episode list."""

    rows: list[dict[str, Any]]
    total: int
    page: int
    pages: int


def parse_page(query: Mapping[str, list[str]]) -> int:
    """The 1-based page number asked for (default 1)."""
    text = (query.get("page") or ["1"])[-1].strip()
    if not text.isdigit() or int(text) < 1:
        raise BadRequest(f"page={text!r}: a page is a whole number from 1")
    return int(text)


def runs(store: Store) -> list[dict[str, Any]]:
    """Every run, newest first, with its sweep in brief and its episode count."""
    rows = store.query("SELECT r.run_id, r.created_at, r.status, r.spec_json, "
                       "(SELECT count(*) FROM episodes e WHERE e.run_id = r.run_id) AS episodes "
                       "FROM runs r ORDER BY r.created_at DESC")
    found = []
    for row in rows:
        spec = stored_json(store, row["spec_json"], f"the sweep of run {row['run_id']}")
        seeds = spec.get("seeds") or []
        found.append({"run_id": row["run_id"], "created_at": row["created_at"], "status": row["status"],
                      "episodes": row["episodes"], "tasks": spec.get("tasks") or [],
                      "frameworks": spec.get("frameworks") or [], "variants": spec.get("variants") or [],
                      "profiles": spec.get("profiles") or [], "seeds": len(seeds), "trials": spec.get("trials") or 1,
                      "live": bool(spec.get("live")), "force": spec.get("force") or []})
    return found


def filter_options(store: Store) -> dict[str, list[str]]:
    """The values each filter can take in this store (one scan of episodes, one of the fault index)."""
    options: dict[str, set[str]] = {name: set() for name in _COLUMN_FILTERS}
    for row in store.query(f"SELECT DISTINCT {', '.join(_COLUMN_FILTERS.values())} FROM episodes"):
        for name, column in _COLUMN_FILTERS.items():
            options[name].add(row[column])
    faults = store.query("SELECT DISTINCT json_extract(detail_json, '$.fault') FROM events WHERE kind = 'fault'")
    return {**{name: sorted(values) for name, values in options.items()},
            "fault": sorted(str(row[0]) for row in faults if row[0] is not None), "harmful": ["yes", "no"]}


def episodes(store: Store, chosen: EpisodeFilter, page: int = 1, page_size: int = PAGE_SIZE) -> EpisodePage:
    """The ``page``-th page of episodes matching ``chosen``, in the order they finished (past the end: the last)."""
    where, params = chosen.where()
    total = int(store.query(f"SELECT count(*) FROM episodes{where}", params)[0][0])
    pages = max(1, math.ceil(total / page_size))
    page = min(page, pages)
    trial = "trial" if "trial" in store.episode_columns() else "0 AS trial"
    rows = store.query(f"SELECT {_LIST_COLUMNS}, {trial} FROM episodes{where} ORDER BY episode_id LIMIT ? OFFSET ?",
                       [*params, page_size, (page - 1) * page_size])
    found = []
    for row in rows:
        item = {key: row[key] for key in row.keys()}
        item["key"] = str(episode_key(row))
        found.append(item)
    return EpisodePage(found, total, page, pages)


# -- one episode ------------------------------------------------------------------------------

@dataclass
class Block:
    """A value to show: its text (pretty-printed when it is JSON), and whether it is long enough to collapse."""

    text: str
    long: bool
    summary: str = ""


@dataclass
class Message:
    """One message of a model request (or the response's message), ready to show."""

    role: str
    content: Block | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None


@dataclass
class Entry:
    """One event of the timeline, with what the stored bodies add to it."""

    seq: int
    kind: str
    at_ms: float
    role: str | None
    step: str | None
    detail: dict[str, Any]
    summary: str
    earlier: list[Message] = field(default_factory=list)
    """A model call's messages already sent in the same role's previous request (collapsed)."""
    messages: list[Message] = field(default_factory=list)
    """A model call's new messages."""
    request_extra: Block | None = None
    """The request's other fields (model, tools offered, stream, response format...)."""
    response: Message | None = None
    response_note: str = ""
    raw_request: Block | None = None
    raw_response: Block | None = None
    tool_call_id: str | None = None
    tool_arguments: Block | None = None
    tool_result: Block | None = None
    has_bodies: bool = False


@dataclass
class EpisodeView:
    """Everything the episode page shows."""

    row: dict[str, Any]
    key: str
    verdict: dict[str, Any]
    notes: list[str]
    knobs: dict[str, Any]
    show_command: str
    entries: list[Entry]
    bodies_note: str
    counters: list[tuple[str, Any]]
    failure: str = ""
    """How the episode failed, diagnosed from its trace (empty for a success)."""


def find(store: Store, episode_id: int) -> sqlite3.Row | None:
    """The episode with this id, or None."""
    rows = store.query("SELECT * FROM episodes WHERE episode_id = ?", (episode_id,))
    return rows[0] if rows else None


def block(value: Any) -> Block:
    """A value as text to show: JSON (or text holding JSON) pretty-printed; long ones collapse."""
    if isinstance(value, str):
        text = value
        stripped = value.strip()
        if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
            try:
                text = json.dumps(json.loads(stripped), indent=2, ensure_ascii=False)
            except ValueError:
                pass
    else:
        text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    long = len(text) > LONG_TEXT or text.count("\n") >= _LONG_LINES
    first = text.strip().splitlines()[0] if text.strip() else ""
    summary = (first[:100] + "…" if len(first) > 100 or long else first) + (f" ({len(text):,} characters)" if long
                                                                              else "")
    return Block(text, long, summary)


def _message(raw: Any) -> Message:
    if not isinstance(raw, Mapping):
        return Message("?", block(raw))
    content = raw.get("content")
    if isinstance(content, list):  # content parts: show the text parts as one text
        texts = [part.get("text", "") for part in content if isinstance(part, Mapping) and "text" in part]
        content = "\n".join(texts) if texts and len(texts) == len(content) else content
    calls = [_tool_call(call) for call in raw.get("tool_calls") or [] if isinstance(call, Mapping)]
    return Message(str(raw.get("role", "?")), None if content in (None, "") else block(content), calls,
                   raw.get("tool_call_id"), raw.get("name"))


def _tool_call(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {"id": call.get("id"), "name": function.get("name"), "arguments": block(function.get("arguments") or "")}


def assemble_stream(chunks: list[Any]) -> tuple[dict[str, Any], str | None, dict[str, Any] | None]:
    """A streamed response's message, as a client assembles it from its chunks: (message, finish reason, usage)."""
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish, usage, role = None, None, "assistant"
    for chunk in chunks:
        if not isinstance(chunk, Mapping):
            continue
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            role = delta.get("role") or role
            content.append(delta.get("content") or "")
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(call.get("index", 0), {"id": None, "type": "function",
                                                               "function": {"name": "", "arguments": ""}})
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    message: dict[str, Any] = {"role": role, "content": "".join(content) or None}
    if calls:
        message["tool_calls"] = [calls[index] for index in sorted(calls)]
    return message, finish, usage


def _response(body: Any, status: int | None) -> tuple[Message | None, str]:
    """The response's message (when one was sent) and a sentence on how it went."""
    if body is None:
        return None, "Nothing was sent back: the connection was held open past the client's timeout, or reset."
    if isinstance(body, str):
        return Message("truncated", block(body)), (f"The body was cut short after {len(body.encode()):,} bytes "
                                                     f"(an injected truncated body); the client never got it whole.")
    if isinstance(body, list):
        message, finish, usage = assemble_stream(body)
        note = f"Streamed in {len(body)} chunk(s)"
        note += f", finish reason {finish}" if finish else ", cut short before the end (an injected truncated body)"
        if usage:
            note += f"; usage {usage.get('prompt_tokens')} in / {usage.get('completion_tokens')} out"
        return _message(message), note + "."
    if isinstance(body, Mapping) and "error" in body:
        error = body.get("error") or {}
        message = error.get("message") if isinstance(error, Mapping) else error
        return Message("error", block(str(message))), f"HTTP {status}: an error, not an answer."
    if isinstance(body, Mapping) and body.get("choices"):
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        note = f"Finish reason {choice.get('finish_reason')}"
        if usage:
            note += f"; usage {usage.get('prompt_tokens')} in / {usage.get('completion_tokens')} out"
        return _message(choice.get("message") or {}), note + "."
    return Message("?", block(body)), ""


def _same_prefix(previous: list[Any], current: list[Any]) -> int:
    """How many of ``current``'s first messages repeat ``previous`` whole (0 unless all of it)."""
    if previous and len(previous) <= len(current) and current[:len(previous)] == previous:
        return len(previous)
    return 0


def _summary(kind: str, detail: Mapping[str, Any]) -> str:
    """A one-line account of an event, for its row of the timeline."""
    if kind == "model_call":
        text = f"{detail.get('kind')}, attempt {detail.get('attempt')}, HTTP {detail.get('status')}, tokens " \
               f"{detail.get('prompt_tokens')} in / {detail.get('completion_tokens')} out"
        if detail.get("tool_calls"):
            text += f", calls {', '.join(map(str, detail['tool_calls']))}"
        if detail.get("route_target"):
            text += f", routes to {detail['route_target']}"
        return text
    if kind == "tool_call":
        outcome = "ok" if detail.get("ok") else f"error: {detail.get('error')}"
        return f"{detail.get('name')}{' (mutating)' if detail.get('mutating') else ''}: {outcome}"
    if kind == "handoff":
        return f"{detail.get('source') or 'start'} → {detail.get('target')} via {detail.get('mechanism')}"
    if kind == "gate":
        return "passed" if detail.get("passed") else f"rejected: {detail.get('reason')}"
    if kind == "fault":
        what = "mechanism" if detail.get("mechanism") else "fault"
        return f"{what} {detail.get('fault')}, attempt {detail.get('attempt')}: {fault_outcome(detail)}"
    if kind == "retry":
        return f"{detail.get('source')} retry: {detail.get('reason')}"
    if kind == "side_effect":
        return f"{detail.get('tool')}"
    if kind == "termination":
        return f"{detail.get('termination')}" + (f": {detail['error']}" if detail.get("error") else "")
    if kind == "step_output":
        return ", ".join(sorted(map(str, detail.get("outputs") or {})))
    return json.dumps(detail, default=str)[:160]


def timeline(store: Store, row: sqlite3.Row, exchanges: list[Exchange] | None) -> list[Entry]:
    """The episode's events in time order; model calls carry their request and response, tool calls their
    arguments and result, when the bodies were kept.

    Request k is the k-th model_call event (both follow the simulator's arrival order). A tool
    call is matched to the first call of that tool the same role's model asked for and that no
    earlier tool event took; its result is the ``tool`` message answering that call's id.
    """
    by_seq = {exchange.seq: exchange for exchange in exchanges or []}
    previous_messages: dict[str | None, list[Any]] = {}
    pending_calls: dict[tuple[str | None, str], list[dict[str, Any]]] = {}
    results: dict[str, Any] = {}
    entries = []
    model_calls = 0
    for event in store.events(row["episode_id"]):
        detail = stored_json(store, event["detail_json"], f"event {event['seq']} of episode {row['episode_id']}")
        entry = Entry(event["seq"], event["kind"], event["at_ms"], event["role"], event["step"], detail,
                      _summary(event["kind"], detail))
        if event["kind"] == "model_call":
            exchange = by_seq.get(model_calls)
            model_calls += 1
            if exchange is not None:
                _attach_exchange(entry, exchange, previous_messages, pending_calls, results)
        elif event["kind"] == "tool_call":
            queue = pending_calls.get((event["role"], detail.get("name")), [])
            if queue:
                call = queue.pop(0)
                entry.tool_call_id, entry.tool_arguments = call["id"], call["arguments"]
        entries.append(entry)
    # A tool's result reaches the model in a later request: filled in once every request is read.
    for entry in entries:
        if entry.tool_call_id is not None and entry.tool_call_id in results:
            entry.tool_result = block(results[entry.tool_call_id])
    return entries


def _attach_exchange(entry: Entry, exchange: Exchange, previous_messages: dict[str | None, list[Any]],
                     pending_calls: dict[tuple[str | None, str], list[dict[str, Any]]],
                     results: dict[str, Any]) -> None:
    request = exchange.request if isinstance(exchange.request, Mapping) else {}
    raw_messages = list(request.get("messages") or [])
    earlier = _same_prefix(previous_messages.get(entry.role, []), raw_messages)
    previous_messages[entry.role] = raw_messages
    entry.has_bodies = True
    entry.earlier = [_message(m) for m in raw_messages[:earlier]]
    entry.messages = [_message(m) for m in raw_messages[earlier:]]
    extra = {key: value for key, value in request.items() if key != "messages"}
    if isinstance(extra.get("tools"), list):
        extra["tools"] = [((t.get("function") or {}).get("name") if isinstance(t, Mapping) else t)
                          for t in extra["tools"]]
    entry.request_extra = block(extra) if extra else None
    entry.response, entry.response_note = _response(exchange.response, entry.detail.get("status"))
    entry.raw_request = block(exchange.request)
    entry.raw_response = None if exchange.response is None else block(exchange.response)
    for message in raw_messages:
        if isinstance(message, Mapping) and message.get("role") == "tool" and message.get("tool_call_id"):
            results.setdefault(str(message["tool_call_id"]), message.get("content"))
    for call in entry.response.tool_calls if entry.response else []:
        pending_calls.setdefault((entry.role, call["name"]), []).append(call)


def _counters(row: sqlite3.Row) -> list[tuple[str, Any]]:
    names = ("model_calls", "tool_calls", "tool_errors", "handoffs", "handoffs_lost", "handoff_model_errors",
             "framework_retries", "transport_retries", "gate_rejections", "faults_injected", "faults_recovered",
             "prompt_tokens", "completion_tokens")
    keys = row.keys()
    found = [(name.replace("_", " "), row[name] if name in keys else None) for name in names]
    found.append(("wall ms", round(row["wall_ms"], 1)))
    return found


def episode_view(store: Store, row: sqlite3.Row) -> EpisodeView:
    """The episode page's content: verdict, key, the ``coordlab show`` command, and the timeline."""
    key = str(episode_key(row))
    verdict = stored_json(store, row["verdict_json"] or "{}", f"the verdict of episode {row['episode_id']}")
    exchanges = store.exchanges(row["episode_id"])
    if exchanges is None:
        bodies_note = ("This store was written before coordlab kept model request and response bodies (store schema "
                       "3): the timeline shows the trace only. Open it for writing with this coordlab (e.g. resume its "
                       "run) to migrate it; episodes recorded from then on keep their bodies.")
    elif exchanges:
        bodies_note = ""
    elif row["status"] in ("timeout", "infra_error"):
        bodies_note = "The lab could not finish this episode, so nothing of it beyond this row was recorded."
    elif row["model_calls"]:
        bodies_note = ("This episode was recorded without its model request and response bodies: its run used "
                       "`coordlab run --no-bodies`, or a coordlab from before live runs went through the fault proxy.")
    else:
        bodies_note = ""
    entries = timeline(store, row, exchanges)
    command = f"coordlab show {shlex.quote(key)} --store {shlex.quote(str(store.path))}"
    return EpisodeView({k: row[k] for k in row.keys()}, key, verdict,
                       stored_json(store, row["notes_json"] or "[]", "the notes"),
                       stored_json(store, row["knobs_json"] or "{}", "the knobs"),
                       command, entries, bodies_note, _counters(row), _failure(store, row))


def _failure(store: Store, row: sqlite3.Row) -> str:
    """The failure diagnosis of a failed episode (its modes, MAST ids and the faults behind it), else ""."""
    if row["status"] in ("success", "infra_error"):
        return ""
    from coordlab.reports.failure_modes import diagnose

    return diagnose(row, list(store.events(row["episode_id"]))).summary
