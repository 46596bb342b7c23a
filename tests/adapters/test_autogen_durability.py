"""AutoGen's resume path in the durability experiment: the team's own ``save_state()``, read back after a SIGKILL.

Through :func:`run_durable_episode` each run is a fresh process (the first one killed at
the crash point); what is asserted comes from the simulator's request log, the world's
journal and the state file AutoGen's ``save_state()`` produced, not from the adapter's
account of itself. One test drives the gated redo bookkeeping in-process, with a forced fault.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordlab.adapters.autogen_adapter import AutoGenAdapter, AutoGenEpisode
from coordlab.adapters.base import Durability, Endpoint, EpisodeSpec, Knobs, Termination, Variant
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import TraceRecorder
from coordlab.runners.durability import CrashPoint, run_durable_episode
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.harness import API_KEY, Status, run_episode
from coordlab.runners.simulator import MODEL_NAME, ROUTER_ROLE, Simulator
from coordlab.tasks.loader import load_suite_task
from coordlab.tasks.world import World

pytest.importorskip("autogen_agentchat")
from autogen_agentchat.state import TeamState  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")

TASK = "appointment_rebooking"  # find_slot, draft, send (send_email), update_crm (crm_update)
NONE = load_profile("none")


def full_run_calls(simulator: Simulator, variant: Variant) -> int:
    """Model calls of the same episode run to its end without a crash (and without durability)."""
    result = run_episode(get_adapter("autogen"), load_suite_task(TASK), variant, simulator, FaultPlan(NONE, 0))
    assert result.status is Status.SUCCESS
    return len(result.records)


def saved_state(folder: Path) -> dict:
    (path,) = folder.glob("*.autogen_team.json")
    return json.loads(path.read_text())


def test_resume_path_is_declared() -> None:
    assert "save_state" in AutoGenAdapter.resume_path and "load_state" in AutoGenAdapter.resume_path


@pytest.mark.parametrize("variant, saved_after", [(Variant.LINEAR, "step 'draft'"), (Variant.GATED, "step 'draft'"),
                                                  (Variant.DELEGATED, "turn 5 of the chat ('router' spoke)")],
                         ids=["linear", "gated", "delegated"])
def test_a_fresh_process_resumes_from_the_saved_team_state(simulator: Simulator, tmp_path: Path, variant: Variant,
                                                           saved_after: str) -> None:
    """Killed right after the email went out: the fresh process loads the team state saved before `send`.

    The team run in flight at the kill (step `send`; in delegated the coordinator's turn) runs
    again, tool call included: AutoGen's saved state knows nothing of it, so the email is sent twice.
    """
    result = run_durable_episode("autogen", load_suite_task(TASK), variant, seed=0, folder=tmp_path,
                                 crash=CrashPoint("after_effect", effect=1), simulator=simulator)
    assert result.crashed
    assert result.resumed_from is not None and result.resumed_from.startswith(f"saved team state after {saved_after}")
    assert result.termination is Termination.COMPLETED, result.error
    assert result.calls_after < full_run_calls(simulator, variant)
    assert result.calls_before + result.calls_after > full_run_calls(simulator, variant)  # the step in flight, again
    assert (result.duplicated, result.lost) == (1, 0) and result.harmful
    state = saved_state(tmp_path)
    TeamState.model_validate(state["team"])  # what the file holds is AutoGen's own save_state()
    last = "step 'update_crm'" if variant is not Variant.DELEGATED else "('router' spoke)"
    assert state["after"].endswith(last)  # the resumed run saved as it went, to its end


@pytest.mark.parametrize("variant", [Variant.LINEAR, Variant.GATED], ids=str)
def test_a_crash_before_the_first_save_starts_over(simulator: Simulator, tmp_path: Path, variant: Variant) -> None:
    """Killed at the first model request: nothing was saved, so the fresh process runs the episode from the start."""
    result = run_durable_episode("autogen", load_suite_task(TASK), variant, seed=0, folder=tmp_path,
                                 crash=CrashPoint("before_step", step="find_slot"), simulator=simulator)
    assert result.crashed and result.resumed_from is None
    assert result.calls_before == 0 and result.calls_after == full_run_calls(simulator, variant)
    assert result.status is Status.SUCCESS and result.exactly_once


def test_a_crash_between_steps_loses_no_work(simulator: Simulator, tmp_path: Path) -> None:
    result = run_durable_episode("autogen", load_suite_task(TASK), Variant.LINEAR, seed=0, folder=tmp_path,
                                 crash=CrashPoint("before_step", step="update_crm"), simulator=simulator)
    assert result.resumed_from is not None and result.resumed_from.startswith("saved team state after step 'send'")
    assert result.redone_calls == 0 and result.status is Status.SUCCESS and result.exactly_once


class _Killed(BaseException):
    """Stands for the SIGKILL in the in-process test: nothing after it runs (the adapter catches only RuntimeError)."""


def test_gated_resumes_after_the_gate_redo(simulator: Simulator, tmp_path: Path) -> None:
    """A wrong draft, rejected and redone; the run dies before `send`: the resumed run goes to the gate, not the redo.

    In one process for the forced fault; the two runs share nothing but the world (the outside
    system) and the saved state file.
    """
    task = load_suite_task(TASK)
    world = World.for_task(task)

    def run(plan: FaultPlan, resume: bool, adapter: AutoGenAdapter) -> tuple:
        episode = simulator.open_episode(task, plan, world=world)
        endpoint = Endpoint({r: simulator.base_url(episode.id, r) for r in [*task.roles, ROUTER_ROLE]}, MODEL_NAME,
                            API_KEY)
        try:
            outcome = adapter.run(EpisodeSpec(task, Variant.GATED, endpoint, Knobs(), world, TraceRecorder(),
                                              Durability(tmp_path, resume, "gated-redo")))
        except _Killed:
            outcome = None
        return outcome, simulator.close_episode(episode.id).records

    class DiesBeforeSend(AutoGenEpisode):
        async def run_step(self, team, step, feedback=""):  # type: ignore[no-untyped-def]
            if step.id == "send":
                raise _Killed
            await super().run_step(team, step, feedback)

    dying = AutoGenAdapter()
    dying.episode_class = DiesBeforeSend
    outcome, first = run(FaultPlan(NONE, 0, (ForcedFault("draft", Fault.WRONG_VALUE, 0),)), False, dying)
    assert outcome is None and [r.step for r in first].count("draft") == 2  # the draft and its redo
    outcome, second = run(FaultPlan(NONE, 0), True, AutoGenAdapter())
    assert outcome is not None and outcome.termination is Termination.COMPLETED, outcome
    assert outcome.resumed_from is not None
    assert outcome.resumed_from.startswith("saved team state after redo of step 'draft' (rejection 1 by the gate")
    assert {r.step for r in second} == {"send", "update_crm"}
    assert [e.tool for e in world.side_effects] == ["send_email", "crm_update"]
