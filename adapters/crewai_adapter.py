"""The CrewAI adapter: the task wired as a Crew, run by CrewAI's own agents, tasks and LLM client.

linear is ``Process.sequential`` with one CrewAI ``Task`` per step, upstream values passed
by ``Task(context=[producer tasks])``. gated adds CrewAI's ``Task`` guardrail on each
gate's retry step (and a ``ConditionalTask`` when a gate's retry step is the guarded step
itself). delegated is ``Process.hierarchical``: a manager agent on the router endpoint
hands every step to a coworker through CrewAI's "Delegate work to coworker" tool.

Tools, gates and output parsing are the shared :mod:`toolkit`'s; the trace is read off
CrewAI's event bus where an event exists, and recorded inline where CrewAI calls our code
synchronously (tools, guardrails, conditions), so those timestamps are exact.

Retries in CrewAI come in three layers, and only two reach this trace: the openai SDK's
HTTP retries (counted by the simulator from ``x-stainless-retry-count``), an agent re-running
its whole task after an exception (``max_retry_limit``, CrewAI's default 2; recorded from
``AgentExecutionErrorEvent``), and ``BaseLLM.call``'s own rate-limit re-sends after the SDK
gives up on a 429 (up to 3 attempts, no event marks them; the simulator sees fresh requests).

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

import json  # noqa: E402 - crewai must see the environment above at import time
import logging  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

from crewai import LLM, Agent, Crew, Process, Task, TaskOutput  # noqa: E402
from crewai.events import (  # noqa: E402
    AgentExecutionCompletedEvent, AgentExecutionErrorEvent, TaskCompletedEvent, TaskStartedEvent,
    ToolUsageStartedEvent, crewai_event_bus,
)
from crewai.tasks.conditional_task import ConditionalTask  # noqa: E402
from crewai.tools import BaseTool  # noqa: E402
from crewai.utilities.i18n import get_i18n  # noqa: E402
from pydantic import PrivateAttr  # noqa: E402

from coordlab.tasks.schema import Gate, Step  # noqa: E402
from coordlab.tasks.tools import Tool  # noqa: E402

from .base import AdapterOutcome, EpisodeSpec, FrameworkAdapter, Termination, Variant, VariantSupport  # noqa: E402
from .registry import register  # noqa: E402
from .toolkit import (  # noqa: E402
    check_gate, execute_tool, expected_output, parse_output, role_prompt, step_prompt,
)

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
    Variant.LINEAR: VariantSupport(True, "Process.sequential; Task(context=[producer tasks])"),
    Variant.GATED: VariantSupport(
        True, "Task guardrail with guardrail_max_retries on the gate's retry step; ConditionalTask "
              "when the retry step is the guarded step itself",
        "on a guardrail retry CrewAI replaces the task's upstream context with the guardrail error, "
        "so the error text carries the upstream values the retried step reads"),
    Variant.DELEGATED: VariantSupport(
        True, "Process.hierarchical; manager agent with CrewAI's 'Delegate work to coworker' tool",
        "the whole task is one CrewAI Task owned by the manager, which delegates each step"),
}

_GATED_NOTE = ("gated: a rejected step is redone by CrewAI's Task guardrail retry, whose prompt replaces the "
               "upstream task context with the guardrail error and the previous result; the guardrail error "
               "therefore carries, as JSON, the upstream values the retried step reads")
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
                   "itself; it delegates each step with 'Delegate work to coworker', whose task/context "
                   "arguments are the only way values reach a coworker")
_UNFINISHED_NOTE = ("delegated: every step was delegated and done, but the manager never gave a final answer "
                    "before CrewAI stopped it")
_WINDOW_NOTE = ("respect_context_window=False: CrewAI's proactive summarisation needs a token count, which on a "
                "custom base_url is an estimate logged as a warning on every call; prompts here stay far below "
                "any context window")


@register("crewai")
class CrewAIAdapter(FrameworkAdapter):
    """CrewAI crews (sequential or hierarchical) on CrewAI's native OpenAI client."""

    name = "crewai"

    distribution = "crewai"
    variant_support = _SUPPORT

    def run(self, spec: EpisodeSpec) -> AdapterOutcome:
        """Build a fresh crew for ``spec`` and kick it off once; CrewAI's exceptions become outcomes.

        The event bus is process-wide: ``scoped_handlers`` sets CrewAI's own listeners (console
        output) aside for the episode, and episodes of one process must not overlap.
        """
        started = time.perf_counter()
        with crewai_event_bus.scoped_handlers():
            episode = _CrewEpisode(spec)
            built = time.perf_counter()
            termination, error = episode.kickoff()
            finished = time.perf_counter()
        return AdapterOutcome(termination, episode.final_output(), error, episode.notes,
                              (built - started) * 1000, (finished - built) * 1000)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _CoordlabTool(BaseTool):
    """A coordlab tool as a CrewAI tool: the schema is coordlab's, execution is the shared toolkit's."""

    _run_tool: Callable[[str, dict[str, Any]], str] = PrivateAttr()

    def _run(self, **arguments: Any) -> str:
        return self._run_tool(self.name, arguments)


