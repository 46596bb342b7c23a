"""The n8n adapter end to end: a real n8n (npm) on 127.0.0.1, generated workflows, the simulator, MCP tools.

Skipped when n8n is not installed (``make n8n``). One n8n serves the whole module (the
process's shared runtime, started by the first episode); the offline test starts its own
inside a loopback-only network namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from coordlab.adapters.base import Adapter, Knobs, Termination, Variant
from coordlab.adapters.n8n_runtime import N8nUnavailable, n8n_executable, npm_version
from coordlab.adapters.n8n_workflow import passed_node, pipeline, retry_node, step_node
from coordlab.adapters.registry import adapter_version, get_adapter
from coordlab.adapters.toolkit import role_prompt, step_prompt
from coordlab.adapters.trace import EventKind
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.harness import EpisodeResult, Status, run_episode
from coordlab.runners.simulator import Simulator
from coordlab.tasks.loader import load_suite, load_suite_task

try:
    n8n_executable()
    _MISSING = ""
except N8nUnavailable as exc:
    _MISSING = str(exc)

pytestmark = [pytest.mark.n8n, pytest.mark.skipif(bool(_MISSING), reason=_MISSING)]

NONE = load_profile("none")
def run(task_name: str, variant: Variant, simulator: Simulator, plan: FaultPlan,
        knobs: Knobs | None = None) -> EpisodeResult:
    return run_episode(get_adapter("n8n"), load_suite_task(task_name), variant, simulator, plan, knobs)


def test_adapter_meets_the_protocol_and_reports_npm_version() -> None:
    adapter = get_adapter("n8n")
    assert isinstance(adapter, Adapter) and adapter.name == "n8n"
    assert adapter.version() == npm_version("n8n") == adapter_version("n8n") == "1.123.81"


@pytest.mark.parametrize("variant", list(Variant), ids=str)
@pytest.mark.parametrize("task", load_suite(), ids=lambda t: t.name)
def test_every_task_succeeds_with_no_faults(simulator: Simulator, task, variant: Variant) -> None:
    result = run_episode(get_adapter("n8n"), task, variant, simulator, FaultPlan(NONE, 0))
    assert result.status is Status.SUCCESS, (result.verdict.describe(), result.error)
    assert result.termination is Termination.COMPLETED
    assert not any(r.handoff_issues or r.kind == "unidentified" for r in result.records)
    assert {r.step for r in result.records if r.kind != "route" or r.step} == {s.id for s in task.steps}
    outputs = [e.step for e in result.trace if e.kind is EventKind.STEP_OUTPUT]
    assert outputs == [s.id for s in task.steps]
    mechanism = "agent tool call" if variant is Variant.DELEGATED else "connection"
    assert {e.detail["mechanism"] for e in result.trace if e.kind is EventKind.HANDOFF} == {mechanism}


def test_the_prompt_is_the_lab_step_prompt(simulator: Simulator) -> None:
    """n8n's expressions build the same user message as every other adapter (Python's JSON spacing included)."""
    task = load_suite_task("chain")
    result = run("chain", Variant.LINEAR, simulator, FaultPlan(NONE, 0))
    values = dict(task.inputs)
    for record, step in zip(result.records, task.steps):
        system, user = record.request_body["messages"][:2]
        assert system == {"role": "system", "content": role_prompt(task.roles[step.role])}
        assert user == {"role": "user", "content": step_prompt(task, step, values)}
        values.update(record.outputs or {})


def test_gated_workflow_wires_the_gate_through_if_nodes() -> None:
    """Gate -> IF passed (true: the step; false: IF $runIndex < retries -> the retry step, else the exhausted end)."""
    task = load_suite_task("appointment_rebooking")
    credentials = {role: {"id": "1", "name": role} for role in task.roles}
    workflow = pipeline(task, Variant.GATED, Knobs(gate_retries=2), credentials, "path", "name")
    send, draft, update = task.step("send"), task.step("draft"), task.step("update_crm")
    main = {source: [[c["node"] for c in output] for output in kinds["main"]]
            for source, kinds in workflow["connections"].items() if "main" in kinds}
    assert main[passed_node(send)] == [[step_node(send)], [retry_node(send)]]
    assert main[retry_node(send)] == [[step_node(draft)], ["Respond gate_exhausted"]]
    assert main[passed_node(update)] == [[step_node(update)], ["Respond gate_exhausted"]]  # retries itself: no loop
    retry = next(n for n in workflow["nodes"] if n["name"] == retry_node(send))
    condition = retry["parameters"]["conditions"]["conditions"][0]
    assert (condition["leftValue"], condition["rightValue"]) == ("={{ $runIndex }}", 2)


@pytest.mark.parametrize("task_name, step", [("appointment_rebooking", "draft"), ("incident_triage", "route")])
def test_if_node_catches_a_forced_wrong_value_before_the_send(simulator: Simulator, task_name: str, step: str) -> None:
    plan = FaultPlan(NONE, 0, (ForcedFault(step, Fault.WRONG_VALUE),))
    gated = run(task_name, Variant.GATED, simulator, plan)
    assert gated.status is Status.SUCCESS, (gated.verdict.describe(), gated.error)
    assert gated.counts.gate_rejections == 1 and gated.counts.framework_retries == 1
    assert [r.attempt for r in gated.records if r.step == step and r.kind == "final"] == [0, 1]
    linear = run(task_name, Variant.LINEAR, simulator, plan)
    assert linear.status is Status.FAILED_CHECK and linear.harmful and linear.counts.gate_rejections == 0


def test_gate_bound_ends_the_workflow_before_the_send(simulator: Simulator) -> None:
    plan = FaultPlan(NONE, 0, tuple(ForcedFault("draft", Fault.WRONG_VALUE, attempt) for attempt in range(3)))
    result = run("appointment_rebooking", Variant.GATED, simulator, plan, Knobs(gate_retries=2))
    assert result.termination is Termination.GATE_EXHAUSTED and result.error is None
    assert result.counts.gate_rejections == 3 and result.counts.framework_retries == 2
    assert not result.harmful and not any(r.step == "send" for r in result.records)


_OFFLINE_EPISODE = textwrap.dedent("""
    import json, sys
    from coordlab.adapters.n8n_adapter import N8nAdapter
    from coordlab.adapters.n8n_runtime import N8nRuntime
    from coordlab.adapters.base import Variant
    from coordlab.runners.faults import FaultPlan, load_profile
    from coordlab.runners.harness import run_episode
    from coordlab.runners.simulator import Simulator
    from coordlab.tasks.loader import load_suite_task

    runtime = N8nRuntime(wrapper=["strace", "-f", "-qq", "-e", "trace=connect", "-o", sys.argv[1]])
    with Simulator() as simulator:
        result = run_episode(N8nAdapter(runtime), load_suite_task("chain"), Variant.LINEAR, simulator,
                             FaultPlan(load_profile("none"), 0))
    process = runtime.process
    runtime.stop()
    print(json.dumps({"status": result.status.value, "error": result.error, "startup_s": runtime.startup_s,
                      "stopped": process is not None and process.poll() is not None}))
""")


def test_n8n_runs_offline_in_a_loopback_only_network_namespace(tmp_path) -> None:
    """The lab's guard is an audit hook that cannot see a child process, so n8n runs where nothing but loopback
    exists (a fresh network namespace), under strace: the episode succeeds and every connect() is 127.0.0.1."""
    if not (shutil.which("unshare") and shutil.which("strace") and shutil.which("ip")):
        pytest.skip("needs unshare, ip and strace")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unprivileged network namespaces are not available: {probe.stderr.decode().strip()}")
    connects = tmp_path / "connect.log"
    script = f"ip link set lo up && exec {sys.executable} -c {_shell_quote(_OFFLINE_EPISODE)} {connects}"
    done = subprocess.run(["unshare", "-rn", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "success", outcome
    assert outcome["stopped"]
    calls = [line for line in connects.read_text().splitlines() if "connect(" in line]
    inet = [line for line in calls if "AF_INET" in line]
    assert inet, "strace saw no TCP connection at all: the check would prove nothing"
    leaving = [line for line in inet if 'inet_addr("127.0.0.1")' not in line and "::1" not in line]
    assert not leaving, leaving


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
