"""AutoGen AgentChat 0.7: one ``AssistantAgent`` per role, in AutoGen teams, with structured output.

Every role is one ``AssistantAgent`` (name = role, system message = the role prompt) on
AutoGen's production client, ``OpenAIChatCompletionClient``, at the role's base URL; its
tools are ``FunctionTool``s over the shared :func:`execute_tool`, and its answers are
AutoGen structured output (``output_content_type``): a pydantic model of the fields its
steps produce, which AutoGen validates itself. Values reach the next agent only through
AutoGen's own group-chat broadcast, so a value an agent failed to say is really missing.

- linear: one team (``SelectorGroupChat`` whose documented ``selector_func`` names the
  step's role, ``max_turns=1``) run once per step with the step's instruction as the new
  task message, AutoGen's documented way to continue a team's conversation with new input.
- gated: the same; between runs the shared gate is checked on the values the agents'
  structured messages hold, and a rejection is sent back to the retry step's role agent
  as the task of a new team run, at most ``knobs.gate_retries`` times. A gate whose retry
  step is the guarded step itself leaves nothing to redo before that step: it stops the
  flow at its first rejection.
- delegated: ``SelectorGroupChat`` of the role agents plus the routing model as an
  ``AssistantAgent`` on the router's URL that speaks after every worker (AutoGen's
  documented planning-agent pattern); the selector model (router URL too) picks who
  works next, and ``TextMentionTermination("FINISH")`` on the router's messages ends the
  chat. A selector can only name participants and never ends a chat itself, which is why
  the routing model is a participant. The task message lists every step; each role agent
  works out from the conversation which of its steps is next.

Durability (``spec.durability``, the crash experiment): AutoGen's own resume path, the team's
``save_state()`` written as JSON after every team run and ``load_state()`` into the same team
built afresh ("Managing State" in its docs). ``save_state`` warns that a running team's
state may be inconsistent, so state is saved only between runs: in linear and gated after
each step's run and each gate redo; in delegated the team stops after every turn
(``max_turns=1``) and ``run_stream()`` without a task continues it, AutoGen's documented way
to resume a stopped team, so it is saved after every turn. The same file holds the
adapter's loop position (next step, gate rejections, redo position) and the values its
gates read. A resumed run loads the state and goes on from the next step or turn; the run
in flight at the crash runs again, tool calls included (nothing here prevents that).

Human in the loop (``spec.approver``, linear and gated): AutoGen's documented way for a human
who may answer slowly ("Human-in-the-loop", and the ``UserProxyAgent`` docstring, which
steers slow answers away from a blocking ``UserProxyAgent``): the team stops, the
application saves its state while it waits, and the human's answer is the task of the next
run. The pipeline team already stops after every run (``max_turns=1``), so before each step
with a gate (in gated once the gate passes) the state is saved and the approver asked; an
approval opens the step's run (``APPROVE``), a rejection's reason is the task of a redo of
the gate's retry step (as a gate rejection is) and the human is asked again, at most
``knobs.gate_retries`` times, then ``GATE_EXHAUSTED``. A late answer kills the process while
it waits; the resumed run loads the state saved before the question and asks again.
delegated does not ask (see ``_DELEGATED_REVIEW_NOTE``).

Tools over MCP (``knobs.tool_transport`` ``mcp``): each role agent gets its tools through
AutoGen's own MCP client, ``McpWorkbench`` on ``StreamableHttpServerParams`` at the role's
MCP URL (``AssistantAgent(workbench=...)``, as AutoGen's docs show it), instead of the
FunctionTools; one workbench per role with tools, started before the team is built and
stopped when the episode ends. The lab's server runs and records every call that reaches
it; the adapter records only the calls AutoGen answers itself. Everything else is the same.
AutoGen's own ways are kept, not compensated: its agent lists the tools (one MCP
``tools/list``) before every model call and again for every tool call, and a tool's error
comes back flagged ``is_error`` (the model reads the same text). The one piece of glue is
:class:`StrictToolsWorkbench`: AutoGen's structured output refuses tools that are not
strict, and ``McpWorkbench`` marks none. Under durability the tools stay native
(``_DURABLE_MCP_NOTE``): the crash experiment serves no MCP endpoint.

AutoGen has no agent-level retry: after the openai SDK gives up, and whenever AutoGen's
structured output fails to validate an answer, the team's ``run_stream`` raises
``RuntimeError`` and the episode ends in ``ERROR``. The trace is read off ``run_stream``
items (speaker selections, AutoGen's own tool-error results, structured answers) and the
``autogen_core`` event log (selector re-asks).

:class:`AutoGenEpisode` is the extension point: subclass it, override one builder or hook,
and register an adapter whose ``episode_class`` is the subclass.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Mapping, Sequence

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import TaskResult
from autogen_agentchat.conditions import TextMentionTermination
from autogen_agentchat.messages import (
    BaseAgentEvent, BaseChatMessage, SelectSpeakerEvent, StructuredMessage, ToolCallExecutionEvent,
)
from autogen_agentchat.teams import SelectorGroupChat
from autogen_core import EVENT_LOGGER_NAME, CancellationToken
from autogen_core.logging import LLMCallEvent
from autogen_core.models import ModelInfo
from autogen_core.tools import FunctionTool, ToolResult, ToolSchema, Workbench
from autogen_ext.models.openai import OpenAIChatCompletionClient
from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, create_model, model_serializer

from coordlab.runners.export import write_atomically
from coordlab.tasks.schema import Step
from coordlab.tasks.tools import Tool

from .base import (
    AdapterOutcome, EpisodeSpec, FrameworkAdapter, Review, Termination, ToolTransport, Variant, VariantSupport,
)
from .registry import register
from .toolkit import check_gate, execute_tool, role_prompt, routing_messages, step_prompt

_SUPPORT = {
    Variant.LINEAR: VariantSupport(
        True, "one AssistantAgent per role in a SelectorGroupChat (selector_func names the step's role), "
              "one team run per step with the step instruction as its task"),
    Variant.GATED: VariantSupport(
        True, "the linear team; the gate is checked between runs and a rejection is a new team run of the "
              "retry step's role agent, bounded by knobs.gate_retries"),
    Variant.DELEGATED: VariantSupport(
        True, "SelectorGroupChat of the role agents and the routing model (router URL) as a participant; the "
              "selector model (router URL) picks each speaker; TextMentionTermination('FINISH') ends it",
        "a selector cannot end a chat, so the routing model speaks after every worker (AutoGen's planning-agent "
        "pattern): each routing decision is one call of the router participant and one of the selector"),
}

MODEL_INFO: ModelInfo = {"vision": False, "function_calling": True, "json_output": False, "family": "unknown",
                         "structured_output": True}
"""What AutoGen must be told about a model name it does not know (no tokenizer lookup follows).

