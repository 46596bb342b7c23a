"""The CrewAI adapter: the task wired as a Crew, run by CrewAI's own agents, tasks, LLM client and manager.

One CrewAI ``Agent`` per role. linear is ``Process.sequential`` with one ``Task`` per step,
upstream values passed by ``Task(context=[producer tasks])``; every task declares its
answer with ``output_pydantic`` (a model generated from the step's output fields) and the
adapter reads CrewAI's ``TaskOutput.pydantic``, never the text. gated adds CrewAI's
``Task`` guardrail (``guardrail_max_retries``) on each gate's retry step, and a
``ConditionalTask`` when a gate's retry step is the guarded step itself; CrewAI's retry
semantics are used as they are (a guardrail retry replaces the task's upstream context with
the guardrail error: measured, not compensated). delegated is ``Process.hierarchical`` with
``manager_llm`` on the router endpoint: CrewAI builds its own manager, which hands each step
to a coworker through CrewAI's "Delegate work to coworker" tool.

Lab code here is glue only: building CrewAI's objects from the task, the shared tool
bodies (:func:`toolkit.execute_tool`), the gate predicate (:func:`toolkit.check_gate`) and
the trace, read off CrewAI's event bus where an event exists and recorded inline where
CrewAI calls our code synchronously (tools, guardrails, conditions).

Retries in CrewAI come in four layers: the openai SDK's HTTP retries (counted by the
simulator from ``x-stainless-retry-count``), an agent re-running its whole task after an
exception (``max_retry_limit``, CrewAI's default 2; recorded from
``AgentExecutionErrorEvent``), ``BaseLLM.call``'s own re-sends after the SDK gives up on a
429 (no event marks them; the simulator sees fresh requests), and the ``Converter``'s extra
model call when an answer holds no JSON object for ``output_pydantic`` (a JSON answer that
misses a field is a ``ValidationError`` that fails the crew instead).

Durability (``EpisodeSpec.durability``): CrewAI's own checkpointing, which its docs give for
resuming after a failure. The crew gets ``checkpoint=CheckpointConfig(location=<folder>/crewai-checkpoints)``
(CrewAI's defaults otherwise: a JSON file at every ``task_completed``); a resumed run builds the
crew as before, restores CrewAI's newest readable checkpoint with ``Crew.from_checkpoint`` and
kicks that crew off, and CrewAI skips every task that has an output. The glue reconnects what a
checkpoint cannot carry and a user's own code would bring back: the model clients (the lab's
endpoint) and the bodies of the lab's tools. What CrewAI itself drops is not put back: callable
guardrails and ConditionalTask conditions are gone from a restored crew (measured, noted). A
hierarchical crew is one task, checkpointed only when it ends: it starts over. CrewAI's task
replay (``crew.replay``) is not used: it re-runs a task that already has an output, for retrying
a finished kickoff. Checkpoint handlers are registered once per process and the episode's
``scoped_handlers`` drops them at its end: one durable episode per process.

Human in the loop (``spec.approver``, linear and gated): CrewAI's human input on a task,
``Task(human_input=True)``: once the task's agent has its final answer, CrewAI asks the human
for feedback; an empty answer accepts it, any text is appended to the agent's conversation and
the agent redoes the work, and the human is asked again. CrewAI gets the answer from its
human-input provider (``crewai.core.providers.human_input``; the default one reads ``input()``
on the console); the episode sets its own provider for the kickoff with ``set_provider`` (the
seam CrewAI's own providers use; not in CrewAI's docs, which document only the console, AMP's
webhooks and Flows' ``@human_feedback``), and that provider runs CrewAI's feedback loop with the
approver as the human: approval is the empty answer, a rejection's reason is the feedback.
CrewAI only asks after a task's answer, so the approval of a step with a gate is asked on the
answer of the task before it: the reviewer approves the proposal that task hands on, before the
step runs (the values the step reads); it is asked inside that task, so before its guardrail
and the next task's condition (in gated, before the gate). A rejection redoes the asking task
with the reason (the gate's retry step, except where the task before the step is another one:
then that one, noted), at most ``knobs.gate_retries`` times; CrewAI's loop has no bound and no
way to refuse, so past the bound the provider raises, which CrewAI treats as an agent error
(``max_retry_limit`` re-runs of the task, refused again without asking), and the episode ends
``GATE_EXHAUSTED``. A late answer kills the process inside the asking task; the resumed run
restores the last checkpoint (written when the task before it completed), redoes the asking
task, world changes included, and asks again. delegated does not ask (``_DELEGATED_REVIEW_NOTE``).

Tools over MCP (``knobs.tool_transport`` MCP): each role's Agent gets ``mcps=[MCPServerHTTP(url=<its role's
URL>)]``, CrewAI's native MCP support (``crewai.mcp``), which CrewAI's MCP docs (overview, "Simple DSL
Integration") call the recommended approach; crewai-tools' ``MCPServerAdapter`` is the one they keep for
manual connection management, so it is not used (nor installed). CrewAI's defaults otherwise
(``cache_tools_list`` off). CrewAI lists the server's tools when each task starts (a fresh session:
initialize, ``tools/list``, close) and wraps each as an ``MCPNativeTool`` whose argument model it builds
from the input schema, named ``<server name>_<tool>`` with the server name made from the URL's host, port
and path (not its query; a name past 64 characters is cut, with a hash): the lab's URL,
``http://127.0.0.1:<port>/mcp?episode=<id>&role=<role>``, gives ``mcp_127_0_0_1_<port>_mcp_<tool>``, the
name the model reads and calls. Every call opens its own session (initialize, ``tools/call``, close); CrewAI
drops null and empty arguments before sending, retries a call that raised up to 3 times, and hands the
agent an ``isError`` result as a ``ToolFailure`` whose text is the server's. The server records each call
(the step is the role's latest model request's), and CrewAI's MCP tools never reach :meth:`CrewEpisode.run_tool`,
so nothing is recorded twice. What CrewAI 1.15.30 does with this, measured (tests/adapters/test_crewai_mcp.py):
on Python 3.11 its per-call client raises on closing the session after the server ran
the call, so the agent reads "Error executing MCP tool ...: Error during MCP client disconnect: no running
event loop" instead of the result; and in a hierarchical crew a coworker gets no MCP tools (CrewAI resolves
``Agent.mcps`` for a crew's own tasks, not for the work its manager delegates). None is compensated.
Under durability the tools stay native (``_DURABLE_NATIVE_NOTE``).

Extension point: :class:`CrewEpisode` builds and runs one episode, one method per object it
builds (``llm``, ``agent``, ``output_model``, ``step_task``, ``guardrail``, ``crew``...); a
plug-in that changes one behaviour subclasses it, overrides that method and sets
``episode_class`` on a :class:`CrewAIAdapter` subclass, without copying ``run()``.

No ``from __future__ import annotations`` here: CrewAI validates a guardrail's return
annotation at runtime and rejects it when it is a string.
"""

