"""LangGraph's own resume path: a SqliteSaver checkpointer read back by a fresh process after a SIGKILL.

The crash tests run the lab's durability harness (two fresh processes, the first SIGKILLed);
the others run the adapter in this process against a folder prepared for the case.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from coordlab.adapters.base import (AdapterOutcome, Durability, Endpoint, EpisodeSpec, Knobs, Termination,
                                    Variant)
from coordlab.adapters.langgraph_adapter import CHECKPOINTS, LangGraphAdapter, LangGraphEpisode
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import TraceRecorder
from coordlab.runners.durability import CrashPoint, run_durable_episode
from coordlab.runners.durability.journal import WorldJournal
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.harness import API_KEY, Status, run_episode
from coordlab.runners.simulator import MODEL_NAME, ROUTER_ROLE, RequestRecord, Simulator
from coordlab.tasks.loader import load_suite_task
from coordlab.tasks.world import World

TASK = "appointment_rebooking"  # find_slot -> draft -> send (send_email) -> update_crm (crm_update)
NONE = load_profile("none")
# The node (linear, gated) or role node (delegated) that makes appointment_rebooking's email and CRM update.
WORKER = {Variant.LINEAR: "step.{}", Variant.GATED: "step.{}", Variant.DELEGATED: "coordinator"}


def full_run_calls(simulator: Simulator, variant: Variant) -> int:
    """Model calls of the whole episode, uninterrupted (no durability)."""
    result = run_episode(get_adapter("langgraph"), load_suite_task(TASK), variant, simulator, FaultPlan(NONE, 0))
    assert result.status is Status.SUCCESS
    return result.counts.model_calls


def run_here(simulator: Simulator, variant: Variant, durability: Durability | None,
             plan: FaultPlan = FaultPlan(NONE, 0)) -> tuple[AdapterOutcome, list[RequestRecord], World]:
    """One run of the adapter in this process, built as the harness builds it."""
    task = load_suite_task(TASK)
    world = World.for_task(task)
    episode = simulator.open_episode(task, replace(plan, routed=variant is Variant.DELEGATED), world=world)
    endpoint = Endpoint({role: simulator.base_url(episode.id, role) for role in [*task.roles, ROUTER_ROLE]},
                        MODEL_NAME, API_KEY)
    try:
        outcome = get_adapter("langgraph").run(EpisodeSpec(task, variant, endpoint, Knobs(), world,
                                                           TraceRecorder(), durability))
    finally:
        served = simulator.close_episode(episode.id)
    return outcome, list(served.records), world


def test_the_resume_path_is_langgraphs_own_checkpointer() -> None:
    assert "SqliteSaver" in LangGraphAdapter.resume_path and "invoke(None)" in LangGraphAdapter.resume_path
    assert get_adapter("langgraph").resume_path == LangGraphAdapter.resume_path


def test_without_durability_the_checkpointer_stays_in_memory(simulator: Simulator) -> None:
    task = load_suite_task(TASK)
    endpoint = Endpoint({role: "http://127.0.0.1:9/v1" for role in [*task.roles, ROUTER_ROLE]}, MODEL_NAME, API_KEY)
    spec = EpisodeSpec(task, Variant.LINEAR, endpoint, Knobs(), World.for_task(task), TraceRecorder())
    episode = LangGraphEpisode(spec)
    assert isinstance(episode.graph.checkpointer, InMemorySaver) and len(episode.thread_id) == 32
    episode.close()  # nothing to close
    outcome, _, _ = run_here(simulator, Variant.LINEAR, None)
    assert outcome.termination is Termination.COMPLETED and outcome.resumed_from is None


@pytest.mark.parametrize("variant", list(Variant), ids=lambda v: v.value)
def test_a_crash_right_after_the_email_resumes_in_the_send_step_and_sends_it_again(
        tmp_path: Path, simulator: Simulator, variant: Variant) -> None:
    full = full_run_calls(simulator, variant)
    result = run_durable_episode("langgraph", load_suite_task(TASK), variant, 0, tmp_path / "e",
                                 CrashPoint("after_effect", effect=1), simulator=simulator)
    assert result.crashed and result.effects_at_crash == 1
    # The fresh process read LangGraph's checkpoint back: it continued at the send step ...
    assert result.resumed_from is not None and result.resumed_from.startswith("checkpoint ")
    assert f"(next: {WORKER[variant].format('send')}" in result.resumed_from
    assert result.calls_after < full and result.calls_before + result.calls_after - result.redone_calls == full
    # ... whose tools node had not recorded the email: the node's agent graph resumes from its own
    # checkpoint (after the model asked for send_email, when that async write landed) and ToolNode
    # runs send_email again. The measurement, not compensated: the customer gets two emails.
    assert result.duplicated == 1 and result.lost == 0 and result.harmful
    assert result.redone_calls <= 1  # at most the model turn asking for the email
    assert [e.tool for e in WorldJournal(tmp_path / "e").load(load_suite_task(TASK)).side_effects] == [
        "send_email", "send_email", "crm_update"]
    assert result.termination is Termination.COMPLETED and result.status is Status.FAILED_CHECK
    assert result.verdict.failed_checks == ("exactly one confirmation naming the new slot was sent",)


@pytest.mark.parametrize("variant", list(Variant), ids=lambda v: v.value)
def test_a_crash_between_send_and_update_resumes_without_repeating_the_email(
        tmp_path: Path, simulator: Simulator, variant: Variant) -> None:
    full = full_run_calls(simulator, variant)
    result = run_durable_episode("langgraph", load_suite_task(TASK), variant, 0, tmp_path / "e",
                                 CrashPoint("before_step", step="update_crm"), simulator=simulator)
    assert result.crashed and result.effects_at_crash == 1
    assert result.resumed_from is not None and result.resumed_from.startswith("checkpoint ")
    assert result.calls_after < full
    assert result.exactly_once and result.redone_calls == 0
    assert result.status is Status.SUCCESS and result.termination is Termination.COMPLETED


def test_with_no_checkpoint_saved_the_resumed_run_starts_over(tmp_path: Path, simulator: Simulator) -> None:
    # A process killed before LangGraph saved anything (while it was still being built) leaves no
    # checkpoint: the resumed run finds none for the thread and runs the whole episode.
    full = full_run_calls(simulator, Variant.LINEAR)
    outcome, records, world = run_here(simulator, Variant.LINEAR, Durability(tmp_path, True, "never-ran"))
    assert outcome.resumed_from is None and outcome.termination is Termination.COMPLETED
    assert len(records) == full and [e.tool for e in world.side_effects] == ["send_email", "crm_update"]
    assert outcome.final_output == {"crm_status": "updated"}
    assert (tmp_path / CHECKPOINTS).exists()  # this run checkpointed in turn


@pytest.mark.parametrize("variant, plan, termination", [
    (Variant.LINEAR, FaultPlan(NONE, 0), Termination.COMPLETED),
    (Variant.GATED, FaultPlan(NONE, 0, tuple(ForcedFault("draft", Fault.WRONG_VALUE, a) for a in range(3))),
     Termination.GATE_EXHAUSTED),
], ids=["linear-completed", "gated-exhausted"])
def test_resuming_a_finished_thread_reads_its_end_from_the_checkpoint(
        tmp_path: Path, simulator: Simulator, variant: Variant, plan: FaultPlan, termination: Termination) -> None:
    first, _, _ = run_here(simulator, variant, Durability(tmp_path, False, "done"), plan)
    assert first.termination is termination and first.resumed_from is None
    again, records, world = run_here(simulator, variant, Durability(tmp_path, True, "done"), plan)
    assert again.resumed_from is not None and again.resumed_from.endswith("(next: nothing, the run had ended)")
    assert records == [] and world.side_effects == []  # invoke(None) on an ended thread runs nothing
    assert again.termination is termination and again.final_output == first.final_output
    # another thread in the same file has no checkpoint: it starts over
    other, _, _ = run_here(simulator, variant, Durability(tmp_path, True, "other"), plan)
    assert other.resumed_from is None and other.termination is termination