``structured_output`` is what lets an agent's ``output_content_type`` reach the model as a
``response_format`` json_schema."""

FINISH = "FINISH"
"""What the routing model says when every step is done; the delegated team's termination text."""
_STATE_FORMAT = "coordlab.autogen.team_state/1"
"""The saved file's format tag: AutoGen's ``save_state()`` plus the adapter's loop position."""
_JSON_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool,
                               "object": dict[str, Any]}
_SELF_GATE_NOTE = ("gated: the gate before '{step}' names '{step}' itself as its retry step; nothing before it can "
                   "be redone without running it, so the first rejection stops the flow")
_DELEGATED_REVIEW_NOTE = (
    "delegated: the approver is not asked. A world-changing step runs inside a worker's turn that the selector "
    "model starts; AutoGen's selector-picks-a-UserProxyAgent pattern approves a routing decision, not a step, and "
    "naming the step it is for would be the adapter's guess, so the world's changes here are made unreviewed")
_SELF_RETRY_REVIEW_NOTE = ("{variant}: the reviewer rejected '{step}', whose gate names '{step}' itself as its retry "
                           "step; nothing before it can be redone without running it, so the reviewer is asked "
                           "again with the same values")
APPROVE = "APPROVE"
"""The human's message when the reviewer approves: it opens the approved step's run."""
_DURABLE_MCP_NOTE = (
    "tools native, not over MCP: the crash experiment serves no MCP endpoint (a resumed run is a new process, and "
    "the lab's tool server is per process), so under durability the role agents keep their FunctionTools")
_DELEGATED_NOTE = ("delegated: a SelectorGroupChat selector only names participants and cannot end the chat, so the "
                   "routing model is also a participant that speaks after every worker and says FINISH; every "
                   "routing decision is two router calls (the participant, then the selector)")


