"""LangGraph: the task as a ``StateGraph`` whose typed state carries every value handed on.

LangGraph has no model client of its own, so every node calls the official ``openai`` SDK
directly (one client per role per episode, the same :func:`run_agent` loop as the plain
reference), not ``langchain-openai``: the wire format stays identical to the other
adapters and only the wiring is LangGraph's. The graph state IS the handoff mechanism:
a step node reads the fields it needs from ``state["values"]`` and writes its outputs
back through a merge reducer, so a value a node failed to produce is really absent for
the next one.

- linear: one node per step, straight edges ``START -> step1 -> ... -> END``.
- gated: a verify node in front of each gated step; a conditional edge goes on to the
  step, back to the entry of the gate's retry step (with the rejection in state), or to
  ``END`` once ``knobs.gate_retries`` rejections are spent.
- delegated: a supervisor node asks the routing model (``transfer_to_<role>`` tools) and
  returns ``Command(goto=<worker node>)`` or ``Command(goto=END)``; every worker runs its
  role's next pending step and returns to the supervisor by a fixed edge.

No node ``RetryPolicy`` is set: its default ``retry_on`` would re-run nodes on openai 4xx
errors too, and transport retries belong to the SDK, as in every other adapter.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Callable, TypedDict

import openai
from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphRecursionError
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command

from coordlab.tasks.schema import Gate, Step

from .base import AdapterOutcome, EpisodeSpec, FrameworkAdapter, Termination, Variant, VariantSupport
from .openai_loop import complete, openai_clients, run_agent
from .registry import register
from .toolkit import (
    check_gate, execute_tool, parse_output, role_prompt, routed_role, routing_messages, routing_tools, step_prompt,
    tool_specs,
)

_CLIENT = "nodes call the official openai SDK directly (no langchain-openai); values travel in graph state"
_SUPPORT = {
    Variant.LINEAR: VariantSupport(True, "StateGraph: one node per step, straight edges", _CLIENT),
    Variant.GATED: VariantSupport(
        True, "StateGraph: verify node + conditional edge (pass / back to the retry step / END)", _CLIENT),
    Variant.DELEGATED: VariantSupport(
        True, "StateGraph: supervisor node routing with Command(goto=...) from transfer_to_<role> tools", _CLIENT),
}

_PASS, _RETRY, _EXHAUSTED = "pass", "retry", "exhausted"
"""What a verify node decided; the conditional edge after it maps each to a node."""
_SUPERVISOR = "supervisor"


def _merged(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """State reducer: a node's update adds or overrides fields instead of replacing the dict."""
    return {**left, **right}


class GraphState(TypedDict, total=False):
    """What flows along the graph's edges."""

    values: Annotated[dict[str, Any], _merged]
    """Task inputs plus every field a step has produced (later outputs override)."""
    outputs: Annotated[dict[str, dict[str, Any]], _merged]
    """Each step's outputs as parsed from its answer, by step id."""
    last_role: str | None
    """The role whose node ran last (linear and gated): a role change is a handoff."""
    feedback: str
    """A gate's rejection message, for the next step node to read once."""
    verdict: str
    """The last verify node's decision (``pass``, ``retry``, ``exhausted``)."""
    rejections: Annotated[dict[str, int], _merged]
    """Rejections so far per gate (keyed by the guarded step)."""
    turns: int
    """Routing decisions the supervisor has taken."""
    termination: Termination
    """Set by the node that ends the flow when the end is not a plain completion."""


@register("langgraph")
class LangGraphAdapter(FrameworkAdapter):
    """LangGraph ``StateGraph`` with nodes on the official openai SDK."""

    name = "langgraph"

    distribution = "langgraph"
    variant_support = _SUPPORT  # every variant maps onto a primitive: edge, conditional edge, Command

    def run(self, spec: EpisodeSpec) -> AdapterOutcome:
        """Build the graph for the variant, stream it to the end, map how it ended."""
        started = time.perf_counter()
        episode = _GraphEpisode(spec)
        built = time.perf_counter()
        error: str | None = None
        try:
            episode.run_to_end()
            termination = episode.state.get("termination", Termination.COMPLETED)
        except GraphRecursionError as exc:
            termination, error = Termination.MAX_TURNS, f"GraphRecursionError: {exc}"
        except openai.OpenAIError as exc:
            termination, error = Termination.ERROR, f"{type(exc).__name__}: {exc}"
        finally:
            episode.close()
        return AdapterOutcome(termination, episode.final_output(), error, [],
                              (built - started) * 1000, (time.perf_counter() - built) * 1000)


