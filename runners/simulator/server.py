"""The simulated model as an OpenAI-compatible HTTP server on 127.0.0.1.

Every framework reaches it through its own production client, exactly as it would reach a
hosted model. Each episode and role gets its own base URL
(``/episodes/<id>/roles/<role>/v1``), which is how a request is tied to its episode and
role without any framework-specific code. Transport faults are acted out on the real
socket: a 429 with Retry-After, 500/503, a stall past the client timeout, a connection
reset, a body cut short.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import sys
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping
from urllib.parse import unquote

import httpx

from coordlab.runners.loopback_service import LoopbackService
from coordlab.runners.faults import Fault, FaultPlan, FaultProfile, forced_faults, load_profile
from coordlab.tasks.loader import load_suite_task, load_task
from coordlab.tasks.schema import Task
from coordlab.tasks.world import World

from .episode import PREMATURE_TEXT, ROUTER_ROLE, Decision, EpisodeState, Reply
from .proxy import ProxyEpisode
from .upstream import Upstream, UpstreamAnswer

MODEL_NAME = "coordlab-sim"
"""The model id the simulator lists; any requested model name is accepted and echoed."""
_COMPLETIONS = re.compile(r"^/episodes/([A-Za-z0-9_-]+)(?:/roles/([A-Za-z0-9_.-]+))?/v1/chat/completions$")
_MODELS = re.compile(r"^(?:/episodes/[A-Za-z0-9_-]+(?:/roles/[A-Za-z0-9_.-]+)?)?/v1/models$")
ANY_ROLE = ""
"""The role of a request made to an episode's role-less URL (:meth:`Simulator.endpoint_url`)."""
_LOG = re.compile(r"^/episodes/([A-Za-z0-9_-]+)/log$")


CLOSE_WAIT_S = 2.0
"""How long closing an episode waits for its in-flight exchanges to be recorded (far more than writing a reply takes)."""


class SimulatorError(RuntimeError):
    """The simulator cannot start or was asked for something it cannot do."""


def _completion_payload(reply: Reply, model: str, response_id: str, usage: Mapping[str, int]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None if reply.tool_calls else (reply.content or "")}
    if reply.tool_calls:
        message["tool_calls"] = [{"id": c["id"], "type": "function",
                                  "function": {"name": c["name"], "arguments": c["arguments"]}}
                                 for c in reply.tool_calls]
    return {"id": response_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}],
            "usage": dict(usage)}


