"""AutoGen AgentChat 0.7: steps as ``AssistantAgent``s in a ``GraphFlow`` or a ``SelectorGroupChat``.

Every agent talks to its role's base URL through AutoGen's production client,
``OpenAIChatCompletionClient`` (one client per agent per episode, all of them fresh), and
its tools are ``FunctionTool``s over the shared :func:`execute_tool`. The system message of
a step's agent holds the role prompt and that one step's text (task inputs only); every
upstream value reaches it through AutoGen's own group-chat broadcast, so a value an agent
failed to say is really missing for the next one.

- linear: ``GraphFlow`` with one ``AssistantAgent`` per step and sequential
  ``DiGraphBuilder`` edges.
- gated: the same graph with a model-free verifier agent in front of each gated step; its
  conditional edges lead on to the step, back to the *entry* of the gate's retry step (its
  own verifier when that step is gated too, so no path reaches a mutating step unchecked;
  a gate whose retry step is the guarded step loops onto itself and re-checks unchanged
  values, as the plain reference does), or nowhere once ``knobs.gate_retries`` rejections
  are spent, which ends the graph.
- delegated: ``SelectorGroupChat`` whose selector model client uses the router's URL. A
  selector can only name participants, and the routing model names roles, so each
  participant is a role agent that runs its role's next pending step with that step's
  ``AssistantAgent``; a ``FINISH`` participant lets the routing model end the flow (the
  selector has no other way to stop a group chat). The selector is asked before every
  turn, so every routing decision goes through the router's URL and a routing fault can
  meet any step. Swarm was not used: there whoever holds the turn hands it on by calling
  ``transfer_to_X``, so routing would be spread over the workers' own model calls (a
  worker that answers its step in text keeps the turn) rather than made by one router.

AutoGen has no agent-level retry: after the openai SDK gives up, ``run_stream`` raises
``RuntimeError`` and the episode ends in ``ERROR``. Its one built-in re-ask, the selector
asking again after a reply that names no single participant, is read from the
``autogen_core`` event log and recorded as a framework retry.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from contextlib import contextmanager
from typing import Annotated, Any, AsyncGenerator, Iterator, Mapping, Sequence

from autogen_agentchat.agents import AssistantAgent, BaseChatAgent
from autogen_agentchat.base import ChatAgent, Response, TaskResult, Team
from autogen_agentchat.conditions import SourceMatchTermination
from autogen_agentchat.messages import (
    BaseAgentEvent, BaseChatMessage, SelectSpeakerEvent, TextMessage, ToolCallExecutionEvent,
    ToolCallSummaryMessage,
)
from autogen_agentchat.teams import DiGraph, DiGraphBuilder, GraphFlow, SelectorGroupChat
from autogen_core import EVENT_LOGGER_NAME, CancellationToken
from autogen_core.logging import LLMCallEvent
from autogen_core.models import ModelInfo
from autogen_core.tools import FunctionTool
from autogen_ext.models.openai import OpenAIChatCompletionClient

from coordlab.tasks.schema import Gate, Step
from coordlab.tasks.tools import Tool

from .base import AdapterOutcome, EpisodeSpec, FrameworkAdapter, Termination, Variant, VariantSupport
from .registry import register
from .toolkit import check_gate, execute_tool, parse_output, role_prompt, step_prompt

_SUPPORT = {
    Variant.LINEAR: VariantSupport(True, "GraphFlow: one AssistantAgent per step, sequential DiGraphBuilder edges"),
    Variant.GATED: VariantSupport(
        True, "GraphFlow: a verifier agent before each gated step; conditional edges go on, back to the "
              "retry step's entry, or nowhere after the retry bound"),
    Variant.DELEGATED: VariantSupport(
        True, "SelectorGroupChat: the selector model (router URL) names the next role or FINISH",
        "participants are role agents that run their role's next pending step with that step's "
        "AssistantAgent; AutoGen's default selector prompt is used"),
}

_MODEL_INFO: ModelInfo = {"vision": False, "function_calling": True, "json_output": False, "family": "unknown",
               "structured_output": False}
"""What AutoGen must be told about a model name it does not know (no tokenizer lookup follows)."""

_PASS, _RETRY, _STOP = "PASS", "RETRY", "STOP"
"""How a verifier's message starts; the conditional edges after it read this word."""
_FINISH = "FINISH"
"""The participant the routing model names to end a delegated episode."""
_JSON_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool,
                               "object": dict[str, Any]}


