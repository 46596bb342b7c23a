"""A team's own workflow through every framework: a task defined only in this folder.

``purchase_order_approval.yaml`` has a custom fixture section, tools declared in the file,
a Python plug-in tool (``vendor_credit``), a branch (post or escalate) and a gate that
calls tools. It must solve under ``none`` in every framework and variant, on both
branches, and its forced faults must do what the task declares.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from byo_support import TASK_FILE

from coordlab.runners.cli import main

FRAMEWORKS = ("plain", "crewai", "autogen", "langgraph")


def run(capsys: pytest.CaptureFixture[str], store: Path, *argv: str) -> str:
    code = main(["run", "--frameworks", *FRAMEWORKS, "--faults", "none", "--seeds", "1", "--workers", "2",
                 "--store", str(store), *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def episodes(store: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(store) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute("SELECT * FROM episodes").fetchall()


def test_the_own_task_solves_on_both_branches_in_every_framework_and_variant(
        tool_plugin: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store = tmp_path / "own.sqlite"
    run(capsys, store, "--tasks", f"{TASK_FILE}:po=1", f"{TASK_FILE}:po=2",
        "--variants", "linear", "gated", "delegated")
    rows = episodes(store)
    assert len(rows) == 2 * len(FRAMEWORKS) * 3
    failed = [(r["task"], r["framework"], r["variant"], r["status"], r["error"]) for r in rows if r["status"] != "success"]
    assert not failed


def test_forced_faults_on_the_own_task_behave_as_the_task_declares(
        tool_plugin: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store = tmp_path / "forced.sqlite"
    # Repeating the posting step's last call posts the order twice: harmful everywhere.
    run(capsys, store, "--tasks", str(TASK_FILE), "--variants", "linear", "--force", "act:repeated_side_effect")
    # The approver's wrong decision (a flipped approval) escalates an order that fits. Unguarded,
    # that reaches the world; the gate recomputes the decision and has the approver decide again.
    run(capsys, store, "--tasks", str(TASK_FILE), "--variants", "linear", "gated", "--force", "credit:wrong_value")
    rows = episodes(store)
    assert len(rows) == len(FRAMEWORKS) * 3
    for row in rows:
        cell = (row["framework"], row["variant"], row["profile"])
        assert row["faults_injected"] == 1, cell
        if row["variant"] == "linear":
            assert (row["status"], row["harmful"]) == ("failed_check", 1), cell
        elif row["framework"] == "crewai":
            # CrewAI's guardrail retry prompt replaces the task's upstream context with the gate's
            # message, so the redone decision no longer sees the amount and vendor: it is rejected
            # until the retries run out. Stopped, not harmful: a framework property, measured.
            assert (row["status"], row["harmful"], row["gate_rejections"]) == ("failed_check", 0, 3), cell
        else:
            assert (row["status"], row["gate_rejections"]) == ("success", 1), cell