import atexit
import os
import shutil
import tempfile


def _offline_defaults() -> None:
    """Keep CrewAI off the network and out of the user's data dir; must run before crewai is imported."""
    for name, value in (("CREWAI_DISABLE_TELEMETRY", "true"), ("OTEL_SDK_DISABLED", "true"),
                        ("CREWAI_TRACING_ENABLED", "false"), ("CREWAI_DISABLE_VERSION_CHECK", "true")):
        os.environ.setdefault(name, value)
    if "CREWAI_STORAGE_DIR" not in os.environ:
        # An absolute path wins over ~/.local/share in CrewAI's appdirs join; CrewAI keeps its
        # kickoff-outputs SQLite file there, which nothing here reads, so it goes at exit.
        storage = tempfile.mkdtemp(prefix="coordlab-crewai-")
        os.environ["CREWAI_STORAGE_DIR"] = storage
        atexit.register(shutil.rmtree, storage, ignore_errors=True)


_offline_defaults()

import logging  # noqa: E402 - crewai must see the environment above at import time
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

from crewai import LLM, Agent, CheckpointConfig, Crew, Process, Task, TaskOutput  # noqa: E402
from crewai.core.providers.human_input import SyncHumanInputProvider, reset_provider, set_provider  # noqa: E402
from crewai.events import (  # noqa: E402
    AgentExecutionCompletedEvent, AgentExecutionErrorEvent, TaskCompletedEvent, TaskStartedEvent,
    ToolUsageStartedEvent, crewai_event_bus,
)
from crewai.mcp import MCPServerHTTP  # noqa: E402 - the config model only: the MCP SDK loads on first use
from crewai.state import JsonProvider  # noqa: E402
from crewai.tasks.conditional_task import ConditionalTask  # noqa: E402
from crewai.tools import BaseTool  # noqa: E402
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, create_model  # noqa: E402

from coordlab.tasks.schema import Gate, Step  # noqa: E402
from coordlab.tasks.tools import Tool  # noqa: E402

from .base import (  # noqa: E402
    AdapterOutcome, EpisodeSpec, FrameworkAdapter, Termination, ToolTransport, Variant, VariantSupport,
)
from .registry import register  # noqa: E402
from .toolkit import check_gate, execute_tool, expected_output, role_prompt, step_prompt  # noqa: E402

# CrewAI warns on every call that it estimates tokens for a model it does not know (the
# simulator); the lab counts tokens at the server, so the warning says nothing and would
# drown the runner's progress line.
logging.getLogger("crewai.llms.base_llm").setLevel(logging.ERROR)

TASK_CONTEXT = "task context"
"""Handoff mechanism of a sequential crew: the next Task receives its producers' outputs as context."""
DELEGATION_TOOL = "delegation tool"
"""Handoff mechanism of a hierarchical crew: the manager calls "Delegate work to coworker"."""
_DELEGATION_TOOLS = {"delegate_work_to_coworker": "task", "ask_question_to_coworker": "question"}
"""CrewAI's coworker tools (as the model sees their names) and the argument that carries the work."""

_SUPPORT = {
    Variant.LINEAR: VariantSupport(True, "Process.sequential; Task(context=[producer tasks], output_pydantic=...)"),
    Variant.GATED: VariantSupport(
        True, "Task guardrail with guardrail_max_retries on the gate's retry step (CrewAI's retry prompt, "
              "uncompensated); ConditionalTask when the retry step is the guarded step itself"),
    Variant.DELEGATED: VariantSupport(
        True, "Process.hierarchical with manager_llm: CrewAI's own manager delegates through "
              "'Delegate work to coworker'",
        "the whole task is one CrewAI Task owned by the manager, which delegates each step; the manager is "
        "CrewAI's own, so its turn limit is CrewAI's default (max_iter 25), not knobs.max_routing_turns"),
}

_CONTEXT_LOSS_NOTE = ("gated: CrewAI redid '{step}' after its guardrail rejected it; CrewAI's retry prompt replaces "
                      "the task's context (the outputs of {producers}) with the guardrail error and the previous "
                      "result, so the redo is not sent {fields} unless they are in that result (not compensated)")
_SELF_GATE_NOTE = ("gated: the gate before '{step}' names '{step}' itself as its retry step; CrewAI's guardrail "
                   "only runs after a task (after its side effect), so this gate is a ConditionalTask condition "
                   "checked once before the task, which is skipped on rejection (redoing no step cannot change "
                   "the verdict)")
