"""``coordlab run --force STEP:FAULT[@ATTEMPT]``: parsing, refusals, identity, and forced faults through real frameworks."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from coordlab.reports.data import profile_info
from coordlab.reports.tables import profile_sort_key
from coordlab.runners.cli import main
from coordlab.runners.faults import Fault, ForcedFault, ProfileError, forced_faults, forced_profile_key
from coordlab.runners.store import EpisodeKey
from coordlab.runners.sweep import LiveEndpoint, Sweep, SweepError

FORCED_KEY = "none+force(send:repeated_side_effect@0)"
ONE_CELL = dict(tasks=["appointment_rebooking"], frameworks=["plain"], variants=["linear"], profiles=["none"], seeds=1)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- parsing and keys ------------------------------------------------------------------------------

def test_specs_parse_to_a_sorted_deduplicated_canonical_form() -> None:
    forced = forced_faults(["send:http_429@1", "draft:wrong_value", "draft:wrong_value@0"])
    assert forced == (ForcedFault("draft", Fault.WRONG_VALUE, 0), ForcedFault("send", Fault.HTTP_429, 1))
    assert forced_profile_key("none", forced) == "none+force(draft:wrong_value@0,send:http_429@1)"
    assert forced_profile_key("none", reversed(forced)) == forced_profile_key("none", forced)
    assert forced_profile_key("semantic_3pct", ()) == "semantic_3pct"


@pytest.mark.parametrize("spec, message", [
    ("send", "expected STEP:FAULT or STEP:FAULT@ATTEMPT"), ("send:", "expected STEP:FAULT"),
    (":http_429", "expected STEP:FAULT"), ("send:http_429@x", "expected STEP:FAULT"),
    ("send:http_429@-1", "expected STEP:FAULT"), ("send:repeated_side_efect", "did you mean 'repeated_side_effect'"),
])
def test_malformed_or_unknown_specs_say_the_form_or_the_closest_fault(spec: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        forced_faults([spec])


def test_two_faults_on_one_step_and_attempt_are_refused() -> None:
    with pytest.raises(ProfileError, match="same step and attempt"):
        forced_faults(["send:http_429", "send:http_500@0"])


def test_keys_and_identity_change_only_when_faults_are_forced() -> None:
    plain = Sweep.build(**ONE_CELL)
    assert plain.forced == () and "force" not in plain.to_dict()
    assert Sweep.build(**ONE_CELL, forced=[]).identity() == plain.identity()
    [job] = plain.jobs()
    assert job.key.profile == "none" and job.forced == ()

    forced = Sweep.build(**ONE_CELL, forced=["send:repeated_side_effect"])
    [forced_job] = forced.jobs()
    assert forced_job.key.profile == FORCED_KEY and forced_job.forced == forced.forced
    assert EpisodeKey.parse(str(forced_job.key)) == forced_job.key
    assert forced.to_dict()["force"] == ["send:repeated_side_effect@0"]
    assert forced.identity() != plain.identity()
    two = ["send:repeated_side_effect", "draft:wrong_value"]
    assert Sweep.build(**ONE_CELL, forced=two).identity() == Sweep.build(**ONE_CELL, forced=two[::-1]).identity()


def test_a_forced_key_is_its_own_profile_in_reports() -> None:
    assert profile_info(FORCED_KEY) is None  # no known rate: kept off the (1-p)^n axis
    assert profile_sort_key(FORCED_KEY) > profile_sort_key("semantic_10pct")


def test_a_sweep_file_takes_a_force_list(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("tasks: [appointment_rebooking]\nfrontends: []\n")
    with pytest.raises(SweepError, match="unknown field 'frontends'"):
        Sweep.from_file(path)
    path.write_text("tasks: [appointment_rebooking]\nforce: [send:repeated_side_effect]\n")
    assert Sweep.from_file(path).forced == (ForcedFault("send", Fault.REPEATED_SIDE_EFFECT),)
    path.write_text("tasks: [appointment_rebooking]\nforce: send:repeated_side_effect\n")
    with pytest.raises(SweepError, match="force: expected a list"):
        Sweep.from_file(path)
    path.write_text("tasks: [appointment_rebooking]\nforce: [sned:repeated_side_effect]\n")
    with pytest.raises(SweepError, match=r"s\.yaml: force 'sned:repeated_side_effect@0': .*did you mean 'send'"):
        Sweep.from_file(path)


# -- refusals ----------------------------------------------------------------------------------------

MATRIX = ("run", "--tasks", "appointment_rebooking", "--frameworks", "plain", "--variants", "linear", "--faults",
          "none", "--seeds", "1")


@pytest.mark.parametrize("extra, messages", [
    (("--force", "sned:repeated_side_effect"),
     ["task appointment_rebooking", "has no step 'sned'", "did you mean 'send'"]),
    (("--force", "send:repeted_side_effect"), ["unknown fault 'repeted_side_effect'", "did you mean"]),
    (("--force", "draft:repeated_side_effect"), ["step 'draft' calls no mutating tool", "never be injected"]),
    (("--force", "draft:malformed_tool_args"), ["tool-call fault and step 'draft' calls no tool"]),
    (("--force", "send"), ["expected STEP:FAULT or STEP:FAULT@ATTEMPT"]),
    (("--force", "send:wrong_handoff_target"), ["only acts where a model routes", "delegated variant"]),
    (("--tasks", "appointment_rebooking", "chain:n=2", "--force", "send:http_429"),
     ["task chain", "has no step 'send'", "must exist in every task of the sweep"]),
    (("--force", "send:skipped_tool", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"),
     ["fault proxy in front of a live endpoint cannot act skipped_tool out"]),
])
def test_refusals_exit_2_with_a_clear_message(capsys, tmp_path: Path, extra: tuple[str, ...],
                                              messages: list[str]) -> None:
    store = tmp_path / "r.sqlite"
    code, _, err = run(capsys, *MATRIX, *extra, "--store", str(store))
    assert code == 2 and "Traceback" not in err
    for message in messages:
        assert message in err
    assert not store.exists(), "a refused run writes nothing"


def test_wrong_handoff_target_is_taken_where_a_model_routes() -> None:
    sweep = Sweep.build(**{**ONE_CELL, "variants": ["linear", "delegated"]}, forced=["send:wrong_handoff_target"])
    assert {job.key.profile for job in sweep.jobs()} == {"none+force(send:wrong_handoff_target@0)"}


def test_a_live_endpoint_refuses_forced_faults_the_proxy_cannot_act_out_from_a_file_and_from_the_api(
        capsys, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("tasks: [appointment_rebooking]\nforce: [send:skipped_tool]\n")
    code, _, err = run(capsys, "run", "--sweep", str(path), "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                       "--store", str(tmp_path / "r.sqlite"))
    assert code == 2 and "s.yaml: force send:skipped_tool@0: the fault proxy" in err
    code, _, err = run(capsys, "run", "--sweep", str(path), "--force", "send:http_500", "--store",
                       str(tmp_path / "r.sqlite"))
    assert code == 2 and "force: field" in err
    live = LiveEndpoint("http://127.0.0.1:9/v1", "m", "OPENAI_API_KEY")
    with pytest.raises(SweepError, match="cannot act wrong_handoff_target out"):
        Sweep.build(**{**ONE_CELL, "variants": ["delegated"]}, live=live, forced=["send:wrong_handoff_target"])
    assert Sweep.build(**ONE_CELL, live=live, forced=["send:http_429"]).forced


# -- end to end --------------------------------------------------------------------------------------

def test_a_forced_repeated_send_makes_every_framework_harmful(capsys, tmp_path: Path) -> None:
    """The same forced fault reaches the reference loop and a real framework through their workers."""
    store = tmp_path / "e2e.sqlite"
    matrix = ("run", "--tasks", "appointment_rebooking", "--frameworks", "plain", "langgraph", "--variants", "linear",
              "--faults", "none", "--seeds", "1", "--workers", "2", "--store", str(store))
    code, out, err = run(capsys, *matrix)
    assert code == 0 and "2 run (2 success)" in out, err
    code, out, err = run(capsys, *matrix, "--force", "send:repeated_side_effect")
    assert code == 0 and "(new)" in out and "2 run (2 failed_check)" in out, err

    with sqlite3.connect(store) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT * FROM episodes ORDER BY profile, framework").fetchall()
        emails = {row["episode_id"]: connection.execute(
            "SELECT count(*) FROM events WHERE episode_id = ? AND kind = 'side_effect' "
            "AND json_extract(detail_json, '$.tool') = 'send_email'", (row["episode_id"],)).fetchone()[0]
            for row in rows}
        assert connection.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
    by_cell = {(row["profile"], row["framework"]): row for row in rows}
    assert set(by_cell) == {(p, f) for p in ("none", FORCED_KEY) for f in ("plain", "langgraph")}
    for framework in ("plain", "langgraph"):
        clean, forced = by_cell[("none", framework)], by_cell[(FORCED_KEY, framework)]
        assert (clean["status"], clean["harmful"], clean["faults_injected"]) == ("success", 0, 0)
        assert emails[clean["episode_id"]] == 1
        assert (forced["status"], forced["harmful"], forced["faults_injected"]) == ("failed_check", 1, 1), framework
        assert emails[forced["episode_id"]] == 2, f"{framework}: the forced repeat sends the email twice"
        assert json.loads(forced["verdict_json"])["harmful"] is True

    code, out, _ = run(capsys, *matrix, "--force", "send:repeated_side_effect")
    assert code == 0 and "(resumed)" in out and "2 already recorded, 0 run" in out
    key = f"{by_cell[(FORCED_KEY, 'plain')]['task']}/plain/linear/{FORCED_KEY}/0"
    code, out, _ = run(capsys, "show", key, "--store", str(store))
    assert code == 0 and "repeated_side_effect" in out
