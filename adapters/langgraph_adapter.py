"""LangGraph, built the way its users build it: role agents on ``langchain-openai`` inside a ``StateGraph``.

One agent per role: a ``ChatOpenAI`` on the role's endpoint and a small compiled graph,
``model`` <-> ``ToolNode`` joined by ``tools_condition`` (the hand-built ReAct loop; the
current prebuilt, ``langchain.agents.create_agent``, is not installed and
``create_react_agent`` is deprecated). The role's tools are LangChain tools carrying the
task's JSON schema, their bodies the lab's :func:`execute_tool` on the episode's world. A
step's answer is LangChain structured output: ``with_structured_output(schema,
method="json_schema", tools=...)``, i.e. the response format and the tools in one request,
as ``create_agent``'s provider strategy does (it turns every tool ``strict``). Messages
live in graph state (``MessagesState``): agents share the team's history, so values reach
the next agent through the messages; the typed state also keeps each step's structured
answer, which is what the gates check. Model-calling nodes carry a ``RetryPolicy`` for
transport errors only; an ``InMemorySaver`` is compiled into the team graph (one thread
per episode); every graph gets an explicit ``recursion_limit``.

Durable episodes (``spec.durability``, the crash experiment) compile the team graph with
LangGraph's ``SqliteSaver`` on ``<folder>/checkpoints.sqlite`` and the episode's
``thread_id`` instead. Resuming in a fresh process, a thread with a checkpoint continues as
LangGraph resumes after a failure, ``invoke(None)`` on the same thread (with none, the run
starts over). The role agent graphs, compiled without a checkpointer and invoked inside a
node, inherit the team's under the node task's namespace: a resumed node runs its function
again, and its agent continues from the agent's own last checkpoint, so a tool call whose
``ToolNode`` superstep had not been saved runs again.

- linear: one node per step, straight edges; a step node appends the step's instruction
  (with its marker) to the messages and runs the role's agent on them.
- gated: a gate node before each gated step routes with ``Command``: on to the step, back
  to the gate's retry step with the rejection added to the messages, or to ``END`` once
  ``knobs.gate_retries`` rejections are spent.
- delegated: a supervisor node asks the routing model (``transfer_to_<role>`` tools
  bound to a ``ChatOpenAI`` on the ``router`` endpoint) and returns
  ``Command(goto=<role>)``; a role node runs the role's agent, briefed in its system prompt
  on all its steps (markers included), on the team's messages, and the agent decides which
  step it is doing. Nothing in lab code picks a step.

Human in the loop (``spec.approver``, linear and gated), LangGraph's documented way: a
``review.<step>`` node before each step with a gate (in gated right after its gate) calls
``interrupt({"step", "proposal"})`` (the proposal: the values the step reads), with
``response_schema=Review``. The run stops with ``__interrupt__``; the driver (what a
LangGraph app does) asks the approver and resumes the thread with ``Command(resume=...)``.
Approved, the node goes on to the step; rejected, it routes as a gate does, back to the
entry of the gate's retry step with the reviewer's reason in the messages (in gated the gate
checks the redone values again), and the human is asked again, at most
``knobs.gate_retries`` times, then ``END`` with ``GATE_EXHAUSTED``. The interrupt is saved in
the checkpoint before the driver asks: a late answer kills the process while it waits, and
the resumed run finds the pending interrupt in the SQLite checkpoint, asks again and
resumes with ``Command(resume=...)``. delegated does not ask (see ``_DELEGATED_REVIEW_NOTE``).

Tools over MCP (``knobs.tool_transport`` is MCP): each role agent gets its tools from the
lab's MCP server through ``langchain-mcp-adapters``, as LangChain's MCP page shows: a
``MultiServerMCPClient`` with one ``streamable_http`` connection per role (its URL), and
``load_mcp_tools`` on a session opened with ``client.session(role)`` and held for the
episode (the page's "stateful sessions"). The client's default, ``get_tools()``, opens a
fresh session for every tool call: initialize, its notification, a ``tools/list`` the SDK
sends to learn the tool's output schema, then the call, four HTTP exchanges where one does
(measured: 22 requests to 10 in a four-call episode, 90 to 180 ms more per episode). A user
who cares about latency holds the session, and the plain reference holds its sessions the
same way, so the transports compare like for like. Roles without tools connect to nothing.

The MCP tools are async only (a ``StructuredTool`` with only a coroutine, whose sync
``invoke`` raises), and LangGraph runs them in an async graph: over MCP the team graph runs
with ``ainvoke`` on an ``asyncio.run`` loop, the nodes that run a role agent are ``async``
and await the agent's ``ainvoke`` (so ``ToolNode`` awaits the tools), and every other node
(model calls, gates, reviews, the supervisor) is the same sync function, which LangGraph
runs in its executor. The sessions open on that loop, inside the run, so the handshakes and
``tools/list`` count toward the run time, not the build time. ``ToolNode`` with its default
error handling, the graphs, the checkpointer and the gates are the native path's.

A tool error comes back from the server as its text with ``isError``; the library
(``handle_tool_errors=True``, its default) hands it to the model as a ``ToolMessage`` with
``status="error"`` and the same text. The library gives every result as a list of content
blocks, which ``langchain-openai`` sends as content parts
(``[{"type": "text", "text": ...}]``) where a native tool's result is a string: the same
text in another shape. Durable episodes keep native tools, with a note: ``SqliteSaver`` has
no async methods (``AsyncSqliteSaver`` would change the checkpointer and the resume path the
crash experiment measures), and the durability runner serves no MCP tools.

What lab code still does: builds these objects from the task, runs tool bodies on the
world (native tools; the MCP server runs them otherwise), evaluates the gate predicate, and
turns LangChain callbacks into the lab's trace.
:class:`LangGraphEpisode` is the extension point: subclass it and override one method
(the chat model, the tools, the retry policy, a graph...), then set
``LangGraphAdapter.episode_class`` or register a subclass of :class:`LangGraphAdapter`.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any, Callable, Coroutine, Sequence, TypeVar
from uuid import UUID, uuid4

import openai
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.errors import GraphRecursionError
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.runtime import Runtime, get_runtime
from langgraph.types import Command, Interrupt, PregelTask, RetryPolicy, interrupt
from pydantic import BaseModel, ConfigDict, create_model

from coordlab.tasks.schema import Gate, Step

from .base import (
    AdapterOutcome, EpisodeSpec, FrameworkAdapter, Review, Termination, ToolTransport, Variant, VariantSupport,
)
from .registry import register
from .toolkit import check_gate, execute_tool, role_prompt, routing_messages, routing_tools, step_prompt

if TYPE_CHECKING:
    from mcp import ClientSession

_T = TypeVar("_T")

_CLIENT = ("role agents on langchain-openai ChatOpenAI (tools bound, json_schema structured output), "
           "ToolNode runs the tools, messages in graph state, RetryPolicy on model nodes, InMemorySaver")
_SUPPORT = {
    Variant.LINEAR: VariantSupport(True, "StateGraph: one node per step running the role's agent, straight edges",
                                   _CLIENT),
    Variant.GATED: VariantSupport(
        True, "StateGraph: gate node + Command (on / back to the retry step with the rejection message / END)",
        _CLIENT),
    Variant.DELEGATED: VariantSupport(
        True, "StateGraph: supervisor node (ChatOpenAI + transfer_to_<role> tools) routing with Command(goto=...)",
        _CLIENT),
}

CHECKPOINTS = "checkpoints.sqlite"
"""The SQLite checkpointer's file in a durable episode's folder."""

SUPERVISOR = "supervisor"
"""The supervisor's node name in ``delegated``; every other node there is named after its role."""

