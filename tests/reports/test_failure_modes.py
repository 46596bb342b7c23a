"""Failure modes: real episodes with forced faults get the label that says how they failed.

The plain reference and the positive controls run in this process against the session's
simulator (a fraction of a second each) and are recorded into a store exactly as the runner
records them; the frameworks, and a timeout only the runner can produce, go through
``run_sweep``. A table of minimal synthetic rows covers the edge cases no real run makes.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from coordlab.adapters.base import Knobs, Variant
from coordlab.adapters.registry import get_adapter
from coordlab.reports.failure_modes import (
    MAST, Diagnosis, FailureMode, classify, diagnose, diagnose_episodes, failure_modes,
)
from coordlab.runners.faults import FaultPlan, forced_faults, forced_profile_key, load_profile
from coordlab.runners.harness import EpisodeResult, run_episode
from coordlab.runners.runner import run_sweep
from coordlab.runners.simulator import Simulator
from coordlab.runners.store import Store, StoreError, open_readonly
from coordlab.runners.sweep import Sweep
from coordlab.tasks.loader import SUITE_DIR, load_suite_task, load_task

F = FailureMode
SUITE_REBOOKING = "appointment_rebooking"
WEAK_GATE = "weak_gate"
"""appointment_rebooking whose gate before ``send`` checks only the customer's name, not the slot."""


@dataclass(frozen=True)
class Case:
    """One real episode: who runs it with which forced faults, and how the lab must say it failed."""

    name: str
    adapter: str
    variant: str
    forced: tuple[str, ...]
    modes: tuple[FailureMode, ...]
    unrecovered: tuple[str, ...]
    says: str
    """A fragment the summary must contain."""
    task: str = SUITE_REBOOKING
    knobs: Knobs | None = None


CASES = [
    Case("repeated send", "plain", "linear", ("send:repeated_side_effect",), (F.REPEATED_SIDE_EFFECT,),
         ("send:repeated_side_effect@0",), "send_email took effect twice"),
    Case("blind retry after a tool error", "plain", "linear", ("send:tool_error_after_effect",),
         (F.REPEATED_SIDE_EFFECT,), ("send:tool_error_after_effect@0",), "after send:tool_error_after_effect@0"),
    Case("control redoes a whole step", "control_repeat_step", "linear", ("send:empty_answer",),
         (F.REPEATED_SIDE_EFFECT,), (), "a framework retry of send"),
    Case("control drops a field", "control_drop_field", "linear", (), (F.LOST_HANDOFF,), (),
         "did not deliver customer_email (missing) to send"),
    Case("control truncates a value", "control_truncate", "linear", (), (F.LOST_HANDOFF, F.UNVERIFIED_WRONG_VALUE),
         (), "confirmation (corrupted) to send"),
    Case("control keeps the first answer", "control_sticky_state", "gated", ("draft:wrong_value",),
         (F.LOST_HANDOFF, F.GATE_EXHAUSTED), (), "rejected a redo of draft that the model answered right"),
    Case("skipped send", "plain", "linear", ("send:skipped_tool",), (F.PREMATURE_TERMINATION,),
         ("send:skipped_tool@0",), "completed with send_email never done"),
    Case("wrong value through linear", "plain", "linear", ("draft:wrong_value",), (F.UNVERIFIED_WRONG_VALUE,),
         ("draft:wrong_value@0",), "reached send_email with no gate in front of it"),
    Case("wrong value upstream of the gate's retry", "plain", "gated", ("find_slot:wrong_value",),
         (F.GATE_EXHAUSTED,), ("find_slot:wrong_value@0",), "the gate before send rejected 3 times"),
    Case("gate passes a wrong value", "plain", "gated", ("draft:wrong_value",), (F.GATE_PASSED_WRONG_VALUE,),
         ("draft:wrong_value@0",), "the gate before send passed a wrong value", task=WEAK_GATE),
    Case("misroute in delegated", "plain", "delegated", ("find_slot:wrong_handoff_target",), (F.MISROUTED,),
         ("find_slot:wrong_handoff_target@0",), "the router sent find_slot to coordinator"),
    Case("omitted field in linear", "plain", "linear", ("draft:omitted_field",), (F.WITHHELD_INFORMATION,),
         ("draft:omitted_field@0",), "the value 'confirmation' never reached send"),
    Case("omitted field makes the router loop", "plain", "delegated", ("draft:omitted_field",),
         (F.WITHHELD_INFORMATION, F.TURN_LIMIT), ("draft:omitted_field@0",), "also turn_limit"),
    Case("control takes the latest pending step", "control_last_pending", "delegated", (), (F.OUT_OF_ORDER,), (),
         "crm_update before send_email"),
    Case("HTTP 500 with client retries off", "plain", "linear", ("send:http_500",), (F.TRANSPORT_ERROR,),
         ("send:http_500@0",), "InternalServerError", knobs=Knobs(client_max_retries=0)),
    Case("clean run", "plain", "linear", (), (), (), "did not fail"),
    Case("wrong value caught and redone", "plain", "gated", ("draft:wrong_value",), (), (), "did not fail"),
]


