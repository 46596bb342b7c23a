"""The validator solves the task: what fails on the correct path is a located problem, before any run."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordlab.runners.cli import main
from coordlab.runners.runner import run_sweep
from coordlab.runners.sweep import Sweep, SweepError
from coordlab.tasks.loader import load_task
from coordlab.tasks.oracle import solve
from coordlab.tasks.skeleton import skeleton

from byo_support import TASK_FILE, line_of, problems_of, write_task


@pytest.mark.parametrize("old, new, locate, field, message", [
    # a gate that rejects the correct path: the gated variant could never succeed
    ("check: refundable == (order_lookup(order_id=order_id)['days_since_delivery'] <= 30)",
     "check: refundable == (order_lookup(order_id=order_id)['days_since_delivery'] > 30)",
     "check: refundable", "gates[0].check",
     "on the task's correct path (no faults): the gate before 'act' rejects the correct values (it gives False)"),
    # an expression that cannot be computed on the correct path
    ("      amount: order['amount']", "      amount: order['amonut']", "amount: order['amonut']",
     "steps[0].produces.amount", "cannot evaluate \"order['amonut']\": KeyError"),
    # a tool call that fails on the correct path
    ("  order_id: A-100", "  order_id: A-999", "- call: order_lookup", "steps[0].tools[0].call",
     "the call of 'order_lookup' fails: order_lookup: no order 'A-999'"),
    # an end-state check that the correct run does not meet
    ("(0 if expected['refundable'] else 1)", "(0 if expected['refundable'] else 2)", "- expr: \"len(refunds)",
     "checks[0].expr",
     "the check 'the order is refunded once, or the customer gets one note, never both' does not hold"),
    # a branch condition that cannot be computed
    ("        when: not refundable", "        when: not refundabel", "when: not refundabel", "steps[2].tools[1].when",
     "unknown name 'refundabel'"),
])
def test_what_fails_on_the_correct_path_is_located(tmp_path: Path, old: str, new: str, locate: str, field: str,
                                                   message: str) -> None:
    text = skeleton("refunds")
    assert old in text
    text = text.replace(old, new, 1)
    found = problems_of(write_task(tmp_path, text))
    expected = f"{tmp_path / 't.yaml'}:{line_of(text, locate)}: {field}: "
    assert any(p.startswith(expected) and message in p for p in found), (expected, found)


def test_a_task_missing_a_fixture_section_a_built_in_tool_needs_is_refused(tmp_path: Path, data_dir: Path) -> None:
    text = (data_dir / "minimal.yaml").read_text().replace("  outbox: []\n", "")
    found = problems_of(write_task(tmp_path, text))
    assert any(f":{line_of(text, '- call: send_email')}: steps[1].tools[0].call: tool 'send_email' (built-in) uses "
               "the world section(s) 'outbox', which this task's fixtures lack" in p for p in found), found


def test_validate_reports_the_problem_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = skeleton("refunds").replace("      amount: order['amount']", "      amount: order['amonut']")
    assert main(["tasks", "validate", str(write_task(tmp_path, text))]) == 1
    captured = capsys.readouterr()
    assert "steps[0].produces.amount: on the task's correct path" in captured.err
    assert "0 of 1 task file(s) valid" in captured.out


def test_both_branches_are_solved_and_keyed_by_content(tool_plugin: Path) -> None:
    approved, escalated = load_task(TASK_FILE, {"po": 1}), load_task(TASK_FILE, {"po": 2})
    assert [e.tool for e in solve(approved).side_effects] == ["post_order"]
    assert [e.tool for e in solve(escalated).side_effects] == ["escalate"]
    assert approved.release == "purchase_order_approval@1[po=1]" and approved.key != escalated.key


# -- content-addressed identity --------------------------------------------------------------------

def test_the_content_hash_follows_content_not_layout(tmp_path: Path) -> None:
    text = skeleton("refunds")
    original = load_task(write_task(tmp_path, text, "a.yaml"))
    relaid = load_task(write_task(tmp_path, "# a comment\n" + text.replace("    reads: [order_id]", "    reads:\n      - order_id\n"),
                                  "b.yaml"))
    edited = load_task(write_task(tmp_path, text.replace("amount: 59.9", "amount: 59.95"), "c.yaml"))
    assert original.key == relaid.key
    assert edited.release == original.release and edited.key != original.key
    assert original.key == f"refunds@1+{original.content_hash}"


def test_an_edited_task_under_the_same_version_is_refused_by_the_store(tmp_path: Path) -> None:
    path = write_task(tmp_path, skeleton("refunds"), "refunds.yaml")
    store = tmp_path / "r.sqlite"
    sweep = Sweep.build(tasks=[str(path)], frameworks=["plain"], variants=["linear"], profiles=["none"], seeds=1)
    assert run_sweep(sweep, store).statuses == {"success": 1}
    path.write_text(skeleton("refunds").replace("amount: 59.9", "amount: 64.9"))
    with pytest.raises(SweepError, match=r"task refunds@1 \(.*refunds.yaml\) has changed since store .* recorded it "
                                         r"\(content [0-9a-f]+ there, [0-9a-f]+ now\) but its version was not bumped"):
        run_sweep(sweep, store)
    path.write_text(skeleton("refunds").replace("amount: 59.9", "amount: 64.9").replace("\nversion: 1", "\nversion: 2"))
    assert run_sweep(sweep, store).statuses == {"success": 1}


def test_tasks_new_writes_a_valid_skeleton_and_never_overwrites(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "po.yaml"
    assert main(["tasks", "new", "purchase_orders", "--out", str(out)]) == 0
    assert load_task(out).name == "purchase_orders"
    assert main(["tasks", "new", "purchase_orders", "--out", str(out)]) == 2
    assert main(["tasks", "new", "Bad-Name", "--out", str(tmp_path / "x.yaml")]) == 2
    assert "never overwritten" in capsys.readouterr().err
