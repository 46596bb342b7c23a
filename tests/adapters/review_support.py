"""What the human-in-the-loop tests of every framework share: the task, the seeds that make the
reviewer answer a given way, the reviewed run, and what its request log and trace say."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from coordlab.adapters.base import Knobs, Review, Variant
from coordlab.adapters.trace import EventKind
from coordlab.runners.durability import DurableResult, run_durable_episode
from coordlab.runners.durability.review import ReviewKind, first_answer
from coordlab.runners.simulator import Simulator
from coordlab.tasks.loader import load_suite_task

TASK = load_suite_task("appointment_rebooking")  # find_slot, draft, send (gate retries draft), update_crm (itself)
PIPELINES = [Variant.LINEAR, Variant.GATED]


def seed_where(send: ReviewKind, update_crm: ReviewKind = ReviewKind.APPROVE) -> int:
    """The first seed whose reviewer first answers ``send`` and ``update_crm`` so."""
    return next(seed for seed in range(200) if first_answer(seed, TASK.release, "send") is send
                and first_answer(seed, TASK.release, "update_crm") is update_crm)


def run_reviewed(framework: str, simulator: Simulator, folder: Path, variant: Variant, seed: int,
                 knobs: Knobs | None = None) -> DurableResult:
    """``framework``'s reviewed episode of :data:`TASK` (fresh processes; a late answer kills the first)."""
    return run_durable_episode(framework, TASK, variant, seed, folder, knobs=knobs, simulator=simulator, review=True)


def calls(result: DurableResult, step: str, kind: str = "final") -> int:
    """How many of ``step``'s model calls (both runs) were answered with ``kind``."""
    return sum(1 for r in result.records if r.step == step and r.kind == kind)


def human_gates(result: DurableResult, step: str) -> list[tuple[bool, str]]:
    """(passed, reason) of every gate event before ``step``, both runs, in order: the reviewer's answers (and, in
    gated, the gate's own verdicts)."""
    return [(e.detail["passed"], e.detail["reason"]) for trace in result.traces for e in trace
            if e.kind is EventKind.GATE and e.step == step]


class RecordingApprover:
    """An approver in the test's own process that approves everything and keeps what it was shown."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, dict[str, Any]]] = []

    def review(self, step: str, proposal: Mapping[str, Any]) -> Review:
        self.asked.append((step, dict(proposal)))
        return Review(True)
