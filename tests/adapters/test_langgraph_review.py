"""LangGraph with a human in the loop: the scripted, seeded reviewer, asked with ``interrupt`` before gated steps.

LangGraph's way: a ``review.<step>`` node calls ``interrupt(...)``, the run stops with
``__interrupt__``, the driver asks the human and resumes the thread with
``Command(resume=...)``. The episodes run through :func:`run_durable_episode` with
``review=True`` (fresh processes; a late answer kills the first one while it waits, and the
resumed one finds the pending interrupt in the SqliteSaver checkpoint). What is asserted
comes from the reviewer's inbox, the world's journal, the simulator's request log, the
traces and the checkpoint LangGraph wrote.
"""

from __future__ import annotations

import sqlite3
from functools import partial
from pathlib import Path

import pytest
from langchain_core.messages import BaseMessage
from langgraph.checkpoint.sqlite import SqliteSaver

from coordlab.adapters.base import Endpoint, EpisodeSpec, Knobs, Termination, Variant
from coordlab.adapters.langgraph_adapter import CHECKPOINTS, LangGraphEpisode
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import EventKind, TraceRecorder
from coordlab.runners.durability.review import ReviewKind
from coordlab.runners.faults import FaultPlan, load_profile
from coordlab.runners.harness import API_KEY, Status
from coordlab.runners.simulator import MODEL_NAME, ROUTER_ROLE, Simulator
from coordlab.tasks.world import World

from review_support import PIPELINES, RecordingApprover, TASK, calls, human_gates, run_reviewed, seed_where


reviewed = partial(run_reviewed, "langgraph")


def team_messages(folder: Path) -> list[BaseMessage]:
    """The team graph's conversation in its last checkpoint, read back with LangGraph's SqliteSaver."""
    with sqlite3.connect(folder / CHECKPOINTS) as connection:
        saver = SqliteSaver(connection)
        last = next(t for t in saver.list(None) if t.config["configurable"]["checkpoint_ns"] == "")
        return list(last.checkpoint["channel_values"]["messages"])


@pytest.mark.parametrize("variant", PIPELINES, ids=str)
def test_approved_steps_run_once_approved(simulator: Simulator, tmp_path: Path, variant: Variant) -> None:
    result = reviewed(simulator, tmp_path, variant, seed_where(ReviewKind.APPROVE))
    assert not result.crashed and result.status is Status.SUCCESS, result.error
    assert result.reviews == {"approve": 2, "reject": 0, "late": 0, "unapproved": 0}
    assert result.exactly_once and calls(result, "draft") == 1
    human = [(True, "")] * (2 if variant is Variant.GATED else 1)  # in gated the gate passes, then the human
    assert human_gates(result, "send") == human and human_gates(result, "update_crm") == human


@pytest.mark.parametrize("variant", PIPELINES, ids=str)
def test_a_rejection_redoes_the_work_with_the_reason_and_asks_again(simulator: Simulator, tmp_path: Path,
                                                                    variant: Variant) -> None:
    result = reviewed(simulator, tmp_path, variant, seed_where(ReviewKind.REJECT))
    assert not result.crashed and result.status is Status.SUCCESS, result.error
    assert result.reviews == {"approve": 2, "reject": 1, "late": 0, "unapproved": 0}
    assert result.exactly_once
    assert calls(result, "draft") == 2 and calls(result, "send") == 1  # the draft redone, then sent once
    asked = human_gates(result, "send")
    (reason,) = [r for ok, r in asked if not ok]
    assert reason.startswith("Rejected by the reviewer before 'send'")
    if variant is Variant.GATED:  # the rejection went back through the gate: it checked the redone draft again
        assert asked == [(True, ""), (False, reason), (True, ""), (True, "")]
    else:
        assert asked == [(False, reason), (True, "")]
    retries = [e for e in result.traces[0] if e.kind is EventKind.RETRY]
    assert [(e.step, e.detail["reason"]) for e in retries] == [("draft", "rejected by the reviewer")]
    said = [(m.name, m.content) for m in team_messages(tmp_path) if m.type == "human"]
    at = said.index(("reviewer", reason))  # the reason joined the team's messages, the redone draft came next
    assert "draft" in str(said[at + 1][1]).lower()