def _crewai_tool(tool: Tool, run_tool: Callable[[str, dict[str, Any]], str]) -> _CoordlabTool:
    """Wrap ``tool``; CrewAI builds its argument model from the JSON schema of ``Tool.parameters``."""
    wrapped = _CoordlabTool(name=tool.name, description=tool.description, args_schema=tool.json_schema())
    wrapped._run_tool = run_tool
    return wrapped


class _CrewEpisode:
    """One episode: the LLMs, agents, tasks and crew, plus what the event handlers learn while it runs."""

    def __init__(self, spec: EpisodeSpec):
        self.spec, self.task, self.knobs = spec, spec.task, spec.knobs
        self.notes: list[str] = [_WINDOW_NOTE]
        self._lock = threading.Lock()
        self._halted = False
        """A gate rejected a step guarded by a ConditionalTask; later conditional tasks skip too."""
        self._rejections: dict[str, int] = {}
        self._exhausted: str | None = None
        self._agent_errors: dict[str, int] = {}
        self._delegations = 0
        self._done_steps: set[str] = set()
        self.agents = {role: self._agent(role) for role in self.task.roles}
        self._roles_by_agent_id = {str(a.id): role for role, a in self.agents.items()}
        self.manager: Agent | None = None
        self._steps_by_task_id: dict[str, Step] = {}
        """Sequential crews only: each CrewAI Task's step (the hierarchical job Task is no step)."""
        if spec.variant is Variant.DELEGATED:
            self.crew_tasks = self._job_task()
            self.crew = self._hierarchical_crew()
            self.notes.append(_DELEGATED_NOTE)
        else:
            self.crew_tasks = self._step_tasks()
            self._steps_by_task_id = {str(t.id): s for t, s in zip(self.crew_tasks, self.task.steps)}
            self.crew = Crew(agents=list(self.agents.values()), tasks=self.crew_tasks, process=Process.sequential,
                             memory=False, cache=False, tracing=False, verbose=False)
        self._subscribe()

    # -- construction ---------------------------------------------------------------------
    def _llm(self, url_role: str) -> LLM:
        """CrewAI's own client on ``url_role``'s endpoint; retries/timeout only when the knobs set them."""
        options: dict[str, Any] = {}
        if self.knobs.client_max_retries is not None:
            options["max_retries"] = self.knobs.client_max_retries
        if self.knobs.client_timeout is not None:
            options["timeout"] = self.knobs.client_timeout
        endpoint = self.spec.endpoint
        return LLM(model=f"openai/{endpoint.model}", base_url=endpoint.base_url(url_role), api_key=endpoint.api_key,
                   temperature=self.knobs.temperature, **options)

    def _agent(self, role: str) -> Agent:
        spec_role = self.task.roles[role]
        run_tool = lambda name, arguments: self._run_tool(role, name, arguments)  # noqa: E731
        return Agent(role=role, goal=spec_role.goal, backstory=role_prompt(spec_role), llm=self._llm(role),
                     tools=[_crewai_tool(self.task.tools[name], run_tool) for name in spec_role.tools],
                     max_iter=self.knobs.max_iterations, allow_delegation=False, respect_context_window=False,
                     memory=False, verbose=False)

    def _step_tasks(self) -> list[Task]:
        """One Task per step; each reads its producers' outputs through ``context``; gates as guardrails."""
        tasks: list[Task] = []
        by_step: dict[str, Task] = {}
        gates = self._gates_by_retry_step() if self.spec.variant is Variant.GATED else {}
        conditional_from = len(self.task.steps)
        for index, step in enumerate(self.task.steps):
            producers = {p.id for p in (self.task.producer_of(name) for name in step.reads) if p is not None}
            options: dict[str, Any] = dict(
                description=step_prompt(self.task, step), expected_output=expected_output(step),
                agent=self.agents[step.role], context=[by_step[s.id] for s in self.task.steps if s.id in producers])
            gate = self.task.gate_before(step.id) if self.spec.variant is Variant.GATED else None
            if gate is not None and gate.retry == step.id:
                if index == 0:
                    self.notes.append(_FIRST_GATE_NOTE.format(step=step.id))
                else:
                    conditional_from = min(conditional_from, index)
                    self.notes.append(_SELF_GATE_NOTE.format(step=step.id))
            if step.id in gates:
                options.update(guardrail=self._guardrail(index, gates[step.id]),
                               guardrail_max_retries=self.knobs.gate_retries)
            if index >= conditional_from:
                created: Task = ConditionalTask(condition=self._condition(index), **options)
            else:
                created = Task(**options)
            by_step[step.id] = created
            tasks.append(created)
        if gates:
            self.notes.append(_GATED_NOTE)
        return tasks

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

    def _job_task(self) -> list[Task]:
        """The hierarchical job: one Task, no agent, so the manager chooses a coworker for every step."""
        steps = "\n".join(f"{number}. For the {step.role}: {step_prompt(self.task, step)}"
                          for number, step in enumerate(self.task.steps, 1))
        description = f"{self.task.description.strip()}\nThe steps, in order:\n{steps}"
        return [Task(description=description, expected_output=expected_output(self.task.steps[-1]))]

    def _hierarchical_crew(self) -> Crew:
        """A crew whose manager (CrewAI's own role, goal and backstory) runs on the router endpoint."""
        i18n = get_i18n()
        self.manager = Agent(
            role=i18n.retrieve("hierarchical_manager_agent", "role"),
            goal=i18n.retrieve("hierarchical_manager_agent", "goal"),
            backstory=i18n.retrieve("hierarchical_manager_agent", "backstory"),
            llm=self._llm(self.spec.router_role), allow_delegation=True, max_iter=self.knobs.max_routing_turns,
            respect_context_window=False, memory=False, verbose=False)
        return Crew(agents=list(self.agents.values()), tasks=self.crew_tasks, process=Process.hierarchical,
                    manager_agent=self.manager, memory=False, cache=False, tracing=False, verbose=False)

    # -- what CrewAI calls synchronously ----------------------------------------------------
    def _run_tool(self, role: str, name: str, arguments: dict[str, Any]) -> str:
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

    def _values_before(self, index: int) -> dict[str, Any]:
        """Task inputs plus the parsed outputs CrewAI holds for the tasks before ``index``."""
        values: dict[str, Any] = dict(self.task.inputs)
        for crew_task in self.crew_tasks[:index]:
            if crew_task.output is not None:
                values.update(parse_output(crew_task.output.raw))
        return values

    def _guardrail(self, index: int, gates: list[Gate]) -> Callable[[TaskOutput], tuple[bool, Any]]:
        """The ``gates`` as one guardrail on the task of their retry step (at ``index``); the first rejection counts."""
        step = self.task.steps[index]
        upstream = [name for name in step.reads if name not in self.task.inputs]

        def guardrail(output: TaskOutput) -> tuple[bool, Any]:
            values = self._values_before(index)
            values.update(parse_output(output.raw))
            for gate in gates:
                verdict = check_gate(self.task, self.spec.world, self.spec.trace, gate.before, values)
                if not verdict.passed:
                    break
            if verdict.passed:
                return True, output
            with self._lock:
                self._rejections[step.id] = rejections = self._rejections.get(step.id, 0) + 1
            if rejections <= self.knobs.gate_retries:
                self.spec.trace.retry(step.id, "framework", "gate rejected", step.role)
            else:
                self._exhausted = step.id
            carried = {name: values[name] for name in upstream if name in values}
            return False, (f"{verdict.message}\nThe values from earlier steps to work from: {json.dumps(carried)}"
                           if carried else verdict.message)

        return guardrail

    def _condition(self, index: int) -> Callable[[TaskOutput], bool]:
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

    # -- event bus ----------------------------------------------------------------------------
    def _subscribe(self) -> None:
        """Handlers for this episode's crew (the caller holds ``scoped_handlers``, so they end with it)."""
        crewai_event_bus.on(TaskStartedEvent)(self._on_task_started)
        crewai_event_bus.on(TaskCompletedEvent)(self._on_task_completed)
        crewai_event_bus.on(AgentExecutionErrorEvent)(self._on_agent_error)
        if self.spec.variant is Variant.DELEGATED:
            crewai_event_bus.on(ToolUsageStartedEvent)(self._on_tool_started)
            crewai_event_bus.on(AgentExecutionCompletedEvent)(self._on_agent_completed)

    def _step_of_task(self, crew_task: Any) -> Step | None:
        return self._steps_by_task_id.get(str(getattr(crew_task, "id", "")))

    def _on_task_started(self, _source: Any, event: TaskStartedEvent) -> None:
        """A sequential task boundary: the work passes to this step's agent with its context."""
        step = self._step_of_task(event.task)
        if step is None:
            return
        index = self.task.steps.index(step)
        previous = self.task.steps[index - 1].role if index else None
        if previous != step.role:
            self.spec.trace.handoff(previous, step.role, TASK_CONTEXT, step.id)

    def _on_task_completed(self, _source: Any, event: TaskCompletedEvent) -> None:
        step = self._step_of_task(event.task)
        if step is not None:
            self.spec.trace.step_output(step.role, step.id, parse_output(event.output.raw))

    def _on_agent_error(self, _source: Any, event: AgentExecutionErrorEvent) -> None:
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

    def _on_tool_started(self, _source: Any, event: ToolUsageStartedEvent) -> None:
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

    def _on_agent_completed(self, _source: Any, event: AgentExecutionCompletedEvent) -> None:
        """A coworker finished a delegated piece of work: the output of the step its task names."""
        role = self._roles_by_agent_id.get(str(event.agent.id))
        step = self._step_named_in(getattr(event.task, "description", "") or "") if role else None
        if role is None or step is None:
            return
        self.spec.trace.step_output(role, step.id, parse_output(event.output))
        if step.role == role:
            with self._lock:
                self._done_steps.add(step.id)

    # -- running --------------------------------------------------------------------------------
    def kickoff(self) -> tuple[Termination, str | None]:
        """Run the crew once and map how it ended onto the shared termination enum."""
        try:
            self.crew.kickoff()
            termination, error = self._ended_normally(), None
        except Exception as exc:  # noqa: BLE001 - every CrewAI failure is an outcome of the episode
            # CrewAI raises once a guardrail is out of retries; that is the gate's verdict, not an error.
            termination = Termination.GATE_EXHAUSTED if self._exhausted else Termination.ERROR
            error = None if self._exhausted else _describe(exc)
        finally:
            crewai_event_bus.flush()
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
        if self._delegations >= self.knobs.max_routing_turns:
            return Termination.MAX_TURNS
        return Termination.ROUTED_OUT

    def final_output(self) -> dict[str, Any]:
        """The last task's answer as CrewAI holds it (a skipped or unfinished task holds nothing)."""
        last = self.crew_tasks[-1].output
        return parse_output(last.raw) if last is not None else {}