_DELEGATED_REVIEW_NOTE = (
    "delegated: the approver is not asked. A world-changing step runs inside a role agent's turn, on a step the "
    "agent chooses; LangGraph's place to ask there is an interrupt around the tool call, which reviews a tool call "
    "rather than a step (naming the step would be the adapter's guess) and has no gate whose retry step a rejection "
    "could send the work back to, so the world's changes here are made unreviewed")
_DURABLE_MCP_NOTE = (
    "tools native, not over MCP: a durable episode runs the sync graph on LangGraph's SqliteSaver, which has no "
    "async methods, and LangGraph's MCP tools are async only")
_SELF_RETRY_REVIEW_NOTE = ("{variant}: the reviewer rejected '{step}', whose gate names '{step}' itself as its retry "
                           "step; nothing before it can be redone without running it, so the reviewer is asked "
                           "again with the same values")

TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError, openai.InternalServerError)
"""What a model node's ``RetryPolicy`` retries: the transport, never a 4xx or a bad answer.

langchain-openai re-raises the SDK's errors as subclasses of these (``OpenAIRateLimitError``...).
"""


def _merged(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """State reducer: an update adds or overrides keys instead of replacing the dict."""
    return {**left, **right}


class TeamState(MessagesState, total=False):
    """The team graph's state: the shared conversation plus what the agents' structured answers said."""

    values: Annotated[dict[str, Any], _merged]
    """Task inputs plus every field a structured answer has given (later answers override): what gates check."""
    outputs: Annotated[dict[str, dict[str, Any]], _merged]
    """Each step's structured answer, by step id."""
    rejections: Annotated[dict[str, int], _merged]
    """Rejections so far per gate (keyed by the guarded step)."""
    reviews: Annotated[dict[str, int], _merged]
    """The human reviewer's rejections so far per reviewed step (only with ``spec.approver``)."""
    turns: int
    """Routing decisions the supervisor has taken."""
    termination: str
    """Set by the node that ends the flow when the end is not a plain completion (a ``Termination`` value;
    checkpoints keep plain strings)."""


class AgentState(MessagesState, total=False):
    """A role agent's state: its messages and, once it answers, its structured response."""

    structured_response: dict[str, Any]


@dataclass(frozen=True)
class AgentBrief:
    """A role agent's runtime context for one invocation (LangGraph ``context_schema``)."""

    response_format: type[BaseModel]
    """The pydantic schema of the answer (one step's fields, or every field of the role's steps)."""
    step: str | None = None
    """The step the team graph asked for; None when the agent chooses (delegated)."""


@register("langgraph")
class LangGraphAdapter(FrameworkAdapter):
    """LangGraph ``StateGraph`` of ``langchain-openai`` role agents."""

    name = "langgraph"

    distribution = "langgraph"
    variant_support = _SUPPORT  # every variant maps onto a primitive: edge, Command from a gate, supervisor Command

    episode_class: type["LangGraphEpisode"]
    """The episode built for each run; replace it (or subclass the adapter) to change one behaviour."""

    tool_transports = frozenset(ToolTransport)
    """Native: ``StructuredTool``s on the lab's tool bodies. MCP: ``langchain-mcp-adapters`` tools on one session
    per role held for the episode, the graph run with ``ainvoke`` (durable episodes stay native)."""

    resume_path = ("SqliteSaver checkpointer (langgraph-checkpoint-sqlite), same thread_id; "
                   "invoke(None) continues from the last checkpoint")

    def run(self, spec: EpisodeSpec) -> AdapterOutcome:
        """Build the episode's graph, run it to the end (or on from its checkpoint), map how it ended."""
        started = time.perf_counter()
        episode = self.episode_class(spec)
        try:
            built = time.perf_counter()
            termination, error = episode.run()
            return AdapterOutcome(termination, episode.final_output(), error, episode.notes,
                                  (built - started) * 1000, (time.perf_counter() - built) * 1000,
                                  episode.resumed_from)
        finally:
            episode.close()


class LangGraphEpisode:
    """One episode: the role agents, the team graph for the variant, and how its run ended.

    Each ``build``/``make`` method is a seam a subclass may override on its own; ``run``
    never needs copying.
    """

    def __init__(self, spec: EpisodeSpec):
        self.spec, self.task, self.knobs, self.trace = spec, spec.task, spec.knobs, spec.trace
        self.notes: list[str] = []
        self.durability = spec.durability
        self.thread_id = uuid4().hex if self.durability is None else self.durability.thread_id
        self.resumed_from: str | None = None
        """What ``run`` continued from (see :meth:`resume_point`); None for a run from the start."""
        self._connection: sqlite3.Connection | None = None
        self.over_mcp = self.knobs.tool_transport is ToolTransport.MCP and self.durability is None
        """Whether the agents reach their tools over MCP (then the graph runs async; see the module docstring)."""
        if self.knobs.tool_transport is ToolTransport.MCP and not self.over_mcp:
            self.notes.append(_DURABLE_MCP_NOTE)
        self.callbacks = TraceCallbacks(self)
        self.chat_models = {role: self.make_chat_model(role) for role in self.roles()}
        self.tools: dict[str, list[BaseTool]] = {}
        """Each role's tools; over MCP they are loaded when the run opens its sessions."""
        self.agents: dict[str, CompiledStateGraph] = {}
        if not self.over_mcp:
            self.build_agents({role: self.make_tools(role) for role in self.task.roles})
        builders: dict[Variant, Callable[[], tuple[StateGraph, int]]] = {
            Variant.LINEAR: self.build_linear, Variant.GATED: self.build_gated, Variant.DELEGATED: self.build_delegated}
        graph, self.recursion_limit = builders[spec.variant]()
        self.graph: CompiledStateGraph = graph.compile(checkpointer=self.make_checkpointer())

    # -- the framework's objects ---------------------------------------------------------------
    def roles(self) -> list[str]:
        """Every role that gets a chat model (the router too in ``delegated``)."""
        router = [self.spec.router_role] if self.spec.variant is Variant.DELEGATED else []
        return [*self.task.roles, *router]

    def make_chat_model(self, role: str) -> ChatOpenAI:
        """``ChatOpenAI`` on the role's endpoint; retries and timeout stay the client's unless a knob sets them."""
        options = self.knobs.client_options()
        return ChatOpenAI(model=self.spec.endpoint.model, base_url=self.spec.endpoint.base_url(role),
                          api_key=self.spec.endpoint.api_key, temperature=self.knobs.temperature, **options)

    def make_tools(self, role: str) -> list[BaseTool]:
        """The role's tools as LangChain tools: the task's JSON schema, the lab's tool body on the world."""
        return [self._tool(role, name) for name in self.task.roles[role].tools]

    async def open_mcp_tools(self, sessions: AsyncExitStack) -> dict[str, list[BaseTool]]:
        """Each role's tools from its MCP URL through ``langchain-mcp-adapters``, on a session held by ``sessions``.

        One ``MultiServerMCPClient`` connection per role, named after it; a role without tools
        connects to nothing (the server would list none).
        """
        from langchain_mcp_adapters.client import MultiServerMCPClient  # the MCP SDK only when tools go over it

        roles = [role for role in self.task.roles if self.task.roles[role].tools]
        client = MultiServerMCPClient({role: {"transport": "streamable_http", "url": self.spec.endpoint.tool_url(role)}
                                       for role in roles})
        tools: dict[str, list[BaseTool]] = {role: [] for role in self.task.roles}
        for role in roles:
            tools[role] = await self.load_mcp_tools(role, await sessions.enter_async_context(client.session(role)))
        return tools

    async def load_mcp_tools(self, role: str, session: ClientSession) -> list[BaseTool]:
        """``role``'s tools as ``langchain-mcp-adapters`` converts them (the library's defaults: isError results go
        to the model as error ``ToolMessage``s, names unprefixed), each call on ``session``."""
        from langchain_mcp_adapters.tools import load_mcp_tools

        return await load_mcp_tools(session, server_name=role)

    def build_agents(self, tools: dict[str, list[BaseTool]]) -> None:
        """Give each role its tools and build its agent (over MCP, once the run has loaded them)."""
        self.tools = tools
        self.agents = {role: self.build_agent(role) for role in self.task.roles}

    def _tool(self, role: str, name: str) -> BaseTool:
        tool = self.task.tools[name]
        world, trace = self.spec.world, self.trace

        def body(**arguments: Any) -> str:
            step = get_runtime(AgentBrief).context.step
            return execute_tool(world, trace, role, step, name, arguments)
        return StructuredTool.from_function(body, name=name, description=tool.description,
                                            args_schema=tool.json_schema())

    def make_tool_node(self, role: str) -> ToolNode:
        """``ToolNode`` with its default ``handle_tool_errors``.

        The default sends argument-validation errors (``ToolInvocationError``) back to the
        model and raises anything else. The tool bodies already answer every domain error
        (unknown id, missing or mistyped argument) as text the model reads, so an exception
        reaching ``ToolNode`` is a defect and should fail loudly, as a production user would
        want. With the task's JSON schema as ``args_schema`` (a dict, not a pydantic model)
        LangChain validates nothing itself, so ``ToolInvocationError`` does not arise here; a
        call of a tool the agent lacks gets ToolNode's own error message back.
        """
        return ToolNode(self.tools[role])

    def retry_policy(self) -> RetryPolicy:
        """Node retries for a model call the client gave up on: LangGraph's defaults, transport errors only."""
        return RetryPolicy(retry_on=TRANSPORT_ERRORS)

    def make_checkpointer(self) -> BaseCheckpointSaver:
        """Where the team graph checkpoints every superstep (also how a run cut short keeps its last state).

        In memory, unless the episode is durable: then LangGraph's SQLite checkpointer on a file
        in the episode's durability folder, which a fresh process reads back (:meth:`close`
        closes its connection).
        """
        if self.durability is None:
            return InMemorySaver()
        self.durability.folder.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.durability.folder / CHECKPOINTS, check_same_thread=False)
        return SqliteSaver(self._connection)

    def close(self) -> None:
        """Release the checkpointer's connection (nothing to do in memory)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def response_format(self, step: Step) -> type[BaseModel]:
        """The pydantic schema of ``step``'s answer: exactly its output fields, all required."""
        fields: dict[str, Any] = {name: (Any, ...) for name in step.output_names}
        return create_model(f"{step.id}_answer", __config__=ConfigDict(extra="forbid"), **fields)

    def role_response_format(self, role: str) -> type[BaseModel]:
        """The schema of a role agent that chooses its own step: every field of its steps, each optional."""
        names = dict.fromkeys(name for step in self.task.steps_of(role) for name in step.output_names)
        fields: dict[str, Any] = {name: (Any, None) for name in names}
        return create_model(f"{role}_answer", __config__=ConfigDict(extra="forbid"), **fields)

    def system_prompt(self, role: str) -> str:
        """The role agent's system prompt; in ``delegated`` it also lists the role's steps with their markers."""
        prompt = role_prompt(self.task.roles[role])
        if self.spec.variant is not Variant.DELEGATED:
            return prompt
        steps = "\n".join(f"- {s.instruction} {s.marker} (fields: {', '.join(s.output_names)})"
                          for s in self.task.steps_of(role))
        return f"{prompt}\nYour part of the task, in order:\n{steps}"

    def build_agent(self, role: str) -> CompiledStateGraph:
        """The role's agent: ``model`` <-> ``ToolNode`` by ``tools_condition`` (only ``model`` for a tool-less role)."""
        graph = StateGraph(AgentState, context_schema=AgentBrief)
        graph.add_node("model", self._model_node(role), retry_policy=self.retry_policy())
        graph.add_edge(START, "model")
        if self.tools[role]:
            graph.add_node("tools", self.make_tool_node(role))
            graph.add_conditional_edges("model", tools_condition, {"tools": "tools", END: END})
            graph.add_edge("tools", "model")
        else:
            graph.add_edge("model", END)
        return graph.compile(name=role)

    def _model_node(self, role: str) -> Callable[[AgentState, Runtime[AgentBrief]], dict[str, Any]]:
        chat, tools, system = self.chat_models[role], self.tools[role], SystemMessage(self.system_prompt(role))

        def model(state: AgentState, runtime: Runtime[AgentBrief]) -> dict[str, Any]:
            """One model turn: tool calls to run, or the structured answer (a missing one raises)."""
            brief = runtime.context
            self._note_node_retry(runtime, role, brief.step)
            structured = chat.with_structured_output(brief.response_format, method="json_schema", strict=True,
                                                     include_raw=True, tools=tools or None)
            result = structured.invoke([system, *state["messages"]])
            reply: AIMessage = result["raw"]
            reply.name = role
            if reply.tool_calls:
                return {"messages": [reply]}
            if result["parsed"] is None:
                # without include_raw (needed for tools=) with_structured_output raises this itself
                raise result["parsing_error"] or ValueError("the model's answer holds no structured output")
            return {"messages": [reply], "structured_response": result["parsed"].model_dump()}
        return model

    def _note_node_retry(self, runtime: Runtime[Any], role: str, step: str | None) -> None:
        """Record a ``RetryPolicy`` re-run: node retries show in no stream mode, only in the node's execution info."""
        info = runtime.execution_info
        if info is not None and info.node_attempt > 1:
            self.trace.retry(step, "framework", f"RetryPolicy re-ran the model node (attempt {info.node_attempt})",
                             role)

    def run_agent(self, role: str, messages: Sequence[AnyMessage], brief: AgentBrief) -> tuple[list[AnyMessage],
                                                                                                   dict[str, Any]]:
        """Invoke the role's agent on ``messages``: the messages it added and its structured answer."""
        result = self.agents[role].invoke({"messages": list(messages)}, self._agent_config(role, brief), context=brief)
        return result["messages"][len(messages):], result.get("structured_response", {})

    async def arun_agent(self, role: str, messages: Sequence[AnyMessage],
                         brief: AgentBrief) -> tuple[list[AnyMessage], dict[str, Any]]:
        """:meth:`run_agent` awaiting the agent's ``ainvoke``: how a node runs it when its tools are async (MCP)."""
        result = await self.agents[role].ainvoke({"messages": list(messages)}, self._agent_config(role, brief),
                                                 context=brief)
        return result["messages"][len(messages):], result.get("structured_response", {})

    def _agent_config(self, role: str, brief: AgentBrief) -> RunnableConfig:
        return {"recursion_limit": _limit(2 * self.knobs.max_iterations - 1),
                "metadata": {"coordlab_role": role, "coordlab_step": brief.step}}

    # -- running ----------------------------------------------------------------------------------
    def config(self) -> RunnableConfig:
        """The team graph's run config: thread, recursion limit, trace callbacks."""
        return {"configurable": {"thread_id": self.thread_id}, "recursion_limit": self.recursion_limit,
                "callbacks": [self.callbacks]}

    def initial_state(self) -> TeamState:
        """What the team graph starts from (in ``delegated`` the request that opens the conversation)."""
        state: TeamState = {"messages": [], "values": dict(self.task.inputs), "outputs": {}, "rejections": {},
                            "turns": 0}
        if self.spec.variant is Variant.DELEGATED:
            state["messages"] = [HumanMessage(f"Task: {self.task.description}\n"
                                              f"Inputs: {json.dumps(dict(self.task.inputs))}")]
        return state

    def resume_point(self) -> str | None:
        """The thread's last checkpoint, in words, or None when the thread has none (the run starts over).

        Read through LangGraph's state API: the checkpoint's superstep, the nodes that ran in
        it (its parent checkpoint's ``next``) and the tasks due next.
        """
        snapshot = self.graph.get_state(self.config())
        if snapshot.metadata is None:
            return None
        step = snapshot.metadata.get("step")
        ran = self.graph.get_state(snapshot.parent_config).next if snapshot.parent_config is not None else ()
        if not ran or ran == (START,):
            after = "the input"
        else:
            after = "node " + ", ".join(f"'{node}'" for node in ran)
        due = ", ".join(map(self._resumed_task, snapshot.tasks)) or "nothing, the run had ended"
        return f"checkpoint {step} after {after} (next: {due})"

    def _resumed_task(self, task: PregelTask) -> str:
        """A task due next, and where its role agent picks up when it had checkpointed inside the task.

        The agent graph, invoked inside the node, inherits the team graph's checkpointer under
        the task's namespace (``<node>:<task id>``); the resumed task keeps its id, so the agent
        continues from its own last checkpoint there (one past its input checkpoint, step -1).
        """
        if task.interrupts:
            asked = ", ".join(f"'{i.value['step']}'" for i in task.interrupts if isinstance(i.value, dict))
            return f"{task.name}, interrupted waiting for the reviewer's answer on step {asked}"
        config: RunnableConfig = {"configurable": {"thread_id": self.thread_id,
                                                   "checkpoint_ns": f"{task.name}:{task.id}"}}
        saver = self.graph.checkpointer
        saved = saver.get_tuple(config) if isinstance(saver, BaseCheckpointSaver) else None
        if saved is None or saved.metadata.get("step", -1) < 0:
            return task.name
        return f"{task.name}, whose agent resumes from its own checkpoint {saved.metadata['step']}"

    def run(self) -> tuple[Termination, str | None]:
        """Invoke the team graph to its end; how it ended, and the error when it failed.

        Resuming a durable episode, a thread with a checkpoint continues from it as LangGraph
        resumes after a failure: ``invoke(None)`` with the same ``thread_id``; when the thread
        stopped at an interrupt (waiting for the human), the human is asked again and the
        thread resumed with ``Command(resume=...)``. Every run that stops at an interrupt is
        answered the same way until the graph ends. Over MCP the run is :meth:`arun` on its own loop.
        """
        if self.over_mcp:
            return _run_to_completion(self.arun())
        pending: Sequence[Interrupt] = ()
        if self.durability is not None and self.durability.resume:
            self.resumed_from = self.resume_point()
            if self.resumed_from is not None:
                pending = self.graph.get_state(self.config()).interrupts
        start: Any = None if self.resumed_from is not None else self.initial_state()
        try:
            final = self.graph.invoke(Command(resume=self.answer(pending)) if pending else start, self.config())
            while pending := final.get("__interrupt__", ()):
                final = self.graph.invoke(Command(resume=self.answer(pending)), self.config())
            return Termination(final.get("termination", Termination.COMPLETED)), None
        except (GraphRecursionError, openai.OpenAIError, ValueError) as exc:
            return _failure(exc)

    async def arun(self) -> tuple[Termination, str | None]:
        """:meth:`run` over MCP: open each role's MCP session and load its tools, build the agents on them, and
        ``ainvoke`` the team graph to its end (interrupts answered as :meth:`run` does); the sessions close after.

        A failure is mapped inside the sessions' block, before they unwind. Anything else (the
        MCP connection failing, a defect) leaves through the sessions' task groups, which wrap
        it in an ``ExceptionGroup`` ("unhandled errors in a TaskGroup"); it is raised as itself.
        """
        try:
            async with AsyncExitStack() as sessions:
                self.build_agents(await self.open_mcp_tools(sessions))
                try:
                    final = await self.graph.ainvoke(self.initial_state(), self.config())
                    while pending := final.get("__interrupt__", ()):
                        final = await self.graph.ainvoke(Command(resume=self.answer(pending)), self.config())
                    return Termination(final.get("termination", Termination.COMPLETED)), None
                except (GraphRecursionError, openai.OpenAIError, ValueError) as exc:
                    return _failure(exc)
        except BaseExceptionGroup as group:
            raise _innermost(group) from group

    def answer(self, pending: Sequence[Interrupt]) -> dict[str, dict[str, Any]]:
        """Ask the human about every pending interrupt (blocking); the resume values by interrupt id.

        A late answer never returns: the lab's reviewer kills this process while it waits,
        the interrupt already saved in the thread's checkpoint.
        """
        if self.spec.approver is None:
            raise RuntimeError(f"the graph stopped at an interrupt with no approver to ask: {pending}")
        answers: dict[str, dict[str, Any]] = {}
        for request in pending:
            review = self.spec.approver.review(request.value["step"], request.value["proposal"])
            answers[request.id] = asdict(review)
        return answers

    def state(self) -> dict[str, Any]:
        """The team graph's last checkpointed state (after a failure: the last superstep that completed)."""
        return dict(self.graph.get_state({"configurable": {"thread_id": self.thread_id}}).values)

    def final_output(self) -> dict[str, Any]:
        """The last step's fields as the agents' structured answers gave them."""
        values = self.state().get("values", {})
        return {name: values[name] for name in self.task.steps[-1].output_names if name in values}

    # -- linear -----------------------------------------------------------------------------------
    def step_node(self, step: Step) -> Callable[[TeamState], Any]:
        """A node running ``step``: its instruction joins the messages and the role's agent answers it
        (an ``async`` node awaiting the agent over MCP)."""
        def update(brief: HumanMessage, added: list[AnyMessage], answer: dict[str, Any]) -> dict[str, Any]:
            return {"messages": [brief, *added], "values": answer, "outputs": {step.id: answer}}

        def node(state: TeamState) -> dict[str, Any]:
            brief = HumanMessage(step_prompt(self.task, step))
            return update(brief, *self.run_agent(step.role, [*state["messages"], brief],
                                                 AgentBrief(self.response_format(step), step.id)))

        async def async_node(state: TeamState) -> dict[str, Any]:
            brief = HumanMessage(step_prompt(self.task, step))
            return update(brief, *await self.arun_agent(step.role, [*state["messages"], brief],
                                                        AgentBrief(self.response_format(step), step.id)))
        return async_node if self.over_mcp else node

    def build_linear(self) -> tuple[StateGraph, int]:
        """``START -> step1 -> ... -> stepN -> END``; N node supersteps (with an approver, ``review.<step>`` in
        front of every step that has a gate)."""
        return self.build_pipeline(gated=False)

    # -- gated ------------------------------------------------------------------------------------
    def build_gated(self) -> tuple[StateGraph, int]:
        """The linear chain with ``gate.<step>`` in front of every gated step (and ``review.<step>`` after it
        with an approver).

        A rejection goes back to the *entry* of the retry step (its own gate when it is gated
        itself), so no path reaches a mutating step without passing its gate; when the retry
        step is the guarded step, the gate routes to itself and re-checks unchanged values.
        """
        return self.build_pipeline(gated=True)

    def build_pipeline(self, gated: bool) -> tuple[StateGraph, int]:
        """The steps in order; before each step with a gate its ``gate.<step>`` node (``gated``) and its
        ``review.<step>`` node (with an approver), each routing with ``Command``; the recursion limit."""
        graph = StateGraph(TeamState)
        order: list[str] = []  # nodes in flow order
        entry: dict[str, str] = {}  # step id -> the first node of that step
        routers: dict[str, tuple[Callable[..., Callable[[TeamState], Command]], Step, Gate]] = {}
        for step in self.task.steps:
            first = len(order)
            gate = self.task.gate_before(step.id)
            if gate is not None and gated:
                routers[f"gate.{step.id}"] = (self.gate_node, step, gate)
                order.append(f"gate.{step.id}")
            if gate is not None and self.spec.approver is not None:
                routers[f"review.{step.id}"] = (self.review_node, step, gate)
                order.append(f"review.{step.id}")
            order.append(f"step.{step.id}")
            entry[step.id] = order[first]
        graph.add_edge(START, order[0])
        supersteps = len(order)
        for index, node in enumerate(order):
            following = order[index + 1] if index + 1 < len(order) else END
            if node in routers:
                make, step, gate = routers[node]
                back = entry[gate.retry]
                graph.add_node(node, make(step, gate, following, back),
                               destinations=tuple(dict.fromkeys((following, back, END))))
                # each rejection costs this visit plus the nodes from the retry entry up to here
                supersteps += self.knobs.gate_retries * (1 + index - order.index(back))
            else:
                graph.add_node(node, self.step_node(self.task.step(node.removeprefix("step."))))
                graph.add_edge(node, following)
        return graph, _limit(supersteps)

    def gate_node(self, guarded: Step, gate: Gate, passed: str, back: str) -> Callable[[TeamState], Command]:
        """A node applying the task's gate on the values in state, routing with ``Command``."""
        retry_role = self.task.step(gate.retry).role

        def node(state: TeamState) -> Command:
            verdict = check_gate(self.task, self.spec.world, self.trace, guarded.id, state.get("values", {}))
            if verdict.passed:
                return Command(goto=passed)
            rejected = state.get("rejections", {}).get(guarded.id, 0)
            if rejected >= self.knobs.gate_retries:
                return Command(goto=END, update={"termination": Termination.GATE_EXHAUSTED.value})
            self.trace.retry(gate.retry, "framework", "gate rejected", retry_role)
            return Command(goto=back, update={"messages": [HumanMessage(verdict.message, name="gate")],
                                              "rejections": {guarded.id: rejected + 1}})
        return node

    def review_node(self, guarded: Step, gate: Gate, approved: str, back: str) -> Callable[[TeamState], Command]:
        """A node asking the human with LangGraph's ``interrupt`` before ``guarded``, routing with ``Command``.

        The run stops at the ``interrupt`` until it is resumed with the answer (a
        :class:`Review`); the node then runs again from its start and ``interrupt`` returns it.
        Approved: on to the step. Rejected: back to the entry of the gate's retry step with
        the reason, as the gate's rejection goes (the human is asked again on the way), or to
        ``END`` once ``knobs.gate_retries`` rejections are spent.
        """
        retry_role = self.task.step(gate.retry).role

        def node(state: TeamState) -> Command:
            values = state.get("values", {})
            proposal = {name: values.get(name) for name in guarded.reads}
            review: Review = interrupt({"step": guarded.id, "proposal": proposal}, response_schema=Review)
            self.trace.gate(guarded.id, review.approved, review.reason)
            if review.approved:
                return Command(goto=approved)
            rejected = state.get("reviews", {}).get(guarded.id, 0)
            if rejected >= self.knobs.gate_retries:
                return Command(goto=END, update={"termination": Termination.GATE_EXHAUSTED.value})
            self.trace.retry(gate.retry, "framework", "rejected by the reviewer", retry_role)
            if gate.retry == guarded.id:
                note = _SELF_RETRY_REVIEW_NOTE.format(variant=self.spec.variant.value, step=guarded.id)
                if note not in self.notes:
                    self.notes.append(note)
            return Command(goto=back, update={"messages": [HumanMessage(review.reason, name="reviewer")],
                                              "reviews": {guarded.id: rejected + 1}})
        return node

    # -- delegated --------------------------------------------------------------------------------
    def build_delegated(self) -> tuple[StateGraph, int]:
        """``START -> supervisor``; the supervisor's ``Command`` picks a role node or END; role nodes return."""
        if self.spec.approver is not None:
            self.notes.append(_DELEGATED_REVIEW_NOTE)
        graph = StateGraph(TeamState)
        graph.add_node(SUPERVISOR, self.supervisor_node(), retry_policy=self.retry_policy(),
                       destinations=(*self.task.roles, END))
        for role in self.task.roles:
            graph.add_node(role, self.worker_node(role))
            graph.add_edge(role, SUPERVISOR)
        graph.add_edge(START, SUPERVISOR)
        # per turn one supervisor and one worker superstep, then the supervisor that stops
        return graph, _limit(2 * self.knobs.max_routing_turns + 1)

    def supervisor_node(self) -> Callable[[TeamState, Runtime[Any]], Command]:
        """The routing model reads the team's conversation and hands over with a ``transfer_to_<role>`` call."""
        router = self.spec.router_role
        model = self.chat_models[router].bind_tools(routing_tools(self.task))
        system = SystemMessage(routing_messages(self.task, {})[0]["content"])

        def supervisor(state: TeamState, runtime: Runtime[Any]) -> Command:
            turns = state.get("turns", 0)
            if turns >= self.knobs.max_routing_turns:
                return Command(goto=END, update={"termination": Termination.MAX_TURNS.value})
            self._note_node_retry(runtime, router, None)
            reply = model.invoke([system, *state["messages"]])
            reply.name = SUPERVISOR
            targets = [c for c in reply.tool_calls if c["name"].removeprefix("transfer_to_") in self.task.roles]
            if not targets:  # FINISH in text, or nothing this graph can route to
                values = state.get("values", {})
                done = all(name in values for step in self.task.steps for name in step.output_names)
                ending = Termination.COMPLETED if done else Termination.ROUTED_OUT
                return Command(goto=END, update={"messages": [reply], "termination": ending.value})
            target = targets[0]["name"].removeprefix("transfer_to_")
            answers = [ToolMessage(f"Transferred to {target}." if call is targets[0] else "Not transferred.",
                                   tool_call_id=call["id"], name=call["name"]) for call in reply.tool_calls]
            return Command(goto=target, update={"messages": [reply, *answers], "turns": turns + 1})
        return supervisor

    def worker_node(self, role: str) -> Callable[[TeamState], Any]:
        """A role node: the role's agent works on the team's conversation and answers for the step it chose
        (an ``async`` node awaiting the agent over MCP)."""
        def update(added: list[AnyMessage], answer: dict[str, Any]) -> dict[str, Any]:
            given = {name: value for name, value in answer.items() if value is not None}
            outputs = {s.id: {n: given[n] for n in s.output_names if n in given} for s in self.task.steps_of(role)}
            return {"messages": added, "values": given, "outputs": {s: o for s, o in outputs.items() if o}}

        def worker(state: TeamState) -> dict[str, Any]:
            return update(*self.run_agent(role, state["messages"], AgentBrief(self.role_response_format(role))))

        async def async_worker(state: TeamState) -> dict[str, Any]:
            return update(*await self.arun_agent(role, state["messages"], AgentBrief(self.role_response_format(role))))
        return async_worker if self.over_mcp else worker