@register("autogen")
class AutoGenAdapter(FrameworkAdapter):
    """AutoGen AgentChat (``GraphFlow`` / ``SelectorGroupChat``) on ``OpenAIChatCompletionClient``."""

    name = "autogen"

    distribution = "autogen-agentchat"
    variant_support = _SUPPORT  # GraphFlow edges, conditional edges, a selector

    def run(self, spec: EpisodeSpec) -> AdapterOutcome:
        """Build fresh clients, agents and team inside one event loop, stream the team, map how it ended."""
        started = time.perf_counter()
        episode = _Episode(spec)
        termination, error, built = asyncio.run(episode.run())
        return AdapterOutcome(termination, episode.final_output(), error, [],
                              (built - started) * 1000, (time.perf_counter() - built) * 1000)


def _gate_passed(message: BaseChatMessage) -> bool:
    """Condition of the edge from a verifier to its guarded step."""
    return message.to_model_text().startswith(_PASS)


def _gate_rejected(message: BaseChatMessage) -> bool:
    """Condition of the edge from a verifier back to the entry of its gate's retry step."""
    return message.to_model_text().startswith(_RETRY)


def _annotation(schema: Mapping[str, Any]) -> Any:
    """The Python type FunctionTool turns back into ``schema`` (arrays keep their item type)."""
    if schema.get("type") == "array":
        return list[_annotation(schema.get("items") or {})] if schema.get("items") else list[Any]
    return _JSON_TYPES.get(str(schema.get("type")), Any)


