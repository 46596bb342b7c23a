"""The framework-free reference: the same orchestration in plain Python with the ``openai`` SDK.

It is the control group and the overhead floor, written as a careful engineer would
without a framework. Each role has its own client; the orchestrator hands values on
explicitly (the step prompt carries every input the step reads), applies the task's gates
with a bounded retry, or lets a routing model choose who works next and gives the routed
role its next pending step (that bookkeeping is the orchestrator's own code: there is no
framework here to do it).

Extension point: :class:`PlainEpisode` holds one episode's state and one method per
variant; a plug-in that changes one behaviour subclasses it, overrides that method, and
sets ``episode_class`` on a :class:`PlainAdapter` subclass, without copying ``run()``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import openai

from .base import (
    AdapterOutcome, EpisodeSpec, FrameworkAdapter, Termination, ToolTransport, Variant, VariantSupport,
)
from .openai_loop import complete, openai_clients, run_agent
from .registry import register
from .step_journal import StepJournal
from .toolkit import (
    check_gate, execute_tool, parse_output, role_prompt, routed_role, routing_messages, routing_tools, step_prompt,
    tool_specs,
)

_SUPPORT = {
    Variant.LINEAR: VariantSupport(True, "a for-loop over the steps"),
    Variant.GATED: VariantSupport(True, "an if before each mutating step; the retry step is redone with feedback"),
    Variant.DELEGATED: VariantSupport(True, "a routing model with transfer_to_<role> tools"),
}


@register("plain")
class PlainAdapter(FrameworkAdapter):
    """Plain Python + the official openai client."""

    name = "plain"
    resume_path = "a step journal (one fsynced JSON line per finished step); a restart replays it and goes on"

    distribution = "openai"  # the SDK is the only moving part besides the lab
    variant_support = _SUPPORT
    tool_transports = frozenset(ToolTransport)
    """Native: the tool specs and bodies in-process. MCP: the official ``mcp`` client
    (:mod:`coordlab.adapters.mcp_client`), one session per role held for the episode."""
    episode_class: type["PlainEpisode"]
    """The episode class :meth:`run` builds (set below the class; a subclass may replace it)."""

    def run(self, spec: EpisodeSpec) -> AdapterOutcome:
        """Run one episode in the requested variant."""
        started = time.perf_counter()
        episode = self.episode_class(spec)
        built = time.perf_counter()
        try:
            termination = {Variant.LINEAR: episode.linear, Variant.GATED: episode.gated,
                           Variant.DELEGATED: episode.delegated}[spec.variant]()
            error = None
        except openai.OpenAIError as exc:
            termination, error = Termination.ERROR, f"{type(exc).__name__}: {exc}"
        finally:
            episode.close()
        return AdapterOutcome(termination, episode.final_output(), error, [],
                              (built - started) * 1000, (time.perf_counter() - built) * 1000, episode.resumed_from)


class PlainEpisode:
    """The state of one plain episode: clients, values handed on, outputs per step.

    ``linear``, ``gated`` and ``delegated`` each run the whole episode and return its
    :class:`Termination`; ``run_step`` runs one step. The smaller hooks are the decisions an
    orchestrator makes: what a step is handed (:meth:`handed_on`), how its answer joins the
    values (:meth:`merge`), which pending step a routed role takes (:meth:`next_pending`) and
    what an exhausted gate means (:meth:`gate_exhausted`). Override any of them in a subclass
    (the positive controls in :mod:`coordlab.adapters.controls` each break one).
    """

    def __init__(self, spec: EpisodeSpec):
        self.spec, self.task, self.knobs = spec, spec.task, spec.knobs
        self.clients = openai_clients(spec)
        self.mcp = None
        if spec.knobs.tool_transport is ToolTransport.MCP:
            from .mcp_client import McpSessions  # the MCP SDK only when the tools are served over it

            self.mcp = McpSessions()
        self.values: dict[str, Any] = dict(self.task.inputs)
        self.outputs: dict[str, dict[str, Any]] = {}
        self.previous_role: str | None = None
        self.current_step: str | None = None
        self.journal = StepJournal(spec.durability.folder) if spec.durability else None
        """Where finished steps are written when the episode may crash (None otherwise)."""
        self.resumed_from: str | None = None
        self.start = self.replay_journal() if spec.durability and spec.durability.resume else 0
        """The step index the flow starts at: after the last finished one on a resumed run."""

    def replay_journal(self) -> int:
        """Restore the values of every journaled step; the index to go on from (0 when nothing was journaled)."""
        assert self.journal is not None
        entries = self.journal.entries()
        for entry in entries:
            self.outputs[entry.step] = entry.outputs
            self.merge(entry.outputs)
        if not entries:
            return 0
        last = entries[-1]
        self.previous_role = self.task.step(last.step).role
        self.resumed_from = f"step journal: {len(entries)} finished steps, the last {last.step!r}"
        return last.index + 1

    def close(self) -> None:
        """Release every client's connection pool (and the MCP sessions)."""
        for client in self.clients.values():
            client.close()
        if self.mcp is not None:
            self.mcp.close()

    def role_tools(self, role: str) -> tuple[list[dict[str, Any]], Callable[[str, str], str]]:
        """``role``'s tool specs and how one of its calls runs (name, raw JSON arguments -> text)."""
        if self.mcp is None:
            world, trace = self.spec.world, self.spec.trace
            return tool_specs(self.task, role), lambda name, args: execute_tool(world, trace, role, self.current_step,
                                                                                 name, args)
        url, mcp = self.spec.endpoint.tool_url(role), self.mcp
        return mcp.openai_tools(url), lambda name, args: mcp.call(url, name, args)

    def final_output(self) -> dict[str, Any]:
        return self.outputs.get(self.task.steps[-1].id, {})

    def run_step(self, index: int, feedback: str = "", handoff: bool = True) -> None:
        """Run one step; ``handoff`` records the role change (off when a router already handed off)."""
        step = self.task.steps[index]
        trace = self.spec.trace
        if handoff and self.previous_role != step.role:
            trace.handoff(self.previous_role, step.role, "function return", step.id)
        self.previous_role = step.role
        prompt = step_prompt(self.task, step, self.handed_on(index)) + (f"\n{feedback}" if feedback else "")
        messages = [{"role": "system", "content": role_prompt(self.task.roles[step.role])},
                    {"role": "user", "content": prompt}]
        self.current_step = step.id
        tools, run_tool = self.role_tools(step.role)
        answer = run_agent(self.clients[step.role], self.spec.endpoint.model, messages, tools, run_tool,
                           self.knobs.max_iterations, temperature=self.knobs.temperature)
        self.outputs[step.id] = parse_output(answer)
        self.merge(self.outputs[step.id])
        if self.journal is not None:
            self.journal.append(index, step.id, self.outputs[step.id])
        trace.step_output(step.role, step.id, self.outputs[step.id])

    def handed_on(self, index: int) -> dict[str, Any]:
        """The values the orchestrator hands step ``index``: everything known so far."""
        return self.values

    def merge(self, outputs: dict[str, Any]) -> None:
        """Add a step's answer to the values handed on; a redone step's answer replaces its earlier one."""
        self.values.update(outputs)

    def next_pending(self, pending: list[int]) -> int:
        """Which of a routed role's pending steps it runs: the earliest in the flow."""
        return pending[0]

    def gate_exhausted(self, index: int) -> Termination | None:
        """A gate before step ``index`` rejected until its retries ran out: stop there (None would go on)."""
        return Termination.GATE_EXHAUSTED

    def human_approval(self, index: int) -> Termination | None:
        """Ask the human (if any) before gated step ``index``; None once approved.

        A rejection is handled as a gate's: the gate's retry step is redone with the
        reviewer's reason, and the human is asked again, up to ``knobs.gate_retries`` times.
        """
        approver, step = self.spec.approver, self.task.steps[index]
        gate = self.task.gate_before(step.id)
        if approver is None or gate is None:
            return None
        start = next(i for i, s in enumerate(self.task.steps) if s.id == gate.retry)
        for ask in range(self.knobs.gate_retries + 1):
            review = approver.review(step.id, {name: self.values.get(name) for name in step.reads})
            self.spec.trace.gate(step.id, review.approved, review.reason)
            if review.approved:
                return None
            if ask < self.knobs.gate_retries:
                self.spec.trace.retry(gate.retry, "framework", "rejected by the reviewer",
                                      self.task.step(gate.retry).role)
                for redo in range(start, index):
                    self.run_step(redo, review.reason if redo == start else "")
        return self.gate_exhausted(index)

    def linear(self) -> Termination:
        for index in range(self.start, len(self.task.steps)):
            if (stop := self.human_approval(index)) is not None:
                return stop
            self.run_step(index)
        return Termination.COMPLETED

    def gated(self) -> Termination:
        position = {s.id: i for i, s in enumerate(self.task.steps)}
        index = self.start
        while index < len(self.task.steps):
            step = self.task.steps[index]
            gate = self.task.gate_before(step.id)
            if gate is not None:
                redo_steps = range(position[gate.retry], index)
                for retry in range(self.knobs.gate_retries + 1):
                    verdict = check_gate(self.task, self.spec.world, self.spec.trace, step.id, self.values)
                    if verdict.passed:
                        break
                    if retry == self.knobs.gate_retries or not redo_steps:
                        # Nothing before the guarded step can be redone (a gate that retries the
                        # guarded step itself): checking the same values again cannot change the verdict.
                        stop = self.gate_exhausted(index)
                        if stop is not None:
                            return stop
                        break
                    self.spec.trace.retry(gate.retry, "framework", "gate rejected", self.task.step(gate.retry).role)
                    for redo in redo_steps:
                        self.run_step(redo, verdict.message if redo == position[gate.retry] else "")
            if (stop := self.human_approval(index)) is not None:
                return stop
            self.run_step(index)
            index += 1
        return Termination.COMPLETED

    def delegated(self) -> Termination:
        router = self.spec.router_role
        tools = routing_tools(self.task)
        for _ in range(self.knobs.max_routing_turns):
            reply = complete(self.clients[router], self.spec.endpoint.model, routing_messages(self.task, self.values),
                             tools, temperature=self.knobs.temperature)
            target = routed_role(reply, set(self.task.roles))
            if target is None:
                done = len(self.outputs) == len(self.task.steps)
                return Termination.COMPLETED if done else Termination.ROUTED_OUT
            self.spec.trace.handoff(router, target, "transfer tool")
            pending = [i for i, s in enumerate(self.task.steps) if s.role == target and s.id not in self.outputs]
            if pending:
                self.run_step(self.next_pending(pending), handoff=False)
        return Termination.MAX_TURNS


PlainAdapter.episode_class = PlainEpisode