def _stream_chunks(reply: Reply, model: str, response_id: str, usage: Mapping[str, int] | None) -> list[dict[str, Any]]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    content = reply.content or ""
    third = max(1, len(content) // 3)
    chunks += [chunk({"content": content[i:i + third]}) for i in range(0, len(content), third)]
    for index, call in enumerate(reply.tool_calls):
        chunks.append(chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                             "function": {"name": call["name"], "arguments": ""}}]}))
        chunks.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": call["arguments"]}}]}))
    chunks.append(chunk({}, reply.finish_reason))
    if usage is not None:
        chunks.append({"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [], "usage": dict(usage)})
    return chunks


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # Nagle + delayed ACK would add ~40 ms to every call
    server: "_Server"
    _sent: Any = None
    """What the last response carried, for the record (see ``RequestRecord.response_body``)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the default per-request stderr line; the episode log records everything."""

    # -- plumbing ----------------------------------------------------------------------------
    def _send_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        self._sent = payload
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error",
               headers: Mapping[str, str] | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw or b"{}")

    # -- routes ------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = self.path.split("?", 1)[0]
        if _MODELS.match(path):
            self._send_json(200, {"object": "list", "data": [
                {"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "coordlab"}]})
        elif (match := _LOG.match(path)):
            episode = self.server.simulator.find_episode(match.group(1))
            if episode is None:
                self._error(404, f"no episode {match.group(1)!r}")
            else:
                self._send_json(200, [r.to_dict() for r in list(episode.records)])
        elif path == "/health":
            self._send_json(200, {"status": "ok"})
        else:
            self._error(404, f"no route GET {path}")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        path = self.path.split("?", 1)[0]
        try:
            body = self._read_json()
        except ValueError as exc:
            self._error(400, f"request body is not JSON: {exc}")
            return
        if path == "/episodes":
            self._register(body)
        elif (match := _COMPLETIONS.match(path)):
            self._complete(match.group(1), unquote(match.group(2) or ANY_ROLE), body)
        elif path.endswith("/chat/completions"):
            self._error(404, "no episode in the URL: use the base URL /episodes/<id>/roles/<role>/v1 "
                             "returned by POST /episodes (or Simulator.open_episode)")
        else:
            self._error(404, f"no route POST {path}")

    def _register(self, body: Any) -> None:
        try:
            episode = self.server.simulator.open_episode_from_spec(body)
        except (KeyError, ValueError, TypeError) as exc:
            self._error(400, str(exc).strip("'\""))
            return
        roles = [*episode.task.roles, ROUTER_ROLE]
        self._send_json(201, {"episode_id": episode.id, "task": episode.task.key,
                              "base_urls": {r: self.server.simulator.base_url(episode.id, r) for r in roles}})

    def _complete(self, episode_id: str, role: str, body: Any) -> None:
        episode = self.server.simulator.find_episode(episode_id)
        if episode is None:
            self._error(404, f"no episode {episode_id!r} on this simulator")
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._error(400, "a chat completion needs a JSON object with a 'messages' list")
            return
        if role not in (ROUTER_ROLE, ANY_ROLE) and role not in episode.task.roles:
            self._error(404, f"task {episode.task.name!r} has no role {role!r}")
            return
        started = time.perf_counter()
        retry_count = int(self.headers.get("x-stainless-retry-count") or 0)
        episode.begin_exchange()
        try:
            try:
                decision = episode.decide(role, body, retry_count)
            except Exception as exc:  # noqa: BLE001 - a lab bug must fail this request, not hang the framework
                self._error(500, f"coordlab could not serve this request ({type(exc).__name__}: {exc})", "server_error")
                raise
            # The request body is kept before acting, so a stalled request still has it if the episode ends first.
            episode.update_record(decision.record, request_body=body)
            self._sent = None
            status = self._act(decision, episode.plan.profile, body)
            episode.update_record(decision.record, status=status, elapsed_ms=(time.perf_counter() - started) * 1000,
                                  response_body=self._sent)
        finally:
            episode.end_exchange()

    def _act(self, decision: Decision, profile: FaultProfile, body: Mapping[str, Any]) -> int:
        """Send the reply, or act out the transport fault; return the HTTP status sent (0: none)."""
        fault, record = decision.transport_fault, decision.record
        if decision.upstream is not None and decision.reply is None:
            return self._relay(decision.upstream, truncate=fault is Fault.TRUNCATED_BODY)
        if fault is Fault.HTTP_429:
            retry_ms = profile.retry_after_ms
            self._error(429, "Rate limit reached (injected by coordlab)", "rate_limit_error",
                        {"Retry-After": str(max(1, retry_ms // 1000)), "retry-after-ms": str(retry_ms)})
            return 429
        if fault in (Fault.HTTP_500, Fault.HTTP_503):
            status = 500 if fault is Fault.HTTP_500 else 503
            self._error(status, f"Server error {status} (injected by coordlab)", "server_error")
            return status
        if fault is Fault.STALL:
            self.server.stopping.wait(profile.stall_seconds)
            self._drop()
            return 0
        if fault is Fault.CONNECTION_RESET:
            self._drop(reset=True)
            return 0
        # A truncated body never reaches the client whole, so the model's state must not advance:
        # the episode logic returned no reply for it, and a placeholder is what gets cut short.
        reply = decision.reply or Reply("transport_fault", content=PREMATURE_TEXT)
        model = str(body.get("model") or MODEL_NAME)
        response_id = f"chatcmpl-{record.episode_id}-{record.seq}"
        usage = {"prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
                 "total_tokens": record.prompt_tokens + record.completion_tokens}
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(_stream_chunks(reply, model, response_id, usage if include_usage else None),
                         truncate=fault is Fault.TRUNCATED_BODY)
        elif fault is Fault.TRUNCATED_BODY:
            payload = json.dumps(_completion_payload(reply, model, response_id, usage)).encode()
            self._write_body(200, {"Content-Type": "application/json"}, payload, truncate=True)
        else:
            self._send_json(200, _completion_payload(reply, model, response_id, usage))
        return 200

    def _relay(self, answer: UpstreamAnswer, truncate: bool) -> int:
        """Pass the real endpoint's response on as received; with ``truncate``, only its first half."""
        if answer.stream and answer.status == 200:
            events = answer.events()
            chunks = answer.sent_form()
            self._sent = chunks[: max(1, len(events) // 2)] if truncate else chunks
            self._write_events(events, truncate)
            return 200
        self._write_body(answer.status, answer.headers, answer.raw, truncate)
        if not truncate:
            self._sent = answer.sent_form()
        return answer.status

    def _write_body(self, status: int, headers: Mapping[str, str], payload: bytes, truncate: bool) -> None:
        """Send a whole body, or (``truncate``) announce it whole, send its first half and drop the connection."""
        sent = payload[: len(payload) // 2] if truncate else payload
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(sent)
        if truncate:
            self._sent = sent.decode("utf-8", "replace")
            self.wfile.flush()
            self._drop()

    def _stream(self, chunks: list[dict[str, Any]], truncate: bool) -> None:
        events = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]
        self._sent = chunks[: min(len(events) if not truncate else max(1, len(events) // 2), len(chunks))]
        self._write_events(events, truncate)

    def _write_events(self, events: list[bytes], truncate: bool) -> None:
        """Send server-sent events in chunked encoding; with ``truncate``, drop the connection halfway."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if truncate:
            events = events[: max(1, len(events) // 2)]
        for event in events:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        if truncate:
            self.wfile.flush()
            self._drop()
            return
        self.wfile.write(b"0\r\n\r\n")

    def _drop(self, reset: bool = False) -> None:
        """Close the connection without a (complete) response; with ``reset``, send a TCP RST."""
        if reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR) if not reset else None
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], simulator: "Simulator"):
        self.simulator = simulator
        self.stopping = threading.Event()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up (or a reset acted out on purpose) is normal here; anything else is reported."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class Simulator(LoopbackService):
    """Serve the simulated model on 127.0.0.1 (an ephemeral port by default); use as a context manager."""

    thread_name = "coordlab-simulator"
    poll_interval = 0.05

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        if not ipaddress.ip_address(host).is_loopback:
            raise SimulatorError(f"the simulator binds to loopback only, not {host!r}")
        super().__init__(host, port)
        self._episodes: dict[str, EpisodeState] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def _bind(self) -> "_Server":
        try:
            return _Server((self.host, self.port), self)
        except OSError as exc:
            raise SimulatorError(f"cannot bind {self.host}:{self.port}: {exc.strerror or exc}") from None

    def _stopping(self, server: ThreadingHTTPServer) -> None:
        """Stalled requests are cut short."""
        assert isinstance(server, _Server)
        server.stopping.set()

    # -- episodes ----------------------------------------------------------------------------
    def base_url(self, episode_id: str, role: str) -> str:
        """The OpenAI ``base_url`` a client for ``role`` in episode ``episode_id`` must use."""
        return f"{self.url}/episodes/{episode_id}/roles/{role}/v1"

    def endpoint_url(self, episode_id: str) -> str:
        """One ``base_url`` for every role of an episode, as a real endpoint has: the step is read from the request
        alone (its marker), so a worker's request is answered whichever role sent it; nothing is routed here.
        What the fault proxy's tests put behind it, standing in for a real model."""
        return f"{self.url}/episodes/{episode_id}/v1"

    def open_episode(self, task: Task, plan: FaultPlan, episode_id: str | None = None,
                     world: World | None = None, upstream: Upstream | None = None) -> EpisodeState:
        """Start serving a new episode of ``task`` under ``plan``'s fault schedule.

        ``world`` is the episode's world, where faults of the outside system (a tool's
        response lost after its change) are acted out; without it they are not. With
        ``upstream`` the episode is answered by that real endpoint, through the fault proxy
        (:class:`~coordlab.runners.simulator.proxy.ProxyEpisode`), instead of the oracle.
        """
        if upstream is None:
            return self.serve(EpisodeState(task, plan, episode_id, world))
        return self.serve(ProxyEpisode(task, plan, upstream, httpx.Client(), episode_id, world))

    def serve(self, episode: EpisodeState) -> EpisodeState:
        """Start serving an episode built elsewhere (a subclass that adds to how requests are answered)."""
        self._episodes[episode.id] = episode
        return episode

    def open_episode_from_spec(self, spec: Mapping[str, Any]) -> EpisodeState:
        """Open an episode from a JSON spec: ``{task, params?, profile?, seed?, force?}`` (``POST /episodes``)."""
        if not isinstance(spec, Mapping) or not isinstance(spec.get("task"), str):
            raise ValueError("POST /episodes needs a JSON object with 'task' (a suite name or a task file path)")
        params = spec.get("params") or {}
        name = spec["task"]
        task = load_task(name, params) if name.endswith((".yaml", ".yml")) else load_suite_task(name, params)
        plan = FaultPlan(load_profile(str(spec.get("profile", "none"))), int(spec.get("seed", 0)),
                         forced_faults(spec.get("force") or []))
        return self.open_episode(task, plan)

    def find_episode(self, episode_id: str) -> EpisodeState | None:
        """The live episode ``episode_id``, if this simulator serves it."""
        return self._episodes.get(episode_id)

    def close_episode(self, episode_id: str) -> EpisodeState:
        """Stop serving an episode and hand back its state, once every exchange of it is recorded in full.

        The wait is bounded (:data:`CLOSE_WAIT_S`): a request the server is still stalling on
        purpose is left to end on its own, and its record keeps what was known when it arrived.
        """
        state = self._episodes.pop(episode_id)
        state.wait_idle(CLOSE_WAIT_S)
        state.close()
        return state
