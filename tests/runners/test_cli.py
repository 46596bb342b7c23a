"""The ``coordlab`` command: exit codes and messages a person can act on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordlab.runners.cli import main
from coordlab.tasks.loader import SUITE_DIR, load_suite_task


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tasks_list(capsys) -> None:
    code, out, _ = run(capsys, "tasks", "list")
    chain = load_suite_task("chain").key
    assert code == 0 and load_suite_task("appointment_rebooking").key in out and chain in out and chain.endswith("[n=6]")


def test_tasks_validate_suite_folder(capsys) -> None:
    code, out, err = run(capsys, "tasks", "validate", str(SUITE_DIR))
    assert code == 0 and "6 of 6 task file(s) valid" in out and err == ""


def test_tasks_validate_reports_every_bad_file_and_fails(capsys, data_dir: Path) -> None:
    files = [str(data_dir / "minimal.yaml"), str(data_dir / "broken" / "unknown_role.yaml"),
             str(data_dir / "broken" / "yaml_syntax.yaml")]
    code, out, err = run(capsys, "tasks", "validate", *files)
    assert code == 1 and "1 of 3 task file(s) valid" in out
    assert "unknown_role.yaml:25: steps[1].role: unknown role 'mailr'" in err and "yaml_syntax.yaml:10:" in err


def test_simulate_run_prints_the_log_and_the_verdict(capsys) -> None:
    code, out, _ = run(capsys, "simulate", "run", "chain", "--param", "n=3", "--force", "stage_2:wrong_value")
    assert code == 1 and "wrong_value" in out and load_suite_task("chain", {"n": 3}).key in out and "failed" in out
    code, out, _ = run(capsys, "simulate", "run", "chain", "--param", "n=3")
    assert code == 0 and out.rstrip().endswith("success")


@pytest.mark.parametrize("argv, message", [
    (("simulate", "run", "chian"), "did you mean 'chain'"),
    (("simulate", "run", "chain", "--profile", "semantic"), "no fault profile 'semantic'"),
    (("simulate", "run", "chain", "--force", "stage_1"), "expected STEP:FAULT"),
    (("simulate", "run", "chain", "--param", "n=x"), "expected NAME=INTEGER"),
    (("simulate", "run", "chain", "--param", "n=40"), "n=40 is outside 1..12"),
    (("simulate", "run", "chain", "--param", "m=4"), "no parameter 'm' to set"),
])
def test_bad_input_exits_2_with_a_clear_message(capsys, argv, message: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_serve_binds_loopback_and_stops(capsys) -> None:
    code, out, _ = run(capsys, "simulate", "serve", "--seconds", "0.2")
    assert code == 0 and "serving on http://127.0.0.1:" in out


def test_serve_refuses_a_public_address(capsys) -> None:
    code, _, err = run(capsys, "simulate", "serve", "--host", "0.0.0.0", "--seconds", "0.1")
    assert code == 1 and "loopback only" in err


def test_faults_list(capsys) -> None:
    code, out, _ = run(capsys, "faults", "list")
    assert code == 0 and "semantic_3pct" in out and "transport" in out


@pytest.mark.parametrize("argv, message", [
    (("report", "--store", "/nonexistent/results.sqlite"), "/nonexistent/results.sqlite"),
    (("show", "chain@1[n=6]/plain/linear/none/0", "--store", "/nonexistent/results.sqlite"), "no store at"),
    (("export", "--store", "/nonexistent/results.sqlite"), "no store at"),
])
def test_reading_a_missing_store_is_a_clear_message(capsys, argv, message: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 1 and message in err and "Traceback" not in err


def test_show_and_export_a_recorded_episode(capsys, tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    code, out, _ = run(capsys, "run", "--frameworks", "plain", "--tasks", "chain:n=2", "--variants", "linear",
                       "--faults", "none", "--seeds", "1", "--store", str(store))
    assert code == 0 and "1 run (1 success)" in out
    code, out, _ = run(capsys, "show", "chain@1[n=2]/plain/linear/none/0", "--store", str(store))
    assert code == 0 and "status success" in out and "model_call" in out
    code, _, err = run(capsys, "show", "chain@1[n=2]/plain/linear/none/9", "--store", str(store))
    assert code == 1 and "no episode" in err
    for fmt in ("csv", "jsonl", "otel"):
        code, out, _ = run(capsys, "export", "--format", fmt, "--out", str(tmp_path / f"e.{fmt}"), "--store", str(store))
        assert code == 0 and "1 episode(s) written" in out
    lines = (tmp_path / "e.otel").read_text().splitlines()
    assert len(lines) == 1, "OTLP JSON Lines: one request per episode"
    spans = json.loads(lines[0])["resourceSpans"][0]["scopeSpans"][0]["spans"]
    chats = [s for s in spans if s["name"].startswith("chat")]
    attributes = {a["key"] for a in chats[0]["attributes"]}
    assert len(chats) == 2 and {"gen_ai.operation.name", "gen_ai.usage.input_tokens"} <= attributes


def test_reading_commands_fall_back_to_the_newest_store_and_say_which(capsys, tmp_path: Path, monkeypatch) -> None:
    """Right after `make demo` only out/demo/results.sqlite exists: show, export and report read it, and say so."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "show", "chain@1[n=2]/plain/linear/none/0")
    assert code == 1 and "Traceback" not in err
    for looked_at in ("out/results.sqlite", "out/demo/results.sqlite", "out/experiments/*/results.sqlite",
                      "`coordlab run`", "`coordlab demo`", "--store"):
        assert looked_at in err
    code, _, _ = run(capsys, "run", "--frameworks", "plain", "--tasks", "chain:n=2", "--variants", "linear",
                     "--faults", "none", "--seeds", "1", "--store", "out/demo/results.sqlite")
    assert code == 0
    code, out, err = run(capsys, "show", "chain@1[n=2]/plain/linear/none/0")
    assert code == 0 and "status success" in out and "reading out/demo/results.sqlite" in err
    code, out, err = run(capsys, "export", "--format", "csv", "--out", "e.csv")
    assert code == 0 and "1 episode(s) written" in out and "reading out/demo/results.sqlite" in err
    Path("out/results.sqlite").write_bytes(Path("out/demo/results.sqlite").read_bytes())
    code, out, err = run(capsys, "show", "chain@1[n=2]/plain/linear/none/0")
    assert code == 0 and "status success" in out and err == "", "out/results.sqlite is read without a word"


@pytest.mark.parametrize("argv", [("faults", "list"), ("tasks", "list")])
def test_a_reader_that_stops_early_ends_the_command_quietly(argv: tuple[str, ...]) -> None:
    """`coordlab ... | head`: the pipe's reader has gone; no BrokenPipeError traceback, exit 141 like a shell says."""
    import os
    import subprocess
    import sys

    from coordlab.runners.cli import EXIT_SIGPIPE

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        result = subprocess.run([sys.executable, "-m", "coordlab.runners.cli", *argv], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode == EXIT_SIGPIPE == 141 and result.stderr == ""


def test_run_says_when_a_profile_that_injects_nothing_runs_once(capsys, tmp_path: Path) -> None:
    code, out, err = run(capsys, "run", "--tasks", "chain:n=1", "--frameworks", "plain", "--variants", "linear",
                         "--faults", "none", "--seeds", "3", "--store", str(tmp_path / "r.sqlite"))
    assert code == 0 and "1 episodes" in out
    assert "none inject(s) nothing" in err and "seed 0" in err
