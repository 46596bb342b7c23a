"""One n8n workflow per (task, variant), in n8n's own JSON shape, generated from the task.

The workflow is created once and triggered per episode: everything that changes between
episodes (each role's model URL, MCP URL, the gate endpoint, the task inputs) arrives in the
webhook's body and is read by n8n expressions (``$('Webhook').first().json.body...``).

- A Webhook trigger (``responseMode: responseNode``) starts it; Respond to Webhook nodes end
  it with ``{termination, execution_id: $execution.id, final_output}``.
- Each step is an AI Agent node (``@n8n/n8n-nodes-langchain.agent`` v3, tools agent) whose
  system message is the role's prompt and whose user prompt is an expression producing
  :func:`~coordlab.adapters.toolkit.step_prompt`'s text from the values handed on so far.
  Each role has one OpenAI Chat Model node (Chat Completions, not the Responses API) on the
  role's simulator URL, and, when it has tools, one MCP Client Tool node (streamable HTTP)
  on the role's MCP URL; both are connected to every agent of the role.
- After each agent an Edit Fields (Set) node parses the answer (the last JSON object in its
  text, as :func:`~coordlab.adapters.toolkit.parse_output` does) and carries the values
  handed on: ``{answer, values}``, the values being the previous ones updated by the answer.
- Gated: before each step with a gate, an HTTP Request node posts the values to the lab's
  gate endpoint and an IF node reads the verdict: on to the step; or a second IF on
  ``$runIndex`` (rejections so far) loops back to the gate's retry step, whose prompt then
  carries the rejection message; or ends (gate_exhausted).
- Delegated: an orchestrating AI Agent on the router's model, with the lab's routing prompt,
  calls one AI Agent Tool node per role (the role's model and MCP tools; the prompt written
  by the orchestrator through ``$fromAI``, as n8n wires agent tools by default).

The expressions are JavaScript run by n8n's expression engine; they must never contain
``{{`` or ``}}`` (n8n's expression delimiters), which :func:`expression` checks.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Iterable

from coordlab.tasks.schema import Step, Task

from .base import Knobs, Variant
from .toolkit import role_prompt, routing_messages, step_prompt

WEBHOOK = "Webhook"
RESPOND_COMPLETED = "Respond completed"
RESPOND_EXHAUSTED = "Respond gate_exhausted"
BODY = "$('Webhook').first().json.body"
"""The webhook's body, as every node's expressions read it."""

AGENT_TYPE = ("@n8n/n8n-nodes-langchain.agent", 3)
"""The AI Agent node as n8n 1.123 creates it (v3: the workflow engine runs the agent's tool calls as node runs)."""
AGENT_TOOL_TYPE = ("@n8n/n8n-nodes-langchain.agentTool", 2.2)
"""The AI Agent Tool node (its only version in 1.123): an agent another agent calls as a tool."""
MODEL_TYPE = ("@n8n/n8n-nodes-langchain.lmChatOpenAi", 1.3)
MCP_TOOL_TYPE = ("@n8n/n8n-nodes-langchain.mcpClientTool", 1.2)
WEBHOOK_TYPE = ("n8n-nodes-base.webhook", 2)
RESPOND_TYPE = ("n8n-nodes-base.respondToWebhook", 1.1)
SET_TYPE = ("n8n-nodes-base.set", 3.4)
HTTP_TYPE = ("n8n-nodes-base.httpRequest", 4.2)
IF_TYPE = ("n8n-nodes-base.if", 2.2)
ROUTER = "Router"
FROM_AI_PROMPT = "={{ $fromAI('Prompt__User_Message_', ``, 'string') }}"
"""The AI Agent Tool node's default prompt: the calling agent writes it (n8n's multi-agent idiom)."""

PY_JSON = (r'const pyjson = (value) => JSON.stringify(value, null, 1).replace(/([\[{])\n +/g, "$1")'
           r'.replace(/\n *([\]}])/g, "$1").replace(/\n +/g, " ")'
           r'.replace(/[\u0080-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));')
"""A JS function writing JSON as Python's ``json.dumps`` does (", " and ": " separators, ASCII only),
so the prompt n8n sends carries the same text as every other adapter's."""

PARSE_LAST_OBJECT = (
    "const lastObject = (text) => { const t = String(text ?? ''); let last = {}; let i = t.indexOf('{'); "
    "while (i !== -1) { let next = i + 1; "
    "for (let j = t.lastIndexOf('}'); j > i; j = t.lastIndexOf('}', j - 1)) { "
    "try { const v = JSON.parse(t.slice(i, j + 1)); "
    "if (v !== null && typeof v === 'object' && !Array.isArray(v)) { last = v; next = j + 1; } break; } "
    "catch (e) { continue; } } i = t.indexOf('{', next); } return last; };")
"""A JS function returning the last JSON object in a text ({} when there is none), as ``parse_output`` does."""


def step_node(step: Step) -> str:
    """The AI Agent node of ``step``."""
    return f"Step {step.id}"


def fields_node(step: Step) -> str:
    """The Edit Fields node holding ``step``'s parsed answer and the values handed on after it."""
    return f"Fields {step.id}"


def gate_node(step: Step) -> str:
    """The HTTP Request node asking the lab's gate before ``step``."""
    return f"Gate {step.id}"


def passed_node(step: Step) -> str:
    """The IF node reading the gate's verdict before ``step``."""
    return f"Passed {step.id}"


def retry_node(step: Step) -> str:
    """The IF node deciding whether a rejected gate before ``step`` has retries left."""
    return f"Retry {step.id}"


def model_node(role: str) -> str:
    """The OpenAI Chat Model node of ``role``."""
    return f"Model {role}"


def tools_node(role: str) -> str:
    """The MCP Client Tool node of ``role``."""
    return f"Tools {role}"


def js_string(text: str) -> str:
    """A JS string literal for ``text`` (braces escaped, so no ``{{``/``}}`` can appear)."""
    return json.dumps(text).replace("{", "\\u007b").replace("}", "\\u007d")


def expression(code: str) -> str:
    """An n8n expression parameter evaluating the JS ``code``."""
    if "{{" in code or "}}" in code:
        raise ValueError(f"n8n would split this expression at its delimiters: {code}")
    return f"={{{{ {code} }}}}"


def values_before(task: Task, step: Step) -> str:
    """JS for the values handed on to ``step``: the task inputs, or what the previous step's Fields node holds."""
    index = task.steps.index(step)
    return f"{BODY}.inputs" if index == 0 else f"$('{fields_node(task.steps[index - 1])}').last().json.values"


def prompt_expression(task: Task, step: Step, takes_feedback: bool) -> str:
    """The step's user prompt: ``step_prompt``'s text built by n8n from the values handed on.

    With ``takes_feedback`` (the step is a gate's retry step), a rejection arriving on the
    agent's input item (the gate's answer, looped back) is appended, as plain appends it.
    """
    head = f"{step.instruction} {step.marker}\n"
    tail = f"Answer with one JSON object with exactly the fields: {', '.join(step.output_names)}."
    feedback = ('if ($json.passed === false && typeof $json.message === "string") text += "\\n" + $json.message; '
                if takes_feedback else "")
    reads = json.dumps(list(step.reads))
    code = (f"(() => {{ {PY_JSON} const values = {values_before(task, step)} ?? {{ }}; const inputs = {{ }}; "
            f"for (const name of {reads}) {{ if (name in values) inputs[name] = values[name]; }} "
            f"let text = {js_string(head)}; "
            f'if (Object.keys(inputs).length > 0) text += "Inputs: " + pyjson(inputs) + "\\n"; '
            f"text += {js_string(tail)}; {feedback}return text; }})()")
    return expression(code)


def fields_expression(task: Task, step: Step) -> str:
    """The Fields node's JSON: the agent's parsed answer and the values handed on after it."""
    code = (f"JSON.stringify((() => {{ {PARSE_LAST_OBJECT} const answer = lastObject($json.output); "
            f"return {{ answer: answer, values: Object.assign({{ }}, {values_before(task, step)}, answer) }}; }})())")
    return expression(code)


class WorkflowBuilder:
    """Collects nodes and connections, laid out left to right in flow order."""

    def __init__(self, name: str, webhook_path: str):
        self.name = name
        self.nodes: list[dict[str, Any]] = []
        self.connections: dict[str, dict[str, list[list[dict[str, Any]]]]] = {}
        self._column = 0
        self.add(WEBHOOK, WEBHOOK_TYPE, {"httpMethod": "POST", "path": webhook_path,
                                         "responseMode": "responseNode", "options": {}},
                 webhookId=webhook_path)

    def add(self, name: str, kind: tuple[str, float], parameters: dict[str, Any], row: int = 0,
            **extra: Any) -> str:
        """Add a node; main-flow nodes advance one column, sub-nodes (``row`` > 0) sit below the last one."""
        if row == 0:
            self._column += 1
        self.nodes.append({"id": str(uuid.uuid4()), "name": name, "type": kind[0], "typeVersion": kind[1],
                           "position": [self._column * 240, row * 200], "parameters": parameters, **extra})
        return name

    def connect(self, source: str, target: str, output: int = 0, kind: str = "main") -> None:
        """Connect ``source``'s output ``output`` (of connection type ``kind``) to ``target``."""
        outputs = self.connections.setdefault(source, {}).setdefault(kind, [])
        while len(outputs) <= output:
            outputs.append([])
        outputs[output].append({"node": target, "type": kind, "index": 0})

    def workflow(self) -> dict[str, Any]:
        """The workflow as the public API's ``POST /workflows`` takes it."""
        return {"name": self.name, "nodes": self.nodes, "connections": self.connections,
                "settings": {"executionOrder": "v1", "saveDataSuccessExecution": "all",
                             "saveDataErrorExecution": "all", "saveExecutionProgress": False}}


def if_parameters(left: str, operator: dict[str, Any], right: Any = "") -> dict[str, Any]:
    """An IF node (v2.2) testing one condition."""
    return {"conditions": {"options": {"caseSensitive": True, "leftValue": "", "typeValidation": "strict",
                                       "version": 2},
                           "conditions": [{"id": str(uuid.uuid4()), "leftValue": left, "rightValue": right,
                                           "operator": operator}],
                           "combinator": "and"},
            "options": {}}


def respond_parameters(termination: str, final_output: str) -> dict[str, Any]:
    """A Respond to Webhook node answering the episode's end, n8n's execution id and the final output."""
    code = (f"JSON.stringify({{ termination: {json.dumps(termination)}, execution_id: $execution.id, "
            f"final_output: {final_output} }})")
    return {"respondWith": "json", "responseBody": expression(code), "options": {}}


def model_parameters(knobs: Knobs) -> dict[str, Any]:
    """The role's OpenAI Chat Model: the episode's model name, Chat Completions, the knobs' client options.

    From node version 1.1 on, the base URL is the credential's (the node's own Base URL option is
    hidden, and n8n drops hidden options when it saves a workflow): see :func:`credential_data`.
    """
    options: dict[str, Any] = {"temperature": knobs.temperature}
    if knobs.client_max_retries is not None:
        options["maxRetries"] = knobs.client_max_retries
    if knobs.client_timeout is not None:
        options["timeout"] = int(knobs.client_timeout * 1000)
    return {"model": {"__rl": True, "mode": "id", "value": expression(f"{BODY}.model")},
            "responsesApiEnabled": False, "options": options}


def credential_data(role: str, api_key: str) -> dict[str, Any]:
    """An OpenAI credential (``openAiApi``) for ``role``: its base URL an expression on the webhook's body.

    n8n resolves expressions in a credential against the node using it, so one credential
    per role serves every episode, each with its own URL.
    """
    return {"apiKey": api_key, "url": expression(f"{BODY}.model_urls[{json.dumps(role)}]"), "header": False}


def add_roles(builder: WorkflowBuilder, task: Task, knobs: Knobs, credentials: dict[str, dict[str, str]],
              roles: Iterable[str]) -> None:
    """One Chat Model node per role (on the role's credential), and one MCP Client Tool node per role with tools."""
    for role in roles:
        builder.add(model_node(role), MODEL_TYPE, model_parameters(knobs), row=1,
                    credentials={"openAiApi": credentials[role]})
        if role in task.roles and task.roles[role].tools:
            builder.add(tools_node(role), MCP_TOOL_TYPE,
                        {"endpointUrl": expression(f"{BODY}.tool_urls[{json.dumps(role)}]"),
                         "serverTransport": "httpStreamable", "authentication": "none", "include": "all",
                         "options": {}}, row=2)


def add_agent(builder: WorkflowBuilder, name: str, role: str, system: str, prompt: str, knobs: Knobs,
              has_tools: bool) -> None:
    """An AI Agent node on ``role``'s model (and tools): ``system`` as its system message, ``prompt`` as its input."""
    builder.add(name, AGENT_TYPE, {"promptType": "define", "text": prompt, "hasOutputParser": False,
                                   "options": {"systemMessage": system, "maxIterations": knobs.max_iterations,
                                               "enableStreaming": False}})
    builder.connect(model_node(role), name, kind="ai_languageModel")
    if has_tools:
        builder.connect(tools_node(role), name, kind="ai_tool")


def pipeline(task: Task, variant: Variant, knobs: Knobs, credentials: dict[str, dict[str, str]], webhook_path: str,
             name: str) -> dict[str, Any]:
    """The linear or gated workflow: the steps in order, gates (gated only) before the steps that have one.

    ``credentials`` gives each role's OpenAI credential (``{"id", "name"}``).
    """
    builder = WorkflowBuilder(name, webhook_path)
    add_roles(builder, task, knobs, credentials, task.roles)
    gated = variant is Variant.GATED
    retried = {g.retry for g in task.gates if g.retry != g.before} if gated else set()
    previous = WEBHOOK
    exhausted = False
    for step in task.steps:
        gate = task.gate_before(step.id) if gated else None
        if gate is not None:
            values = values_before(task, step)
            builder.add(gate_node(step), HTTP_TYPE, {
                "method": "POST", "url": expression(f"{BODY}.gate_url + {js_string('/' + step.id)}"),
                "sendBody": True, "specifyBody": "json",
                "jsonBody": expression(f"JSON.stringify({{ values: {values} }})"), "options": {}})
            builder.add(passed_node(step), IF_TYPE, if_parameters(
                expression("$json.passed"), {"type": "boolean", "operation": "true", "singleValue": True}))
            builder.connect(previous, gate_node(step))
            builder.connect(gate_node(step), passed_node(step))
            if gate.retry == step.id:  # nothing before the step can be redone: the same values would be re-checked
                builder.connect(passed_node(step), RESPOND_EXHAUSTED, output=1)
            else:
                builder.add(retry_node(step), IF_TYPE, if_parameters(
                    expression("$runIndex"), {"type": "number", "operation": "lt"}, knobs.gate_retries), row=1)
                builder.connect(passed_node(step), retry_node(step), output=1)
                builder.connect(retry_node(step), step_node(task.step(gate.retry)), output=0)
                builder.connect(retry_node(step), RESPOND_EXHAUSTED, output=1)
            exhausted = True
            previous = passed_node(step)
        role = task.roles[step.role]
        add_agent(builder, step_node(step), step.role, role_prompt(role),
                  prompt_expression(task, step, step.id in retried), knobs, bool(role.tools))
        builder.add(fields_node(step), SET_TYPE, {"mode": "raw", "jsonOutput": fields_expression(task, step),
                                                   "options": {}})
        builder.connect(previous, step_node(step))
        builder.connect(step_node(step), fields_node(step))
        previous = fields_node(step)
    builder.add(RESPOND_COMPLETED, RESPOND_TYPE, respond_parameters(
        "completed", f"$('{fields_node(task.steps[-1])}').last().json.answer"))
    builder.connect(previous, RESPOND_COMPLETED)
    if exhausted:
        builder.add(RESPOND_EXHAUSTED, RESPOND_TYPE, respond_parameters("gate_exhausted", "{ }"), row=2)
    return builder.workflow()


def role_briefing(task: Task, role: str) -> str:
    """A role agent's system message in delegated: its prompt and every step it may be asked for (markers
    included), so that whatever the orchestrator asks, the agent knows its work."""
    steps = "\n".join(step_prompt(task, step, {}) for step in task.steps_of(role))
    return f"{role_prompt(task.roles[role])}\nYour steps:\n{steps}"


def delegation(task: Task, knobs: Knobs, credentials: dict[str, dict[str, str]], router_role: str,
               webhook_path: str, name: str) -> dict[str, Any]:
    """The delegated workflow: an orchestrating AI Agent on the router's model with one AI Agent Tool per role.

    The orchestrator's messages are the lab's routing prompt (:func:`routing_messages`); each
    role's agent tool runs on the role's model and MCP tools, its prompt written by the
    orchestrator through ``$fromAI`` as n8n's agent tools are wired by default.
    """
    builder = WorkflowBuilder(name, webhook_path)
    add_roles(builder, task, knobs, credentials, [*task.roles, router_role])
    system, user = (m["content"] for m in routing_messages(task, {}))
    task_line = user.split("\nWork so far:", 1)[0]
    prompt = expression(f"(() => {{ {PY_JSON} return {js_string(task_line + chr(10) + 'Work so far: ')} + "
                        f"pyjson({BODY}.inputs); }})()")
    builder.add(ROUTER, AGENT_TYPE, {"promptType": "define", "text": prompt, "hasOutputParser": False,
                                     "options": {"systemMessage": system, "maxIterations": knobs.max_routing_turns,
                                                 "enableStreaming": False}})
    builder.connect(model_node(router_role), ROUTER, kind="ai_languageModel")
    builder.connect(WEBHOOK, ROUTER)
    for role, spec in task.roles.items():
        builder.add(role, AGENT_TOOL_TYPE, {
            "toolDescription": f"Hand the next piece of work to the {role} ({spec.goal})", "text": FROM_AI_PROMPT,
            "hasOutputParser": False,
            "options": {"systemMessage": role_briefing(task, role), "maxIterations": knobs.max_iterations}}, row=3)
        builder.connect(model_node(role), role, kind="ai_languageModel")
        if spec.tools:
            builder.connect(tools_node(role), role, kind="ai_tool")
        builder.connect(role, ROUTER, kind="ai_tool")
    builder.add(RESPOND_COMPLETED, RESPOND_TYPE, respond_parameters(
        "completed", f"(() => {{ {PARSE_LAST_OBJECT} return lastObject($json.output); }})()"))
    builder.connect(ROUTER, RESPOND_COMPLETED)
    return builder.workflow()
