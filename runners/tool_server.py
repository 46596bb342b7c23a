"""The suite's tools as an MCP server: the same tool bodies, on each episode's world, over streamable HTTP.

One server per worker process (:func:`shared_tool_server`), on 127.0.0.1, built on the
official ``mcp`` SDK's low-level server and its streamable-HTTP session manager. Like the
simulator, it tells episodes and roles apart by URL, so no framework needs lab code to say who is
calling: each framework's own MCP client is simply pointed at its role's URL. The episode
and role go in the query (``/mcp?episode=<id>&role=<role>``), leaving the path a server's
usual ``/mcp``: CrewAI names a server's tools after its host, port and path, and cuts the
name at 64 characters, so with the ids in the path no tool kept its own name.

What the model is offered and what a call does are the native path's, byte for byte:
``tools/list`` serves each tool's :meth:`~coordlab.tasks.tools.Tool.json_schema` (the
``parameters`` the native path sends), and ``tools/call`` runs
:func:`~coordlab.adapters.toolkit.run_tool`, which executes the tool on the world and
records the call in the episode's trace. Arguments are not validated against the schema
here, as the native path does not either: the tool body reports a bad argument in the
same words. A tool's error comes back as its text with ``isError`` set, as the protocol
asks; what a framework's client makes of that is the framework's own tool-error handling.

The step a call is recorded under is the step of the role's latest model request (the
request whose answer asked for the call), which the simulator knows for every framework.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import re
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable, Self
from urllib.parse import parse_qs, urlencode

import uvicorn
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from coordlab.adapters.toolkit import run_tool
from coordlab.adapters.trace import TraceRecorder
from coordlab.tasks.schema import Task
from coordlab.tasks.world import World

MCP_PATH = "/mcp"
_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
START_LIMIT_S = 30.0
"""How long starting the server's event loop may take before the lab gives up."""


class ToolServerError(RuntimeError):
    """The tool server cannot start, or was asked for an episode it does not serve."""


@dataclass(frozen=True)
class ToolEpisode:
    """What the server needs of one open episode."""

    task: Task
    world: World
    trace: TraceRecorder
    step_of: Callable[[str], str | None]
    """The step a role's tool call belongs to (its latest model request's), or None."""


class ToolServer:
    """An MCP server for every open episode's tools, served from a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host, self.port = host, port
        self._episodes: dict[str, ToolEpisode] = {}
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._mcp = self._mcp_server()

    # -- episodes ----------------------------------------------------------------------------
    def open(self, episode_id: str, episode: ToolEpisode) -> None:
        """Serve ``episode``'s tools from now on."""
        with self._lock:
            self._episodes[episode_id] = episode

    def close(self, episode_id: str) -> None:
        """Stop serving an episode (a late call then gets an HTTP 404)."""
        with self._lock:
            self._episodes.pop(episode_id, None)

    def url(self, episode_id: str, role: str) -> str:
        """The MCP endpoint a role's client connects to."""
        return f"http://{self.host}:{self.port}{MCP_PATH}?{urlencode({'episode': episode_id, 'role': role})}"

    def _find(self, path: str, query: str) -> tuple[ToolEpisode, str] | None:
        """The open episode and the role a request's URL names, or None."""
        fields = parse_qs(query)
        episode_id, role = fields.get("episode", [""])[0], fields.get("role", [""])[0]
        if path.rstrip("/") != MCP_PATH or not _ID.match(episode_id) or not _ID.match(role):
            return None
        with self._lock:
            episode = self._episodes.get(episode_id)
        return (episode, role) if episode is not None else None

    def _addressed(self) -> tuple[ToolEpisode, str]:
        """The episode and role of the MCP request being handled (read from its URL)."""
        request = self._mcp.request_context.request
        found = self._find(request.url.path, request.url.query) if request is not None else None
        if found is None:
            raise ToolServerError("the request names no open episode and role")
        return found

    # -- the MCP server ----------------------------------------------------------------------
    def _mcp_server(self) -> Server:
        server: Server = Server("coordlab-tools")

        @server.list_tools()
        async def list_tools() -> list[types.Tool]:
            episode, role = self._addressed()
            names = episode.task.roles[role].tools if role in episode.task.roles else ()
            return [types.Tool(name=name, description=episode.task.tools[name].description,
                               inputSchema=episode.task.tools[name].json_schema()) for name in names]

        @server.call_tool(validate_input=False)
        async def call_tool(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
            episode, role = self._addressed()
            outcome = run_tool(episode.world, episode.trace, role, episode.step_of(role), name, arguments)
            return types.CallToolResult(content=[types.TextContent(type="text", text=outcome.text)],
                                        isError=outcome.failed)

        return server

    def _asgi(self, manager: StreamableHTTPSessionManager) -> Callable[..., Any]:
        """The HTTP app: MCP on every episode-and-role path, 404 elsewhere, the session manager's lifespan."""

        async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
            if scope["type"] == "lifespan":
                async with manager.run():
                    while (message := await receive())["type"] != "lifespan.shutdown":
                        if message["type"] == "lifespan.startup":
                            await send({"type": "lifespan.startup.complete"})
                    await send({"type": "lifespan.shutdown.complete"})
                return
            query = scope.get("query_string", b"").decode("latin-1")
            if self._find(scope["path"], query) is None:
                body = f"no open episode and role at {scope['path']}?{query}".encode()
                await send({"type": "http.response.start", "status": 404,
                            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            await manager.handle_request(scope, receive, send)

        return app

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Self:
        """Bind (an ephemeral port for 0) and serve in a daemon thread; returns once it accepts connections."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without it, Nagle's algorithm held each answer until the
        # client's delayed ACK, 40 ms per tool call (measured: 44 ms per call, 1.5 ms with it).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ToolServerError(f"the MCP tool server cannot listen on {self.host}:{self.port}: {exc}") from None
        self.port = sock.getsockname()[1]
        # Stateless: every request stands alone, so episodes that end without their client
        # closing its session leave nothing behind; JSON answers, as nothing here streams.
        manager = StreamableHTTPSessionManager(self._mcp, stateless=True, json_response=True)
        config = uvicorn.Config(self._asgi(manager), log_level="error", lifespan="on", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve(sockets=[sock])),
                                        name="coordlab-mcp-tools", daemon=True)
        self._thread.start()
        for _ in range(int(START_LIMIT_S / 0.01)):
            if self._server.started:
                return self
            if not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        raise ToolServerError(f"the MCP tool server on {self.host}:{self.port} did not start")

    def stop(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_SHARED: ToolServer | None = None
_SHARED_LOCK = threading.Lock()


def shared_tool_server() -> ToolServer:
    """This process's tool server (one per worker), started on first use and stopped at exit."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = ToolServer().start()
            atexit.register(_SHARED.stop)
        return _SHARED


@contextlib.contextmanager
def served_tools(episode_id: str, episode: ToolEpisode, roles: list[str]) -> Any:
    """Serve an episode's tools on this process's server for the block; yields each role's MCP URL."""
    server = shared_tool_server()
    server.open(episode_id, episode)
    try:
        yield {role: server.url(episode_id, role) for role in roles}
    finally:
        server.close(episode_id)
