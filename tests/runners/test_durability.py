"""The durability harness: the crash schedule, the world's journal across a SIGKILL, resume and scoring.

Every run here is a real fresh process killed with SIGKILL; plain is the framework (its
imports are light). Each framework's own resume path is tested beside its adapter
(tests/adapters/test_*_durability.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coordlab.adapters.base import Knobs, Variant
from coordlab.reports.durability import durability_report, load_rows
from coordlab.runners.durability import CrashPoint, crash_point, run_durable_episode
from coordlab.runners.durability.crash import effect_steps
from coordlab.runners.durability.episode import work_redone
from coordlab.runners.durability.experiment import durability_tasks, plan, run_durability
from coordlab.runners.durability.journal import WorldJournal
from coordlab.runners.simulator.log import RequestRecord
from coordlab.tasks.loader import load_suite_task, load_task, suite_names
from coordlab.tasks.world import World

DATA = Path(__file__).parent.parent / "data"
REPLY_FIRST = DATA / "reply_first.yaml"


def test_the_crash_point_depends_on_seed_and_task_only_and_covers_both_kinds() -> None:
    task = load_suite_task("appointment_rebooking")
    points = [crash_point(task, seed) for seed in range(60)]
    assert points == [crash_point(load_suite_task("appointment_rebooking"), seed) for seed in range(60)]
    kinds = {p.kind for p in points}
    assert kinds == {"after_effect", "before_step"}
    effects = effect_steps(task)
    for point in points:
        if point.kind == "after_effect":
            assert 1 <= point.effect <= len(effects) and point.step == effects[point.effect - 1]
        else:
            assert point.step in [s.id for s in task.steps[1:]]
    other = load_suite_task("incident_triage")
    assert [crash_point(other, s) for s in range(60)] != points  # the task is a coordinate


def test_only_world_changing_tasks_are_in_the_experiment() -> None:
    assert set(durability_tasks()) == set(suite_names()) - {"chain"}
    shares = plan(2, ["plain", "langgraph"], ["incident_triage"])
    assert [(s.framework, {(j.idempotency_keys, j.review) for j in s.jobs}) for s in shares] == [
        ("plain", {(False, False)}), ("plain", {(True, False)}), ("plain", {(False, True)}),
        ("langgraph", {(False, False)}), ("langgraph", {(True, False)}), ("langgraph", {(False, True)})]
    assert [len(s.jobs) for s in shares] == [2 * 3, 2 * 3, 2 * 2] * 2  # delegated is not reviewed


def test_the_world_survives_the_kill_and_a_journal_step_resumes(tmp_path: Path) -> None:
    task = load_suite_task("appointment_rebooking")
    result = run_durable_episode("plain", task, Variant.LINEAR, 0, tmp_path / "e",
                                 CrashPoint("after_effect", effect=1))
    assert result.crashed and result.effects_at_crash == 1  # the change was on disk when the process died
    assert result.resumed_from == "step journal: 2 finished steps, the last 'draft'"
    # plain's journal had not recorded 'send' as finished: the step runs again and the email goes twice.
    assert result.duplicated == 1 and result.lost == 0 and result.harmful and not result.exactly_once
    assert result.redone_calls == 1  # the request that made the send call is made again
    assert result.recover_s is not None and result.recover_s > 0
    world = WorldJournal(tmp_path / "e").load(task)
    assert [e.tool for e in world.side_effects] == ["send_email", "send_email", "crm_update"]


def test_a_crash_between_steps_loses_nothing_with_a_journal(tmp_path: Path) -> None:
    result = run_durable_episode("plain", load_suite_task("appointment_rebooking"), Variant.GATED, 0,
                                 tmp_path / "e", CrashPoint("before_step", step="send"))
    assert result.crashed and result.effects_at_crash == 0
    assert result.exactly_once and result.status.value == "success" and result.redone_calls == 0
    assert [r.kind for r in result.records].count("crash") == 1


def test_a_restart_from_scratch_is_recorded_as_such_and_idempotency_keys_absorb_it(tmp_path: Path) -> None:
    task = load_task(REPLY_FIRST)
    crash = CrashPoint("after_effect", effect=1)
    result = run_durable_episode("plain", task, Variant.LINEAR, 0, tmp_path / "off", crash)
    assert result.crashed and result.resumed_from is None  # nothing was journaled: it started over
    assert result.duplicated == 1 and result.redone_calls >= 1
    keyed = run_durable_episode("plain", task, Variant.LINEAR, 0, tmp_path / "on", crash,
                                Knobs(idempotency_keys=True))
    assert keyed.resumed_from is None and keyed.exactly_once and keyed.status.value == "success"
    assert keyed.knobs["idempotency_keys"] is True


def test_a_first_run_that_never_reaches_its_crash_point_is_not_resumed(tmp_path: Path) -> None:
    result = run_durable_episode("plain", load_task(REPLY_FIRST), Variant.LINEAR, 0, tmp_path / "e",
                                 CrashPoint("after_effect", effect=5))
    assert not result.crashed and result.resumed_from is None and result.recover_s is None
    assert result.status.value == "success" and any("before the crash point" in n for n in result.notes)


def test_a_used_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "left.txt").write_text("x")
    with pytest.raises(ValueError, match="empty folder"):
        run_durable_episode("plain", load_task(REPLY_FIRST), Variant.LINEAR, 0, tmp_path / "e")


def test_a_hung_run_is_killed_at_the_time_limit_and_not_taken_for_the_crash(tmp_path: Path) -> None:
    # 10 ms is far less than any real run (the openai client alone warms up for longer).
    result = run_durable_episode("plain", load_task(REPLY_FIRST), Variant.LINEAR, 0, tmp_path / "e",
                                 CrashPoint("after_effect", effect=1), time_limit_s=0.01)
    assert result.status.value == "timeout" and not result.crashed
    assert "hung past the time limit" in result.error


def _record(seq: int, role: str, step: str | None, kind: str) -> RequestRecord:
    return RequestRecord(seq=seq, episode_id="e", role=role, step=step, attempt=0, kind=kind, fault=None,
                         prompt_tokens=1, completion_tokens=1, retry_count=0, stream=False, status=200,
                         received_at=float(seq))


def test_work_redone_counts_repeats_once_each_and_finds_the_first_new_call() -> None:
    before = [_record(0, "a", "s1", "final"), _record(1, "b", "s2", "tool_call")]
    after = [_record(2, "a", "s1", "final"), _record(3, "a", "s1", "final"), _record(4, "b", "s2", "tool_call"),
             _record(5, "b", "s2", "final")]
    redone, first_new = work_redone(before, after)
    assert redone == 2 and first_new is after[1]


def test_the_journal_is_what_the_world_did(tmp_path: Path) -> None:
    task = load_suite_task("incident_triage")
    journal = WorldJournal(tmp_path)
    world = journal.keep(World.for_task(task))
    world.next_id("page")
    world.record_side_effect("page_team", {"team": "db"}, {"page_id": "page-1"})
    again = journal.load(task)
    assert [(e.tool, dict(e.arguments)) for e in again.side_effects] == [("page_team", {"team": "db"})]
    assert again.next_id("page") == "page-2"  # ids go on where the dead process left them


def test_the_experiment_records_each_episode_once_resumes_and_reports(tmp_path: Path) -> None:
    total, ran, _ = run_durability(tmp_path, seeds=1, frameworks=["plain"], tasks=["incident_triage"], workers=1)
    assert (total, ran) == (8, 8)
    again = run_durability(tmp_path, seeds=1, frameworks=["plain"], tasks=["incident_triage"], workers=1)
    assert again[:2] == (8, 0)  # everything was recorded: nothing runs twice
    rows = load_rows(tmp_path / "durability.sqlite")
    assert len(rows) == 8 and {r["idempotency_keys"] for r in rows} == {0, 1}
    assert sorted(r["scenario"] for r in rows) == ["crash"] * 6 + ["review"] * 2
    report = durability_report(tmp_path / "durability.sqlite", "coordlab experiment durability")
    outcome = next(t for t in report.tables if t.key == "durability")
    assert len(outcome.rows) == 6
    assert next(t for t in report.tables if t.key == "review").rows
    assert report.figures and len(report.verdict) == 3


def _seed_where(task_name: str, step: str, kind: str) -> int:
    from coordlab.runners.durability.review import first_answer

    task = load_suite_task(task_name)
    return next(seed for seed in range(100) if first_answer(seed, task.release, step).value == kind)


@pytest.mark.parametrize("kind", ["approve", "reject", "late"])
def test_a_reviewed_plain_episode_asks_before_each_change_and_honours_every_answer(tmp_path: Path, kind: str) -> None:
    seed = _seed_where("incident_triage", "page", kind)
    result = run_durable_episode("plain", load_suite_task("incident_triage"), Variant.LINEAR, seed, tmp_path / "e",
                                 review=True)
    assert result.status.value == "success" and result.exactly_once
    assert result.reviews is not None and result.reviews["unapproved"] == 0
    assert result.reviews[kind] == 1 and result.reviews["approve"] == 1  # the page is the one reviewed step
    assert result.crashed is (kind == "late")  # a late answer: the first run died waiting for it
    if kind == "late":
        assert result.crash.kind == "awaiting_review" and result.crash.step == "page"
        assert result.resumed_from is not None  # the journal had every step before the page
    if kind == "reject":
        gates = [e for e in result.traces[0] if e.kind.value == "gate"]
        assert [e.detail["passed"] for e in gates] == [False, True]  # redone with the reason, then approved


def test_a_reviewed_episode_takes_no_crash_point(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="answers late"):
        run_durable_episode("plain", load_suite_task("incident_triage"), Variant.LINEAR, 0, tmp_path / "e",
                            CrashPoint("before_step", step="page"), review=True)


def test_every_framework_is_killed_at_the_same_scheduled_point(tmp_path: Path) -> None:
    """Same seed, same task: the same crash point, and the world holds the same changes when each process dies."""
    task = load_suite_task("appointment_rebooking")
    seed = next(s for s in range(50) if crash_point(task, s) == CrashPoint("after_effect", 2, "update_crm"))
    seen = {}
    for framework in ("plain", "crewai", "autogen", "langgraph"):
        result = run_durable_episode(framework, task, Variant.LINEAR, seed, tmp_path / framework)
        assert result.crashed, framework
        seen[framework] = (result.crash, result.effects_at_crash)
    assert set(seen.values()) == {(crash_point(task, seed), 2)}


def test_a_repeat_with_other_arguments_is_still_a_duplicate() -> None:
    from coordlab.runners.durability.episode import effect_counts
    from coordlab.tasks.oracle import solve

    task = load_suite_task("refund_policy_answer")
    world = World.for_task(task)
    reply = solve(task).side_effects[0]
    world.record_side_effect(reply.tool, reply.arguments, reply.result)
    world.record_side_effect(reply.tool, {**reply.arguments, "body": "another body"}, reply.result)
    assert effect_counts(task, world) == (1, 0)
    assert effect_counts(task, World.for_task(task)) == (0, 1)


def test_after_the_restart_a_late_answer_is_an_approval(tmp_path: Path) -> None:
    from coordlab.runners.durability.review import ScriptedReviewer, inbox_summary

    task = load_suite_task("incident_triage")
    seed = _seed_where("incident_triage", "page", "late")
    review = ScriptedReviewer(tmp_path, task, seed, kill_on_late=False).review("page", {})
    assert review.approved and inbox_summary(tmp_path) == {"approve": 1, "reject": 0, "late": 1, "unapproved": 0}


def test_the_idempotency_knob_at_its_default_keeps_a_sweeps_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs recorded before the knob existed still resume: at its default it is not part of the identity."""
    from dataclasses import asdict

    from coordlab.runners.sweep import Sweep

    sweep = Sweep.build(tasks=["chain"], frameworks=["plain"], seeds=1)
    keyed = Sweep.build(tasks=["chain"], frameworks=["plain"], seeds=1, knobs=Knobs(idempotency_keys=True))
    now = sweep.identity()
    assert keyed.identity() != now
    monkeypatch.setattr(Knobs, "to_dict", lambda self: {k: v for k, v in asdict(self).items()
                                                        if k != "idempotency_keys"})  # the knobs before it
    assert sweep.identity() == now


@pytest.mark.parametrize("flags", [["--seeds", "0"], ["--time-limit", "-1"], ["--frameworks", "plian"]])
def test_bad_experiment_flags_are_refused_before_anything_runs(tmp_path: Path, flags: list[str],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from coordlab.runners import cli

    assert cli.main(["experiment", "durability", "--out", str(tmp_path), *flags]) == 2
    said = capsys.readouterr().err
    assert ("must be" in said or "did you mean 'plain'" in said) and not (tmp_path / "durability.sqlite").exists()