class _GraphEpisode:
    """One episode: its clients, its compiled graph, and the last state the graph streamed."""

    def __init__(self, spec: EpisodeSpec):
        self.spec, self.task, self.knobs = spec, spec.task, spec.knobs
        self.clients = openai_clients(spec)
        build: dict[Variant, Callable[[], tuple[CompiledStateGraph, int]]] = {
            Variant.LINEAR: self._linear, Variant.GATED: self._gated, Variant.DELEGATED: self._delegated}
        self.graph, self.recursion_limit = build[spec.variant]()
        self.state: GraphState = {"values": dict(self.task.inputs), "outputs": {}, "last_role": None,
                                  "feedback": "", "verdict": "", "rejections": {}, "turns": 0}

    def run_to_end(self) -> None:
        """Stream the graph, keeping each full state snapshot so a run cut short still has its outputs."""
        config: RunnableConfig = {"recursion_limit": self.recursion_limit}
        for snapshot in self.graph.stream(self.state, config, stream_mode="values"):
            self.state = snapshot

    def close(self) -> None:
        """Release every client's connection pool."""
        for client in self.clients.values():
            client.close()

    def final_output(self) -> dict[str, Any]:
        """The last step's outputs, as the graph state holds them."""
        return dict(self.state.get("outputs", {}).get(self.task.steps[-1].id, {}))

    # -- the work of one step (shared by every variant) -----------------------------------------
    def _run_step(self, step: Step, state: GraphState, handoff: str | None) -> GraphState:
        """Prompt the step's role with the values in state; the update hands its outputs on.

        ``handoff`` names the mechanism to record when the role changes (None: the caller
        already recorded the handoff, as the supervisor does).
        """
        trace, world = self.spec.trace, self.spec.world
        previous = state.get("last_role")
        if handoff is not None and previous != step.role:
            trace.handoff(previous, step.role, handoff, step.id)
        feedback = state.get("feedback", "")
        prompt = step_prompt(self.task, step, state["values"]) + (f"\n{feedback}" if feedback else "")
        messages = [{"role": "system", "content": role_prompt(self.task.roles[step.role])},
                    {"role": "user", "content": prompt}]
        answer = run_agent(self.clients[step.role], self.spec.endpoint.model, messages,
                           tool_specs(self.task, step.role),
                           lambda name, args: execute_tool(world, trace, step.role, step.id, name, args),
                           self.knobs.max_iterations, temperature=self.knobs.temperature)
        outputs = parse_output(answer)
        trace.step_output(step.role, step.id, outputs)
        return {"values": outputs, "outputs": {step.id: outputs}, "last_role": step.role, "feedback": ""}

    def _step_node(self, step: Step) -> Callable[[GraphState], GraphState]:
        def node(state: GraphState) -> GraphState:
            return self._run_step(step, state, "edge")
        return node

    # -- linear ------------------------------------------------------------------------------------
    def _linear(self) -> tuple[CompiledStateGraph, int]:
        """``START -> s1 -> ... -> sN -> END``; N node supersteps."""
        graph = StateGraph(GraphState)
        previous = START
        for step in self.task.steps:
            graph.add_node(f"step.{step.id}", self._step_node(step))
            graph.add_edge(previous, f"step.{step.id}")
            previous = f"step.{step.id}"
        graph.add_edge(previous, END)
        return graph.compile(), _limit(len(self.task.steps))

    # -- gated -------------------------------------------------------------------------------------
    def _gated(self) -> tuple[CompiledStateGraph, int]:
        """The linear chain with ``verify.<step>`` in front of every gated step.

        A rejection goes back to the *entry* of the retry step (its own verify node when it
        is gated itself), so no path reaches a mutating step without passing its gate; when
        the retry step is the guarded step, the verify node loops onto itself and re-checks
        unchanged values, as the plain reference does.
        """
        graph = StateGraph(GraphState)
        order: list[tuple[str, Gate | None]] = []  # (node, the gate it applies), in flow order
        entry: dict[str, str] = {}  # step id -> the first node of that step
        for step in self.task.steps:
            gate = self.task.gate_before(step.id)
            if gate is not None:
                order.append((f"verify.{step.id}", gate))
                graph.add_node(f"verify.{step.id}", self._verify_node(step, gate))
            order.append((f"step.{step.id}", None))
            graph.add_node(f"step.{step.id}", self._step_node(step))
            entry[step.id] = f"verify.{step.id}" if gate is not None else f"step.{step.id}"
        names = [node for node, _ in order]
        graph.add_edge(START, names[0])
        supersteps = len(order)
        for index, (node, gate) in enumerate(order):
            following = names[index + 1] if index + 1 < len(names) else END
            if gate is None:
                graph.add_edge(node, following)
                continue
            back = entry[gate.retry]
            graph.add_conditional_edges(node, _read_verdict, {_PASS: following, _RETRY: back, _EXHAUSTED: END})
            # each rejection costs this visit plus the nodes from the retry entry up to here
            supersteps += self.knobs.gate_retries * (1 + index - names.index(back))
        return graph.compile(), _limit(supersteps)

    def _verify_node(self, guarded: Step, gate: Gate) -> Callable[[GraphState], GraphState]:
        retry_role = self.task.step(gate.retry).role

        def verify(state: GraphState) -> GraphState:
            """Apply the shared gate to the values in state; count rejections against the bound."""
            verdict = check_gate(self.task, self.spec.world, self.spec.trace, guarded.id, state["values"])
            if verdict.passed:
                return {"verdict": _PASS}
            rejected = state.get("rejections", {}).get(guarded.id, 0)
            if rejected >= self.knobs.gate_retries:
                return {"verdict": _EXHAUSTED, "termination": Termination.GATE_EXHAUSTED}
            self.spec.trace.retry(gate.retry, "framework", "gate rejected", retry_role)
            return {"verdict": _RETRY, "feedback": verdict.message, "rejections": {guarded.id: rejected + 1}}
        return verify

    # -- delegated ---------------------------------------------------------------------------------
    def _delegated(self) -> tuple[CompiledStateGraph, int]:
        """``START -> supervisor``; the supervisor's Command picks a worker or END; workers return."""
        graph = StateGraph(GraphState)
        workers = {role: f"worker.{role}" for role in self.task.roles}
        graph.add_node(_SUPERVISOR, self._supervisor_node(workers), destinations=(*workers.values(), END))
        for role, node in workers.items():
            graph.add_node(node, self._worker_node(role))
            graph.add_edge(node, _SUPERVISOR)
        graph.add_edge(START, _SUPERVISOR)
        # per turn one supervisor and one worker superstep, then the supervisor that stops
        return graph.compile(), _limit(2 * self.knobs.max_routing_turns + 1)

    def _supervisor_node(self, workers: dict[str, str]) -> Callable[[GraphState], Command]:
        router = self.spec.router_role
        tools = routing_tools(self.task)

        def supervisor(state: GraphState) -> Command:
            """Ask the routing model who works next (the same prompt as the plain reference)."""
            turns = state.get("turns", 0)
            if turns >= self.knobs.max_routing_turns:
                return Command(goto=END, update={"termination": Termination.MAX_TURNS})
            reply = complete(self.clients[router], self.spec.endpoint.model,
                             routing_messages(self.task, state["values"]), tools, temperature=self.knobs.temperature)
            target = routed_role(reply, set(self.task.roles))
            if target is None:
                done = len(state.get("outputs", {})) == len(self.task.steps)
                return Command(goto=END, update={"termination": Termination.COMPLETED if done
                                                 else Termination.ROUTED_OUT})
            self.spec.trace.handoff(router, target, "command goto")
            return Command(goto=workers[target], update={"turns": turns + 1})
        return supervisor

    def _worker_node(self, role: str) -> Callable[[GraphState], GraphState]:
        def worker(state: GraphState) -> GraphState:
            """Run the role's first step without outputs yet; a role with none just returns."""
            done = state.get("outputs", {})
            pending = [s for s in self.task.steps_of(role) if s.id not in done]
            return self._run_step(pending[0], state, None) if pending else {}
        return worker


def _read_verdict(state: GraphState) -> str:
    """The conditional edge after a verify node: follow the verdict the node wrote."""
    return state["verdict"]


def _limit(supersteps: int) -> int:
    """The ``recursion_limit`` that lets exactly ``supersteps`` node supersteps run.

    Measured on langgraph 1.2.22: a run of S node supersteps needs ``recursion_limit >= S + 1``
    (the limit is checked on the tick after the last node, before the graph sees it is done).
    """
    return supersteps + 1