_FIRST_GATE_NOTE = ("gated: the gate before '{step}' names '{step}' itself as its retry step, and '{step}' is the "
                    "first task, which CrewAI does not allow to be a ConditionalTask: this gate is not enforced")
_EARLY_GATE_NOTE = ("gated: the gate before '{before}' retries '{retry}', which is not the step right before it; "
                    "the guardrail on '{retry}' can only see values produced up to '{retry}'")
_DELEGATED_NOTE = ("delegated: one hierarchical CrewAI Task for the whole job (its description lists every step), "
                   "not one per step: the manager of each per-step Task would route the whole remaining flow "
                   "itself; CrewAI's manager (built from manager_llm) delegates each step with 'Delegate work to "
                   "coworker', whose task/context arguments are the only way values reach a coworker; the manager's "
                   "turn limit is CrewAI's default (max_iter 25), not knobs.max_routing_turns")
_UNFINISHED_NOTE = ("delegated: every step was delegated and done, but the manager never gave a final answer "
                    "before CrewAI stopped it")
CHECKPOINT_DIR = "crewai-checkpoints"
"""Where CrewAI writes an episode's checkpoints, under its durability folder."""
_RESUME_PATH = ("CrewAI checkpointing: CheckpointConfig writes a checkpoint at every task_completed; a fresh process "
                "restores the newest with Crew.from_checkpoint and kicks it off, skipping the tasks that have outputs "
                "(a hierarchical crew is one task: it starts over)")
_UNREADABLE_NOTE = ("durability: CrewAI could not restore its newest checkpoint {name} ({error}); passed over for the "
                    "one before it, as a user of `crewai checkpoint resume` would pick it")
_OTHER_CREW_NOTE = ("durability: the newest checkpoint, {name}, holds {problem}, not this crew: the crew runs "
                    "from its start")
_LOST_GATES_NOTE = ("gated: resumed from a CrewAI checkpoint, which drops callable guardrails when it writes one and "
                    "restores a ConditionalTask as a plain Task: the guardrails or conditions of {steps} did not run "
                    "after the resume (CrewAI's behaviour, not compensated)")
_DELEGATED_REVIEW_NOTE = (
    "delegated: the approver is not asked. The hierarchical crew is one CrewAI Task, whose human input would come "
    "after the manager's final answer, when every change has been made; the coworkers' delegated work is a task "
    "CrewAI builds itself, without human input: the world's changes here are made unreviewed")
_FIRST_REVIEW_NOTE = ("{variant}: the approver is not asked before '{step}': CrewAI asks for human input on a task's "
                      "answer, and '{step}' is the first task, with no answer before it: its changes are unreviewed")
_REVIEW_ORDER_NOTE = ("gated: CrewAI asks for a task's human input inside the task, before its guardrail runs and "
                      "before the next task's condition: the reviewer is asked before the gate is checked, not after")
_OTHER_REDO_NOTE = ("{variant}: the reviewer rejected '{step}', whose approval CrewAI asks on the answer of '{asked}', "
                    "the task before it; CrewAI's feedback loop redoes '{asked}' with the reason (the gate's retry "
                    "step is '{retry}')")
_REVIEW_REFUSED_NOTE = ("{variant}: the reviewer's rejections of '{step}' went past knobs.gate_retries ({retries}); "
                        "CrewAI's human feedback has no way to refuse, so the provider raised, and CrewAI re-ran "
                        "'{asked}' as after an agent error (max_retry_limit), refused again each time, before the crew "
                        "failed")
_DURABLE_NATIVE_NOTE = ("tools over native, not mcp: a durable CrewAI episode keeps the lab's native tools (the "
                        "crash-and-resume runner serves no MCP endpoint, and a checkpoint would carry the first "
                        "process's server URL)")
_UNSTRUCTURED_NOTE = ("CrewAI could not turn the answer of '{step}' into its output_pydantic model (its Converter "
                      "kept the raw text): the task hands on no structured output")


@register("crewai")
class CrewAIAdapter(FrameworkAdapter):
    """CrewAI crews (sequential or hierarchical) on CrewAI's native OpenAI client."""

    name = "crewai"

    distribution = "crewai"
    variant_support = _SUPPORT
    tool_transports = frozenset(ToolTransport)
    """Native: the lab's tools as CrewAI ``BaseTool``s. MCP: CrewAI's native MCP client, ``Agent(mcps=[...])``."""
    resume_path = _RESUME_PATH
    episode_class: type["CrewEpisode"]
    """The episode class :meth:`run` builds (set below the class; a subclass may replace it)."""

    def run(self, spec: EpisodeSpec) -> AdapterOutcome:
        """Build a fresh crew for ``spec`` and kick it off once; CrewAI's exceptions become outcomes.

        With ``spec.durability`` resuming, the crew kicked off is the one CrewAI restores from its
        newest checkpoint (:meth:`CrewEpisode.restore`), when there is one.

        The event bus is process-wide: ``scoped_handlers`` sets CrewAI's own listeners (console
        output) aside for the episode, and episodes of one process must not overlap.
        """
        started = time.perf_counter()
        with crewai_event_bus.scoped_handlers():
            episode = self.episode_class(spec)
            if spec.durability is not None and spec.durability.resume:
                episode.restore()
            built = time.perf_counter()
            termination, error = episode.kickoff()
            finished = time.perf_counter()
        return AdapterOutcome(termination, episode.final_output(), error, episode.notes,
                              (built - started) * 1000, (finished - built) * 1000, episode.resumed_from)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _CoordlabTool(BaseTool):
    """A coordlab tool as a CrewAI tool: the schema is coordlab's, execution is the shared toolkit's."""

    _run_tool: Callable[[str, dict[str, Any]], str] = PrivateAttr()

    def _run(self, **arguments: Any) -> str:
        return self._run_tool(self.name, arguments)


