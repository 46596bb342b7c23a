"""Deterministic tools that act on an episode's :class:`~coordlab.tasks.world.World`.

Each tool declares a JSON-schema for its arguments (what every framework shows the model)
and whether it is ``mutating``. Arguments are validated before the tool runs, and a bad
call raises :class:`ToolError` with a message a model could act on; mutating tools log
their side effect only when they succeed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from . import functions
from .world import World

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "array": (list,),
    "object": (dict,), "boolean": (bool,),
}


class ToolError(Exception):
    """A tool was called with bad arguments or could not do what was asked."""


@dataclass(frozen=True)
class Tool:
    """A named tool: its schema for the model, whether it changes the world, and its code."""

    name: str
    description: str
    parameters: Mapping[str, Mapping[str, Any]]
    mutating: bool
    function: Callable[..., Any]

    def json_schema(self) -> dict[str, Any]:
        """The OpenAI-style ``parameters`` schema for this tool."""
        return {
            "type": "object",
            "properties": {name: dict(spec) for name, spec in self.parameters.items()},
            "required": list(self.parameters),
            "additionalProperties": False,
        }

    def openai_spec(self) -> dict[str, Any]:
        """The tool as an entry of an OpenAI ``tools`` list."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.json_schema()}}

    def validate(self, arguments: Mapping[str, Any]) -> None:
        """Raise :class:`ToolError` naming every missing, unknown or mistyped argument."""
        if not isinstance(arguments, Mapping):
            raise ToolError(f"{self.name}: arguments must be an object, got {type(arguments).__name__}")
        problems = [f"missing argument {n!r}" for n in self.parameters if n not in arguments]
        problems += [f"unknown argument {n!r}" for n in arguments if n not in self.parameters]
        for name, value in arguments.items():
            expected = self.parameters.get(name, {}).get("type")
            if expected and (not isinstance(value, _JSON_TYPES[expected]) or
                             (expected in ("integer", "number") and isinstance(value, bool))):
                problems.append(f"argument {name!r} must be {expected}, got {type(value).__name__}")
        if problems:
            raise ToolError(f"{self.name}: " + "; ".join(problems))

    def __call__(self, world: World, arguments: Mapping[str, Any]) -> Any:
        """Validate, run against ``world`` and log the side effect if mutating."""
        self.validate(arguments)
        with world.lock:
            result = self.function(world, **arguments)
            if self.mutating:
                world.record_side_effect(self.name, arguments, result)
        return result


TOOLS: dict[str, Tool] = {}
"""Every tool a task may use, by name."""