class RoleAnswer(BaseModel):
    """Base of every role's structured output: the fields of the role's steps.

    A role with several steps answers one step at a time, so the fields of its other steps
    are optional; left unset, they are not serialised (the next agent sees only what was said).
    """

    model_config = ConfigDict(extra="ignore")

    @model_serializer(mode="wrap")
    def _said(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        fields = type(self).model_fields
        return {name: value for name, value in handler(self).items()
                if value is not None or (name in fields and fields[name].is_required())}


class StrictToolsWorkbench(Workbench):
    """AutoGen's ``McpWorkbench`` with every tool it lists marked ``strict``, noting the calls handed to it.

    ``strict``: an agent with ``output_content_type`` calls the openai SDK's ``parse()``, which
    refuses every tool not marked strict, and ``McpWorkbench.list_tools()`` marks none (its
    ``ToolSchema`` has no ``strict``): without the mark every model call of a role with tools
    raises before it is sent. The native FunctionTools are strict for the same reason, and the
    lab's schemas are strict-shaped already (every property required, no others), so the mark
    is the only change. Listing, calling, result conversion and errors are ``McpWorkbench``'s.
    ``dispatched``: the ids of the calls handed on to the MCP client, which the lab's server records.
    """

    def __init__(self, inner: Workbench, dispatched: set[str]):
        self.inner, self.dispatched = inner, dispatched

    async def list_tools(self) -> list[ToolSchema]:
        """The MCP server's tools as ``McpWorkbench`` converts them, each marked strict."""
        marked = []
        for schema in await self.inner.list_tools():
            strict = schema.copy()
            strict["strict"] = True
            marked.append(strict)
        return marked

    async def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None,
                        cancellation_token: CancellationToken | None = None, call_id: str | None = None) -> ToolResult:
        """``McpWorkbench``'s call (the server runs and records it); the call's id is noted first."""
        if call_id is not None:
            self.dispatched.add(call_id)
        return await self.inner.call_tool(name, arguments, cancellation_token, call_id)

    async def start(self) -> None:
        """Open the MCP session (``McpWorkbench.start``)."""
        await self.inner.start()

    async def stop(self) -> None:
        """Close the MCP session (``McpWorkbench.stop``)."""
        await self.inner.stop()

    async def reset(self) -> None:
        """``McpWorkbench.reset`` (nothing to reset)."""
        await self.inner.reset()

    async def save_state(self) -> Mapping[str, Any]:
        """``McpWorkbench.save_state`` (its state is only its type tag)."""
        return await self.inner.save_state()

    async def load_state(self, state: Mapping[str, Any]) -> None:
        """``McpWorkbench.load_state`` (nothing to load)."""
        await self.inner.load_state(state)


@register("autogen")
class AutoGenAdapter(FrameworkAdapter):
    """AutoGen AgentChat (``SelectorGroupChat`` of role ``AssistantAgent``s) on ``OpenAIChatCompletionClient``."""

    name = "autogen"
    resume_path = ("team.save_state() as JSON after every team run (each step and gate redo; delegated: one turn "
                   "per run); a fresh process builds the same team, load_state() and runs the next step "
                   "(delegated: run_stream() with no task)")

    distribution = "autogen-agentchat"
    variant_support = _SUPPORT
    tool_transports = frozenset(ToolTransport)
    """Native: ``FunctionTool``s over the shared tool code. MCP: AutoGen's ``McpWorkbench``, one per role
    with tools, held for the episode (native under durability, with a note)."""
    episode_class: type[AutoGenEpisode]
    """The episode class :meth:`run` builds; a plug-in points this at its subclass."""

    def run(self, spec: EpisodeSpec) -> AdapterOutcome:
        """Build fresh clients, agents and team inside one event loop, run them, map how it ended."""
        started = time.perf_counter()
        episode = self.episode_class(spec)
        termination, error, built = asyncio.run(episode.run())
        return AdapterOutcome(termination, episode.final_output(), error, list(episode.notes),
                              (built - started) * 1000, (time.perf_counter() - built) * 1000,
                              resumed_from=episode.resumed_from)


def _annotation(schema: Mapping[str, Any]) -> Any:
    """The Python type FunctionTool turns back into ``schema`` (arrays keep their item type)."""
    if schema.get("type") == "array":
        return list[_annotation(schema.get("items") or {})] if schema.get("items") else list[Any]
    return _JSON_TYPES.get(str(schema.get("type")), Any)


