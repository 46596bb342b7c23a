"""One simulated episode: the oracle's answers, the fault schedule, the mechanisms, and the request log.

The reply to a request is a function of what the request contains (step marker, typed
values and how often and where they appear, tool results, tools offered, its length) plus
what the simulator keeps per episode: how many answers each step has given (its attempt),
how often each scheduled fault has acted, and what each field was last emitted as and
meant to be (to tell a value the framework lost from one the model got wrong). Random
decisions are common random numbers (:class:`~coordlab.runners.mechanisms.Draws`), so
nothing depends on which framework asks except what it sent."""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from coordlab.runners.faults import Fault, FaultPlan
from coordlab.runners.mechanisms import Draws, Mechanism
from coordlab.tasks.oracle import (
    PlannedCall, call_arguments, correct_outputs, corrupt_value, step_namespace, walk_plan,
)
from coordlab.tasks.schema import Step, Task
from coordlab.tasks.world import World

from .answers import drifted, field_kinds
from .log import HandoffIssue, RequestRecord
from .reading import (
    Reading, StepTranscript, find_step, offered_tools, requested_fields, step_transcript, strictly_required, tool_aliases,
    visible_values,
)
from .router import delegation_brief
from .upstream import UpstreamAnswer

ROUTER_ROLE = "router"
"""The URL role a delegating framework's routing model uses (manager, selector, supervisor)."""
FINISH = "FINISH"
"""What the simulated router answers when every step has produced its outputs."""
_ROUTE_PARAMETERS = ("next", "next_agent", "next_role", "goto", "to", "target", "agent", "coworker",
                     "worker", "role", "speaker", "assignee")
PREMATURE_TEXT = "I have started on this and will report back with the result shortly."


def estimate_tokens(text: str) -> int:
    """A deterministic token estimate (4 characters a token) that needs no tokenizer download."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def request_messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The request's messages that are JSON objects (anything else in the list is ignored, as a model would)."""
    return [m for m in body.get("messages") or [] if isinstance(m, Mapping)]


def request_tokens(messages: list[Mapping[str, Any]], body: Mapping[str, Any]) -> int:
    """The prompt-token estimate of a request: its messages and the tools it offers."""
    return estimate_tokens(json.dumps(messages, default=str)) + \
        estimate_tokens(json.dumps(body.get("tools") or [], default=str))


@dataclass
class Reply:
    """What the simulated model says: text, tool calls, or both."""

    kind: str
    content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    fault: Fault | None = None
    outputs: dict[str, Any] | None = None
    """For a final answer: the field values it emitted."""
    mechanisms: tuple[Mechanism, ...] = ()
    """The request-dependent mechanisms that acted on this reply."""

    @property
    def finish_reason(self) -> str:
        """``tool_calls`` when the reply calls tools, else ``stop``."""
        return "tool_calls" if self.tool_calls else "stop"

    def completion_text(self) -> str:
        """Everything the reply generates, for the completion-token estimate."""
        return (self.content or "") + "".join(c["name"] + c["arguments"] for c in self.tool_calls)


@dataclass(frozen=True)
class Decision:
    """The simulator's answer to one request: a reply, or a transport fault to act out."""

    record: RequestRecord
    reply: Reply | None
    """The answer to send (for the fault proxy: only when a fault rewrote the real answer)."""
    transport_fault: Fault | None
    upstream: UpstreamAnswer | None = None
    """The real endpoint's response, relayed as received unless ``reply`` replaces it (the fault proxy only)."""


