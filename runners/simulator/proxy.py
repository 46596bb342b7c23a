"""The lab's faults in front of a real model: one episode of the fault proxy.

A live run gets the same seeded schedule as a simulated one: a request is tied to its step
and attempt by reading it exactly as the simulator does (the step marker its framework
wrote, the results it shows), and the fault drawn for (seed, task, step, attempt) acts on
it. Transport faults are acted out without troubling the real model (the request never
reaches it), except a body cut short, which cuts the real answer. A model fault acts on
the real answer where it can be applied to one:

=========================  ==================================================================
fault                      acts on the real answer when
=========================  ==================================================================
``malformed_tool_args``    it calls a tool: the first call's arguments are cut in half
``unknown_tool``           it calls a tool: the first call's name gets a ``_v2`` suffix
``tool_error_after_effect`` it calls one of the step's mutating tools: the world loses that
                           call's response after applying it
``repeated_side_effect``   it is a final answer and the step already called a mutating tool:
                           the answer becomes that call again
``premature_stop``,        it is a final answer: replaced by a promise to report back, or
``empty_answer``           left empty (under strict structured output, every field null)
``format_drift``           it is a final answer and no structured output was asked for: its
                           text is wrapped in prose or a code fence
``wrong_value``,           it is a final answer holding the step's targeted field in a JSON
``omitted_field``          object: the value is corrupted, or the field removed
=========================  ==================================================================

A fault that cannot act on an answer stays pending for the step attempt's next answer, as
in the simulator; one that never acts (``skipped_tool`` and ``wrong_handoff_target`` never
can: both would need the proxy to write the model's decision for it) lapses, and the
episode says so in its notes. There is no oracle: handoffs are not checked against what
was meant, and only the end state scores the episode. Request-dependent mechanisms are
the simulated model's; a real model brings its own.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from json import JSONDecoder
from typing import Any, Mapping

import httpx

from coordlab.runners.faults import Fault, FaultPlan
from coordlab.tasks.oracle import corrupt_value, step_namespace, walk_plan
from coordlab.tasks.schema import Step, Task
from coordlab.tasks.world import World

from .answers import drifted
from .episode import (
    PREMATURE_TEXT, ROUTER_ROLE, Decision, EpisodeState, Reply, estimate_tokens, request_messages, request_tokens,
)
from .log import RequestRecord
from .reading import json_objects_at, requested_fields, step_transcript, strictly_required, visible_values
from .upstream import ParsedAnswer, Upstream, UpstreamAnswer, forward

_DECODER = JSONDecoder()


@dataclass(frozen=True)
class _Request:
    """One request as the proxy read it on arrival: its placeholder record and where it belongs."""

    pending: RequestRecord
    role: str
    step: Step | None
    attempt: int | None
    marker: int
    """The index of the message holding the step's marker (-1: none)."""
    body: Mapping[str, Any]
    messages: list[Mapping[str, Any]]

    @property
    def worker_step(self) -> Step | None:
        """The step, for a worker's request (a router's request is only labelled with one)."""
        return self.step if self.role != ROUTER_ROLE else None