class _Episode:
    """One episode: its clients, its team, and what the stream showed of each step."""

    def __init__(self, spec: EpisodeSpec):
        self.spec, self.task, self.knobs = spec, spec.task, spec.knobs
        self.steps = {s.id: s for s in self.task.steps}
        self.clients: list[OpenAIChatCompletionClient] = []
        self.answers: dict[str, str] = {}
        """The latest answer text of every step that has answered."""
        self.last_role: str | None = None
        self.turns = 0
        self.finished = False
        self.graph: DiGraph | None = None
        """The GraphFlow's graph (linear and gated), whose own edges tell where work goes next."""
        self.verifiers: list[_GateAgent] = []
        self.max_turns: int | None = None

    # -- running -----------------------------------------------------------------------------------
    async def run(self) -> tuple[Termination, str | None, float]:
        """Build the team (timed as construction), stream it, close every client."""
        try:
            team = {Variant.LINEAR: self._graph_flow, Variant.GATED: self._graph_flow,
                    Variant.DELEGATED: self._selector}[self.spec.variant]()
            built = time.perf_counter()
            try:
                with self._selector_retries_logged():
                    result = await self._stream(team)
            except RuntimeError as exc:  # the team re-raises an agent's exception (e.g. the SDK gave up)
                message = str(exc).split("\nTraceback:", 1)[0]
                return Termination.ERROR, f"{type(exc).__name__}: {message}", built
            termination, error = self._termination(result)
            return termination, error, built
        finally:
            for client in self.clients:
                await client.close()

    async def _stream(self, team: Team) -> TaskResult:
        """Consume the team's stream, recording what only the stream shows."""
        if self.spec.variant is not Variant.DELEGATED:
            self._handoff(self.task.steps[0])
        result: TaskResult | None = None
        async for item in team.run_stream(task=self.task.description.strip()):
            if isinstance(item, TaskResult):
                result = item
            elif isinstance(item, SelectSpeakerEvent):
                for name in item.content:
                    if name in self.task.roles:
                        self.spec.trace.handoff(self.spec.router_role, name, "selector")
            elif isinstance(item, ToolCallExecutionEvent):
                self._rejected_tool_calls(item)
            elif isinstance(item, BaseChatMessage) and item.source != "user":  # "user": the task message
                self.turns += 1
                self.finished |= item.source == _FINISH
                if self.graph is not None:
                    self._graph_turn(self.graph, item)
        assert result is not None, "run_stream ended without a TaskResult"
        return result

    def _termination(self, result: TaskResult) -> tuple[Termination, str | None]:
        """Map how the team stopped onto the shared enum, from what the stream showed.

        ``TaskResult.stop_reason`` is free text, so it is only quoted, never parsed.
        """
        if self.spec.variant is Variant.DELEGATED:
            if self.finished:
                done = all(s.id in self.answers for s in self.task.steps)
                return (Termination.COMPLETED if done else Termination.ROUTED_OUT), None
            if self.turns >= self.knobs.max_routing_turns:
                return Termination.MAX_TURNS, None
        else:
            if any(v.exhausted for v in self.verifiers):
                return Termination.GATE_EXHAUSTED, None
            if self.task.steps[-1].id in self.answers:
                return Termination.COMPLETED, None
            if self.max_turns is not None and self.turns >= self.max_turns:
                return Termination.MAX_TURNS, None
        return Termination.ERROR, f"the team stopped before the end of the flow: {result.stop_reason}"

    def final_output(self) -> dict[str, Any]:
        """The last step's answer, parsed as every adapter parses it."""
        return parse_output(self.answers.get(self.task.steps[-1].id))

    # -- what the stream shows -----------------------------------------------------------------------
    def answered(self, step: Step, text: str) -> None:
        """A step's agent answered: that answer is what the step hands on."""
        self.answers[step.id] = text
        self.last_role = step.role
        self.spec.trace.step_output(step.role, step.id, parse_output(text))

    def _handoff(self, step: Step) -> None:
        """Work reaches ``step``: a handoff when its role is not the one that worked last."""
        if step.role != self.last_role:
            self.spec.trace.handoff(self.last_role, step.role, "graph edge", step.id)

    def _graph_turn(self, graph: DiGraph, message: BaseChatMessage) -> None:
        """A graph node spoke: record a step's answer, then the edges the graph itself takes from it."""
        if message.source in self.steps:
            self.answered(self.steps[message.source], message.to_model_text())
        for edge in graph.nodes[message.source].edges:
            if edge.target in self.steps and edge.check_condition(message):
                self._handoff(self.steps[edge.target])

    def _rejected_tool_calls(self, event: ToolCallExecutionEvent) -> None:
        """Tool calls AutoGen answered with an error itself (bad JSON, unknown tool, schema mismatch).

        These never reach :func:`execute_tool`, which records every call that does (tool
        errors there come back as ordinary results), so every ``is_error`` result is one.
        """
        step = self.steps.get(event.source)
        for result in event.content:
            if result.is_error:
                tool = self.task.tools.get(result.name)
                self.spec.trace.tool_call(step.role if step else None, event.source, result.name,
                                          bool(tool and tool.mutating), False, f"rejected by AutoGen: {result.content}")

    @contextmanager
    def _selector_retries_logged(self) -> Iterator[None]:
        """Listen to ``autogen_core``'s event log while a delegated episode runs (no-op otherwise)."""
        if self.spec.variant is not Variant.DELEGATED:
            yield
            return
        logger = logging.getLogger(EVENT_LOGGER_NAME)
        handler, level = _SelectorRetryLog(self.spec, {*self.task.roles, _FINISH}), logger.level
        logger.addHandler(handler)
        propagate = logger.propagate
        if not logger.isEnabledFor(logging.INFO):
            logger.setLevel(logging.INFO)
            logger.propagate = False  # raised only for our handler: keep the INFO flood out of the user's logs
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate

    # -- building ------------------------------------------------------------------------------------
    def _client(self, role: str) -> OpenAIChatCompletionClient:
        """A fresh production client on ``role``'s base URL; SDK retry/timeout only when the knobs set them."""
        options: dict[str, Any] = {}
        if self.knobs.client_max_retries is not None:
            options["max_retries"] = self.knobs.client_max_retries
        if self.knobs.client_timeout is not None:
            options["timeout"] = self.knobs.client_timeout
        client = OpenAIChatCompletionClient(
            model=self.spec.endpoint.model, base_url=self.spec.endpoint.base_url(role),
            api_key=self.spec.endpoint.api_key, model_info=_MODEL_INFO,
            temperature=self.knobs.temperature, **options)
        self.clients.append(client)
        return client

    def _tool(self, step: Step, tool: Tool) -> FunctionTool:
        """``tool`` as a FunctionTool whose signature is built from ``Tool.parameters``.

        FunctionTool derives the schema the model sees from the function's signature, so
        the signature is synthesised from the coordlab schema (types and descriptions).
        """
        spec = self.spec

        async def call(**arguments: Any) -> str:
            return execute_tool(spec.world, spec.trace, step.role, step.id, tool.name, arguments)

        parameters = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                        annotation=Annotated[_annotation(schema), schema.get("description", name)])
                      for name, schema in tool.parameters.items()]
        call.__signature__ = inspect.Signature(parameters, return_annotation=str)  # type: ignore[attr-defined]
        call.__annotations__ = {**{p.name: p.annotation for p in parameters}, "return": str}
        return FunctionTool(call, description=tool.description, name=tool.name)

    def _step_agent(self, step: Step) -> AssistantAgent:
        """The step's AssistantAgent: its role's tools, and one step's text in its system message.

        One step per agent because the model (like the simulator) reads which step it is on
        from the step text it was given; a role agent holding all its steps' texts would
        be asked to do all of them at once.
        """
        role = self.task.roles[step.role]
        tools = [self._tool(step, self.task.tools[name]) for name in role.tools]
        return AssistantAgent(
            step.id, model_client=self._client(step.role), tools=tools or None,
            description=f"{role.name}: {step.instruction}",
            system_message=f"{role_prompt(role)}\n{step_prompt(self.task, step)}",
            reflect_on_tool_use=self.knobs.tool_reflection, max_tool_iterations=self.knobs.max_iterations)

    def _graph_flow(self) -> GraphFlow:
        """Linear and gated: one node per step, a verifier node before each gated step (gated only)."""
        order: list[ChatAgent] = []
        entry: dict[str, str] = {}
        for step in self.task.steps:
            gate = self.task.gate_before(step.id) if self.spec.variant is Variant.GATED else None
            if gate is not None:
                self.verifiers.append(_GateAgent(self, gate))
                order.append(self.verifiers[-1])
            entry[step.id] = order[-1].name if gate is not None else step.id
            order.append(self._step_agent(step))
        names = [agent.name for agent in order]
        if len(set(names)) != len(names):
            raise ValueError(f"agent names collide in {names}: a step id clashes with a verifier's name")
        builder = DiGraphBuilder()
        for agent in order:
            builder.add_node(agent)
        builder.set_entry_point(order[0])
        turns = len(order)
        for index, (agent, following) in enumerate(zip(order, order[1:])):
            if not isinstance(agent, _GateAgent):
                builder.add_edge(agent, following)
                continue
            back = entry[agent.gate.retry]
            builder.add_edge(agent, following, condition=_gate_passed)
            builder.add_edge(agent, back, condition=_gate_rejected, activation_group=f"{agent.name}_rejected")
            # each rejection re-runs this verifier and every node from the retry entry up to it
            turns += self.knobs.gate_retries * (1 + index - names.index(back))
        self.graph = builder.build()
        if self.verifiers:
            self.max_turns = turns  # a backstop only: the verifiers' own bound is always reached first
        return GraphFlow(order, graph=self.graph, max_turns=self.max_turns)

    def _selector(self) -> SelectorGroupChat:
        """Delegated: role agents plus FINISH; the selector's client is the router's."""
        participants: list[ChatAgent] = []
        for name, role in self.task.roles.items():
            if not name.isidentifier() or name == _FINISH:
                raise ValueError(f"role {name!r} cannot be an AutoGen participant name (a Python identifier)")
            participants.append(_RoleAgent(self, name, role.goal,
                                           [(s, self._step_agent(s)) for s in self.task.steps_of(name)]))
        participants.append(_FinishAgent())
        return SelectorGroupChat(
            participants, model_client=self._client(self.spec.router_role), allow_repeated_speaker=True,
            termination_condition=SourceMatchTermination([_FINISH]), max_turns=self.knobs.max_routing_turns,
            emit_team_events=True)


