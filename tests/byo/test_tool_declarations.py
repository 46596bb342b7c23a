"""Declared tools: the built-in library, a task file's own tools, Python plug-ins, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordlab.tasks.loader import load_task
from coordlab.tasks.skeleton import skeleton
from coordlab.tasks.toolbox import ToolLookupError, builtin_tools, find_tool
from coordlab.tasks.tools import ToolError
from coordlab.tasks.world import World

from byo_support import TASK_FILE, install_tool_plugin, line_of, problems_of, write_task

BUILTIN_NAMES = {"crm_lookup", "calendar_free_slots", "send_email", "crm_update", "policy_search", "ticket_reply",
                 "list_invoices", "list_payments", "post_journal_entries", "kb_search", "publish_brief",
                 "get_signals", "oncall_lookup", "page_team"}


# -- the built-in library is declarations of the same kind ---------------------------------------

def test_the_built_in_tools_are_declarations_in_the_library() -> None:
    tools = builtin_tools()
    assert set(tools) == BUILTIN_NAMES
    assert all(t.origin == "built-in" and t.fingerprint for t in tools.values())
    assert {n for n, t in tools.items() if t.mutating} == {"send_email", "crm_update", "ticket_reply",
                                                          "post_journal_entries", "publish_brief", "page_team"}
    assert tools["crm_lookup"].sections == {"crm"} and tools["post_journal_entries"].sections == {"ledger"}


def test_built_in_error_messages_are_the_ones_models_were_always_shown() -> None:
    world = World.from_fixtures({"crm": {}, "services": {"db": {}, "api": {}}, "oncall": {}, "ledger": {"journal": []}})
    tools = builtin_tools()
    cases = [("crm_lookup", {"customer_id": "C-9"}, "crm_lookup: no customer 'C-9'"),
             ("get_signals", {"service": "web"}, "get_signals: unknown service 'web'; known: api, db"),
             ("oncall_lookup", {"service": "web"}, "oncall_lookup: no owner for 'web'"),
             ("post_journal_entries", {"entries": [{"account": "a"}]},
              "post_journal_entries: each entry needs exactly account, invoice, amount")]
    for name, arguments, message in cases:
        with pytest.raises(ToolError) as caught:
            tools[name](world, arguments)
        assert str(caught.value) == message
    assert world.side_effects == [] and world.state["ledger"]["journal"] == []


def test_append_creates_a_missing_list_and_set_changes_one_entry() -> None:
    world = World.from_fixtures({"tickets": {}, "crm": {"C-1": {"name": "Ada"}}})
    tools = builtin_tools()
    assert tools["ticket_reply"](world, {"ticket_id": "T-1", "body": "hi"}) == {"reply_id": "reply-1"}
    assert tools["crm_update"](world, {"customer_id": "C-1", "field": "tier", "value": "gold"})["status"] == "updated"
    assert world.state == {"tickets": {"T-1": [{"id": "reply-1", "body": "hi"}]},
                           "crm": {"C-1": {"name": "Ada", "tier": "gold"}}}
    assert [e.tool for e in world.side_effects] == ["ticket_reply", "crm_update"]


def test_a_result_is_a_copy_not_a_window_into_the_world() -> None:
    world = World.from_fixtures({"ledger": {"invoices": [{"id": "INV-1", "amount": 5.0}], "payments": []}})
    invoices = builtin_tools()["list_invoices"](world, {})
    invoices[0]["amount"] = 0
    assert world.state["ledger"]["invoices"][0]["amount"] == 5.0


# -- a task file's own tools -----------------------------------------------------------------------

def test_the_skeleton_declares_tools_that_act_on_its_own_sections(tmp_path: Path) -> None:
    task = load_task(write_task(tmp_path, skeleton("refunds")))
    assert {n: t.origin for n, t in task.tools.items()} == {
        "order_lookup": "task file", "refund_order": "task file", "send_note": "task file"}
    world = World.for_task(task)
    assert task.tools["refund_order"](world, {"order_id": "A-100", "amount": 59.9}) == {"refund_id": "refund-1"}
    assert world.state["orders"]["A-100"]["status"] == "refunded"
    assert world.state["refunds"] == [{"id": "refund-1", "order_id": "A-100", "amount": 59.9}]


def test_effects_apply_all_or_nothing(tmp_path: Path) -> None:
    task = load_task(write_task(tmp_path, skeleton("refunds")))
    world = World.for_task(task)
    with pytest.raises(ToolError, match=r"orders\[order_id\]\['status'\]: there is no 'A-999'"):
        task.tools["refund_order"](world, {"order_id": "A-999", "amount": 1.0})
    assert world.state["refunds"] == [] and world.side_effects == []


@pytest.mark.parametrize("old, new, field, message", [
    ("    mutating: true\n    parameters:\n      order_id: {type: string, description: Order id}\n      amount",
     "    parameters:\n      order_id: {type: string, description: Order id}\n      amount",
     "tools.refund_order.mutating", "this tool has effects, so it changes the world: say mutating: true"),
    ("      - set: orders[order_id]['status']", "      - set: orders",
     "tools.refund_order.effects[1].set", "set replaces one entry"),
    ("amount: {type: number, description: Amount to refund in euros}",
     "amount: {type: num, description: Amount to refund in euros}",
     "tools.refund_order.parameters.amount.type", "is not a JSON-schema type; did you mean 'number'?"),
    ("      - append: notes", "      - append: note",
     "tools.send_note.effects[0].append", "'note' is not a parameter, a let or a world section of this task; "
                                          "did you mean 'notes'?"),
    ("refund_id: new_id('refund')", "refund_id: newid('refund')",
     "tools.refund_order.let.refund_id", "unknown function 'newid'"),
    ("  send_note:\n", "  send_email:\n", "tools.send_email", "there is already a tool named 'send_email'"),
])
def test_a_bad_declaration_is_a_located_problem(tmp_path: Path, old: str, new: str, field: str, message: str) -> None:
    text = skeleton("refunds")
    assert old in text
    text = text.replace(old, new, 1)
    found = problems_of(write_task(tmp_path, text))
    assert any(f": {field}: " in p and message in p for p in found), found


def test_arguments_are_checked_against_the_declared_schema(tmp_path: Path) -> None:
    task = load_task(write_task(tmp_path, skeleton("refunds")))
    with pytest.raises(ToolError, match="unknown argument 'note'; argument 'amount' must be number, got str"):
        task.tools["refund_order"](World.for_task(task), {"order_id": "A-100", "amount": "5", "note": "x"})


# -- Python tools as plug-ins ----------------------------------------------------------------------

def test_a_plug_in_tool_is_found_by_name_and_says_where_it_comes_from(tool_plugin: Path) -> None:
    tool = find_tool("vendor_credit")
    assert tool is not None and tool.origin == "plug-in coordlab-test-tools 1.0" and tool.sections == {"vendors"}
    task = load_task(TASK_FILE)
    assert task.tools["vendor_credit"] is tool


def test_a_task_without_the_section_a_plug_in_needs_is_refused(tool_plugin: Path, tmp_path: Path) -> None:
    text = TASK_FILE.read_text().replace("  vendors:\n    Northwind Traders: {limit: 5000.0, open_balance: 2500.0}\n", "")
    found = problems_of(write_task(tmp_path, text))
    assert any("steps[1].tools[0].call: tool 'vendor_credit' (plug-in coordlab-test-tools 1.0) uses the world "
               "section(s) 'vendors', which this task's fixtures lack" in p for p in found), found


@pytest.mark.parametrize("entry_point, message", [
    ("coordlab_test_tools:ToolError", "is a type, not a Tool; make it with coordlab.tasks.tools.python_tool"),
    ("coordlab_test_tools_missing:vendor_credit", "cannot be loaded: ModuleNotFoundError"),
])
def test_a_broken_plug_in_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           entry_point: str, message: str) -> None:
    monkeypatch.syspath_prepend(str(install_tool_plugin(tmp_path / "p", {"vendor_credit": entry_point})))
    with pytest.raises(ToolLookupError, match=message):
        find_tool("vendor_credit")


def test_a_plug_in_must_be_named_as_its_entry_point_and_may_not_shadow_a_built_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(install_tool_plugin(tmp_path / "p", {
        "credit": "coordlab_test_tools:vendor_credit", "send_email": "coordlab_test_tools:vendor_credit"})))
    with pytest.raises(ToolLookupError, match="defines a tool named 'vendor_credit'"):
        find_tool("credit")
    with pytest.raises(ToolLookupError, match="'send_email' is a built-in and also the plug-in"):
        find_tool("send_email")