class ProxyEpisode(EpisodeState):
    """One episode served by forwarding to a real endpoint, with the episode's faults acted out on the way."""

    def __init__(self, task: Task, plan: FaultPlan, upstream: Upstream, client: httpx.Client,
                 episode_id: str | None = None, world: World | None = None):
        super().__init__(task, plan, episode_id, world)
        self.upstream = upstream
        self._client = client
        self._seen: set[tuple[str, int]] = set()
        """Every (step, attempt) a worker's request was made for: where a scheduled fault had its chance."""

    # -- entry point ---------------------------------------------------------------------
    def decide(self, role: str, body: Mapping[str, Any], retry_count: int) -> Decision:
        """Act out a transport fault, or forward the request and act a model fault out on the real answer.

        The lock is not held while the endpoint answers: a framework's roles may ask at once.
        Whatever a request met is keyed by the step attempt read on its arrival.
        """
        request = self._arrive(role, body, retry_count)
        step, fault = request.worker_step, None
        with self._lock:
            if step is not None and request.attempt is not None:
                fault = self._pending_fault(step, request.attempt)
                if fault is not None and fault.is_transport and fault is not Fault.TRUNCATED_BODY:
                    self._fire(step, request.attempt)
                    return self._settle(request, kind="transport_fault", fault=fault.value, status=0)
        answer = forward(self.upstream, body, self._client)
        with self._lock:
            if answer.error is not None:
                self.unreachable = answer.error
                return self._settle(request, answer, kind="upstream_unreachable", status=answer.status)
            if step is not None and fault is Fault.TRUNCATED_BODY and answer.parsed is not None \
                    and self._pending_fault(step, request.attempt) is fault:
                self._fire(step, request.attempt)
                decision = self._settle(request, answer, kind="transport_fault", fault=fault.value)
                return replace(decision, transport_fault=fault)
            return self._answered(request, answer)

    def _arrive(self, role: str, body: Mapping[str, Any], retry_count: int) -> _Request:
        """Log the request as pending, tied to the step attempt it is for (as the simulator reads it)."""
        messages = request_messages(body)
        with self._lock:
            step, marker = (self._next_step(visible_values(messages, self.kinds)), -1) if role == ROUTER_ROLE \
                else self._step_of(role, messages, body)
            attempt = self.attempts[step.id] if step is not None else None
            if step is not None and attempt is not None and role != ROUTER_ROLE:
                self._seen.add((step.id, attempt))
            pending = RequestRecord(
                seq=len(self.records), episode_id=self.id, role=role, step=step.id if step else None,
                attempt=attempt, kind="pending", fault=None, completion_tokens=0, retry_count=retry_count,
                prompt_tokens=request_tokens(messages, body),
                stream=bool(body.get("stream")), status=200, received_at=time.perf_counter())
            self.records.append(pending)
        return _Request(pending, role, step, attempt, marker, body, messages)

    def _settle(self, request: _Request, answer: UpstreamAnswer | None = None, **changes: Any) -> Decision:
        """Replace the request's placeholder record; the decision relays ``answer`` (or acts a fault out)."""
        record = replace(request.pending, **changes)
        self.records[record.seq] = record
        fault = Fault(record.fault) if record.fault and answer is None else None
        return Decision(record, None, fault, upstream=answer)

    def _answered(self, request: _Request, answer: UpstreamAnswer) -> Decision:
        """Record the real answer (and the fault acted on it) and decide what the framework gets."""
        parsed = answer.parsed
        if parsed is None:
            return self._settle(request, answer, kind="error", status=answer.status)
        step, attempt = request.worker_step, request.attempt
        reply = None
        if step is not None and attempt is not None:
            fault = self._pending_fault(step, attempt)
            if fault is not None and not fault.is_transport:
                reply = self._acted(fault, request, parsed)
                if reply is not None:
                    self._fire(step, attempt)
        said = reply or Reply("final", content=parsed.content, tool_calls=parsed.tool_calls)
        kind = "route" if request.role == ROUTER_ROLE else "unidentified" if request.step is None else \
            "tool_call" if said.tool_calls else "final"
        if kind == "final" and step is not None and attempt == self.attempts[step.id]:
            self.attempts[step.id] += 1
        usage = parsed.usage or {}
        record = replace(
            request.pending, kind=kind, fault=reply.fault.value if reply and reply.fault else None,
            status=answer.status, prompt_tokens=_count(usage, "prompt_tokens", request.pending.prompt_tokens),
            completion_tokens=_count(usage, "completion_tokens", estimate_tokens(said.completion_text())),
            tool_calls=tuple(c["name"] for c in said.tool_calls),
            tool_call_ids=tuple(c["id"] for c in said.tool_calls),
            outputs=_outputs(step, said.content) if kind == "final" and step is not None else None)
        self.records[record.seq] = record
        return Decision(record, reply, None, upstream=answer)

    # -- model faults on a real answer ---------------------------------------------------------
    def _acted(self, fault: Fault, request: _Request, parsed: ParsedAnswer) -> Reply | None:
        """The real answer with ``fault`` acted out on it, or None when the fault cannot act on this answer."""
        step, body = request.step, request.body
        assert step is not None and request.attempt is not None
        calls = [dict(c) for c in parsed.tool_calls]
        content = parsed.content or ""
        if calls:
            first = calls[0]
            if fault is Fault.MALFORMED_TOOL_ARGS and len(first["arguments"]) > 1:
                first["arguments"] = first["arguments"][: len(first["arguments"]) // 2]
            elif fault is Fault.UNKNOWN_TOOL:
                first["name"] = f"{first['name']}_v2"
            elif fault is Fault.TOOL_ERROR_AFTER_EFFECT and self.world is not None \
                    and first["name"] in _mutating_tools(step) and isinstance(arguments := _loads(first["arguments"]), dict):
                self.world.fail_after_effect(first["name"], arguments)
            else:
                return None
            return Reply("tool_call", content=parsed.content, tool_calls=calls, fault=fault)
        transcript = step_transcript(request.messages, request.marker)
        if fault is Fault.REPEATED_SIDE_EFFECT:
            made = [e for e in transcript.exchanges if e.name in _mutating_tools(step)]
            if not made:
                return None
            arguments = made[-1].arguments
            return Reply("tool_call", fault=fault, tool_calls=[
                self._call(made[-1].name, arguments if isinstance(arguments, str) else json.dumps(arguments))])
        required = strictly_required(body)
        if fault in (Fault.PREMATURE_STOP, Fault.EMPTY_ANSWER):
            if required:
                return Reply("final", content=json.dumps({name: None for name in requested_fields(body) or ()}),
                             fault=fault)
            return Reply("final", content=PREMATURE_TEXT if fault is Fault.PREMATURE_STOP else "", fault=fault)
        if fault is Fault.FORMAT_DRIFT and requested_fields(body) is None and content.strip():
            draw = self._draws(step, request.attempt)("format_drift")
            return Reply("final", content=drifted(content, draw), fault=fault)
        if fault in (Fault.WRONG_VALUE, Fault.OMITTED_FIELD):
            values = visible_values(request.messages, self.kinds)
            results, _ = walk_plan(step, values, lambda plan, arguments: transcript.result_for(plan.tool, arguments))
            altered = self._altered_field(fault, step, content, step_namespace(step, values, results), required)
            return None if altered is None else Reply("final", content=altered, fault=fault)
        return None

    def _altered_field(self, fault: Fault, step: Step, content: str, namespace: Mapping[str, Any],
                       required: frozenset[str]) -> str | None:
        """``content`` with the targeted field of its JSON answer corrupted or removed (None: no such field).

        ``namespace`` is what the step's expressions see, so a task's own ``wrong`` value is computed
        as the simulator computes it.
        """
        target = self._fault_target(step)
        for start, value in json_objects_at(content):
            if target is None or target not in value:
                continue
            _, end = _DECODER.raw_decode(content, start)
            if fault is Fault.OMITTED_FIELD:
                value = {k: (None if k == target else v) for k, v in value.items()} if target in required else \
                    {k: v for k, v in value.items() if k != target}
            else:
                output = next(o for o in step.produces if o.name == target)
                value = {**value, target: corrupt_value(output, value[target], namespace)}
            return content[:start] + json.dumps(value) + content[end:]
        return None

    # -- bookkeeping ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connections to the real endpoint; a request still waiting for it was abandoned.

        The framework gave up on it (its client timed out) and the episode is over: its record
        says so (no status) instead of staying a pending model call.
        """
        self._client.close()
        with self._lock:
            self.records[:] = [replace(r, kind="abandoned", status=0) if r.kind == "pending" else r
                               for r in self.records]

    def notes(self) -> list[str]:
        """One note per scheduled fault that never acted: the real answers gave it nothing to act on."""
        lapsed = []
        for step_id, attempt in sorted(self._seen):
            step = self.task.step(step_id)
            fault = self.plan.fault_for(self.task.release, step, attempt)
            if fault is not None and (step_id, attempt) not in self._fired:
                lapsed.append(f"fault proxy: {fault.value} scheduled on step {step_id} (attempt {attempt}) "
                              f"lapsed: the real model's answers gave it nothing to act on")
        return lapsed


def _mutating_tools(step: Step) -> set[str]:
    return {tool.name for tool in step.tools if tool.mutating}


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _count(usage: Mapping[str, Any], name: str, estimate: int) -> int:
    """A token count from the endpoint's usage, or the lab's estimate where it gives none (or nonsense)."""
    value = usage.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else estimate


def _outputs(step: Step, content: str | None) -> dict[str, Any] | None:
    """The step's fields a final answer gives in its first JSON object that names any (as sent)."""
    for _, value in json_objects_at(content or ""):
        found = {name: value[name] for name in step.output_names if name in value}
        if found:
            return found
    return None