@pytest.mark.parametrize("variant", PIPELINES, ids=str)
@pytest.mark.parametrize("late", ["send", "update_crm"])
def test_a_late_answer_comes_to_the_resumed_run(simulator: Simulator, tmp_path: Path, variant: Variant,
                                                late: str) -> None:
    """The first run dies waiting; the fresh process finds the pending interrupt, asks again, resumes with it."""
    kinds = {"send": ReviewKind.APPROVE, "update_crm": ReviewKind.APPROVE, late: ReviewKind.LATE}
    result = reviewed(simulator, tmp_path, variant, seed_where(kinds["send"], kinds["update_crm"]))
    assert result.crashed and result.crash.kind == "awaiting_review" and result.crash.step == late
    assert result.resumed_from is not None and result.resumed_from.startswith("checkpoint ")
    assert result.resumed_from.endswith(
        f"(next: review.{late}, interrupted waiting for the reviewer's answer on step '{late}')")
    assert result.status is Status.SUCCESS and result.termination is Termination.COMPLETED, result.error
    assert result.reviews == {"approve": 2, "reject": 0, "late": 1, "unapproved": 0}
    assert (result.duplicated, result.lost) == (0, 0)
    assert result.redone_calls == 0  # nothing was in flight while the human was asked
    assert result.effects_at_crash == (0 if late == "send" else 1)
    assert human_gates(result, late)[-1] == (True, "")  # the resumed run's answer, the interrupt's resume value


def spec_for(variant: Variant, endpoint: Endpoint, approver: RecordingApprover | None) -> EpisodeSpec:
    return EpisodeSpec(TASK, variant, endpoint, Knobs(), World.for_task(TASK), TraceRecorder(), approver=approver)


@pytest.mark.parametrize("variant", PIPELINES, ids=str)
def test_review_nodes_exist_only_with_an_approver(variant: Variant) -> None:
    endpoint = Endpoint({role: "http://127.0.0.1:9/v1" for role in [*TASK.roles, ROUTER_ROLE]}, MODEL_NAME, API_KEY)
    plain, asked = (LangGraphEpisode(spec_for(variant, endpoint, a)) for a in (None, RecordingApprover()))
    gate = ["gate.send"] if variant is Variant.GATED else []
    gate_crm = ["gate.update_crm"] if variant is Variant.GATED else []
    steps = ["step.find_slot", "step.draft", *gate, "step.send", *gate_crm, "step.update_crm"]
    assert [n for n in plain.graph.get_graph().nodes if n not in ("__start__", "__end__")] == steps
    nodes = [n for n in asked.graph.get_graph().nodes if n not in ("__start__", "__end__")]
    assert nodes == ["step.find_slot", "step.draft", *gate, "review.send", "step.send", *gate_crm,
                     "review.update_crm", "step.update_crm"]
    assert asked.recursion_limit > plain.recursion_limit


def test_without_durability_the_driver_answers_from_memory(simulator: Simulator) -> None:
    """The interrupt loop needs no durable folder: the in-memory checkpointer holds the pending interrupt."""
    approver = RecordingApprover()
    world = World.for_task(TASK)
    episode = simulator.open_episode(TASK, FaultPlan(load_profile("none"), 0), world=world)
    endpoint = Endpoint({role: simulator.base_url(episode.id, role) for role in [*TASK.roles, ROUTER_ROLE]},
                        MODEL_NAME, API_KEY)
    spec = EpisodeSpec(TASK, Variant.LINEAR, endpoint, Knobs(), world, TraceRecorder(), approver=approver)
    try:
        outcome = get_adapter("langgraph").run(spec)
    finally:
        simulator.close_episode(episode.id)
    assert outcome.termination is Termination.COMPLETED, outcome.error
    assert [step for step, _ in approver.asked] == ["send", "update_crm"]
    send = approver.asked[0][1]
    assert list(send) == ["customer_email", "confirmation"]  # the proposal: the values the step reads
    assert all(value is not None for value in send.values())
    assert len(world.side_effects) == 2
