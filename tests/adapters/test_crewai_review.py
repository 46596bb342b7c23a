"""CrewAI with a human in the loop: the scripted, seeded reviewer asked before every gated step.

CrewAI's way: ``Task(human_input=True)``. Once a task's agent has its answer, CrewAI asks its
human-input provider for feedback (empty accepts; text is appended to the agent's conversation
and the work redone, then the human is asked again); the episode's provider answers with the
approver. CrewAI asks only after a task's answer, so a step is approved on the answer of the
task before it. Every episode runs through :func:`run_durable_episode` with ``review=True``
(fresh processes; a late answer kills the first one while it waits). What is asserted comes
from the reviewer's inbox, the world's journal, the simulator's request log and the checkpoint
files CrewAI wrote; the last test runs the adapter in this process to see what the reviewer is
shown.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from coordlab.adapters.base import Endpoint, EpisodeSpec, Knobs, Termination, Variant
from coordlab.adapters.crewai_adapter import CHECKPOINT_DIR, ApproverInput, CrewEpisode
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import EventKind, TraceRecorder
from coordlab.runners.durability.review import ReviewKind
from coordlab.runners.faults import FaultPlan, load_profile
from coordlab.runners.harness import API_KEY, Status
from coordlab.runners.simulator import MODEL_NAME, ROUTER_ROLE, Simulator
from coordlab.tasks.world import World

from review_support import PIPELINES, RecordingApprover, TASK, calls, human_gates, run_reviewed, seed_where

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:crewai",
                                        "ignore:Pydantic serializer warnings:UserWarning")

STEPS = [s.id for s in TASK.steps]
RESUMED_AT = re.compile(r"resumed at task '([a-z_]+)'$")


reviewed = partial(run_reviewed, "crewai")


def last_crew(folder: Path) -> dict[str, Any]:
    """The crew in the newest checkpoint CrewAI wrote (its tasks, with their outputs and conversations)."""
    files = sorted((folder / CHECKPOINT_DIR).rglob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    (crew,) = [e for e in json.loads(files[-1].read_text())["entities"] if e["entity_type"] == "crew"]
    return crew


def conversation(folder: Path, step: str) -> list[tuple[str, str]]:
    """(role, text) of the messages of ``step``'s agent, as CrewAI kept them with the task's output."""
    output = last_crew(folder)["tasks"][STEPS.index(step)]["output"]
    return [(m["role"], str(m.get("content") or "")) for m in output["messages"]]


@pytest.mark.parametrize("variant", PIPELINES, ids=str)
def test_approved_steps_run_once_approved(simulator: Simulator, tmp_path: Path, variant: Variant) -> None:
    result = reviewed(simulator, tmp_path, variant, seed_where(ReviewKind.APPROVE))
    assert not result.crashed and result.status is Status.SUCCESS, result.error
    assert result.reviews == {"approve": 2, "reject": 0, "late": 0, "unapproved": 0}
    assert result.exactly_once and calls(result, "draft") == 1
    # CrewAI asks on the answer of the task before each gated step: draft's (for send) and send's (for update_crm).
    assert [t["human_input"] for t in last_crew(tmp_path)["tasks"]] == [False, True, True, False]


@pytest.mark.parametrize("variant", PIPELINES, ids=str)
def test_a_rejection_redoes_the_task_with_the_reason_and_asks_again(simulator: Simulator, tmp_path: Path,
                                                                   variant: Variant) -> None:
    result = reviewed(simulator, tmp_path, variant, seed_where(ReviewKind.REJECT))
    assert not result.crashed and result.status is Status.SUCCESS, result.error
    assert result.reviews == {"approve": 2, "reject": 1, "late": 0, "unapproved": 0}
    assert result.exactly_once
    assert calls(result, "draft") == 2 and calls(result, "send") == 1  # the draft redone, then sent once
    gates = human_gates(result, "send")
    (reason,) = [r for ok, r in gates if not ok]
    assert reason.startswith("Rejected by the reviewer before 'send'")
    # In gated the reviewer's rejection comes first: CrewAI asks inside the draft task, before its guardrail (the
    # gate) has seen the answer (measured; plain asks after the gate passes). Then the human approves, the gate passes.
    gate_verdicts = [(True, "")] if variant is Variant.GATED else []
    assert gates == [(False, reason), (True, ""), *gate_verdicts]
    retries = [e for e in result.traces[0] if e.kind is EventKind.RETRY]
    assert [(e.step, e.detail["reason"]) for e in retries] == [("draft", "rejected by the reviewer")]
    # CrewAI's feedback loop: the reason is appended to the draft agent's conversation. Measured: the rejected answer
    # is not in it (CrewAI keeps no assistant message for a structured answer of an agent without tools), so the
    # agent redoes the draft from the task and the reason alone.
    said = conversation(tmp_path, "draft")
    assert [role for role, _ in said] == ["system", "user", "user"]
    assert said[-1][1].startswith(f"User feedback: {reason}")


@pytest.mark.parametrize("variant", [Variant.LINEAR], ids=str)
def test_a_rejection_of_update_crm_redoes_send(simulator: Simulator, tmp_path: Path, variant: Variant) -> None:
    """`update_crm`'s approval is asked on `send`'s answer: CrewAI's loop redoes `send` (the gate would retry
    `update_crm` itself), said so in the notes."""
    result = reviewed(simulator, tmp_path, variant, seed_where(ReviewKind.APPROVE, ReviewKind.REJECT))
    assert result.status is Status.SUCCESS, result.error
    assert result.reviews == {"approve": 2, "reject": 1, "late": 0, "unapproved": 0}
    assert any("rejected 'update_crm'" in note and "redoes 'send'" in note for note in result.notes)
    retries = [e for e in result.traces[0] if e.kind is EventKind.RETRY]
    assert [(e.step, e.detail["reason"]) for e in retries] == [("send", "rejected by the reviewer")]
    # Measured: send redone after the email went out; the agent's conversation still holds the email's result, and
    # the simulated model answers again without sending twice (a real model might send again).
    assert calls(result, "send") == 2 and calls(result, "send", "tool_call") == 1
    assert result.exactly_once


def test_rejections_past_the_bound_stop_before_the_change(simulator: Simulator, tmp_path: Path) -> None:
    result = reviewed(simulator, tmp_path, Variant.LINEAR, seed_where(ReviewKind.REJECT), Knobs(gate_retries=0))
    assert result.termination is Termination.GATE_EXHAUSTED and result.error is None
    assert result.reviews == {"approve": 0, "reject": 1, "late": 0, "unapproved": 0}
    assert calls(result, "send") == 0 and result.lost == 2
    # Measured: CrewAI's human feedback cannot refuse, so the provider raises; CrewAI takes that for an agent error
    # and re-runs the draft task max_retry_limit (2) times, refused each time without asking, then fails the crew.
    assert calls(result, "draft") == 3
    assert any("went past knobs.gate_retries" in note for note in result.notes)


@pytest.mark.parametrize("variant, late", [(Variant.LINEAR, "send"), (Variant.LINEAR, "update_crm"),
                                           (Variant.GATED, "send")], ids=str)
def test_a_late_answer_comes_to_the_resumed_run(simulator: Simulator, tmp_path: Path, variant: Variant,
                                                late: str) -> None:
    """The first run dies waiting inside the task before the late step; the fresh process restores CrewAI's last
    checkpoint, redoes that task and asks again."""
    kinds = {"send": ReviewKind.APPROVE, "update_crm": ReviewKind.APPROVE, late: ReviewKind.LATE}
    result = reviewed(simulator, tmp_path, variant, seed_where(kinds["send"], kinds["update_crm"]))
    assert result.crashed and result.termination is Termination.COMPLETED, result.error
    asking = STEPS[STEPS.index(late) - 1]
    # Normally the checkpoint of the task before the asking one; CrewAI writes checkpoints on a thread pool, and a
    # write can be late or fail (an occasional PyO3 panic in its event record), leaving an earlier one.
    resumed = RESUMED_AT.search(result.resumed_from or "")
    resumed_at = resumed.group(1) if resumed else STEPS[0]
    assert STEPS.index(resumed_at) <= STEPS.index(asking)
    asked_again = sum(1 for step in STEPS[STEPS.index(resumed_at):STEPS.index(asking) + 1]
                      if step in ("draft", "send"))  # the tasks that ask, redone
    assert result.reviews == {"approve": 1 + asked_again, "reject": 0, "late": 1, "unapproved": 0}
    if late == "send":
        assert result.effects_at_crash == 0 and result.status is Status.SUCCESS and result.exactly_once
    else:
        # Measured: the wait is inside `send`, after its email and before CrewAI's task_completed checkpoint; the
        # resumed run redoes `send` and emails the customer again.
        assert result.effects_at_crash == 1 and result.duplicated == 1 and result.lost == 0
        assert result.status is Status.FAILED_CHECK


def test_the_reviewer_sees_what_the_step_would_act_on(simulator: Simulator) -> None:
    """In this process: the proposal is the values the step reads, the asking task's answer among them; CrewAI's
    provider is the episode's only during the kickoff; without an approver no task asks."""
    from crewai.core.providers.human_input import get_provider

    world = World.for_task(TASK)
    episode = simulator.open_episode(TASK, FaultPlan(load_profile("none"), 0), world=world)
    endpoint = Endpoint({r: simulator.base_url(episode.id, r) for r in [*TASK.roles, ROUTER_ROLE]}, MODEL_NAME, API_KEY)
    approver = RecordingApprover()
    outcome = get_adapter("crewai").run(EpisodeSpec(TASK, Variant.LINEAR, endpoint, Knobs(), world, TraceRecorder(),
                                                    approver=approver))
    simulator.close_episode(episode.id)
    assert outcome.termination is Termination.COMPLETED, outcome.error
    slot = next(e for e in world.side_effects if e.tool == "crm_update").arguments["value"]
    assert [step for step, _ in approver.asked] == ["send", "update_crm"]
    send, update_crm = (proposal for _, proposal in approver.asked)
    assert send["customer_email"] == "dana.whitfield@example.com"
    assert send["confirmation"].startswith("Dear Dana Whitfield") and slot in send["confirmation"]
    assert update_crm == {"customer_id": "C-1042", "slot": slot, "message_id": "msg-1"}
    assert not isinstance(get_provider(), ApproverInput)
    plain = CrewEpisode(EpisodeSpec(TASK, Variant.LINEAR, endpoint, Knobs(), World.for_task(TASK), TraceRecorder()))
    assert not any(t.human_input for t in plain.crew_tasks) and plain.human_input_provider() is None
