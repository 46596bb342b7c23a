"""The real endpoint behind the fault proxy: forward one chat completion, read its answer back.

The proxy sees a real model's answer in full before the framework does, so it can relay it
untouched, cut it short, or act a model fault out on it. A streamed answer is therefore
read to its end and relayed afterwards, event by event: its timing to the first token is
lost, its contents are not. The key is the proxy's alone: frameworks talk to the proxy
with a placeholder, and only the proxy's request to the real endpoint carries the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import httpx

from coordlab.runners.redaction import REDACTED

UPSTREAM_TIMEOUT_S = 600.0
"""How long the proxy waits for the real endpoint: a small local model can take minutes on a long answer;
the framework's own client timeout is what an episode is held to."""
_RELAYED_HEADERS = ("content-type", "retry-after", "retry-after-ms", "x-request-id")
"""Response headers worth passing on (a real 429's Retry-After is the client's to honour)."""


@dataclass(frozen=True)
class Upstream:
    """A real OpenAI-compatible endpoint: base URL (ending in ``/v1`` or the like), model, key."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    """None for an endpoint that needs no key (a local server)."""
    timeout_s: float = UPSTREAM_TIMEOUT_S

    @property
    def completions_url(self) -> str:
        """Where chat completions are posted."""
        return self.base_url.rstrip("/") + "/chat/completions"


@dataclass
class ParsedAnswer:
    """What a successful answer says, read from its JSON or its stream of events."""

    content: str | None
    tool_calls: list[dict[str, Any]]
    """Each call as ``{"id", "name", "arguments"}`` (the simulator's own form)."""
    usage: Mapping[str, Any] | None


@dataclass
class UpstreamAnswer:
    """The real endpoint's response as received, and what it says when it could be read."""

    status: int
    headers: dict[str, str]
    raw: bytes
    stream: bool
    parsed: ParsedAnswer | None
    """None for an error status or a body that is not a chat completion."""
    error: str | None = None
    """Why no response came back at all (connection refused, timeout); ``status`` is then 502."""

    def sent_form(self) -> Any:
        """The response as the viewer keeps it: the JSON object, a stream's chunk objects, or the text."""
        if self.stream:
            return list(_events(self.raw))
        try:
            return json.loads(self.raw)
        except ValueError:
            return self.raw.decode("utf-8", "replace")

    def events(self) -> list[bytes]:
        """A stream's raw ``data:`` events (each ending in a blank line), in order, to relay one by one."""
        return [block + b"\n\n" for block in self.raw.replace(b"\r\n", b"\n").split(b"\n\n") if block.strip()]


def _events(raw: bytes) -> list[Any]:
    """The JSON objects of a server-sent event stream (``[DONE]`` and comments left out)."""
    objects = []
    for line in raw.decode("utf-8", "replace").splitlines():
        data = line[5:].strip() if line.startswith("data:") else None
        if not data or data == "[DONE]":
            continue
        try:
            objects.append(json.loads(data))
        except ValueError:
            continue
    return objects


def _call_form(call: Mapping[str, Any]) -> dict[str, Any]:
    function = _mapping(call.get("function"))
    return {"id": str(call.get("id") or ""), "name": str(function.get("name") or ""),
            "arguments": _text(function.get("arguments") if function.get("arguments") is not None else {})}


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one: a real endpoint's answer is read, never trusted."""
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str:
    """Text as sent, or JSON for anything else (an endpoint that sends a tool call's arguments as an object)."""
    return value if isinstance(value, str) else json.dumps(value) if value is not None else ""


def parse_completion(payload: Any) -> ParsedAnswer | None:
    """A non-streamed chat completion's first choice, or None when the body is not one."""
    choices = _mapping(payload).get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    message = _mapping(choices[0]).get("message")
    if not isinstance(message, Mapping):
        return None
    content = message.get("content")
    calls = message.get("tool_calls")
    usage = _mapping(payload).get("usage")
    return ParsedAnswer(content if isinstance(content, str) else None,
                        [_call_form(c) for c in calls if isinstance(c, Mapping)] if isinstance(calls, list) else [],
                        usage if isinstance(usage, Mapping) else None)


def parse_stream(chunks: list[Any]) -> ParsedAnswer | None:
    """A streamed chat completion put back together: content deltas joined, tool calls merged by index."""
    content, calls, usage, seen = [], {}, None, False
    for chunk in chunks:
        if not isinstance(chunk, Mapping):
            continue
        if isinstance(chunk.get("usage"), Mapping):
            usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            seen = True
            delta = _mapping(_mapping(choice).get("delta"))
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            deltas = delta.get("tool_calls")
            for call in deltas if isinstance(deltas, list) else []:
                call = _mapping(call)
                index = call.get("index") if isinstance(call.get("index"), int) else len(calls)
                slot = calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
                function = _mapping(call.get("function"))
                slot["id"] = str(call.get("id") or slot["id"])
                slot["name"] += _text(function.get("name"))
                slot["arguments"] += _text(function.get("arguments"))
    if not seen:
        return None
    return ParsedAnswer("".join(content) if content else None, [calls[i] for i in sorted(calls)], usage)


def forward(upstream: Upstream, body: Mapping[str, Any], client: httpx.Client) -> UpstreamAnswer:
    """Send the framework's request body on to the real endpoint, as built, and read the whole answer."""
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if upstream.api_key:
        headers["Authorization"] = f"Bearer {upstream.api_key}"
    stream = bool(body.get("stream"))
    try:
        response = client.post(upstream.completions_url, content=json.dumps(body).encode(), headers=headers,
                               timeout=upstream.timeout_s)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        why = f"the model endpoint did not answer ({type(exc).__name__}: {exc})"
        payload = json.dumps({"error": {"message": why, "type": "upstream_error", "code": 502}}).encode()
        return UpstreamAnswer(502, {"content-type": "application/json"}, payload, False, None, why)
    relayed = {name: response.headers[name] for name in _RELAYED_HEADERS if name in response.headers}
    is_stream = "text/event-stream" in response.headers.get("content-type", "")
    raw = scrubbed(response.content, upstream.api_key)
    parsed = None
    if response.status_code == 200:
        try:
            parsed = parse_stream(_events(raw)) if is_stream else parse_completion(json.loads(raw))
        except (ValueError, TypeError, RecursionError):  # not a chat completion: relayed as it came, unread
            parsed = None
    return UpstreamAnswer(response.status_code, relayed, raw, is_stream and stream, parsed)


def scrubbed(raw: bytes, key: str | None) -> bytes:
    """``raw`` with every occurrence of the key replaced: an endpoint that echoes it (in an error about a bad
    key, say) must not hand it to the framework, whose messages, logs and errors the lab stores."""
    if not key:
        return raw
    return raw.replace(key.encode(), REDACTED.encode())