class EpisodeState:
    """The server-side state of one episode, shared by all its roles' clients."""

    def __init__(self, task: Task, plan: FaultPlan, episode_id: str | None = None, world: World | None = None):
        self.id = episode_id or uuid.uuid4().hex[:12]
        self.task = task
        self.plan = plan
        self.world = world
        """The episode's world, where a tool error after a mutating call is armed (None: not acted out)."""
        self.kinds = field_kinds(task)
        """Each field's JSON type: a value of another type is not read as the field's value."""
        self.mechanisms = plan.profile.mechanisms
        self.records: list[RequestRecord] = []
        self.attempts: dict[str, int] = {s.id: 0 for s in task.steps}
        self.emitted: dict[str, Any] = dict(task.inputs)
        """What each field was last emitted as (task inputs count as emitted by the task)."""
        self.meant: dict[str, Any] = dict(task.inputs)
        """What each field's last emission would have been without a fault (the model's own reading)."""
        self.omitted: set[str] = set()
        """Fields a producing step's last answer left out."""
        self._fired: dict[tuple[str, int], int] = {}
        self.unreachable: str | None = None
        """Why a real model behind the episode did not answer, if it ever did not (the fault proxy sets it)."""
        self._lock = threading.Lock()
        self._call_counter = 0
        self._idle = threading.Condition()
        self._in_flight = 0

    # -- requests in flight ----------------------------------------------------------------
    def begin_exchange(self) -> None:
        """A request arrived; its record is final only when :meth:`end_exchange` is called."""
        with self._idle:
            self._in_flight += 1

    def end_exchange(self) -> None:
        """The server has written the response and amended the record (status, timing, bodies)."""
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no exchange is in flight, at most ``timeout`` seconds; whether it got there.

        A client has the last byte of a response before the server thread that sent it has
        amended the record, so whoever reads the log as soon as the framework returns (the
        harness, closing the episode) must wait for that thread, or read a half-told exchange.
        """
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    # -- entry point ---------------------------------------------------------------------
    def decide(self, role: str, body: Mapping[str, Any], retry_count: int) -> Decision:
        """Answer one chat-completions request made by ``role``'s client."""
        with self._lock:
            messages = request_messages(body)
            base = dict(seq=len(self.records), episode_id=self.id, role=role,
                        prompt_tokens=request_tokens(messages, body),
                        received_at=time.perf_counter(),
                        retry_count=retry_count, stream=bool(body.get("stream")), status=200)
            if role == ROUTER_ROLE:
                decision = self._route(messages, body, base)
            else:
                decision = self._work(role, messages, body, base)
            self.records.append(decision.record)
            return decision

    def current_step(self, role: str) -> str | None:
        """The step of ``role``'s latest request that named one: where a tool call it asked for belongs."""
        with self._lock:
            return next((r.step for r in reversed(self.records) if r.role == role and r.step is not None), None)

    def close(self) -> None:
        """Release what serving the episode held (nothing, when simulated)."""

    def notes(self) -> list[str]:
        """What the episode's record should say about how its requests were served (nothing, when simulated)."""
        return []

    def update_record(self, record: RequestRecord, **changes: Any) -> None:
        """Amend a logged record once the server knows how the exchange ended (status, timing)."""
        with self._lock:
            self.records[record.seq] = replace(self.records[record.seq], **changes)

    # -- faults ----------------------------------------------------------------------------
    def _pending_fault(self, step: Step, attempt: int | None = None) -> Fault | None:
        """The step attempt's scheduled fault, until it has acted (a transport fault ``burst`` times).

        ``attempt`` defaults to the step's current one.
        """
        attempt = self.attempts[step.id] if attempt is None else attempt
        fault = self.plan.fault_for(self.task.release, step, attempt)
        acted = self._fired.get((step.id, attempt), 0)
        if fault is None or acted >= (self.plan.profile.burst if fault.is_transport else 1):
            return None
        return fault

    def _fire(self, step: Step, attempt: int | None = None) -> None:
        key = (step.id, self.attempts[step.id] if attempt is None else attempt)
        self._fired[key] = self._fired.get(key, 0) + 1

    def _draws(self, step: Step, attempt: int | None = None) -> Draws:
        return Draws(self.plan.seed, self.task.release, step.id, self.attempts[step.id] if attempt is None else attempt)

    # -- workers ---------------------------------------------------------------------------
    def _work(self, role: str, messages: list[Mapping[str, Any]], body: Mapping[str, Any],
              base: dict[str, Any]) -> Decision:
        step, marker_index = self._step_of(role, messages, body)
        fields = requested_fields(body)
        if step is None:
            return self._decision(base, None, None, "unidentified", self._unidentified(role, messages, fields))
        attempt = self.attempts[step.id]
        fault = self._pending_fault(step)
        if fault is not None and fault.is_transport:
            self._fire(step)
            record = RequestRecord(step=step.id, attempt=attempt, kind="transport_fault", fault=fault.value,
                                   completion_tokens=0, **{**base, "status": 0})
            return Decision(record, None, fault)

        reading = Reading.of(messages, self.kinds)
        values = reading.values()
        issues = self._handoff_issues(step, values)
        values, misread = self._misread(step, reading, values, base["prompt_tokens"])
        offered = offered_tools(body)
        aliases = tool_aliases(offered, self.task.tools)
        transcript = step_transcript(messages, marker_index, aliases, self.task.tools)
        results, pending = walk_plan(step, values, lambda plan, arguments: transcript.result_for(plan.tool, arguments))
        namespace = step_namespace(step, values, results)

        offered_as = {tool: name for name, tool in aliases.items()}
        if pending is not None:
            reply = self._tool_phase(step, pending, namespace, fault, offered, transcript, offered_as)
        else:
            reply = self._final_phase(step, namespace, results, fault, fields, strictly_required(body),
                                      base["prompt_tokens"], offered_as)
        reply.mechanisms = misread + reply.mechanisms
        if reply.fault is not None:
            self._fire(step)
        if reply.kind == "final":
            self.attempts[step.id] += 1
        return self._decision(base, step.id, attempt, reply.kind, reply, issues)

    def _step_of(self, role: str, messages: list[Mapping[str, Any]],
                 body: Mapping[str, Any]) -> tuple[Step | None, int]:
        """The step a worker's request is for, and the index of the message holding its marker (-1: none).

        A request naming no step of its own that asks for structured output only asks to restate
        values as JSON: it belongs to no step.
        """
        step, marker_index = find_step(self.task, role, messages, self.kinds)
        if step is not None and marker_index < 0 and requested_fields(body) is not None:
            return None, -1
        return step, marker_index

    def _unidentified(self, role: str, messages: list[Mapping[str, Any]], fields: tuple[str, ...] | None) -> Reply:
        """A request that names no step the model can work on (or only asks to restate values as JSON)."""
        if fields is None:
            return Reply("unidentified", content=f"I cannot tell which of the {role} steps this request is for.")
        # A structured-output request always gets JSON of its schema (as a strict API guarantees):
        # the values this request shows for those fields, null for those it does not.
        values = visible_values(messages, self.kinds)
        return Reply("unidentified", content=json.dumps({name: values.get(name) for name in fields}))

    def _misread(self, step: Step, reading: Reading, values: dict[str, Any],
                 prompt_tokens: int) -> tuple[dict[str, Any], tuple[Mechanism, ...]]:
        """The values the model works from once buried and clashing values have had their chance to mislead it."""
        draws, acted = self._draws(step), []
        values = dict(values)
        for name in step.reads:
            if name not in values:
                continue
            if draws(Mechanism.BURIED, name) < self.mechanisms.buried.threshold(prompt_tokens, reading.positions(name)):
                del values[name]
                acted.append(Mechanism.BURIED)
                continue
            versions = reading.versions(name)
            if len(versions) > 1 and draws(Mechanism.CLASH, name) < self.mechanisms.clash.threshold(len(versions)):
                values[name] = versions[-2]
                acted.append(Mechanism.CLASH)
        return values, tuple(dict.fromkeys(acted))

    def _tool_phase(self, step: Step, pending: PlannedCall, namespace: Mapping[str, Any], fault: Fault | None,
                    offered: Mapping[str, Any], transcript: StepTranscript, offered_as: Mapping[str, str]) -> Reply:
        """A tool call of the plan's pending tool, by the name the request offers it under (``offered_as``)."""
        if fault is Fault.SKIPPED_TOOL:
            return self._answer(step, namespace, fault)
        name, arguments = offered_as.get(pending.plan.tool, pending.plan.tool), json.dumps(pending.arguments)
        if fault is Fault.MALFORMED_TOOL_ARGS:
            return Reply("tool_call", tool_calls=[self._call(name, arguments[: max(1, len(arguments) // 2)])],
                         fault=fault)
        if fault is Fault.UNKNOWN_TOOL:
            return Reply("tool_call", tool_calls=[self._call(f"{name}_v2", arguments)], fault=fault)
        if fault is Fault.TOOL_ERROR_AFTER_EFFECT and pending.plan.spec.mutating and self.world is not None:
            self.world.fail_after_effect(pending.plan.tool, pending.arguments)
            return Reply("tool_call", tool_calls=[self._call(name, arguments)], fault=fault)
        needed = {offered_as.get(tool.name, tool.name) for tool in step.tools}
        extra = sorted(set(offered) - needed)
        calls = len(transcript.exchanges)
        draws = self._draws(step)
        threshold = self.mechanisms.tool_overload.threshold(len(extra) + len(needed), len(needed))
        if extra and draws(Mechanism.TOOL_OVERLOAD, calls) < threshold:
            wrong = extra[int(draws(Mechanism.TOOL_OVERLOAD, calls, "which") * len(extra))]
            return Reply("tool_call", tool_calls=[self._call(wrong, arguments)], mechanisms=(Mechanism.TOOL_OVERLOAD,))
        return Reply("tool_call", tool_calls=[self._call(name, arguments)])

    def _final_phase(self, step: Step, namespace: Mapping[str, Any], results: Mapping[str, Any],
                     fault: Fault | None, structured: tuple[str, ...] | None, required: frozenset[str],
                     prompt_tokens: int, offered_as: Mapping[str, str]) -> Reply:
        """The step's answer. Under a strict structured-output request (``required`` non-empty) the API
        guarantees every required field, so an answer that would leave fields out gives them as null.
        A repeated call names its tool as the request offers it (``offered_as``)."""
        # A repeated side effect repeats the last mutating call this step made (on the branch it took).
        made = [p for p in step.tool_calls if p.spec.mutating and p.bind in results]
        if fault is Fault.REPEATED_SIDE_EFFECT and made:
            plan = made[-1]
            return Reply("tool_call", tool_calls=[self._call(offered_as.get(plan.tool, plan.tool),
                                                             json.dumps(call_arguments(plan, namespace)))],
                         fault=fault)
        if fault in (Fault.PREMATURE_STOP, Fault.EMPTY_ANSWER):
            if required:  # a strict API still returns every field: the model has none to give
                return self._nulls(step, namespace, frozenset(step.output_names), fault)
            self._remember(step, {}, {})  # an answer without the step's fields leaves them all out
            return Reply("final", content=PREMATURE_TEXT if fault is Fault.PREMATURE_STOP else "", fault=fault)
        if fault is None and step.produces and \
                self._draws(step)(Mechanism.LENGTH) < self.mechanisms.length.threshold(prompt_tokens):
            reply = self._answer(step, namespace, Fault.WRONG_VALUE)
            reply.fault, reply.mechanisms = None, (Mechanism.LENGTH,)
            return reply
        target = self._fault_target(step)
        if fault is Fault.OMITTED_FIELD and target is not None and target in required:
            return self._nulls(step, namespace, frozenset({target}), fault)
        reply = self._answer(step, namespace, fault if fault in (Fault.WRONG_VALUE, Fault.OMITTED_FIELD,
                                                                   Fault.SKIPPED_TOOL) else None)
        if fault is Fault.FORMAT_DRIFT and structured is None:
            # Under structured output (a json_schema response format) the API guarantees bare JSON: no drift.
            reply.content = drifted(reply.content or "", self._draws(step)("format_drift"))
            reply.fault = fault
        return reply

    def _answer(self, step: Step, namespace: Mapping[str, Any], fault: Fault | None) -> Reply:
        outputs = correct_outputs(step, namespace)
        meant = dict(outputs)
        target = self._fault_target(step)
        if fault is Fault.WRONG_VALUE and target is not None:
            output = next(o for o in step.produces if o.name == target)
            outputs[target] = corrupt_value(output, outputs[target], namespace)
        elif fault is Fault.OMITTED_FIELD and target is not None:
            outputs.pop(target)
        return self._final(step, outputs, meant, fault)

    def _nulls(self, step: Step, namespace: Mapping[str, Any], blank: frozenset[str], fault: Fault) -> Reply:
        """The step's answer with the fields in ``blank`` given as null: what a strict API returns from a model
        that has nothing to say for a field it must give."""
        meant = correct_outputs(step, namespace)
        return self._final(step, {name: (None if name in blank else value) for name, value in meant.items()},
                           meant, fault)

    def _final(self, step: Step, outputs: dict[str, Any], meant: Mapping[str, Any], fault: Fault | None) -> Reply:
        """A final answer emitting ``outputs`` (the model meant ``meant``), remembered for handoff checks."""
        self._remember(step, outputs, meant)
        return Reply("final", content=json.dumps(outputs), fault=fault, outputs=outputs)

    def _remember(self, step: Step, outputs: Mapping[str, Any], meant: Mapping[str, Any]) -> None:
        """Note what a final answer emitted, what it meant to emit, and which fields it left out."""
        for name in step.output_names:
            if name in outputs:
                self.emitted[name] = outputs[name]
                self.meant[name] = meant.get(name)
                self.omitted.discard(name)
            else:
                self.omitted.add(name)

    def _fault_target(self, step: Step) -> str | None:
        """The output a value fault hits: one with a task-defined wrong value, else one used downstream."""
        if not step.produces:
            return None
        for output in step.produces:
            if output.wrong is not None:
                return output.name
        later_reads = {r for s in self.task.steps for r in s.reads}
        return next((o.name for o in step.produces if o.name in later_reads), step.produces[0].name)

    def _handoff_issues(self, step: Step, values: Mapping[str, Any]) -> tuple[HandoffIssue, ...]:
        """The step's inputs that did not arrive as they should: lost by the framework, or emitted wrong.

        A field the producer emitted wrong (or left out) and that arrived as emitted is a
        model error; one that arrived differently from its last emission, or not at all, was
        lost by the framework.
        """
        issues = []
        for name in step.reads:
            expected = self.emitted.get(name)
            emitted = name in self.emitted
            if name not in values:
                cause = "model_error" if name in self.omitted else "lost"
                issues.append(HandoffIssue(name, "missing", expected, None, cause))
            elif emitted and values[name] != expected:
                issues.append(HandoffIssue(name, "corrupted", expected, values[name], "lost"))
            elif emitted and self.meant.get(name) != expected:
                issues.append(HandoffIssue(name, "corrupted", self.meant.get(name), values[name], "model_error"))
        return tuple(issues)

    def _call(self, name: str, arguments: str) -> dict[str, Any]:
        self._call_counter += 1
        return {"id": f"call_{self.id}_{self._call_counter}", "name": name, "arguments": arguments}

    # -- routers ---------------------------------------------------------------------------
    def _route(self, messages: list[Mapping[str, Any]], body: Mapping[str, Any], base: dict[str, Any]) -> Decision:
        """Route by reading: the next step is the first whose results the router's request does not show."""
        values = visible_values(messages, self.kinds)
        step = self._next_step(values)
        target, fault = FINISH, None
        if step is not None:
            target = step.role
            scheduled = self._pending_fault(step)
            if scheduled is Fault.WRONG_HANDOFF_TARGET:
                self._fire(step)
                fault = scheduled
                target = next(r for r in sorted(self.task.roles) if r != step.role)
        reply = self._route_reply(step, target, messages, values, offered_tools(body))
        reply.fault = fault
        attempt = self.attempts[step.id] if step else None
        return self._decision(base, step.id if step else None, attempt, "route", reply, route_target=target)

    def _next_step(self, values: Mapping[str, Any]) -> Step | None:
        """The step a router is deciding about: the first whose results ``values`` (what it sees) lack."""
        return next((s for s in self.task.steps if any(o not in values for o in s.output_names)), None)

    def _route_reply(self, step: Step | None, target: str, messages: list[Mapping[str, Any]],
                     values: Mapping[str, Any], tools: Mapping[str, Mapping[str, Any]]) -> Reply:
        """Name ``target`` the way the request asks: a transfer tool, an agent tool given the brief, a routing
        argument, or plain text.

        FINISH is always said in text, followed by the last step's outputs: a routing tool
        called with FINISH as its worker would be rejected, and a manager whose answer ends
        the flow must hand on the flow's result. A delegation brief is written from what
        the router read (see :func:`delegation_brief`), never from the oracle.
        """
        if target == FINISH:
            last = self.task.steps[-1].output_names
            return Reply("route", content=f"{FINISH} {json.dumps({o: values[o] for o in last if o in values})}")
        for name, schema in tools.items():
            if name.lower().endswith(target.lower()):
                asks = [p for p, spec in (schema.get("properties") or {}).items()
                        if isinstance(spec, Mapping) and spec.get("type", "string") == "string"]
                if not asks:  # a transfer tool: naming it is the whole decision
                    return Reply("route", tool_calls=[self._call(name, "{}")])
                assert step is not None  # FINISH was answered above
                # An agent offered as a tool (n8n's AI Agent Tool) takes the work in words: the brief.
                brief = delegation_brief(step, messages, values, self.mechanisms.brief_loss, self._draws(step))
                text = f"{brief.instruction}\nInputs: {brief.context}"
                return Reply("route", tool_calls=[self._call(name, json.dumps({p: text for p in asks}))],
                             mechanisms=brief.mechanisms)
        for name, schema in tools.items():
            properties = schema.get("properties") or {}
            key = next((p for p in _ROUTE_PARAMETERS if p in properties), None)
            if key is None:
                continue
            assert step is not None  # FINISH was answered above
            brief = delegation_brief(step, messages, values, self.mechanisms.brief_loss, self._draws(step))
            arguments: dict[str, Any] = {key: target}
            for other, spec in properties.items():
                if other != key and isinstance(spec, Mapping) and spec.get("type", "string") == "string":
                    arguments[other] = brief.instruction if other in ("task", "instruction", "instructions") \
                        else brief.context
            return Reply("route", tool_calls=[self._call(name, json.dumps(arguments))], mechanisms=brief.mechanisms)
        return Reply("route", content=target)

    # -- bookkeeping -------------------------------------------------------------------------
    def _decision(self, base: dict[str, Any], step: str | None, attempt: int | None, kind: str, reply: Reply,
                  issues: tuple[HandoffIssue, ...] = (), route_target: str | None = None) -> Decision:
        record = RequestRecord(
            step=step, attempt=attempt, kind=kind, fault=reply.fault.value if reply.fault else None,
            completion_tokens=estimate_tokens(reply.completion_text()), handoff_issues=issues,
            route_target=route_target, tool_calls=tuple(c["name"] for c in reply.tool_calls),
            tool_call_ids=tuple(c["id"] for c in reply.tool_calls), outputs=reply.outputs,
            mechanisms=tuple(m.value for m in reply.mechanisms), **base)
        return Decision(record, reply, None)