class _GateAgent(BaseChatAgent):
    """The verifier in front of a gated step: the shared gate on the values the chat holds, no model.

    The values are the task inputs plus every step answer broadcast so far (later answers
    override), parsed as every adapter parses answers.
    """

    def __init__(self, episode: _Episode, gate: Gate):
        super().__init__(f"verify_{gate.before}", f"Checks the gate before '{gate.before}'.")
        self.episode, self.gate = episode, gate
        self.history: list[BaseChatMessage] = []
        self.rejections = 0
        self.exhausted = False

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        """Only text: PASS / RETRY / STOP followed by the reason."""
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        """Check the gate; a rejection within the bound is a framework retry of the gate's retry step."""
        self.history.extend(messages)
        task, spec = self.episode.task, self.episode.spec
        values: dict[str, Any] = dict(task.inputs)
        for message in self.history:
            if message.source in self.episode.steps:
                values.update(parse_output(message.to_model_text()))
        verdict = check_gate(task, spec.world, spec.trace, self.gate.before, values)
        if verdict.passed:
            text = f"{_PASS}: the gate before '{self.gate.before}' holds."
        elif self.rejections >= spec.knobs.gate_retries:
            self.exhausted = True
            text = f"{_STOP}: {verdict.message} Rejected {self.rejections + 1} times; giving up."
        else:
            self.rejections += 1
            spec.trace.retry(self.gate.retry, "framework", "gate rejected", task.step(self.gate.retry).role)
            text = f"{_RETRY}: {verdict.message} Redo '{self.gate.retry}'."
        return Response(chat_message=TextMessage(content=text, source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        """Forget the chat and the rejections."""
        self.history.clear()
        self.rejections, self.exhausted = 0, False


class _RoleAgent(BaseChatAgent):
    """A role in the SelectorGroupChat: each turn runs the role's next step that has not run yet.

    The step's own AssistantAgent does the work on everything the role has heard (and
    said) so far; its answer is re-issued under the role's name, the name the selector
    knows. A role with no step left says so, as the plain reference's worker does nothing.
    """

    def __init__(self, episode: _Episode, name: str, goal: str, steps: list[tuple[Step, AssistantAgent]]):
        super().__init__(name, goal)
        self.episode, self.steps = episode, steps
        self.pending = list(steps)
        self.history: list[BaseChatMessage] = []

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        """What an AssistantAgent answers with (text, or a tool-call summary at the iteration bound)."""
        return (TextMessage, ToolCallSummaryMessage)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        """The final response of :meth:`on_messages_stream`."""
        async for item in self.on_messages_stream(messages, cancellation_token):
            if isinstance(item, Response):
                return item
        raise AssertionError("on_messages_stream ended without a Response")

    async def on_messages_stream(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
                                 ) -> AsyncGenerator[BaseAgentEvent | BaseChatMessage | Response, None]:
        """Run the next pending step's agent, passing its events through."""
        self.history.extend(messages)
        if not self.pending:
            yield Response(chat_message=TextMessage(content=f"The {self.name} has no step left to do.",
                                                    source=self.name))
            return
        step, agent = self.pending.pop(0)
        response: Response | None = None
        async for item in agent.on_messages_stream(list(self.history), cancellation_token):
            if isinstance(item, Response):
                response = item
            else:
                yield item
        assert response is not None
        answer = response.chat_message.model_copy(update={"source": self.name})
        self.history.append(answer)
        self.episode.answered(step, answer.to_model_text())
        yield Response(chat_message=answer, inner_messages=response.inner_messages)

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        """Start the role over."""
        for _, agent in self.steps:
            await agent.on_reset(cancellation_token)
        self.pending, self.history = list(self.steps), []


class _FinishAgent(BaseChatAgent):
    """The participant the routing model names to end the flow; its message trips the termination condition."""

    def __init__(self) -> None:
        super().__init__(_FINISH, "Select this when every step of the task is done.")

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        """One closing text."""
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        """Close the conversation."""
        return Response(chat_message=TextMessage(content="The routing model ended the flow.", source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        """Nothing to forget."""


class _SelectorRetryLog(logging.Handler):
    """Records each selector re-ask from ``autogen_core``'s LLMCallEvent log as a framework retry.

    A selector call is one whose ``agent_id`` is not a participant's container (it is the
    group chat manager's); a re-ask carries the previous reply and AutoGen's feedback
    after the selector prompt, so it has more than one message.
    """

    def __init__(self, spec: EpisodeSpec, participants: set[str]):
        super().__init__(logging.INFO)
        self.spec, self.participants = spec, participants

    def emit(self, record: logging.LogRecord) -> None:
        """Inspect one event-log record."""
        event = record.msg
        if not isinstance(event, LLMCallEvent):
            return
        agent_type = str(event.kwargs.get("agent_id") or "").split("/", 1)[0].rsplit("_", 1)[0]
        if agent_type and agent_type not in self.participants and len(event.kwargs.get("messages") or []) > 1:
            self.spec.trace.retry(None, "framework", "selector asked again: no single valid name",
                                  self.spec.router_role)
