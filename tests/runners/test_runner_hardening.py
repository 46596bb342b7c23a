"""The runner against hostile or careless use: dead workers, dead parents, time limits, bad values, live secrets.

Each test reproduces one finding of the hardening review; each failed on the code before it.
Nothing here depends on the machine's speed: slow starts and slow first episodes are
scripted by plug-in adapters, and time bounds carry seconds of slack.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import pytest

from coordlab.runners.cli import EXIT_INFRA, main
from coordlab.runners.faults import ProfileError, load_profile
from coordlab.runners.runner import run_sweep
from coordlab.runners.store import Store
from coordlab.runners.sweep import Sweep, SweepError

QUIET = str(Path(__file__).parents[1] / "data" / "quiet.yaml")
"""A stochastic profile that injects nothing in practice: unlike ``none`` (deterministic, so run for its first seed
only), every seed of it is its own episode. The tests below that need several fault-free episodes use it."""


def _statuses(store_path: Path) -> Counter[str]:
    with sqlite3.connect(store_path) as connection:
        return Counter(row[0] for row in connection.execute("SELECT status FROM episodes"))


def _recorded(store_path: Path) -> int:
    """Episodes in a store that may not have its tables yet."""
    try:
        return sum(_statuses(store_path).values()) if store_path.exists() else 0
    except sqlite3.OperationalError:
        return 0


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["run", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- 2. one profile identity and one framework version everywhere ------------------------------

def test_a_profile_file_resumes_and_is_never_pooled_with_a_builtin_of_its_name(tmp_path: Path, capsys) -> None:
    profile = tmp_path / "mine.yaml"
    profile.write_text("name: none\nrate: 0.2\nfaults: {wrong_value: 1}\n")
    store = tmp_path / "p.sqlite"
    argv = ["--tasks", "chain:n=2", "--frameworks", "plain", "--variants", "linear", "--faults", "none",
            str(profile), "--seeds", "3", "--store", str(store), "--workers", "1"]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    # The built-in none is deterministic, so it runs its first seed only; the file named none injects faults, so
    # all 3 of its seeds run: collapsing goes by what a profile injects, never by its name.
    code, out, err = _run(capsys, *argv)
    assert code == 0 and "4 already recorded, 0 run" in out, out + err
    with sqlite3.connect(store) as connection:
        profiles = Counter(row[0] for row in connection.execute("SELECT profile FROM episodes"))
    mine = load_profile(profile).key
    assert mine.startswith("none@") and profiles == Counter({"none": 1, mine: 3})


def test_a_plugin_reporting_another_version_resumes_instead_of_rerunning(tmp_path: Path, plugins: Path) -> None:
    sweep = Sweep.build(tasks=["chain:n=1"], frameworks=["renamed"], variants=["linear"], profiles=[QUIET],
                        seeds=2)
    first = run_sweep(sweep, tmp_path / "v.sqlite", workers=1)
    second = run_sweep(sweep, tmp_path / "v.sqlite", workers=1)
    assert first.statuses == Counter({"success": 2}) and second.skipped == 2 and second.ran == 0
    with Store(tmp_path / "v.sqlite") as store:
        row = store.episodes()[0]
    assert row["framework_version"] == version("coordlab-misbehaving-adapters") and "7.7.7-custom" in row["notes_json"]


# -- 3. dead workers and dead parents ------------------------------------------------------------

def test_a_worker_that_dies_between_episodes_does_not_end_the_sweep(tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_workers(job, status) -> None:
        if not killed:
            for child in multiprocessing.active_children():
                if child.name.startswith("coordlab-"):
                    os.kill(child.pid, signal.SIGKILL)
                    child.join(10)
                    killed.append(child.pid)

    sweep = Sweep.build(tasks=["chain:n=1"], frameworks=["plain"], variants=["linear"], profiles=[QUIET], seeds=4)
    summary = run_sweep(sweep, tmp_path / "d.sqlite", workers=1, on_episode=kill_workers)
    assert killed and summary.statuses == Counter({"success": 4})
    with Store(tmp_path / "d.sqlite") as store:
        assert [r["status"] for r in store.runs()] == ["finished"]


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def test_workers_die_with_a_killed_runner_even_mid_episode(tmp_path: Path, plugins: Path) -> None:
    marker = tmp_path / "spinning"
    env = {**os.environ, "PYTHONPATH": f"{plugins}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "COORDLAB_TEST_MARKER": str(marker)}
    runner = subprocess.Popen([sys.executable, "-m", "coordlab", "run", "--tasks", "refund_policy_answer",
                               "--frameworks", "spin", "--variants", "linear", "--faults", "none", "--seeds", "1",
                               "--store", str(tmp_path / "k.sqlite"), "--workers", "1", "--time-limit", "600"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and runner.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), "the spinning episode never started"
        worker = int(marker.read_text())
        assert worker in _children(runner.pid)
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        deadline = time.monotonic() + 30
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its runner"
    finally:
        runner.kill()
        if marker.exists() and _alive(int(marker.read_text())):
            os.kill(int(marker.read_text()), signal.SIGKILL)


# -- 6. one writer per store ------------------------------------------------------------------------

def test_a_second_run_on_a_busy_store_is_refused_and_nothing_is_recorded_twice(tmp_path: Path) -> None:
    store = tmp_path / "busy.sqlite"
    command = [sys.executable, "-m", "coordlab", "run", "--tasks", "chain:n=1", "refund_policy_answer",
               "--frameworks", "plain", "--variants", "linear", "gated", "--faults", QUIET, "semantic_10pct",
               "--seeds", "10", "--store", str(store), "--workers", "1"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None and not _recorded(store):
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before the second could meet it"
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 1 and "is busy" in second.stderr and "Traceback" not in second.stderr
    with sqlite3.connect(store) as connection:
        keys = connection.execute("SELECT task, variant, profile, seed FROM episodes").fetchall()
        assert connection.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    assert len(keys) == len(set(keys)) == 80


# -- 4. time limits ---------------------------------------------------------------------------------

def test_the_limit_holds_while_another_slot_starts_a_slow_worker(tmp_path: Path, plugins: Path) -> None:
    sweep = Sweep.build(tasks=["refund_policy_answer"], frameworks=["hang", "slowstart"], variants=["linear"],
                        profiles=["none"], seeds=1)
    summary = run_sweep(sweep, tmp_path / "t.sqlite", workers=2, time_limit=2.0)
    assert summary.statuses == Counter({"timeout": 2})
    with Store(tmp_path / "t.sqlite") as store:
        hung = {r["framework"]: r["wall_ms"] for r in store.episodes()}
    # The slow worker takes 10 s to start; the other slot's hung episode is still cut at 2 s (+ slack).
    assert hung["hang"] < 6000, hung


def test_warm_up_belongs_to_the_worker_not_to_the_first_episode(tmp_path: Path, plugins: Path) -> None:
    sweep = Sweep.build(tasks=["chain:n=1"], frameworks=["slowfirst"], variants=["linear"], profiles=[QUIET],
                        seeds=2)
    summary = run_sweep(sweep, tmp_path / "w.sqlite", workers=1, time_limit=3.0)
    assert summary.statuses == Counter({"success": 2})


@pytest.mark.parametrize("flags, message", [
    (["--time-limit", "nan"], "--time-limit must be positive"),
    (["--time-limit", "inf"], "--time-limit must be positive"),
    (["--workers", "0"], "--workers must be a whole number of at least 1"),
    (["--workers", "-3"], "--workers must be a whole number of at least 1"),
    (["--client-timeout", "-1"], "knobs.client_timeout"),
    (["--client-max-retries", "-1"], "knobs.client_max_retries"),
    (["--seeds", "100000000"], "more than the 100,000"),
    (["--seeds", "0-99999999999"], "more than the 100,000"),
    (["--seeds", "1.5"], "expected a count"),
])
def test_bad_runtime_values_are_refused_before_anything_runs(tmp_path: Path, capsys, flags, message) -> None:
    code, _, err = _run(capsys, "--tasks", "chain:n=1", "--frameworks", "plain", "--store",
                        str(tmp_path / "x.sqlite"), *flags)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "x.sqlite").exists()


# -- 5 and 7. sweep, profile and knob files: types, ranges, sizes ---------------------------------

@pytest.mark.parametrize("text, field", [
    ("tasks: chain\n", "tasks: expected a list"),
    ("tasks: [{chain: 1}]\n", "tasks: expected names"),
    ("frameworks: [1]\n", "frameworks: expected names"),
    ("variants: linear\n", "variants: expected a list"),
    ("knobs: [1, 2]\n", "knobs: expected a mapping"),
    ("knobs: {temperature: hot}\n", "knobs.temperature"),
    ("knobs: {max_iterations: -1}\n", "knobs.max_iterations"),
    ("knobs: {gate_retries: 2.5}\n", "knobs.gate_retries"),
    ("knobs: {tool_reflection: maybe}\n", "knobs.tool_reflection"),
    ("seeds: 2.5\n", "--seeds"),
    ("seeds: [1.5, 2]\n", "--seeds"),
    ("seeds: [-1]\n", "--seeds"),
    ("profiles: none\n", "profiles: expected a list"),
    ("tasks: [chain]\nseeds: 100000\nframeworks: [plain, crewai, autogen, langgraph]\n", "split it into smaller"),
])
def test_sweep_files_with_wrong_types_are_located_errors(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(SweepError) as caught:
        Sweep.from_file(path)
    assert str(path) in str(caught.value) and field in str(caught.value)


@pytest.mark.parametrize("text, field", [
    ("name: p\nrate: 0.1\nfaults: [wrong_value]\n", "faults: expected a mapping"),
    ("name: p\nrate: 0.1\nfaults: {wrong_value: .nan}\n", "faults.wrong_value"),
    ("name: p\nrate: 0.1\nfaults: {wrong_value: -1}\n", "faults.wrong_value"),
    ("name: p\nrate: .nan\nfaults: {wrong_value: 1}\n", "rate"),
    ("name: p\nrate: 0.1\nfaults: {stall: 1}\nstall_seconds: .inf\n", "stall_seconds"),
    ("name: p\nrate: 0.1\nfaults: {http_429: 1}\nretry_after_ms: -5\n", "retry_after_ms"),
    ("name: '<img src=x onerror=alert(1)>'\nrate: 0\n", "name"),
    ("name: [a]\nrate: 0\n", "name"),
    ("- name: p\n", "must be a mapping"),
])
def test_profile_files_with_bad_values_are_located_errors(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert str(path) in str(caught.value) and field in str(caught.value)


# -- 7 and 8. live endpoints: an unset key, a dead endpoint, a key echoed back ---------------------

def test_an_unset_api_key_variable_is_refused_up_front(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("COORDLAB_UNSET_VARIABLE", raising=False)
    code, _, err = _run(capsys, "--tasks", "chain:n=1", "--frameworks", "plain", "--store",
                        str(tmp_path / "u.sqlite"), "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                        "--api-key-env", "COORDLAB_UNSET_VARIABLE")
    assert code == 2 and "COORDLAB_UNSET_VARIABLE: that environment variable is not set" in err
    assert not (tmp_path / "u.sqlite").exists()


def test_a_dead_endpoint_is_an_infra_error_not_a_framework_error(tmp_path: Path, capsys, monkeypatch,
                                                                unused_port) -> None:
    monkeypatch.setenv("COORDLAB_LIVE_VALUE", "anything-at-all")
    store = tmp_path / "dead.sqlite"
    code, out, err = _run(capsys, "--tasks", "chain:n=1", "--frameworks", "plain", "--variants", "linear",
                          "--faults", "none", "--seeds", "3", "--store", str(store), "--base-url",
                          f"http://127.0.0.1:{unused_port()}/v1", "--model", "m", "--api-key-env",
                          "COORDLAB_LIVE_VALUE", "--workers", "1")
    assert code == EXIT_INFRA and "run the same command again" in err
    assert _statuses(store) == Counter({"infra_error": 3})
    with sqlite3.connect(store) as connection:
        assert "cannot be reached" in connection.execute("SELECT error FROM episodes").fetchone()[0]


def test_a_key_echoed_by_the_endpoint_is_never_stored_or_printed(tmp_path: Path, capsys, monkeypatch,
                                                                echoing_endpoint: str) -> None:
    secret = "sk-live-0123456789abcdef"
    monkeypatch.setenv("COORDLAB_LIVE_VALUE", secret)
    store = tmp_path / "echo.sqlite"
    code, out, err = _run(capsys, "--tasks", "chain:n=1", "--frameworks", "plain", "--variants", "linear",
                          "--seeds", "1", "--store", str(store), "--base-url", echoing_endpoint, "--model", "m",
                          "--api-key-env", "COORDLAB_LIVE_VALUE", "--workers", "1")
    assert code == 0, err
    with sqlite3.connect(store) as connection:
        error = connection.execute("SELECT error FROM episodes").fetchone()[0]
    assert "Incorrect API key provided: [REDACTED]" in error
    assert secret not in out + err
    for path in tmp_path.glob("echo.sqlite*"):
        assert secret.encode() not in path.read_bytes()
    assert main(["show", "chain@1[n=1]/plain/linear/none/0", "--store", str(store)]) == 0
    assert secret not in capsys.readouterr().out


# -- 9. workers are offline by construction ----------------------------------------------------------

def test_workers_arm_the_guard_and_neutralise_tracing_whatever_the_environment(tmp_path: Path, plugins: Path,
                                                                              monkeypatch) -> None:
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    monkeypatch.setenv("LANGCHAIN_TRACING_V2", "true")
    sweep = Sweep.build(tasks=["chain:n=1"], frameworks=["reach"], variants=["linear"], profiles=["none"], seeds=1)
    run_sweep(sweep, tmp_path / "n.sqlite", workers=1)
    with Store(tmp_path / "n.sqlite") as store:
        error = store.episodes()[0]["error"]
    assert "tracing=false" in error and "network guard" in error and "192.0.2.1" in error


def test_the_guard_lets_a_live_endpoint_through_and_nothing_else() -> None:
    """Probed through the audit events a real connect and lookup raise: no packet leaves the machine."""
    from coordlab.runners.netguard import NetworkViolation, loopback_only

    with socket.socket() as sock:
        with loopback_only(allow=["192.0.2.7", "endpoint.example"]):
            sys.audit("socket.connect", sock, ("192.0.2.7", 9))
            sys.audit("socket.getaddrinfo", "endpoint.example", 443, 0, 0, 0)
            with pytest.raises(NetworkViolation):
                sys.audit("socket.connect", sock, ("192.0.2.8", 9))
        with pytest.raises(NetworkViolation):  # the session's guard is still armed, without the allowance
            sys.audit("socket.connect", sock, ("192.0.2.7", 9))