def tool(name: str, description: str, mutating: bool = False,
         **parameters: Mapping[str, Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a tool implementation under ``name``."""
    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        TOOLS[name] = Tool(name, description, parameters, mutating, function)
        return function
    return register


def _string(description: str) -> dict[str, str]:
    return {"type": "string", "description": description}


# --- customers and calendar ------------------------------------------------------------

@tool("crm_lookup", "Look up a customer record by id.", customer_id=_string("Customer id, e.g. C-1042"))
def _crm_lookup(world: World, customer_id: str) -> dict[str, Any]:
    customers = world.section("crm")
    if customer_id not in customers:
        raise ToolError(f"crm_lookup: no customer {customer_id!r}")
    record = customers[customer_id]
    return {"customer_id": customer_id, "name": record["name"], "email": record["email"]}


@tool("calendar_free_slots", "List free appointment slots on a weekday strictly after a date, earliest first.",
      weekday=_string("Lower-case weekday name, e.g. thursday"), after=_string("ISO date, e.g. 2026-11-20"))
def _calendar_free_slots(world: World, weekday: str, after: str) -> list[str]:
    return sorted(slot["start"] for slot in world.section("calendar")
                  if slot["free"] and slot["start"][:10] > after and functions.weekday(slot["start"]) == weekday.lower())


@tool("send_email", "Send an email to a customer.", mutating=True,
      to=_string("Recipient address"), subject=_string("Subject line"), body=_string("Plain-text body"))
def _send_email(world: World, to: str, subject: str, body: str) -> dict[str, str]:
    message_id = world.next_id("msg")
    world.section("outbox").append({"id": message_id, "to": to, "subject": subject, "body": body})
    return {"message_id": message_id}


@tool("crm_update", "Set one field of a customer record.", mutating=True,
      customer_id=_string("Customer id"), field=_string("Field name"), value=_string("New value"))
def _crm_update(world: World, customer_id: str, field: str, value: str) -> dict[str, str]:
    customers = world.section("crm")
    if customer_id not in customers:
        raise ToolError(f"crm_update: no customer {customer_id!r}")
    customers[customer_id][field] = value
    return {"status": "updated", "customer_id": customer_id}


# --- policies and support tickets ------------------------------------------------------

@tool("policy_search", "Find the policy document that best answers a question (keyword retrieval).",
      query=_string("The question or keywords"))
def _policy_search(world: World, query: str) -> dict[str, str]:
    documents = world.section("policies")
    query_words = functions.words(query)
    # Ties go to the first document; enumerate keeps that linear (``documents.index`` was quadratic).
    _, best = max(enumerate(documents), key=lambda pair: (
        len(functions.words(pair[1]["title"] + " " + pair[1]["text"]) & query_words), -pair[0]))
    return {"policy_id": best["id"], "title": best["title"], "text": best["text"]}


@tool("ticket_reply", "Post a reply to a support ticket; the customer sees it.", mutating=True,
      ticket_id=_string("Ticket id"), body=_string("Reply text"))
def _ticket_reply(world: World, ticket_id: str, body: str) -> dict[str, str]:
    reply_id = world.next_id("reply")
    world.section("tickets").setdefault(ticket_id, []).append({"id": reply_id, "body": body})
    return {"reply_id": reply_id}


# --- ledger ------------------------------------------------------------------------------

@tool("list_invoices", "List open invoices.")
def _list_invoices(world: World) -> list[dict[str, Any]]:
    return [dict(i) for i in world.section("ledger")["invoices"]]


@tool("list_payments", "List received payments with the invoice each references.")
def _list_payments(world: World) -> list[dict[str, Any]]:
    return [dict(p) for p in world.section("ledger")["payments"]]


@tool("post_journal_entries", "Post adjustment entries to the general journal.", mutating=True,
      entries={"type": "array", "description": "Entries: objects with account, invoice, amount",
               "items": {"type": "object"}})
def _post_journal_entries(world: World, entries: list[dict[str, Any]]) -> dict[str, int]:
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"account", "invoice", "amount"}:
            raise ToolError("post_journal_entries: each entry needs exactly account, invoice, amount")
    world.section("ledger")["journal"].extend(dict(e) for e in entries)
    return {"posted": len(entries)}


# --- research ---------------------------------------------------------------------------

@tool("kb_search", "Search the knowledge base for facts on a topic.", topic=_string("Topic keywords"))
def _kb_search(world: World, topic: str) -> list[dict[str, str]]:
    topic_words = functions.words(topic)
    return [dict(f) for f in world.section("kb") if functions.words(f["topic"]) & topic_words]


@tool("publish_brief", "Publish a brief to the team wiki.", mutating=True,
      title=_string("Title"), body=_string("Body text"))
def _publish_brief(world: World, title: str, body: str) -> dict[str, str]:
    page_id = world.next_id("page")
    world.section("wiki").append({"id": page_id, "title": title, "body": body})
    return {"page_id": page_id}


# --- incidents --------------------------------------------------------------------------

@tool("get_signals", "Current health signals of one service.", service=_string("Service name"))
def _get_signals(world: World, service: str) -> dict[str, Any]:
    services = world.section("services")
    if service not in services:
        raise ToolError(f"get_signals: unknown service {service!r}; known: {', '.join(sorted(services))}")
    return dict(services[service])


@tool("oncall_lookup", "The on-call team that owns a service.", service=_string("Service name"))
def _oncall_lookup(world: World, service: str) -> dict[str, str]:
    owners = world.section("oncall")
    if service not in owners:
        raise ToolError(f"oncall_lookup: no owner for {service!r}")
    return {"service": service, "team": owners[service]}


@tool("page_team", "Page an on-call team; wakes people up.", mutating=True,
      team=_string("Team id"), message=_string("Page text"))
def _page_team(world: World, team: str, message: str) -> dict[str, str]:
    page_id = world.next_id("page")
    world.section("pager").append({"id": page_id, "team": team, "message": message})
    return {"page_id": page_id}

