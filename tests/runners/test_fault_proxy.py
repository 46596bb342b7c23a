"""The fault proxy: the lab's seeded faults acted out in front of a real endpoint.

The real endpoint here is a second simulator serving an episode under ``none`` through its
role-less URL (:meth:`Simulator.endpoint_url`): an OpenAI-compatible server that answers
each request from what it contains, as a real model would, and keeps its own request log,
so a test can see exactly what reached "the model" and what the framework got back. The
llama.cpp server stands in for it in the ``live`` tests.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest

from coordlab.adapters.base import Variant
from coordlab.adapters.registry import get_adapter
from coordlab.runners.faults import Fault, FaultPlan, forced_faults, load_profile
from coordlab.runners.harness import EpisodeResult, Status, run_episode
from coordlab.runners.runner import run_sweep
from coordlab.runners.simulator import Simulator
from coordlab.runners.simulator.upstream import Upstream
from coordlab.runners.sweep import LiveEndpoint, Sweep, SweepError
from coordlab.tasks.loader import load_suite_task
from coordlab.tasks.schema import Task

DATA = Path(__file__).parents[1] / "data"
TASK = "appointment_rebooking"
KEY = "sk-proxy-test-secret-0123456789"


@pytest.fixture(scope="module")
def stand_in() -> Iterator[Simulator]:
    """The "real" endpoint: a simulator nobody injects faults into."""
    with Simulator() as simulator:
        yield simulator


def _upstream(stand_in: Simulator, task: Task) -> tuple[Upstream, Any]:
    episode = stand_in.open_episode(task, FaultPlan(load_profile("none"), 0))
    return Upstream(stand_in.endpoint_url(episode.id), "stand-in-model", KEY), episode


def _through_proxy(lab: Simulator, stand_in: Simulator, framework: str, task_name: str, plan: FaultPlan,
                   variant: Variant = Variant.LINEAR) -> tuple[EpisodeResult, list[Any]]:
    """Run one episode through the proxy; return it and what the real endpoint was asked (its request log)."""
    task = load_suite_task(task_name)
    upstream, real = _upstream(stand_in, task)
    result = run_episode(get_adapter(framework), task, variant, lab, plan, None, upstream)
    return result, list(stand_in.close_episode(real.id).records)


def test_a_forced_429_burst_never_reaches_the_model_and_the_client_retries_through_it(
        simulator: Simulator, stand_in: Simulator) -> None:
    plan = FaultPlan(load_profile(str(DATA / "burst2.yaml")), 0, forced_faults(["send:http_429"]))
    result, asked = _through_proxy(simulator, stand_in, "plain", TASK, plan)
    assert result.status is Status.SUCCESS, result.verdict.describe()
    faulted = [r for r in result.records if r.fault]
    assert [(r.step, r.attempt, r.fault, r.status) for r in faulted] == [("send", 0, "http_429", 429)] * 2
    assert [r.retry_count for r in result.records if r.step == "send"][:3] == [0, 1, 2]
    assert result.counts.transport_retries == 2 and result.counts.faults_injected == 2
    assert result.counts.faults_recovered == 2
    # The model saw every request but the two the proxy failed, and each answer is relayed as it was given.
    assert len(asked) == len(result.records) - 2
    relayed = [r.response_body for r in result.records if not r.fault]
    assert relayed == [r.response_body for r in asked]


def test_a_live_episode_meets_the_schedule_a_simulated_one_meets(simulator: Simulator, stand_in: Simulator) -> None:
    """Same seed, same task: the proxy and the simulator fire the same faults on the same steps and attempts."""

    def fired(result: EpisodeResult) -> list[tuple[str | None, int | None, str]]:
        return [(r.step, r.attempt, r.fault) for r in result.records if r.fault]

    kinds = set()
    for seed in range(8):
        plan = FaultPlan(load_profile(str(DATA / "proxy_faults.yaml")), seed)
        simulated = run_episode(get_adapter("plain"), load_suite_task(TASK), Variant.LINEAR, simulator, plan)
        live, _ = _through_proxy(simulator, stand_in, "plain", TASK, plan)
        assert fired(live) == fired(simulated), f"seed {seed}"
        assert (live.status, live.harmful) == (simulated.status, simulated.harmful), f"seed {seed}"
        kinds |= {fault for _, _, fault in fired(live)}
    assert len(kinds) >= 5, kinds  # transport and model faults both met


def test_a_wrong_value_is_acted_out_on_the_real_answer_and_a_repeated_send_repeats_the_real_call(
        simulator: Simulator, stand_in: Simulator) -> None:
    plan = FaultPlan(load_profile("none"), 0, forced_faults(["find_slot:wrong_value", "send:repeated_side_effect"]))
    result, asked = _through_proxy(simulator, stand_in, "plain", TASK, plan)
    answer = next(r for r in result.records if r.fault == "wrong_value")
    real = next(r for r in asked if r.seq == answer.seq)
    said = json.loads(answer.response_body["choices"][0]["message"]["content"])
    meant = json.loads(real.response_body["choices"][0]["message"]["content"])
    assert said != meant and said.keys() == meant.keys()
    assert result.harmful  # the wrong slot was sent, and sent twice
    repeated = next(r for r in result.records if r.fault == "repeated_side_effect")
    assert repeated.kind == "tool_call" and repeated.tool_calls == ("send_email",)


def test_a_fault_that_cannot_act_on_a_real_answer_lapses_and_the_episode_says_so(
        simulator: Simulator, stand_in: Simulator) -> None:
    plan = FaultPlan(load_profile("none"), 0, forced_faults(["send:skipped_tool"]))
    result, _ = _through_proxy(simulator, stand_in, "plain", TASK, plan)
    assert result.status is Status.SUCCESS and result.counts.faults_injected == 0
    assert any("skipped_tool scheduled on step send (attempt 0) lapsed" in note for note in result.notes)


@pytest.mark.parametrize("framework", ["langgraph", "crewai"])
def test_frameworks_reach_the_real_endpoint_only_through_the_proxy(simulator: Simulator, stand_in: Simulator,
                                                                   framework: str) -> None:
    plan = FaultPlan(load_profile("none"), 0, forced_faults(["send:http_500"]))
    result, asked = _through_proxy(simulator, stand_in, framework, TASK, plan)
    assert result.status is Status.SUCCESS, result.error or result.verdict.describe()
    assert result.counts.transport_retries >= 1 and result.counts.faults_recovered == 1
    assert len(asked) == len(result.records) - 1
    assert all(r.request_body["model"] == "stand-in-model" for r in result.records)


def test_a_streamed_answer_is_cut_short_then_relayed_whole(simulator: Simulator, stand_in: Simulator) -> None:
    task = load_suite_task(TASK)
    upstream, _ = _upstream(stand_in, task)
    plan = FaultPlan(load_profile("none"), 0, forced_faults(["find_slot:truncated_body"]))
    lab_episode = simulator.open_episode(task, plan, upstream=upstream)
    client = openai.OpenAI(base_url=simulator.base_url(lab_episode.id, "scheduler"), api_key="x", max_retries=0)
    prompt = [{"role": "user", "content": f"[coordlab:step=find_slot] {task.step('find_slot').instruction}"}]
    with pytest.raises((openai.APIError, httpx.HTTPError)):  # a stream cut mid-way surfaces as httpx's error
        for _ in client.chat.completions.create(model="m", messages=prompt, stream=True):
            pass
    calls = [call for chunk in client.chat.completions.create(model="m", messages=prompt, stream=True)
             if chunk.choices for call in chunk.choices[0].delta.tool_calls or []]
    assert calls and calls[0].function.name == "crm_lookup"
    state = simulator.close_episode(lab_episode.id)
    assert [(r.kind, r.fault) for r in state.records] == [("transport_fault", "truncated_body"), ("tool_call", None)]
    cut, whole = (r.response_body for r in state.records)
    assert 0 < len(cut) < len(whole)  # the chunks sent before the cut, then every chunk


def test_the_proxy_logs_live_calls_and_keeps_the_key_out_of_every_store_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, echoing_endpoint: str) -> None:
    """The endpoint quotes the key back; the proxy replaced it before the framework saw the answer."""
    monkeypatch.setenv("COORDLAB_PROXY_KEY", KEY)
    live = LiveEndpoint(echoing_endpoint, "m", "COORDLAB_PROXY_KEY")
    sweep = Sweep.build(tasks=["chain:n=1"], frameworks=["plain"], variants=["linear"], profiles=["none"],
                        seeds=1, live=live)
    assert run_sweep(sweep, tmp_path / "live.sqlite", workers=1).ran == 1
    for path in tmp_path.glob("live.sqlite*"):
        assert KEY.encode() not in path.read_bytes()
    with sqlite3.connect(tmp_path / "live.sqlite") as connection:
        calls, error = connection.execute("SELECT model_calls, error FROM episodes").fetchone()
        (requests,) = connection.execute("SELECT requests FROM exchanges").fetchone()
    assert calls == requests == 1 and "Incorrect API key provided: [REDACTED]" in error


def test_a_live_sweep_takes_forced_faults_the_proxy_can_act_out_and_refuses_the_others() -> None:
    live = LiveEndpoint("http://127.0.0.1:9/v1", "m", None)
    cell = dict(tasks=[TASK], frameworks=["plain"], variants=["linear"], profiles=["none"], seeds=1, live=live)
    assert Sweep.build(**cell, forced=["send:http_429"]).forced[0].fault is Fault.HTTP_429
    with pytest.raises(SweepError, match="cannot act skipped_tool out"):
        Sweep.build(**cell, forced=["send:skipped_tool"])
    notes = Sweep.build(**{**cell, "profiles": ["realistic_3pct"]}).live_notes()
    assert any("mechanisms" in n for n in notes) and any("wrong_handoff_target" in n for n in notes)


# -- a real endpoint misbehaving --------------------------------------------------------------------

class _OddEndpoint(BaseHTTPRequestHandler):
    """Answers every completion with ``body`` (after ``delay`` seconds): whatever a broken server might send."""

    body: bytes = b"{}"
    delay: float = 0.0

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def odd_endpoint() -> Iterator[type[_OddEndpoint]]:
    handler = type("Odd", (_OddEndpoint,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    handler.url = f"http://127.0.0.1:{server.server_port}/v1"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("payload, kind", [
    ({"choices": {"not": "a list"}}, "error"), ({"choices": ["text"]}, "error"),
    ({"choices": [{"message": "text"}]}, "error"), ([1, 2], "error"), ("hello", "error"),
    ({"choices": [{"message": {"tool_calls": ["call", {"function": "f"}], "content": 3}}]}, "tool_call"),
])
def test_an_answer_that_is_not_a_chat_completion_is_relayed_as_it_came(
        simulator: Simulator, odd_endpoint: type[_OddEndpoint], payload: Any, kind: str) -> None:
    odd_endpoint.body = json.dumps(payload).encode()
    task = load_suite_task(TASK)
    episode = simulator.open_episode(task, FaultPlan(load_profile("none"), 0, forced_faults(["find_slot:wrong_value"])),
                                     upstream=Upstream(odd_endpoint.url, "m"))  # type: ignore[attr-defined]
    response = httpx.post(f"{simulator.base_url(episode.id, 'scheduler')}/chat/completions", timeout=10, json={
        "model": "m", "messages": [{"role": "user", "content": "[coordlab:step=find_slot] go"}]})
    state = simulator.close_episode(episode.id)
    assert response.status_code == 200 and response.content == odd_endpoint.body
    assert [(r.kind, r.fault) for r in state.records] == [(kind, None)]  # read as far as it can be, never crashing


def test_a_request_only_asking_to_restate_values_as_json_belongs_to_no_step(
        simulator: Simulator, stand_in: Simulator) -> None:
    """As in the simulator: no step marker and a structured-output request, so no step's fault meets it."""
    task = load_suite_task(TASK)
    upstream, _ = _upstream(stand_in, task)
    plan = FaultPlan(load_profile("none"), 0, forced_faults(["find_slot:http_500"]))
    episode = simulator.open_episode(task, plan, upstream=upstream)
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"slot": {"type": "string"}}}}}
    response = httpx.post(f"{simulator.base_url(episode.id, 'scheduler')}/chat/completions", timeout=10, json={
        "model": "m", "messages": [{"role": "user", "content": "Give the slot as JSON."}], "response_format": schema})
    state = simulator.close_episode(episode.id)
    assert response.status_code == 200
    assert [(r.step, r.kind, r.fault) for r in state.records] == [(None, "unidentified", None)]