def weak_gate_task(folder: Path) -> Path:
    """Write the weak-gate twin of appointment_rebooking into ``folder``."""
    text = (SUITE_DIR / f"{SUITE_REBOOKING}.yaml").read_text()
    strict = ("    check: >\n      slot in calendar_free_slots(weekday='thursday', after=after)\n"
              "      and slot in confirmation and customer_name in confirmation\n")
    assert strict in text, "appointment_rebooking's gate before send changed: update this test's weak twin"
    path = folder / "weak_gate_rebooking.yaml"
    path.write_text(text.replace(strict, "    check: customer_name in confirmation\n")
                    .replace("name: appointment_rebooking", "name: weak_gate_rebooking"))
    return path


@dataclass(frozen=True)
class Recorded:
    """The store the real episodes went into, and each case's episode id and in-memory result."""

    store: Path
    episodes: dict[str, tuple[int, EpisodeResult]]


@pytest.fixture(scope="module")
def recorded(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """Every case run once and recorded as the runner records it (one run per case: keys may repeat)."""
    folder = tmp_path_factory.mktemp("failure_modes")
    tasks = {SUITE_REBOOKING: load_suite_task(SUITE_REBOOKING), WEAK_GATE: load_task(weak_gate_task(folder))}
    none = load_profile("none")
    episodes: dict[str, tuple[int, EpisodeResult]] = {}
    with Store(folder / "results.sqlite") as store:
        for index, case in enumerate(CASES):
            forced = forced_faults(case.forced)
            result = run_episode(get_adapter(case.adapter), tasks[case.task], Variant(case.variant), simulator,
                                 FaultPlan(none, 0, forced), case.knobs)
            run_id = f"case-{index}"
            store.create_run(run_id, run_id, {}, {})
            row = {**result.to_row(), "profile": forced_profile_key(none.key, forced)}
            episodes[case.name] = (store.record_episode(run_id, row, result.event_rows()), result)
    yield Recorded(folder / "results.sqlite", episodes)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_real_episode_gets_the_label_of_how_it_failed(recorded: Recorded, case: Case) -> None:
    episode_id, result = recorded.episodes[case.name]
    with open_readonly(recorded.store) as store:
        diagnosis = diagnose_episodes(store, [episode_id])[episode_id]
    assert diagnosis.modes == case.modes, f"{case.name}: {result.status.value}, {diagnosis.summary}"
    assert diagnosis.unrecovered_faults == case.unrecovered
    assert case.says in diagnosis.summary
    if diagnosis.primary is not None and diagnosis.primary.mast is not None:
        assert f"MAST {diagnosis.primary.mast.id}" in diagnosis.summary


def test_an_episode_in_memory_reads_as_it_does_from_the_store(recorded: Recorded) -> None:
    """``to_row`` and ``event_rows`` (``detail`` dicts) give the same diagnosis as the stored rows."""
    with open_readonly(recorded.store) as store:
        stored = diagnose_episodes(store, [episode_id for episode_id, _ in recorded.episodes.values()])
    for name, (episode_id, result) in recorded.episodes.items():
        assert diagnose(result.to_row(), result.event_rows()) == stored[episode_id], name
        assert classify(result.to_row(), result.event_rows()) == list(stored[episode_id].modes), name


def test_a_store_is_read_in_two_queries_however_many_episodes(recorded: Recorded,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [episode_id for episode_id, _ in recorded.episodes.values()]
    with open_readonly(recorded.store) as store:
        queries: list[str] = []
        real_query = store.query

        def counting(sql: str, params: Any = ()) -> list[Any]:
            queries.append(sql)
            return real_query(sql, params)

        monkeypatch.setattr(store, "query", counting)
        modes = failure_modes(store, ids)
        assert len(queries) == 2, queries
        assert set(modes) == set(ids)
        assert modes == {i: list(d.modes) for i, d in diagnose_episodes(store, ids).items()}
        assert failure_modes(store, []) == {}
        with pytest.raises(StoreError, match=r"has no episode 999999"):
            failure_modes(store, [ids[0], 999999])


# -- frameworks and the runner ----------------------------------------------------------------------

def installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


def sweep_diagnoses(store: Path, **build: Any) -> dict[tuple[str, str, str], Diagnosis]:
    """Run a one-seed sweep of appointment_rebooking; each episode's diagnosis by (framework, variant, profile)."""
    runtime = {"time_limit": build.pop("time_limit")} if "time_limit" in build else {}
    sweep = Sweep.build(tasks=[SUITE_REBOOKING], seeds=1, **{"profiles": ["none"], **build})
    run_sweep(sweep, store, workers=1, **runtime)
    with open_readonly(store) as opened:
        rows = opened.episodes()
        diagnoses = diagnose_episodes(opened, [row["episode_id"] for row in rows])
    return {(row["framework"], row["variant"], row["profile"]): diagnoses[row["episode_id"]] for row in rows}


@pytest.mark.skipif(not installed("langgraph", "autogen_agentchat"), reason="needs langgraph and autogen")
def test_strict_frameworks_crash_on_malformed_tool_arguments(tmp_path: Path) -> None:
    found = sweep_diagnoses(tmp_path / "r.sqlite", frameworks=["langgraph", "autogen"], variants=["linear"],
                            forced=["send:malformed_tool_args"])
    for framework in ("langgraph", "autogen"):
        [diagnosis] = [d for (f, _, _), d in found.items() if f == framework]
        assert diagnosis.modes == (F.MALFORMED_OUTPUT_CRASH,), diagnosis.summary
        assert "JSONDecodeError" in diagnosis.summary
        assert diagnosis.unrecovered_faults == ("send:malformed_tool_args@0",)


@pytest.mark.skipif(not installed("crewai"), reason="needs crewai")
def test_crewai_gated_redo_loses_its_inputs(tmp_path: Path) -> None:
    """CrewAI's guardrail retry replaces the task's context: the redo of draft lacks the slot, so the gate runs out."""
    [diagnosis] = sweep_diagnoses(tmp_path / "r.sqlite", frameworks=["crewai"], variants=["gated"],
                                  forced=["draft:wrong_value"]).values()
    assert diagnosis.modes == (F.LOST_HANDOFF, F.GATE_EXHAUSTED), diagnosis.summary
    assert "(missing) to the redo of draft" in diagnosis.summary and "FM-1.4" in diagnosis.summary


@pytest.mark.skipif(not installed("crewai"), reason="needs crewai")
def test_a_value_dropped_from_a_delegation_brief_is_withheld(tmp_path: Path) -> None:
    [diagnosis] = sweep_diagnoses(tmp_path / "r.sqlite", frameworks=["crewai"], variants=["delegated"],
                                  profiles=["mechanism_brief_loss"]).values()
    assert diagnosis.primary is F.WITHHELD_INFORMATION, diagnosis.summary
    assert "left out of the routing model's brief" in diagnosis.summary
    assert any(fault.endswith(":brief_loss@0") for fault in diagnosis.unrecovered_faults)


def test_an_episode_killed_at_its_time_limit_is_a_timeout(tmp_path: Path) -> None:
    [diagnosis] = sweep_diagnoses(tmp_path / "r.sqlite", frameworks=["plain"], variants=["linear"],
                                  forced=["send:stall"], time_limit=2.0).values()
    assert diagnosis.modes == (F.TIMEOUT,) and "time limit" in diagnosis.summary


# -- synthetic rows: the edge cases -----------------------------------------------------------------

def episode(status: str = "failed_check", termination: str = "completed", error: str | None = None,
            verdict: Any = None) -> dict[str, Any]:
    """A minimal episodes row (only the columns the classifier reads)."""
    text = verdict if isinstance(verdict, str) else json.dumps(verdict or {})
    return {"status": status, "termination": termination, "error": error, "verdict_json": text}


def event(event_kind: Any, step: str | None = None, role: str | None = None, **detail: Any) -> dict[str, Any]:
    """A minimal events row, its detail stored as JSON text (``kind`` in ``detail`` is a model call's kind)."""
    return {"kind": event_kind, "role": role, "step": step, "detail_json": json.dumps(detail)}


def lost(field: str, expected: Any, kind: str = "missing") -> dict[str, Any]:
    return {"field": field, "kind": kind, "expected": expected, "received": None, "cause": "lost"}


MISSING_SEND = {"missing_side_effects": ['send_email{"to":"a"}']}
EDGES = [
    ("success, even with an unrecovered fault", episode("success"),
     [event("fault", "send", fault="repeated_side_effect", attempt=0, recovered=False)], (),
     ("send:repeated_side_effect@0",)),
    ("infra error: not scored", episode("infra_error", "error", "the plain worker died"), [], (), ()),
    ("timeout with no trace", episode("timeout", "timeout", "killed after the 120 s limit"), [], (F.TIMEOUT,), ()),
    ("unknown event kinds are ignored", episode(verdict={"out_of_order": ["crm_update before send_email"]}),
     [event("telepathy", "send", foo=1), event(None), event("model_call", "send", kind="final")],
     (F.OUT_OF_ORDER,), ()),
    ("malformed detail and verdict JSON are tolerated", episode(verdict="{not json"),
     [{"kind": "model_call", "role": None, "step": "send", "detail_json": "{not json"},
      {"kind": "fault", "role": None, "step": 7, "detail_json": "[1, 2]"},
      {"kind": "gate", "step": "send", "detail_json": None},
      event("model_call", "send", kind="final", handoff_issues=["not a dict", {"kind": "missing"}])],
     (F.UNEXPLAINED,), ()),
    ("a parse error in the message", episode("error", "error", "ValidationError: 1 validation error for Out"), [],
     (F.MALFORMED_OUTPUT_CRASH,), ()),
    ("an API error in the message", episode("error", "error", "APIConnectionError: Connection error."), [],
     (F.TRANSPORT_ERROR,), ()),
    ("a bland error after an unrecovered transport fault", episode("error", "error", "RuntimeError: boom"),
     [event("fault", "draft", fault="http_503", attempt=0, recovered=False)], (F.TRANSPORT_ERROR,),
     ("draft:http_503@0",)),
    ("any other error", episode("error", "error", "KeyError: 'slot'"), [], (F.FRAMEWORK_ERROR,), ()),
    ("a fault of a schema-1 store is not called unrecovered", episode(verdict=MISSING_SEND),
     [event("fault", "send", fault="skipped_tool", attempt=0, caught=False)], (F.PREMATURE_TERMINATION,), ()),
    ("a value read before it was produced is not lost", episode(verdict=MISSING_SEND),
     [event("model_call", "send", kind="final", attempt=0, handoff_issues=[lost("confirmation", None)])],
     (F.PREMATURE_TERMINATION,), ()),
    ("a lost value made good on the step's last request is not lost", episode(verdict=MISSING_SEND),
     [event("model_call", "send", kind="tool_call", attempt=0, handoff_issues=[lost("confirmation", "Dear Dana")]),
      event("model_call", "send", kind="final", attempt=0)], (F.PREMATURE_TERMINATION,), ()),
    ("a lost value left on the last request is lost", episode(verdict=MISSING_SEND),
     [event("model_call", "send", kind="final", attempt=0, handoff_issues=[lost("confirmation", "Dear Dana")])],
     (F.LOST_HANDOFF,), ()),
    ("a repeat read from the verdict alone", episode(verdict={"unexpected_side_effects": ['send_email{"to":"a"}']}),
     [], (F.REPEATED_SIDE_EFFECT,), ()),
    ("a router that finishes early", episode(termination="routed_out", verdict=MISSING_SEND), [],
     (F.PREMATURE_TERMINATION,), ()),
    ("checks failed with every side effect right: a wrong final output", episode(verdict={"failed_checks": ["x"]}),
     [event("step_output", "stage_2", outputs={"value_2": 1})], (F.UNVERIFIED_WRONG_VALUE,), ()),
]


@pytest.mark.parametrize("row, events, modes, unrecovered", [e[1:] for e in EDGES], ids=[e[0] for e in EDGES])
def test_edge_cases_of_stored_rows(row: dict[str, Any], events: list[dict[str, Any]],
                                   modes: tuple[FailureMode, ...], unrecovered: tuple[str, ...]) -> None:
    diagnosis = diagnose(row, events)
    assert diagnosis.modes == modes, diagnosis.summary
    assert classify(row, events) == list(modes)
    assert diagnosis.unrecovered_faults == unrecovered
    assert diagnosis.summary and "\n" not in diagnosis.summary


def test_a_row_without_the_classifier_columns_is_unexplained_not_a_crash() -> None:
    assert classify({"status": "failed_check"}, []) == [F.UNEXPLAINED]
    assert classify({}, []) == []


def test_every_label_is_defined_and_maps_to_a_real_mast_mode_or_none() -> None:
    assert len(MAST) == 14 and {mode.category for mode in MAST.values()} == {
        "FC1 Specification issues", "FC2 Inter-agent misalignment", "FC3 Task verification"}
    expected = {F.REPEATED_SIDE_EFFECT: "FM-1.3", F.LOST_HANDOFF: "FM-1.4", F.WITHHELD_INFORMATION: "FM-2.4",
                F.MISROUTED: "FM-2.3", F.PREMATURE_TERMINATION: "FM-3.1", F.UNVERIFIED_WRONG_VALUE: "FM-3.2",
                F.GATE_PASSED_WRONG_VALUE: "FM-3.3", F.OUT_OF_ORDER: "FM-1.1", F.TURN_LIMIT: "FM-1.5"}
    for mode in FailureMode:
        assert mode.definition and mode.description
        assert (mode.mast.id if mode.mast else None) == expected.get(mode), mode