LangGraphAdapter.episode_class = LangGraphEpisode


class TraceCallbacks(BaseCallbackHandler):
    """LangChain callbacks feeding the lab's trace: handoffs at node starts, step outputs at node ends, and tool
    calls ``ToolNode`` refused before any tool ran (an unknown tool, arguments failing validation).

    A tool that ran recorded its own call (a native body, or the MCP server), so an error
    ``ToolMessage`` from it (how ``langchain-mcp-adapters`` returns an ``isError`` result) is
    not recorded again: only calls no tool finished are ToolNode's refusals.
    """

    run_inline = True
    """Under ``ainvoke`` (tools over MCP) LangChain would otherwise run each event of this sync handler on an
    executor thread; inline, events are handled in order on the loop, as under ``invoke``."""

    def __init__(self, episode: LangGraphEpisode):
        self.episode = episode
        self.previous_role: str | None = None
        self._tool_runs: dict[UUID, tuple[str | None, str | None]] = {}
        self._step_runs: dict[UUID, str] = {}
        self._finished_calls: set[str] = set()
        """Ids of the tool calls a tool ran to its end (its result, error or not, is its own)."""

    def on_tool_end(self, output: Any, **kwargs: Any) -> None:
        """A tool finished a call: remember the call, whose result ``ToolNode`` then hands on."""
        if isinstance(output, ToolMessage):
            self._finished_calls.add(output.tool_call_id)

    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
                       metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """A graph node started: a step or role node of another role is a handoff."""
        metadata = metadata or {}
        node = metadata.get("langgraph_node")
        if node is None or kwargs.get("name") != node:  # only the node's own run, not the runnables inside it
            return
        task, trace = self.episode.task, self.episode.trace
        if node == "tools" and "coordlab_role" in metadata:
            self._tool_runs[run_id] = (metadata["coordlab_role"], metadata.get("coordlab_step"))
        elif node.startswith("step.") and "coordlab_role" not in metadata:
            step = task.step(node.removeprefix("step."))
            self._step_runs[run_id] = step.id
            if step.role != self.previous_role:
                trace.handoff(self.previous_role, step.role, "edge", step.id)
            self.previous_role = step.role
        elif node in task.roles and "coordlab_role" not in metadata:
            trace.handoff(self.episode.spec.router_role, node, "command goto")
            self._step_runs[run_id] = node

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """A node ended: record the structured answers it handed on, or the tool calls ToolNode refused."""
        trace, task = self.episode.trace, self.episode.task
        if run_id in self._step_runs:
            owner = self._step_runs.pop(run_id)
            role = owner if owner in task.roles else task.step(owner).role
            for step, answer in (outputs.get("outputs") or {}).items() if isinstance(outputs, dict) else ():
                trace.step_output(role, step, answer)
        elif run_id in self._tool_runs:
            role, step = self._tool_runs.pop(run_id)
            messages = outputs.get("messages", []) if isinstance(outputs, dict) else []
            for message in messages:
                if isinstance(message, ToolMessage) and message.status == "error" \
                        and message.tool_call_id not in self._finished_calls:
                    tool = task.tools.get(message.name or "")
                    trace.tool_call(role, step, message.name or "", bool(tool and tool.mutating), False,
                                    "unknown tool" if tool is None else str(message.content))

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """A node failed: forget its run."""
        self._step_runs.pop(run_id, None)
        self._tool_runs.pop(run_id, None)


def _failure(exc: Exception) -> tuple[Termination, str]:
    """How a run that raised ended: the ``recursion_limit`` backstop is MAX_TURNS; a transport error past all
    retries, or an answer that fails its schema, is ERROR."""
    if isinstance(exc, GraphRecursionError):
        return Termination.MAX_TURNS, f"GraphRecursionError: {exc}"
    return Termination.ERROR, f"{type(exc).__name__}: {exc}"


def _innermost(group: BaseExceptionGroup) -> BaseException:
    """The first exception a (nested) exception group holds: what actually went wrong."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup):
        inner = inner.exceptions[0]
    return inner


def _run_to_completion(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` on a fresh event loop; on a thread of its own when this one already runs a loop (a
    notebook), where ``asyncio.run`` refuses, so an MCP episode runs wherever a native one does."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1, thread_name_prefix="coordlab-langgraph-mcp") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _limit(supersteps: int) -> int:
    """The ``recursion_limit`` that lets exactly ``supersteps`` node supersteps run.

    Measured on langgraph 1.2.22: a run of S node supersteps needs ``recursion_limit >= S + 1``
    (the limit is checked on the tick after the last node, before the graph sees it is done).
    """
    return supersteps + 1