class ReviewRefused(Exception):
    """The reviewer rejected a step past ``knobs.gate_retries``: CrewAI's human input cannot refuse, so this ends it."""


class ApproverInput(SyncHumanInputProvider):
    """CrewAI's human-input provider with the episode's approver as the human (CrewAI's default one reads ``input()``).

    CrewAI calls :meth:`handle_feedback` once a task with ``human_input=True`` has its agent's
    final answer. This runs CrewAI's feedback loop as its console provider does (ask; an empty
    answer accepts; feedback goes into the agent's conversation, the agent redoes the work, ask
    again), through the executor context CrewAI hands its providers; only the asking is glue:
    :meth:`CrewEpisode.human_feedback`. Messages are set up as CrewAI's default provider does.
    """

    def __init__(self, episode: "CrewEpisode"):
        self.episode = episode

    def handle_feedback(self, formatted_answer: Any, context: Any) -> Any:
        answer = formatted_answer
        while context.ask_for_human_input:
            feedback = self.episode.human_feedback(context.task, answer.output)
            if not feedback.strip():
                context.ask_for_human_input = False
            else:
                context.messages.append(context._format_feedback_message(feedback))
                answer = context._invoke_loop()
        return answer


class CrewEpisode:
    """One CrewAI episode: the LLMs, agents, tasks and crew, plus what the event handlers learn while it runs.

    Construction builds everything (``llm`` → ``agent`` per role → ``step_tasks`` or
    ``job_task`` → ``build_crew``) and subscribes the handlers (``subscribe``, ``on_*``);
    :meth:`kickoff` runs the crew once and :meth:`final_output` reads its answer. Each is a
    public method a subclass may override.
    """

    def __init__(self, spec: EpisodeSpec):
        self.spec, self.task, self.knobs = spec, spec.task, spec.knobs
        self.notes: list[str] = []
        self.resumed_from: str | None = None
        """What :meth:`restore` read back, in words (None: nothing, the crew runs from its start)."""
        self._lock = threading.Lock()
        self._halted = False
        """A gate rejected a step guarded by a ConditionalTask; later conditional tasks skip too."""
        self._rejections: dict[str, int] = {}
        self._exhausted: str | None = None
        self._reviewed_after: dict[str, Step] = {}
        """With an approver: the step whose approval CrewAI asks on each task's answer, by the asking task's step."""
        self._review_rejections: dict[str, int] = {}
        self._refused: str | None = None
        self._agent_errors: dict[str, int] = {}
        self._delegations = 0
        self._done_steps: set[str] = set()
        self._models: dict[str, type[BaseModel]] = {}
        self.tools_over_mcp = spec.knobs.tool_transport is ToolTransport.MCP and spec.durability is None
        """Whether the agents reach the tools through CrewAI's MCP client (never under durability: noted)."""
        if spec.knobs.tool_transport is ToolTransport.MCP and not self.tools_over_mcp:
            self.notes.append(_DURABLE_NATIVE_NOTE)
        self.agents = {role: self.agent(role) for role in self.task.roles}
        self._roles_by_agent_id = {str(a.id): role for role, a in self.agents.items()}
        self._steps_by_task_id: dict[str, Step] = {}
        """Sequential crews only: each CrewAI Task's step (the hierarchical job Task is no step)."""
        if spec.variant is Variant.DELEGATED:
            self.crew_tasks = [self.job_task()]
            self.notes.append(_DELEGATED_NOTE)
            if spec.approver is not None:
                self.notes.append(_DELEGATED_REVIEW_NOTE)
        else:
            self.crew_tasks = self.step_tasks()
            self._steps_by_task_id = {str(t.id): s for t, s in zip(self.crew_tasks, self.task.steps)}
        self.crew = self.build_crew()
        self.subscribe()

    # -- construction ---------------------------------------------------------------------
    def llm(self, url_role: str) -> LLM:
        """CrewAI's own client on ``url_role``'s endpoint; retries/timeout only when the knobs set them."""
        options = self.knobs.client_options()
        endpoint = self.spec.endpoint
        return LLM(model=f"openai/{endpoint.model}", base_url=endpoint.base_url(url_role), api_key=endpoint.api_key,
                   temperature=self.knobs.temperature, **options)

    def tool(self, tool: Tool, role: str) -> BaseTool:
        """``tool`` for ``role``'s agent; CrewAI builds its argument model from ``Tool.json_schema()``."""
        wrapped = _CoordlabTool(name=tool.name, description=tool.description, args_schema=tool.json_schema())
        self.bind_tools([wrapped], role)
        return wrapped

    def bind_tools(self, tools: list[BaseTool] | None, role: str) -> None:
        """Make the lab's tools among ``tools`` execute on this episode's world, as ``role``'s calls."""
        for tool in tools or []:
            if isinstance(tool, _CoordlabTool):
                tool._run_tool = lambda name, arguments, role=role: self.run_tool(role, name, arguments)

    def mcp_server(self, role: str) -> MCPServerHTTP:
        """``role``'s MCP endpoint as CrewAI's own streamable-HTTP server config (CrewAI's defaults otherwise)."""
        return MCPServerHTTP(url=self.spec.endpoint.tool_url(role))

    def agent(self, role: str) -> Agent:
        """One agent per role, with its own LLM (a shared LLM double-counts CrewAI's token usage).

        Over MCP the agent's tools are CrewAI's to find: ``mcps=[its role's server]``, which CrewAI
        lists and wraps itself; a role without tools gets no server, as it gets no tools natively.
        """
        spec_role = self.task.roles[role]
        if self.tools_over_mcp:
            tools: dict[str, Any] = {"mcps": [self.mcp_server(role)] if spec_role.tools else None}
        else:
            tools = {"tools": [self.tool(self.task.tools[name], role) for name in spec_role.tools]}
        return Agent(role=role, goal=spec_role.goal, backstory=role_prompt(spec_role), llm=self.llm(role),
                     max_iter=self.knobs.max_iterations, **tools)

    def output_model(self, step: Step) -> type[BaseModel]:
        """The pydantic model of ``step``'s answer: exactly its output fields, any JSON value each."""
        if step.id not in self._models:
            fields: dict[str, Any] = {name: (Any, ...) for name in step.output_names}
            name = "".join(part.capitalize() for part in step.id.split("_")) + "Output"
            self._models[step.id] = create_model(name, __config__=ConfigDict(protected_namespaces=()), **fields)
        return self._models[step.id]

    def step_task(self, step: Step, context: list[Task], **options: Any) -> Task:
        """The CrewAI Task of one step of a sequential crew (``options``: guardrail, condition)."""
        arguments: dict[str, Any] = dict(
            description=step_prompt(self.task, step), expected_output=expected_output(step),
            agent=self.agents[step.role], context=context, output_pydantic=self.output_model(step), **options)
        if "condition" in arguments:
            return ConditionalTask(**arguments)
        return Task(**arguments)

    def step_tasks(self) -> list[Task]:
        """One Task per step; each reads its producers' outputs through ``context``; gates as guardrails."""
        tasks: list[Task] = []
        by_step: dict[str, Task] = {}
        gates = self._gates_by_retry_step() if self.spec.variant is Variant.GATED else {}
        conditional_from = len(self.task.steps)
        reviewed = self.reviewed_after()
        for index, step in enumerate(self.task.steps):
            producers = {p.id for p in (self.task.producer_of(name) for name in step.reads) if p is not None}
            options: dict[str, Any] = {}
            if step.id in reviewed:
                options["human_input"] = True
            gate = self.task.gate_before(step.id) if self.spec.variant is Variant.GATED else None
            if gate is not None and gate.retry == step.id:
                if index == 0:
                    self.notes.append(_FIRST_GATE_NOTE.format(step=step.id))
                else:
                    conditional_from = min(conditional_from, index)
                    self.notes.append(_SELF_GATE_NOTE.format(step=step.id))
            if step.id in gates:
                options.update(guardrail=self.guardrail(index, gates[step.id]),
                               guardrail_max_retries=self.knobs.gate_retries)
            if index >= conditional_from:
                options["condition"] = self.condition(index)
            created = self.step_task(step, [by_step[s.id] for s in self.task.steps if s.id in producers], **options)
            by_step[step.id] = created
            tasks.append(created)
        return tasks

    def reviewed_after(self) -> dict[str, Step]:
        """With an approver: the step with a gate after each task whose answer CrewAI asks the human about.

        CrewAI asks for human input on a task's answer, so a step is approved on the answer of
        the task before it (a first step cannot be: noted).
        """
        if self.spec.approver is None or self.spec.variant is Variant.DELEGATED:
            return {}
        steps = self.task.steps
        if steps and self.task.gate_before(steps[0].id) is not None:
            self.notes.append(_FIRST_REVIEW_NOTE.format(variant=self.spec.variant.value, step=steps[0].id))
        self._reviewed_after = {before.id: step for before, step in zip(steps, steps[1:])
                                if self.task.gate_before(step.id) is not None}
        if self._reviewed_after and self.spec.variant is Variant.GATED:
            self.notes.append(_REVIEW_ORDER_NOTE)
        return self._reviewed_after

    def _gates_by_retry_step(self) -> dict[str, list[Gate]]:
        """Gates a guardrail implements, by the step whose task carries it (the gates' retry step)."""
        position = {s.id: i for i, s in enumerate(self.task.steps)}
        found: dict[str, list[Gate]] = {}
        for gate in self.task.gates:
            if gate.retry == gate.before:
                continue
            if position[gate.retry] != position[gate.before] - 1:
                self.notes.append(_EARLY_GATE_NOTE.format(before=gate.before, retry=gate.retry))
            found.setdefault(gate.retry, []).append(gate)
        return found

    def job_task(self) -> Task:
        """The hierarchical job: one Task, no agent, so the manager chooses a coworker for every step."""
        steps = "\n".join(f"{number}. For the {step.role}: {step_prompt(self.task, step)}"
                          for number, step in enumerate(self.task.steps, 1))
        last = self.task.steps[-1]
        return Task(description=f"{self.task.description.strip()}\nThe steps, in order:\n{steps}",
                    expected_output=expected_output(last), output_pydantic=self.output_model(last))

    def build_crew(self) -> Crew:
        """The crew: sequential, or hierarchical with CrewAI's own manager on the router endpoint."""
        options: dict[str, Any] = dict(agents=list(self.agents.values()), tasks=self.crew_tasks, tracing=False)
        checkpoint = self.checkpoint_config()
        if checkpoint is not None:
            options["checkpoint"] = checkpoint
        if self.spec.variant is Variant.DELEGATED:
            return Crew(process=Process.hierarchical, manager_llm=self.llm(self.spec.router_role), **options)
        return Crew(process=Process.sequential, **options)

    def checkpoint_config(self) -> CheckpointConfig | None:
        """CrewAI's checkpointing into the episode's durability folder (None without durability).

        CrewAI's defaults otherwise: a JSON file per checkpoint, written at every ``task_completed``.
        """
        durability = self.spec.durability
        if durability is None:
            return None
        return CheckpointConfig(location=str(Path(durability.folder) / CHECKPOINT_DIR))

    # -- resuming -----------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """CrewAI's checkpoint files of this episode, newest first (the order ``crewai checkpoint resume`` uses)."""
        config = self.checkpoint_config()
        folder = Path(config.location) if config is not None else None
        if folder is None or not folder.is_dir():
            return []
        return sorted((p for p in folder.rglob("*.json") if p.is_file()),
                      key=lambda p: p.stat().st_mtime_ns, reverse=True)

    def restore(self) -> str | None:
        """Take over the crew CrewAI restores from its newest usable checkpoint; None when there is none.

        CrewAI's documented resume: ``Crew.from_checkpoint(CheckpointConfig(restore_from=file))``, then
        ``kickoff()``, which skips the tasks that have outputs. A file CrewAI cannot restore (a
        write the crash cut short) is passed over for the one before it; a checkpoint with no
        task output yet, or one of another crew, is nothing to resume from.
        """
        for path in self.checkpoints():
            try:
                restored = Crew.from_checkpoint(CheckpointConfig(restore_from=str(path)))
            except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint is passed over
                crewai_event_bus.reset_runtime_state()
                self.notes.append(_UNREADABLE_NOTE.format(name=path.name, error=_describe(exc).splitlines()[0]))
                continue
            problem = self._other_crew(restored)
            done = [t.output is not None for t in restored.tasks]
            if problem or not any(done):
                crewai_event_bus.reset_runtime_state()
                if problem:
                    self.notes.append(_OTHER_CREW_NOTE.format(name=path.name, problem=problem))
                return None
            self.adopt(restored)
            self.resumed_from = self._describe_restored(JsonProvider().extract_id(str(path)), done)
            return self.resumed_from
        return None

    def _other_crew(self, restored: Crew) -> str | None:
        """Why ``restored`` is not this episode's crew (None when its process, roles and tasks are this crew's)."""
        if restored.process != self.crew.process:
            return f"a {restored.process.value} crew"
        if sorted(a.role for a in restored.agents) != sorted(self.agents):
            return f"the agents {sorted(a.role for a in restored.agents)}"
        if [(t.description, t.expected_output) for t in restored.tasks] != \
                [(t.description, t.expected_output) for t in self.crew_tasks]:
            return f"{len(restored.tasks)} other tasks"
        return None

    def adopt(self, restored: Crew) -> None:
        """Run ``restored`` from here on, reconnected to this process: glue only.

        A checkpoint holds the first process's model clients (its endpoint) and the lab's tools
        without their bodies; the agents get this process's clients, built as in the first run,
        and the tools execute on this episode's world again. CrewAI's own losses stay: callable
        guardrails and ConditionalTask conditions do not come back (noted, not compensated).
        """
        for agent in restored.agents:
            agent.llm = self.agents[agent.role].llm
            self.bind_tools(agent.tools, agent.role)
        for crew_task in restored.tasks:
            if crew_task.agent is not None:
                self.bind_tools(crew_task.tools, crew_task.agent.role)
        if restored.process == Process.hierarchical:
            restored.manager_llm = self.crew.manager_llm
        restored.checkpoint = self.checkpoint_config()
        if self.spec.variant is Variant.GATED:
            lost = [step.id for step, built, back in zip(self.task.steps, self.crew_tasks, restored.tasks)
                    if back.output is None and ((built.guardrail is not None and back.guardrail is None)
                                                or (isinstance(built, ConditionalTask)
                                                    and not isinstance(back, ConditionalTask)))]
            if lost:
                self.notes.append(_LOST_GATES_NOTE.format(steps=", ".join(lost)))
        self.crew = restored
        self.agents = {agent.role: agent for agent in restored.agents}
        self._roles_by_agent_id = {str(a.id): role for role, a in self.agents.items()}
        self.crew_tasks = list(restored.tasks)
        if self.spec.variant is not Variant.DELEGATED:
            self._steps_by_task_id = {str(t.id): s for t, s in zip(self.crew_tasks, self.task.steps)}

    def _describe_restored(self, checkpoint_id: str, done: list[bool]) -> str:
        if self.spec.variant is Variant.DELEGATED:
            return f"CrewAI checkpoint {checkpoint_id}: the hierarchical job task's output"
        steps = [s.id for s, finished in zip(self.task.steps, done) if finished]
        text = (f"CrewAI checkpoint {checkpoint_id}: {len(steps)} of {len(done)} task outputs "
                f"({', '.join(steps)})")
        if all(done):
            return f"{text}, nothing left to run"
        return f"{text}, resumed at task '{self.task.steps[done.index(False)].id}'"

    @property
    def manager(self) -> Agent | None:
        """The manager CrewAI built for a hierarchical crew (None before kickoff and in sequential crews)."""
        return self.crew.manager_agent

    # -- what CrewAI calls synchronously ----------------------------------------------------
    def run_tool(self, role: str, name: str, arguments: dict[str, Any]) -> str:
        """Execute a tool call of ``role``'s agent; the step is the one its current CrewAI task names."""
        executor = self.agents[role].agent_executor
        current = getattr(executor, "task", None)
        step = self._step_named_in(getattr(current, "description", "") or "", role)
        return execute_tool(self.spec.world, self.spec.trace, role, step.id if step else None, name, arguments)

    def _step_named_in(self, text: str, role: str | None = None) -> Step | None:
        """The step whose marker appears last in ``text`` (only ``role``'s steps when given)."""
        candidates = [s for s in self.task.steps if role is None or s.role == role]
        found = [(text.rfind(s.marker), s) for s in candidates if s.marker in text]
        return max(found, key=lambda pair: pair[0])[1] if found else None

    def outputs_of(self, output: TaskOutput | None) -> dict[str, Any]:
        """The structured values CrewAI holds for a task's output ({} when it has none)."""
        if output is None:
            return {}
        # A TaskOutput restored from a CrewAI checkpoint holds a bare BaseModel: the checkpoint kept only the text.
        if output.pydantic is not None and type(output.pydantic) is not BaseModel:
            return output.pydantic.model_dump()
        return dict(output.json_dict or {})

    def _values_before(self, index: int) -> dict[str, Any]:
        """Task inputs plus CrewAI's structured outputs of the tasks before ``index``."""
        values: dict[str, Any] = dict(self.task.inputs)
        for crew_task in self.crew_tasks[:index]:
            values.update(self.outputs_of(crew_task.output))
        return values

    def guardrail(self, index: int, gates: list[Gate]) -> Callable[[TaskOutput], tuple[bool, Any]]:
        """The ``gates`` as one guardrail on the task of their retry step (at ``index``).

        CrewAI hands a guardrail the answer before converting it (``TaskOutput.pydantic`` is
        only set on its retries), so the guardrail validates the text against the step's
        model itself; it passes the text on, and CrewAI converts it into ``output_pydantic``.
        """
        step = self.task.steps[index]
        model = self.output_model(step)
        upstream = [name for name in step.reads if name not in self.task.inputs]

        def guardrail(output: TaskOutput) -> tuple[bool, Any]:
            values = self._values_before(index)
            if output.pydantic is not None:
                values.update(output.pydantic.model_dump())
            else:
                try:
                    values.update(model.model_validate_json(output.raw).model_dump())
                except ValidationError:
                    pass  # the gate sees the step's fields as missing
            for gate in gates:
                verdict = check_gate(self.task, self.spec.world, self.spec.trace, gate.before, values)
                if not verdict.passed:
                    break
            if verdict.passed:
                return True, output.raw
            with self._lock:
                self._rejections[step.id] = rejections = self._rejections.get(step.id, 0) + 1
            if rejections <= self.knobs.gate_retries:
                self.spec.trace.retry(step.id, "framework", "gate rejected", step.role)
                if rejections == 1 and upstream:
                    producers = sorted({p.id for p in map(self.task.producer_of, upstream) if p is not None})
                    self.notes.append(_CONTEXT_LOSS_NOTE.format(
                        step=step.id, producers=", ".join(producers), fields=", ".join(upstream)))
            else:
                self._exhausted = step.id
            return False, verdict.message

        return guardrail

    def condition(self, index: int) -> Callable[[TaskOutput], bool]:
        """ConditionalTask condition: no earlier gate halted the flow, and this step's own gate passes."""
        step = self.task.steps[index]

        def condition(_previous: TaskOutput) -> bool:
            if self._halted:
                return False
            gate = self.task.gate_before(step.id)
            if gate is not None and gate.retry == step.id:
                verdict = check_gate(self.task, self.spec.world, self.spec.trace, step.id, self._values_before(index))
                self._halted = not verdict.passed
            return not self._halted

        return condition

    def human_feedback(self, crew_task: Any, output: Any) -> str:
        """The approver's answer when CrewAI asks for human input on ``crew_task``'s answer ``output``, in its form.

        The approver is asked about the step after the task, with the values that step reads
        (task inputs, earlier tasks' outputs, this answer). Approval is the empty answer; a
        rejection's reason is the feedback CrewAI redoes the task with; past ``knobs.gate_retries``
        rejections it raises :class:`ReviewRefused`, and again whenever CrewAI asks once more.
        """
        asking = self._step_of_task(crew_task)
        step = self._reviewed_after.get(asking.id) if asking is not None else None
        if asking is None or step is None or self.spec.approver is None:
            return ""
        if self._refused == step.id:
            raise ReviewRefused(f"the reviewer rejected '{step.id}' past knobs.gate_retries")
        index = self.task.steps.index(asking)
        values = self._values_before(index)
        values.update(self._answer_values(asking, output))
        review = self.spec.approver.review(step.id, {name: values.get(name) for name in step.reads})
        self.spec.trace.gate(step.id, review.approved, review.reason)
        if review.approved:
            return ""
        with self._lock:
            self._review_rejections[step.id] = rejections = self._review_rejections.get(step.id, 0) + 1
        variant = self.spec.variant.value
        if rejections > self.knobs.gate_retries:
            self._refused = self._exhausted = step.id
            self.notes.append(_REVIEW_REFUSED_NOTE.format(variant=variant, step=step.id, asked=asking.id,
                                                          retries=self.knobs.gate_retries))
            raise ReviewRefused(f"the reviewer rejected '{step.id}' past knobs.gate_retries")
        self.spec.trace.retry(asking.id, "framework", "rejected by the reviewer", asking.role)
        retry = self.task.gate_before(step.id).retry
        if rejections == 1 and retry != asking.id:
            self.notes.append(_OTHER_REDO_NOTE.format(variant=variant, step=step.id, asked=asking.id, retry=retry))
        return review.reason or "Rejected by the reviewer."

    def _answer_values(self, step: Step, output: Any) -> dict[str, Any]:
        """The step's fields in an agent's final answer (before CrewAI converts it); {} when it holds none."""
        if isinstance(output, BaseModel):
            return output.model_dump()
        try:
            return self.output_model(step).model_validate_json(str(output)).model_dump()
        except ValidationError:
            return {}

    def human_input_provider(self) -> ApproverInput | None:
        """The provider CrewAI asks for human input during the kickoff (None: no approver, CrewAI's own)."""
        return ApproverInput(self) if self._reviewed_after else None

    # -- event bus ----------------------------------------------------------------------------
    def subscribe(self) -> None:
        """Handlers for this episode's crew (the caller holds ``scoped_handlers``, so they end with it)."""
        crewai_event_bus.on(TaskStartedEvent)(self.on_task_started)
        crewai_event_bus.on(TaskCompletedEvent)(self.on_task_completed)
        crewai_event_bus.on(AgentExecutionErrorEvent)(self.on_agent_error)
        if self.spec.variant is Variant.DELEGATED:
            crewai_event_bus.on(ToolUsageStartedEvent)(self.on_tool_started)
            crewai_event_bus.on(AgentExecutionCompletedEvent)(self.on_agent_completed)

    def _step_of_task(self, crew_task: Any) -> Step | None:
        return self._steps_by_task_id.get(str(getattr(crew_task, "id", "")))

    def on_task_started(self, _source: Any, event: TaskStartedEvent) -> None:
        """A sequential task boundary: the work passes to this step's agent with its context."""
        step = self._step_of_task(event.task)
        if step is None:
            return
        index = self.task.steps.index(step)
        previous = self.task.steps[index - 1].role if index else None
        if previous != step.role:
            self.spec.trace.handoff(previous, step.role, TASK_CONTEXT, step.id)

    def on_task_completed(self, _source: Any, event: TaskCompletedEvent) -> None:
        """A sequential step's structured output, as CrewAI converted it."""
        step = self._step_of_task(event.task)
        if step is None:
            return
        if event.output.pydantic is None and event.output.json_dict is None:
            self.notes.append(_UNSTRUCTURED_NOTE.format(step=step.id))
        self.spec.trace.step_output(step.role, step.id, self.outputs_of(event.output))

    def on_agent_error(self, _source: Any, event: AgentExecutionErrorEvent) -> None:
        """CrewAI re-runs a failed agent execution until ``max_retry_limit`` errors: each of those is a retry."""
        role = self._roles_by_agent_id.get(str(event.agent.id))
        step = self._step_named_in(getattr(event.task, "description", "") or "", role) if role else None
        if role is None and self.manager is not None and event.agent.id == self.manager.id:
            role = self.spec.router_role  # the manager's job names every step: attribute it to none
        if role is None:
            return
        with self._lock:
            self._agent_errors[role] = count = self._agent_errors.get(role, 0) + 1
        if count <= event.agent.max_retry_limit:
            self.spec.trace.retry(step.id if step else None, "framework",
                                  f"agent re-ran its task after: {event.error}", role)

    def on_tool_started(self, _source: Any, event: ToolUsageStartedEvent) -> None:
        """A delegation by the manager: a handoff when the named coworker exists in the crew."""
        work_argument = _DELEGATION_TOOLS.get(event.tool_name)
        if self.manager is None or event.agent_role != self.manager.role or work_argument is None:
            return
        with self._lock:
            self._delegations += 1
        arguments = event.tool_args if isinstance(event.tool_args, dict) else {}
        # CrewAI matches the coworker case- and whitespace-insensitively, quotes removed.
        target = " ".join(str(arguments.get("coworker") or "").split()).replace('"', "").casefold()
        role = next((r for r in self.task.roles if r.casefold() == target), None)
        if role is not None:
            step = self._step_named_in(str(arguments.get(work_argument) or ""))
            self.spec.trace.handoff(self.spec.router_role, role, DELEGATION_TOOL, step.id if step else None)

    def on_agent_completed(self, _source: Any, event: AgentExecutionCompletedEvent) -> None:
        """A coworker finished a delegated piece of work: the output of the step its task names.

        CrewAI's delegation task has no output model, so the coworker's answer is text; the
        trace records it validated against the step's model ({} when it does not validate).
        """
        role = self._roles_by_agent_id.get(str(event.agent.id))
        step = self._step_named_in(getattr(event.task, "description", "") or "") if role else None
        if role is None or step is None:
            return
        try:
            outputs = self.output_model(step).model_validate_json(event.output).model_dump()
        except ValidationError:
            outputs = {}
        self.spec.trace.step_output(role, step.id, outputs)
        if step.role == role:
            with self._lock:
                self._done_steps.add(step.id)

    # -- running --------------------------------------------------------------------------------
    def kickoff(self) -> tuple[Termination, str | None]:
        """Run the crew once and map how it ended onto the shared termination enum.

        With an approver, CrewAI's human-input provider is this episode's for the kickoff only.
        """
        provider = self.human_input_provider()
        token = set_provider(provider) if provider is not None else None
        try:
            self.crew.kickoff()
            termination, error = self._ended_normally(), None
        except Exception as exc:  # noqa: BLE001 - every CrewAI failure is an outcome of the episode
            # CrewAI raises once a guardrail is out of retries; that is the gate's verdict, not an error.
            termination = Termination.GATE_EXHAUSTED if self._exhausted else Termination.ERROR
            error = None if self._exhausted else _describe(exc)
        finally:
            crewai_event_bus.flush()
            if token is not None:
                reset_provider(token)
        if self.spec.variant is Variant.DELEGATED:
            if termination is Termination.COMPLETED:
                termination = self._delegated_end()
            elif len(self._done_steps) == len(self.task.steps):
                self.notes.append(_UNFINISHED_NOTE)
        return termination, error

    def _ended_normally(self) -> Termination:
        return Termination.GATE_EXHAUSTED if self._halted else Termination.COMPLETED

    def _delegated_end(self) -> Termination:
        """The manager answered: every step done, or it ran out of turns, or it stopped early."""
        if len(self._done_steps) == len(self.task.steps):
            return Termination.COMPLETED
        manager = self.manager
        if manager is not None and self._delegations >= manager.max_iter:
            return Termination.MAX_TURNS
        return Termination.ROUTED_OUT

    def final_output(self) -> dict[str, Any]:
        """The last task's structured answer as CrewAI holds it (a skipped or unfinished task holds nothing)."""
        return self.outputs_of(self.crew_tasks[-1].output)


CrewAIAdapter.episode_class = CrewEpisode
