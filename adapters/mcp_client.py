"""The plain reference's MCP client: the official ``mcp`` SDK's streamable-HTTP client behind a blocking call.

The plain adapter is synchronous (the ``openai`` client), the SDK's client is async, so one
background event loop per episode (an anyio blocking portal) holds each role's session
open for the whole episode: the handshake is paid once per role, as any long-lived
client would, not once per tool call. The sessions share one HTTP client (the SDK's own
``create_mcp_http_client``): making one costs about 15 ms, mostly its TLS context.
"""

from __future__ import annotations

import json
from concurrent.futures import Future
from typing import Any

import anyio
import httpx
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


class McpSessions:
    """One MCP client session per role URL, opened on first use and closed with :meth:`close`.

    Each session lives in its own task on the background loop (the SDK's transport is a
    task group, which must be left by the task that entered it); closing sets its event.
    """

    def __init__(self) -> None:
        self._portal_context: Any = start_blocking_portal()
        self._portal: BlockingPortal = self._portal_context.__enter__()
        self._sessions: dict[str, tuple[ClientSession, anyio.Event, Future[None]]] = {}
        self._tools: dict[str, list[dict[str, Any]]] = {}
        self._http = create_mcp_http_client()

    def _session(self, url: str) -> ClientSession:
        if url not in self._sessions:
            finished, (session, release) = self._portal.start_task(self._hold, url, self._http)
            self._sessions[url] = (session, release, finished)
        return self._sessions[url][0]

    @staticmethod
    async def _hold(url: str, http: httpx.AsyncClient, *,
                    task_status: TaskStatus[tuple[ClientSession, anyio.Event]]) -> None:
        async with streamable_http_client(url, http_client=http) as (read, write, _), \
                ClientSession(read, write) as session:
            await session.initialize()
            release = anyio.Event()
            task_status.started((session, release))
            await release.wait()

    def openai_tools(self, url: str) -> list[dict[str, Any]]:
        """The server's tools at ``url`` as an OpenAI ``tools`` list (its input schemas as they are), listed once."""
        if url not in self._tools:
            listed: types.ListToolsResult = self._portal.call(self._session(url).list_tools)
            self._tools[url] = [{"type": "function", "function": {
                "name": tool.name, "description": tool.description or "", "parameters": tool.inputSchema}}
                for tool in listed.tools]
        return self._tools[url]

    def call(self, url: str, name: str, raw_arguments: str) -> str:
        """Call a tool with the model's JSON arguments; the text the model reads back (errors included)."""
        try:
            arguments = json.loads(raw_arguments or "{}")
        except ValueError as exc:
            return f"Error: the arguments are not valid JSON ({exc})."
        result: types.CallToolResult = self._portal.call(self._session(url).call_tool, name, arguments)
        return "".join(part.text for part in result.content if isinstance(part, types.TextContent))

    def close(self) -> None:
        """Close every session and stop the background loop; safe to call twice."""
        if self._portal_context is None:
            return
        try:
            for _, release, finished in self._sessions.values():
                self._portal.call(release.set)
                finished.result(timeout=10)
            self._portal.call(self._http.aclose)
        finally:
            self._sessions.clear()
            self._portal_context.__exit__(None, None, None)
            self._portal_context = None
