"""CrewAI's resume path in the durability experiment: its own checkpointing, read back after a SIGKILL.

Through :func:`run_durable_episode` each run is a fresh process (the first one killed at
the crash point); what is asserted comes from the simulator's request log, the world's
journal and the checkpoint files CrewAI wrote, not from the adapter's account of itself.
CrewAI writes a checkpoint from its event bus's thread pool a few milliseconds after a
task completes, so which one is on disk at the kill can vary; the tests check that the
resumed run started where the checkpoint it names says, not at a fixed step. The last two
tests resume in this process from a copy of such a folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from coordlab.adapters.base import AdapterOutcome, Durability, Endpoint, EpisodeSpec, Knobs, Termination, Variant
from coordlab.adapters.crewai_adapter import CHECKPOINT_DIR, CrewAIAdapter
from coordlab.adapters.registry import get_adapter
from coordlab.adapters.trace import TraceRecorder
from coordlab.runners.durability import CrashPoint, DurableResult, run_durable_episode
from coordlab.runners.faults import FaultPlan, load_profile
from coordlab.runners.harness import API_KEY, Status, run_episode
from coordlab.runners.simulator import MODEL_NAME, ROUTER_ROLE, RequestRecord, Simulator
from coordlab.tasks.loader import load_suite_task
from coordlab.tasks.world import World

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:crewai",
                                        "ignore:Pydantic serializer warnings:UserWarning")

TASK = "appointment_rebooking"  # find_slot, draft, send (send_email), update_crm (crm_update; gated: a ConditionalTask)
STEPS = ["find_slot", "draft", "send", "update_crm"]
NONE = load_profile("none")
RESUMED = re.compile(r"CrewAI checkpoint (\S+): (\d) of 4 task outputs \(([a-z_, ]+)\), resumed at task '([a-z_]+)'$")


def full_run_calls(simulator: Simulator, variant: Variant) -> int:
    """Model calls of the same episode run to its end without a crash (and without durability)."""
    result = run_episode(get_adapter("crewai"), load_suite_task(TASK), variant, simulator, FaultPlan(NONE, 0))
    assert result.status is Status.SUCCESS
    return len(result.records)


def checkpoint_file(folder: Path, checkpoint_id: str) -> dict:
    """The checkpoint CrewAI wrote with this id (``{timestamp}_{uuid8}``), as its JSON."""
    (path,) = (folder / CHECKPOINT_DIR).rglob(f"{checkpoint_id}_p-*.json")
    return json.loads(path.read_text())


def done_steps(checkpoint: dict) -> list[str]:
    (crew,) = [e for e in checkpoint["entities"] if e["entity_type"] == "crew"]
    return [step for step, task in zip(STEPS, crew["tasks"]) if task["output"] is not None]


def steps_called(records: list[RequestRecord]) -> list[str | None]:
    return [r.step for r in records]


def test_resume_path_is_declared() -> None:
    assert "CheckpointConfig" in CrewAIAdapter.resume_path and "Crew.from_checkpoint" in CrewAIAdapter.resume_path


@pytest.fixture(scope="module")
def crashed_after_email(tmp_path_factory: pytest.TempPathFactory) -> dict[Variant, tuple[DurableResult, Path]]:
    """Linear and gated, each killed right after `send` emailed the customer, resumed in a fresh process."""
    runs = {}
    with Simulator() as simulator:
        for variant in (Variant.LINEAR, Variant.GATED):
            folder = tmp_path_factory.mktemp(f"crewai-{variant}")
            runs[variant] = (run_durable_episode("crewai", load_suite_task(TASK), variant, seed=0, folder=folder,
                                                 crash=CrashPoint("after_effect", effect=1), simulator=simulator),
                             folder)
    return runs


@pytest.mark.parametrize("variant", [Variant.LINEAR, Variant.GATED], ids=str)
def test_a_fresh_process_resumes_from_crewais_checkpoint(simulator: Simulator, variant: Variant,
                                                         crashed_after_email: dict) -> None:
    """The resumed run restores the checkpoint CrewAI wrote at the last completed task and runs only what follows.

    The task in flight at the kill (`send`) has no checkpoint, so it runs again, tool call
    included: the email is sent twice (CrewAI's measurement, not compensated).
    """
    result, folder = crashed_after_email[variant]
    assert result.crashed and result.effects_at_crash == 1
    assert result.resumed_from is not None, result.notes
    match = RESUMED.match(result.resumed_from)
    assert match, result.resumed_from
    checkpoint_id, count, done, resumed_at = match.groups()
    on_disk = done_steps(checkpoint_file(folder, checkpoint_id))  # what CrewAI itself wrote
    assert done.split(", ") == on_disk and int(count) == len(on_disk) and on_disk in (STEPS[:1], STEPS[:2])
    assert resumed_at == STEPS[len(on_disk)]
    first, resumed = result.records[:result.calls_before], result.records[-result.calls_after:]
    assert steps_called(resumed)[0] == resumed_at and set(on_disk).isdisjoint(steps_called(resumed))
    assert result.calls_after < full_run_calls(simulator, variant)
    assert "send" in steps_called(first) and "send" in steps_called(resumed)
    assert result.termination is Termination.COMPLETED, result.error
    assert (result.duplicated, result.lost) == (1, 0) and result.harmful
    if variant is Variant.GATED:  # CrewAI drops callable guardrails and restores the ConditionalTask as a plain Task
        assert any(n.startswith("gated: resumed from a CrewAI checkpoint") and "update_crm" in n for n in result.notes)
    # The resumed crew went on checkpointing to its end, into the same folder.
    newest = max((folder / CHECKPOINT_DIR).rglob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    assert done_steps(json.loads(newest.read_text())) == STEPS


def test_a_crash_before_the_first_checkpoint_starts_over(simulator: Simulator, tmp_path: Path) -> None:
    """Killed at the first model request: CrewAI had written nothing, so the fresh process runs from the start."""
    result = run_durable_episode("crewai", load_suite_task(TASK), Variant.LINEAR, seed=0, folder=tmp_path,
                                 crash=CrashPoint("before_step", step="find_slot"), simulator=simulator)
    assert result.crashed and result.resumed_from is None
    assert result.calls_before == 0 and result.calls_after == full_run_calls(simulator, Variant.LINEAR)
    assert result.status is Status.SUCCESS and result.exactly_once


def test_a_hierarchical_crew_starts_over(simulator: Simulator, tmp_path: Path) -> None:
    """The delegated crew is one CrewAI task, checkpointed only when it ends: after the kill there is nothing to
    restore, so the whole job runs again and the email goes out twice."""
    result = run_durable_episode("crewai", load_suite_task(TASK), Variant.DELEGATED, seed=0, folder=tmp_path,
                                 crash=CrashPoint("after_effect", effect=1), simulator=simulator)
    assert result.crashed and result.resumed_from is None
    assert result.calls_after == full_run_calls(simulator, Variant.DELEGATED)
    assert result.termination is Termination.COMPLETED, result.error
    assert (result.duplicated, result.lost) == (1, 0)


def resume_here(simulator: Simulator, folder: Path, variant: Variant) -> tuple[AdapterOutcome, list, list[str]]:
    """Resume from ``folder`` in this process, on a fresh world: the outcome, model calls and side effects."""
    task = load_suite_task(TASK)
    world = World.for_task(task)
    episode = simulator.open_episode(task, FaultPlan(NONE, 0), world=world)
    urls = {r: simulator.base_url(episode.id, r) for r in [*task.roles, ROUTER_ROLE]}
    endpoint = Endpoint(urls, MODEL_NAME, API_KEY)
    outcome = get_adapter("crewai").run(EpisodeSpec(task, variant, endpoint, Knobs(), world, TraceRecorder(),
                                                    Durability(folder, True, "copy")))
    return outcome, simulator.close_episode(episode.id).records, [e.tool for e in world.side_effects]


def test_a_torn_newest_checkpoint_is_passed_over(simulator: Simulator, tmp_path: Path,
                                                 crashed_after_email: dict) -> None:
    """A checkpoint the kill cut short does not restore; the one before it does, and the run resumes from there."""
    _, source = crashed_after_email[Variant.LINEAR]
    folder = tmp_path / "episode"
    shutil.copytree(source / CHECKPOINT_DIR, folder / CHECKPOINT_DIR)
    files = sorted((folder / CHECKPOINT_DIR).rglob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    for path in files:  # keep what CrewAI had written by the end of `draft`
        if done_steps(json.loads(path.read_text())) not in (STEPS[:1], STEPS[:2]):
            path.unlink()
    kept = sorted((folder / CHECKPOINT_DIR).rglob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    assert done_steps(json.loads(kept[-1].read_text())) == STEPS[:2]
    torn = kept[-1].with_name("29990101T000000_0badf00d_p-none.json")
    torn.write_text(kept[-1].read_text()[:4000])
    os.utime(torn, ns=(kept[-1].stat().st_mtime_ns + 10**9,) * 2)
    outcome, records, effects = resume_here(simulator, folder, Variant.LINEAR)
    assert any(torn.name in note and "passed over" in note for note in outcome.notes)
    assert outcome.resumed_from is not None and outcome.resumed_from.endswith("resumed at task 'send'")
    assert outcome.termination is Termination.COMPLETED and outcome.final_output == {"crm_status": "updated"}
    assert steps_called(records) == ["send", "send", "update_crm", "update_crm"]
    assert effects == ["send_email", "crm_update"]


def test_a_checkpoint_of_another_crew_is_not_restored(simulator: Simulator, tmp_path: Path,
                                                      crashed_after_email: dict) -> None:
    """The delegated (hierarchical) crew does not take over the linear crew's checkpoints: it runs from its start."""
    _, source = crashed_after_email[Variant.LINEAR]
    shutil.copytree(source / CHECKPOINT_DIR, tmp_path / CHECKPOINT_DIR)
    outcome, records, effects = resume_here(simulator, tmp_path, Variant.DELEGATED)
    assert outcome.resumed_from is None
    assert [n for n in outcome.notes if n.startswith("durability:")] == [
        next(n for n in outcome.notes if "a sequential crew, not this crew" in n)]
    assert outcome.termination is Termination.COMPLETED and effects == ["send_email", "crm_update"]
    assert len(records) == full_run_calls(simulator, Variant.DELEGATED)
