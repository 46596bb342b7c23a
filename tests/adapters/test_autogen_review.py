"""AutoGen with a human in the loop: the scripted, seeded reviewer asked before every gated step.

AutoGen's way for a human who may answer late: the team stops, its state is saved while the
human is asked, and the answer is the next run's task. Every episode runs through
:func:`run_durable_episode` with ``review=True`` (fresh processes; a late answer kills the
first one while it waits). What is asserted comes from the reviewer's inbox, the world's
journal, the simulator's request log and the state file AutoGen's ``save_state()`` wrote.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from coordlab.adapters.base import Termination, Variant
from coordlab.adapters.trace import EventKind
from coordlab.runners.durability.review import ReviewKind
from coordlab.runners.harness import Status
from coordlab.runners.simulator import Simulator

from review_support import PIPELINES, calls, human_gates, run_reviewed, seed_where

pytest.importorskip("autogen_agentchat")
from autogen_agentchat.state import TeamState  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")


reviewed = partial(run_reviewed, "autogen")


def user_messages(folder: Path) -> list[str]:
    """What the application said in the team's conversation (the task of each run), from AutoGen's saved state."""
    (path,) = folder.glob("*.autogen_team.json")
    team = json.loads(path.read_text())["team"]
    TeamState.model_validate(team)
    thread = next(agent["message_thread"] for agent in team["agent_states"].values() if "message_thread" in agent)
    return [message["content"] for message in thread if message.get("source") == "user"]


@pytest.mark.parametrize("variant", PIPELINES, ids=str)
def test_approved_steps_run_once_approved(simulator: Simulator, tmp_path: Path, variant: Variant) -> None:
    result = reviewed(simulator, tmp_path, variant, seed_where(ReviewKind.APPROVE))
    assert not result.crashed and result.status is Status.SUCCESS, result.error
    assert result.reviews == {"approve": 2, "reject": 0, "late": 0, "unapproved": 0}
    assert result.exactly_once and calls(result, "draft") == 1
    said = user_messages(tmp_path)
    assert sum(1 for m in said if m.startswith("APPROVE")) == 2  # the approval opened each approved step's run


@pytest.mark.parametrize("variant", PIPELINES, ids=str)
def test_a_rejection_redoes_the_work_with_the_reason_and_asks_again(simulator: Simulator, tmp_path: Path,
                                                                    variant: Variant) -> None:
    result = reviewed(simulator, tmp_path, variant, seed_where(ReviewKind.REJECT))
    assert not result.crashed and result.status is Status.SUCCESS, result.error
    assert result.reviews == {"approve": 2, "reject": 1, "late": 0, "unapproved": 0}
    assert result.exactly_once
    assert calls(result, "draft") == 2 and calls(result, "send") == 1  # the draft redone, then sent once
    (reason,) = [r for ok, r in human_gates(result, "send") if not ok]
    assert reason.startswith("Rejected by the reviewer before 'send'")
    assert human_gates(result, "send")[-1] == (True, "")
    retries = [e for e in result.traces[0] if e.kind is EventKind.RETRY]
    assert [(e.step, e.detail["reason"]) for e in retries] == [("draft", "rejected by the reviewer")]
    said = user_messages(tmp_path)
    assert any(m.startswith(reason) and "draft" in m for m in said)  # the reason was the redo run's task


@pytest.mark.parametrize("variant", PIPELINES, ids=str)
@pytest.mark.parametrize("late", ["send", "update_crm"])
def test_a_late_answer_comes_to_the_resumed_run(simulator: Simulator, tmp_path: Path, variant: Variant,
                                                late: str) -> None:
    """The first run dies waiting; the fresh process loads the state saved before the question and asks again."""
    kinds = {"send": ReviewKind.APPROVE, "update_crm": ReviewKind.APPROVE, late: ReviewKind.LATE}
    result = reviewed(simulator, tmp_path, variant, seed_where(kinds["send"], kinds["update_crm"]))
    assert result.crashed
    assert result.resumed_from is not None
    assert result.resumed_from.startswith(f"saved team state after the request for approval of step '{late}'")
    assert result.status is Status.SUCCESS and result.termination is Termination.COMPLETED, result.error
    assert result.reviews == {"approve": 2, "reject": 0, "late": 1, "unapproved": 0}
    assert (result.duplicated, result.lost) == (0, 0)
    assert result.redone_calls == 0  # nothing was in flight while the human was asked
    assert result.effects_at_crash == (0 if late == "send" else 1)