class AutoGenEpisode:
    """One AutoGen episode: builds the role agents and the team from the task, runs it, records the trace.

    The public methods are the extension points. Builders (``model_client``,
    ``function_tool``, ``output_model``, ``role_agent``, ``router_agent``, ``pipeline_team``,
    ``delegation_team``, ``step_task``, ``delegation_task``) make one AutoGen object each;
    ``run_linear`` / ``run_gated`` / ``run_delegated`` drive a variant; ``observe`` sees
    every ``run_stream`` item and ``answered`` every role answer; ``checkpoint`` saves and
    ``restore`` loads the durable state. Override one and keep :meth:`run`, which times
    construction, maps errors and closes the clients.
    """

    def __init__(self, spec: EpisodeSpec):
        self.spec, self.task, self.knobs = spec, spec.task, spec.knobs
        self.router_name = spec.router_role
        self.clients: list[OpenAIChatCompletionClient] = []
        self.notes: list[str] = []
        self.values: dict[str, Any] = dict(self.task.inputs)
        """The task inputs plus every value the agents' structured answers hold (later answers win)."""
        self.outputs: dict[str, dict[str, Any]] = {}
        """What each step handed on: the fields of its role's latest structured answer for it."""
        self.current: Step | None = None
        """The step the running team run is about (linear and gated); None in delegated."""
        self.last_role: str | None = None
        self.last_speaker: str | None = None
        """Who said the last chat message."""
        self.turns = 0
        """Chat messages the participants have said (task messages excluded)."""
        self.finished = False
        """Whether the routing model said FINISH (delegated)."""
        self.built: float | None = None
        """When the team was built (construction ends, execution starts)."""
        self.answer_models: dict[str, type[RoleAnswer]] = {}
        """Each role agent's ``output_content_type``, registered with the team as a message type."""
        self.durability = spec.durability
        self.resumed_from: str | None = None
        """With a resumed run: what :meth:`restore` read back, in words; None when nothing was saved."""
        self.tools_over_mcp = self.knobs.tool_transport is ToolTransport.MCP and self.durability is None
        """Whether the role agents reach the tools through AutoGen's MCP workbench (else FunctionTools)."""
        if self.knobs.tool_transport is ToolTransport.MCP and not self.tools_over_mcp:
            self.notes.append(_DURABLE_MCP_NOTE)
        self.workbenches: dict[str, Workbench] = {}
        """Over MCP: each role's started workbench, by role (roles without tools have none)."""
        self.dispatched_tool_calls: set[str] = set()
        """Over MCP: ids of the tool calls AutoGen handed to its MCP client (the lab's server records those)."""

    # -- running -----------------------------------------------------------------------------------------
    async def run(self) -> tuple[Termination, str | None, float]:
        """Run the variant; return its termination, an error text, and when construction ended."""
        try:
            async with AsyncExitStack() as workbenches:
                if self.tools_over_mcp:  # started before the agents are built, stopped when the episode ends
                    for role in [role for role, role_spec in self.task.roles.items() if role_spec.tools]:
                        self.workbenches[role] = await workbenches.enter_async_context(self.mcp_workbench(role))
                with self._selector_retries_logged():
                    termination = await {Variant.LINEAR: self.run_linear, Variant.GATED: self.run_gated,
                                          Variant.DELEGATED: self.run_delegated}[self.spec.variant]()
            return termination, None, self.built or time.perf_counter()
        except RuntimeError as exc:  # a team re-raises an agent's exception (SDK gave up, validation failed)
            message = str(exc).split("\nTraceback:", 1)[0]
            return Termination.ERROR, f"{type(exc).__name__}: {message}", self.built or time.perf_counter()
        finally:
            for client in self.clients:
                await client.close()

    async def run_linear(self) -> Termination:
        """Every step in order, one team run each (from the saved position when resuming)."""
        team = self.pipeline_team()
        saved = await self.restore(team)
        self.built = time.perf_counter()
        start = saved["next"] if saved else 0
        for index in range(start, len(self.task.steps)):
            step = self.task.steps[index]
            stop, approval = await self.human_approval(team, index, *self._waiting(saved, index == start))
            if stop is not None:
                return stop
            await self.run_step(team, step, approval)
            await self.checkpoint(team, f"step '{step.id}'", next=index + 1)
        return Termination.COMPLETED

    async def run_gated(self) -> Termination:
        """The linear runs, with each gate checked on the agents' values before its guarded step."""
        team = self.pipeline_team()
        saved = await self.restore(team)
        self.built = time.perf_counter()
        position = {s.id: i for i, s in enumerate(self.task.steps)}
        start = saved["next"] if saved else 0
        for index in range(start, len(self.task.steps)):
            step = self.task.steps[index]
            gate = self.task.gate_before(step.id)
            waiting = self._waiting(saved, index == start)  # resumed waiting for the reviewer: the gate had passed
            rejections, redo_from = (saved["rejections"], saved["redo"]) if saved and index == start else (0, None)
            if gate is not None and redo_from is not None and not waiting:  # resumed inside a redo: finish it
                await self._redo(team, step, index, redo_from, rejections, "")
            while gate is not None and not waiting:
                verdict = check_gate(self.task, self.spec.world, self.spec.trace, step.id, self.values)
                if verdict.passed:
                    break
                if gate.retry == step.id:
                    self.notes.append(_SELF_GATE_NOTE.format(step=step.id))
                    return Termination.GATE_EXHAUSTED
                if rejections >= self.knobs.gate_retries:
                    return Termination.GATE_EXHAUSTED
                rejections += 1
                self.spec.trace.retry(gate.retry, "framework", "gate rejected", self.task.step(gate.retry).role)
                await self._redo(team, step, index, position[gate.retry], rejections, verdict.message)
            stop, approval = await self.human_approval(team, index, *waiting)
            if stop is not None:
                return stop
            await self.run_step(team, step, approval)
            await self.checkpoint(team, f"step '{step.id}'", next=index + 1)
        return Termination.COMPLETED

    @staticmethod
    def _waiting(saved: Mapping[str, Any] | None, resumed_here: bool) -> tuple[int, int | None] | tuple[()]:
        """The reviewer's rejections and redo position to resume from when ``saved`` was waiting for the human
        at this step (the arguments :meth:`human_approval` picks up from); empty otherwise."""
        if saved is None or not resumed_here or not saved.get("review"):
            return ()
        return int(saved["review_rejections"]), saved["redo"]

    async def human_approval(self, team: SelectorGroupChat, index: int, rejections: int = 0,
                             redo_from: int | None = None) -> tuple[Termination | None, str]:
        """Ask the human (``spec.approver``, if any) before step ``index`` when it has a gate, AutoGen's way.

        The team is stopped between runs; its state is saved while the human is asked (a late
        answer outlives the process), and the answer is the next run's task: an approval opens
        the step's run (returned, with None), a rejection's reason opens a redo of the gate's
        retry step, and the human is asked again, at most ``knobs.gate_retries`` times (then
        ``GATE_EXHAUSTED``). ``rejections`` and ``redo_from``: where a resumed run picks up.
        """
        approver, step = self.spec.approver, self.task.steps[index]
        gate = self.task.gate_before(step.id)
        if approver is None or gate is None:
            return None, ""
        first = next(i for i, s in enumerate(self.task.steps) if s.id == gate.retry)
        if redo_from is not None:  # resumed inside a redo after a rejection: finish it, then ask again
            await self._redo(team, step, index, redo_from, rejections, "", reviewer=True)
        while True:
            await self.checkpoint(team, f"the request for approval of step '{step.id}'", next=index, review=True,
                                  review_rejections=rejections)
            proposal = {name: self.values.get(name) for name in step.reads}
            review = await asyncio.to_thread(approver.review, step.id, proposal)  # blocks until the human answers
            self.spec.trace.gate(step.id, review.approved, review.reason)
            if review.approved:
                return None, self.approval_task(review)
            if rejections >= self.knobs.gate_retries:
                return Termination.GATE_EXHAUSTED, ""
            rejections += 1
            self.spec.trace.retry(gate.retry, "framework", "rejected by the reviewer", self.task.step(gate.retry).role)
            if first >= index:
                note = _SELF_RETRY_REVIEW_NOTE.format(variant=self.spec.variant.value, step=step.id)
                if note not in self.notes:
                    self.notes.append(note)
            await self._redo(team, step, index, first, rejections, review.reason, reviewer=True)

    async def _redo(self, team: SelectorGroupChat, guarded: Step, index: int, first: int, rejections: int,
                    feedback: str, reviewer: bool = False) -> None:
        """Redo the steps from position ``first`` up to the guarded step; ``feedback`` opens the first redo.

        ``reviewer``: the rejection was the human's (the human is asked again after it, not the gate)."""
        by = "the reviewer" if reviewer else "the gate"
        counts = {"review": True, "review_rejections": rejections} if reviewer else {"rejections": rejections}
        for redo in range(first, index):
            await self.run_step(team, self.task.steps[redo], feedback if redo == first else "")
            await self.checkpoint(team, f"redo of step '{self.task.steps[redo].id}' (rejection {rejections} by "
                                        f"{by} before '{guarded.id}')",
                                  next=index, redo=redo + 1, **counts)

    async def run_delegated(self) -> Termination:
        """One run of the delegation team on the whole task; the routing model ends it with FINISH."""
        team = self.delegation_team()
        saved = await self.restore(team)
        self.built = time.perf_counter()
        self.notes.append(_DELEGATED_NOTE)
        if self.spec.approver is not None:
            self.notes.append(_DELEGATED_REVIEW_NOTE)
        if self.durability is None:
            result: TaskResult | None = await self._stream(team, self.delegation_task())
        else:
            result = await self._run_turn_by_turn(team, resumed=saved is not None)
        if self.finished:
            done = all(s.id in self.outputs for s in self.task.steps)
            return Termination.COMPLETED if done else Termination.ROUTED_OUT
        if self.turns >= 2 * self.knobs.max_routing_turns:
            return Termination.MAX_TURNS
        stop = result.stop_reason if result is not None else "nothing left to run in the saved state"
        raise RuntimeError(f"the team stopped before the routing model said {FINISH}: {stop}")

    async def _run_turn_by_turn(self, team: SelectorGroupChat, resumed: bool) -> TaskResult | None:
        """The durable delegated chat: one turn per team run (the team stops after each), saved after each;
        ``run_stream()`` without a task continues the stopped team. Same turns, speakers and bound as one run."""
        result: TaskResult | None = None
        task: str | None = None if resumed else self.delegation_task()
        while not self.finished and self.turns < 2 * self.knobs.max_routing_turns:
            said = self.turns
            result = await self._stream(team, task)
            task = None
            await self.checkpoint(team, f"turn {self.turns} of the chat ('{self.last_speaker}' spoke)")
            if self.turns == said:  # the run ended without a turn: the team stopped for another reason
                break
        return result

    async def run_step(self, team: SelectorGroupChat, step: Step, feedback: str = "") -> None:
        """One team run: the step's task message (after ``feedback``, if any); its role agent answers it."""
        self.current = step
        await self._stream(team, self.step_task(step, feedback))

    async def _stream(self, team: SelectorGroupChat, task: str | None) -> TaskResult:
        """Consume one team run (``task`` None: continue the stopped team), handing every item to :meth:`observe`."""
        result: TaskResult | None = None
        async for item in team.run_stream(task=task, output_task_messages=False):
            if isinstance(item, TaskResult):
                result = item
            else:
                self.observe(item)
        assert result is not None, "run_stream ended without a TaskResult"
        return result

    # -- durable state --------------------------------------------------------------------------------------
    def state_path(self) -> Path:
        """The JSON file holding the saved team state and the loop position (one per episode)."""
        assert self.durability is not None
        return Path(self.durability.folder) / f"{self.durability.thread_id}.autogen_team.json"

    async def checkpoint(self, team: SelectorGroupChat, after: str, **position: Any) -> None:
        """With durability: save the stopped team's state (``team.save_state()``) and where the loop is,
        atomically, as one JSON file. ``after`` says what the state follows, for :attr:`resumed_from`."""
        if self.durability is None:
            return
        state = {"format": _STATE_FORMAT, "after": after, "team": await team.save_state(),
                 "progress": {"next": 0, "rejections": 0, "redo": None, "review": False, "review_rejections": 0,
                              **position},
                 "adapter": {"values": self.values, "outputs": self.outputs, "last_role": self.last_role,
                             "last_speaker": self.last_speaker, "turns": self.turns, "finished": self.finished}}
        write_atomically(self.state_path(), json.dumps(state))

    async def restore(self, team: SelectorGroupChat) -> dict[str, Any] | None:
        """With a resuming run and a saved state: ``team.load_state()`` it and restore the loop's bookkeeping;
        return the saved loop position. None (a run from the start) otherwise; a first run drops stale state."""
        if self.durability is None:
            return None
        path = self.state_path()
        if not self.durability.resume:
            path.unlink(missing_ok=True)
            return None
        if not path.exists():
            return None
        saved = json.loads(path.read_text())
        if saved.get("format") != _STATE_FORMAT:
            raise ValueError(f"{path}: not a saved AutoGen episode state ({_STATE_FORMAT})")
        await team.load_state(saved["team"])
        mine = saved["adapter"]
        self.values, self.outputs = dict(mine["values"]), {k: dict(v) for k, v in mine["outputs"].items()}
        self.last_role, self.last_speaker = mine["last_role"], mine["last_speaker"]
        self.turns, self.finished = int(mine["turns"]), bool(mine["finished"])
        thread = next((agent["message_thread"] for agent in saved["team"]["agent_states"].values()
                       if isinstance(agent, Mapping) and "message_thread" in agent), [])
        self.resumed_from = f"saved team state after {saved['after']} ({len(thread)} messages in the team's thread)"
        return dict(saved["progress"])

    # -- what the stream shows -----------------------------------------------------------------------------
    def observe(self, item: BaseAgentEvent | BaseChatMessage) -> None:
        """Record what one ``run_stream`` item shows: a speaker selection, AutoGen's own tool errors, an answer."""
        if isinstance(item, SelectSpeakerEvent):
            for name in item.content:
                if name not in self.task.roles:
                    continue
                if self.spec.variant is Variant.DELEGATED:
                    self.spec.trace.handoff(self.router_name, name, "selector")
                elif name != self.last_role:
                    self.spec.trace.handoff(self.last_role, name, "selector_func",
                                            self.current.id if self.current else None)
                self.last_role = name
        elif isinstance(item, ToolCallExecutionEvent):
            self._rejected_tool_calls(item)
        elif isinstance(item, BaseChatMessage):
            self.turns += 1
            self.last_speaker = item.source
            if item.source == self.router_name:
                self.finished |= FINISH in item.to_model_text()
            elif item.source in self.task.roles:
                content = item.content.model_dump() if isinstance(item, StructuredMessage) else {}
                self.answered(item.source, content)

    def answered(self, role: str, outputs: dict[str, Any]) -> None:
        """A role agent answered: the fields it said are what its step hands on (and what gates check)."""
        step = self.current if self.current is not None else self.answered_step(role, outputs)
        if step is None:
            return
        fields = {name: outputs[name] for name in step.output_names if name in outputs}
        self.outputs[step.id] = fields
        self.values.update(fields)
        self.spec.trace.step_output(role, step.id, fields)

    def answered_step(self, role: str, outputs: Mapping[str, Any]) -> Step | None:
        """Which of ``role``'s steps a delegated answer was for, for the record: the first not yet answered
        whose fields it holds, else the first not yet answered, else the last."""
        steps = self.task.steps_of(role)
        open_steps = [s for s in steps if s.id not in self.outputs]
        return next((s for s in open_steps if any(o in outputs for o in s.output_names)),
                    open_steps[0] if open_steps else (steps[-1] if steps else None))

    def tool_step(self, role: str, tool: str) -> str | None:
        """The step a tool call is recorded under: the running step, or in delegated the role's first
        open step that plans ``tool`` (the lab does not choose it; the agent already called the tool)."""
        if self.current is not None:
            return self.current.id
        planned = [s for s in self.task.steps_of(role) if any(c.tool == tool for c in s.tool_calls)] \
            or list(self.task.steps_of(role))
        open_steps = [s for s in planned if s.id not in self.outputs]
        return open_steps[0].id if open_steps else (planned[-1].id if planned else None)

    def _rejected_tool_calls(self, event: ToolCallExecutionEvent) -> None:
        """Tool calls AutoGen answered with an error itself (bad JSON, unknown tool, schema mismatch).

        These never reach :func:`execute_tool`, which records every call that does (tool
        errors there come back as ordinary results), so natively every ``is_error`` result is
        one. Over MCP a tool's own error is ``is_error`` too (the server sets ``isError``) and
        the server recorded it: only calls never handed to the MCP client are AutoGen's.
        """
        for result in event.content:
            if result.is_error and result.call_id not in self.dispatched_tool_calls:
                tool = self.task.tools.get(result.name)
                self.spec.trace.tool_call(event.source, self.tool_step(event.source, result.name), result.name,
                                          bool(tool and tool.mutating), False, f"rejected by AutoGen: {result.content}")

    def final_output(self) -> dict[str, Any]:
        """The last step's structured answer."""
        return dict(self.outputs.get(self.task.steps[-1].id, {}))

    @contextmanager
    def _selector_retries_logged(self) -> Iterator[None]:
        """Listen to ``autogen_core``'s event log while a delegated episode runs (no-op otherwise)."""
        if self.spec.variant is not Variant.DELEGATED:
            yield
            return
        logger = logging.getLogger(EVENT_LOGGER_NAME)
        handler, level = SelectorRetryLog(self.spec, {*self.task.roles, self.router_name}), logger.level
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

    # -- building ------------------------------------------------------------------------------------------
    def model_client(self, role: str) -> OpenAIChatCompletionClient:
        """A fresh production client on ``role``'s base URL; SDK retries/timeout only when the knobs set them."""
        options = self.knobs.client_options()
        client = OpenAIChatCompletionClient(
            model=self.spec.endpoint.model, base_url=self.spec.endpoint.base_url(role),
            api_key=self.spec.endpoint.api_key, model_info=MODEL_INFO,
            temperature=self.knobs.temperature, **options)
        self.clients.append(client)
        return client

    def function_tool(self, role: str, tool: Tool) -> FunctionTool:
        """``tool`` as a strict FunctionTool whose signature is built from ``Tool.parameters``.

        FunctionTool derives the schema the model sees from the function's signature, so the
        signature is synthesised from the coordlab schema. ``strict``: AutoGen sends structured
        output through the openai SDK's ``parse``, which refuses tools that are not strict.
        """
        spec, episode = self.spec, self

        async def call(**arguments: Any) -> str:
            return execute_tool(spec.world, spec.trace, role, episode.tool_step(role, tool.name), tool.name, arguments)

        parameters = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                        annotation=Annotated[_annotation(schema), schema.get("description", name)])
                      for name, schema in tool.parameters.items()]
        call.__signature__ = inspect.Signature(parameters, return_annotation=str)  # type: ignore[attr-defined]
        call.__annotations__ = {**{p.name: p.annotation for p in parameters}, "return": str}
        return FunctionTool(call, description=tool.description, name=tool.name, strict=True)

    def mcp_workbench(self, role: str) -> Workbench:
        """``role``'s tools through AutoGen's MCP client: an ``McpWorkbench`` on the role's MCP URL (not started).

        Its defaults are AutoGen's (30 s HTTP timeout, 300 s read timeout, the session closed
        with the workbench); :class:`StrictToolsWorkbench` only marks its tools strict.
        """
        from autogen_ext.tools.mcp import McpWorkbench, StreamableHttpServerParams  # the mcp extra, only when used

        server = McpWorkbench(StreamableHttpServerParams(url=self.spec.endpoint.tool_url(role)))
        return StrictToolsWorkbench(server, self.dispatched_tool_calls)

    def output_model(self, role: str) -> type[RoleAnswer]:
        """The role's ``output_content_type``: every output field of its steps (required when it has one step)."""
        steps = self.task.steps_of(role)
        fields: dict[str, Any] = {}
        for step in steps:
            for name in step.output_names:
                fields[name] = (Any, ...) if len(steps) == 1 else (Any, None)
        return create_model(f"{role}_answer", __base__=RoleAnswer, **fields)

    def role_agent(self, role: str) -> AssistantAgent:
        """The role's AssistantAgent: its prompt, its tools, its structured output.

        ``max_tool_iterations`` is the shared per-step turn budget (AutoGen's default, 1, ends a
        step after its first tool round); ``reflect_on_tool_use`` is the shared knob (AutoGen
        turns it on by default with structured output; it only acts at the iteration bound).
        The tools are FunctionTools, or over MCP the role's started workbench (AutoGen takes one or the other).
        """
        spec = self.task.roles[role]
        tools = [] if self.tools_over_mcp else [self.function_tool(role, self.task.tools[name]) for name in spec.tools]
        self.answer_models[role] = self.output_model(role)
        return AssistantAgent(
            role, model_client=self.model_client(role), tools=tools or None, workbench=self.workbenches.get(role),
            description=spec.goal, system_message=role_prompt(spec), output_content_type=self.answer_models[role],
            reflect_on_tool_use=self.knobs.tool_reflection, max_tool_iterations=self.knobs.max_iterations)

    def router_agent(self) -> AssistantAgent:
        """The routing model as a participant (AutoGen's planning agent): it names who works next, or FINISH."""
        system = routing_messages(self.task, {})[0]["content"]
        return AssistantAgent(self.router_name, model_client=self.model_client(self.router_name),
                              description="Decides who works next; says FINISH when every step is done.",
                              system_message=system)

    def _role_agents(self) -> list[AssistantAgent]:
        for name in [*self.task.roles, self.router_name]:
            if not name.isidentifier():
                raise ValueError(f"role {name!r} cannot be an AutoGen agent name (a Python identifier)")
        if self.router_name in self.task.roles:
            raise ValueError(f"a role is named {self.router_name!r}, the routing model's participant name")
        return [self.role_agent(role) for role in self.task.roles]

    def _answer_types(self) -> list[type[BaseChatMessage]]:
        """The structured messages the role agents say, which a team must be told about (``custom_message_types``)."""
        return [StructuredMessage[model] for model in self.answer_models.values()]  # type: ignore[valid-type]

    def pipeline_team(self) -> SelectorGroupChat:
        """Linear and gated: the role agents; the selector function names the running step's role.

        One turn per run (``max_turns=1``): each step is one ``run_stream(task=...)`` on the
        same team, which keeps its conversation between runs. The selector model is never
        asked (the selector function always names a speaker).
        """
        def step_role(thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> str | None:
            return self.current.role if self.current is not None else None

        agents = self._role_agents()
        return SelectorGroupChat(agents, model_client=self.model_client(self.router_name),
                                 selector_func=step_role, max_turns=1, emit_team_events=True,
                                 custom_message_types=self._answer_types())

    def delegation_team(self) -> SelectorGroupChat:
        """Delegated: the routing model speaks after every worker; the selector model picks the worker.

        ``allow_repeated_speaker``: a role may do two steps in a row. ``max_turns``: one router
        turn and one worker turn per routing decision; with durability 1, so the team stops (and
        is saved) after every turn and :meth:`run_delegated` keeps the same bound across runs.
        """
        router = self.router_agent()

        def router_after_worker(thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> str | None:
            said = [m for m in thread if isinstance(m, BaseChatMessage)]
            return None if said and said[-1].source == router.name else router.name

        agents = self._role_agents()
        return SelectorGroupChat(
            [router, *agents], model_client=self.model_client(self.router_name),
            custom_message_types=self._answer_types(),
            selector_func=router_after_worker, allow_repeated_speaker=True,
            termination_condition=TextMentionTermination(FINISH, sources=[router.name]),
            max_turns=1 if self.durability is not None else 2 * self.knobs.max_routing_turns,
            emit_team_events=True)

    def step_task(self, step: Step, feedback: str = "") -> str:
        """A step's task message: its instruction with the marker (task inputs only), after any gate feedback."""
        return (f"{feedback}\n" if feedback else "") + step_prompt(self.task, step)

    def approval_task(self, review: Review) -> str:
        """The human's approval as the start of the approved step's task message (their words, if any)."""
        return f"{APPROVE}: {review.reason}" if review.reason else APPROVE

    def delegation_task(self) -> str:
        """The delegated team's task message: the task and every step's instruction."""
        return "\n\n".join([self.task.description.strip(), *(step_prompt(self.task, s) for s in self.task.steps)])


AutoGenAdapter.episode_class = AutoGenEpisode


class SelectorRetryLog(logging.Handler):
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