def test_a_request_the_framework_gave_up_on_is_recorded_as_abandoned(
        simulator: Simulator, odd_endpoint: type[_OddEndpoint]) -> None:
    odd_endpoint.delay = 3.0
    task = load_suite_task(TASK)
    episode = simulator.open_episode(task, FaultPlan(load_profile("none"), 0),
                                     upstream=Upstream(odd_endpoint.url, "m"))  # type: ignore[attr-defined]
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{simulator.base_url(episode.id, 'scheduler')}/chat/completions", timeout=0.3, json={
            "model": "m", "messages": [{"role": "user", "content": "[coordlab:step=find_slot] go"}]})
    state = simulator.close_episode(episode.id)
    assert [(r.kind, r.status) for r in state.records] == [("abandoned", 0)]


def test_an_endpoint_that_stops_answering_makes_the_episode_say_so(simulator: Simulator, unused_port: Any) -> None:
    """The worker turns this into an infra error: the episode measured the endpoint, not the framework."""
    task = load_suite_task(TASK)
    dead = Upstream(f"http://127.0.0.1:{unused_port()}/v1", "m")
    result = run_episode(get_adapter("plain"), task, Variant.LINEAR, simulator, FaultPlan(load_profile("none"), 0),
                         None, dead)
    assert result.unreachable is not None and "did not answer" in result.unreachable
    assert result.records and all(r.kind == "upstream_unreachable" and r.status == 502 for r in result.records)
