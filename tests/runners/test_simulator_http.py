"""The simulator over real HTTP with the official ``openai`` client: plain, streaming, tools, retries."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from coordlab.runners.faults import Fault, FaultPlan, FaultProfile, ForcedFault, load_profile
from coordlab.runners.scripted import run_scripted
from coordlab.runners.simulator import ROUTER_ROLE, Simulator, SimulatorError
from coordlab.tasks.loader import load_suite_task
from coordlab.tasks.toolbox import builtin_tools

TASK = load_suite_task("appointment_rebooking")
NONE = FaultPlan(load_profile("none"), 0)


def first_step_messages() -> list[dict]:
    step = TASK.step("find_slot")
    return [{"role": "system", "content": "You are the scheduler."},
            {"role": "user", "content": f"{step.instruction} {step.marker}\n"
                                        + json.dumps({"customer_id": "C-1042", "after": "2026-11-20"})}]


def client_for(simulator: Simulator, episode_id: str, role: str, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=simulator.base_url(episode_id, role), api_key="sk-test", **options)


def test_plain_completion_returns_tool_call_then_answer(simulator: Simulator) -> None:
    episode = simulator.open_episode(TASK, NONE)
    client = client_for(simulator, episode.id, "scheduler")
    tools = [builtin_tools()[n].openai_spec() for n in TASK.roles["scheduler"].tools]
    messages = first_step_messages()
    first = client.chat.completions.create(model="any-model", messages=messages, tools=tools)
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and first.model == "any-model"
    assert (call.function.name, json.loads(call.function.arguments)) == ("crm_lookup", {"customer_id": "C-1042"})
    assert first.usage.prompt_tokens == episode.records[0].prompt_tokens > 0
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id,
                  "content": json.dumps({"customer_id": "C-1042", "name": "Dana Whitfield",
                                         "email": "dana.whitfield@example.com"})}]
    second = client.chat.completions.create(model="m", messages=messages, tools=tools)
    assert second.choices[0].message.tool_calls[0].function.name == "calendar_free_slots"
    client.close()


def test_streaming_with_usage(simulator: Simulator) -> None:
    episode = simulator.open_episode(TASK, NONE)
    client = client_for(simulator, episode.id, "writer")
    step = TASK.step("draft")
    stream = client.chat.completions.create(
        model="m", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": f"{step.instruction} {step.marker} "
                                              + json.dumps({"customer_name": "Dana", "slot": "2026-11-26T16:30"})}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text)["confirmation"].startswith("Dear Dana, your appointment has been moved to 2026-11-26T16:30")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == episode.records[0].completion_tokens
    client.close()


def test_models_endpoint(simulator: Simulator) -> None:
    client = openai.OpenAI(base_url=f"{simulator.url}/v1", api_key="x")
    assert [m.id for m in client.models.list()] == ["coordlab-sim"]
    client.close()


RETRIED = [(fault, stream) for fault in (Fault.HTTP_429, Fault.HTTP_500, Fault.HTTP_503, Fault.CONNECTION_RESET,
                                         Fault.TRUNCATED_BODY) for stream in (False, True)
           if not (stream and fault is Fault.TRUNCATED_BODY)]  # a cut stream surfaces instead: see below


@pytest.mark.parametrize("fault, stream", RETRIED, ids=[f"{f.value}-{'stream' if s else 'plain'}" for f, s in RETRIED])
def test_transport_fault_is_retried_by_the_client_and_counted(simulator: Simulator, fault: Fault, stream: bool) -> None:
    plan = FaultPlan(load_profile("none"), 0, (ForcedFault("find_slot", fault),))
    result = run_scripted(TASK, simulator, plan, stream=stream)
    assert result.verdict.success
    faulted = [r for r in result.records if r.fault]
    assert [(r.fault, r.kind, r.step) for r in faulted] == [(fault.value, "transport_fault", "find_slot")]
    retry = result.records[faulted[0].seq + 1]
    assert retry.retry_count == 1 and retry.step == "find_slot" and retry.fault is None
    if fault is Fault.HTTP_429:
        assert faulted[0].status == 429


def test_truncated_stream_surfaces_to_the_caller(simulator: Simulator) -> None:
    plan = FaultPlan(load_profile("none"), 0, (ForcedFault("find_slot", Fault.TRUNCATED_BODY),))
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        run_scripted(TASK, simulator, plan, stream=True)


def test_stall_past_the_client_timeout_is_retried(simulator: Simulator) -> None:
    profile = FaultProfile("stall_fast", "test", 0.0, {}, stall_seconds=1.5)
    plan = FaultPlan(profile, 0, (ForcedFault("draft", Fault.STALL),))
    result = run_scripted(TASK, simulator, plan, timeout=0.4)
    assert result.verdict.success
    stalled = next(r for r in result.records if r.fault == "stall")
    assert stalled.status == 0 and result.records[stalled.seq + 1].retry_count == 1


def test_client_gives_up_when_retries_are_exhausted(simulator: Simulator) -> None:
    plan = FaultPlan(load_profile("none"), 0, (ForcedFault("find_slot", Fault.HTTP_500),))
    with pytest.raises(openai.InternalServerError):
        run_scripted(TASK, simulator, plan, max_retries=0)


def test_bad_requests_get_clear_errors(simulator: Simulator) -> None:
    episode = simulator.open_episode(TASK, NONE)
    with httpx.Client(base_url=simulator.url) as http:
        missing = http.post("/episodes/nope/roles/writer/v1/chat/completions", json={"messages": []})
        assert missing.status_code == 404 and "no episode 'nope'" in missing.json()["error"]["message"]
        bare = http.post("/v1/chat/completions", json={"messages": []})
        assert bare.status_code == 404 and "no episode in the URL" in bare.json()["error"]["message"]
        role = http.post(f"/episodes/{episode.id}/roles/editor/v1/chat/completions", json={"messages": []})
        assert "has no role 'editor'" in role.json()["error"]["message"]
        garbage = http.post(f"/episodes/{episode.id}/roles/writer/v1/chat/completions", content=b"{not json")
        assert garbage.status_code == 400 and "not JSON" in garbage.json()["error"]["message"]
        no_messages = http.post(f"/episodes/{episode.id}/roles/writer/v1/chat/completions", json={"model": "m"})
        assert no_messages.status_code == 400 and "'messages' list" in no_messages.json()["error"]["message"]


def test_episodes_can_be_registered_over_http(simulator: Simulator) -> None:
    with httpx.Client(base_url=simulator.url) as http:
        created = http.post("/episodes", json={"task": "chain", "params": {"n": 2}, "profile": "none", "seed": 1})
        assert created.status_code == 201
        body = created.json()
        assert body["task"] == load_suite_task("chain", {"n": 2}).key and set(body["base_urls"]) == {"stage_a", "stage_b", ROUTER_ROLE}
        bad = http.post("/episodes", json={"task": "chian"})
        assert bad.status_code == 400 and "did you mean 'chain'" in bad.json()["error"]["message"]
        log = http.get(f"/episodes/{body['episode_id']}/log")
        assert log.status_code == 200 and log.json() == []


def test_simulator_refuses_to_bind_beyond_loopback() -> None:
    with pytest.raises(SimulatorError, match="loopback only"):
        Simulator(host="0.0.0.0")


def test_closing_an_episode_waits_for_the_exchange_in_flight_to_be_recorded(simulator: Simulator) -> None:
    """A client holds the last byte before the server thread amends the record: closing must wait for that thread."""
    import threading

    episode = simulator.open_episode(load_suite_task("chain"), FaultPlan(load_profile("none"), 0))
    episode.begin_exchange()
    assert not episode.wait_idle(0.01)  # in flight: not idle
    release = threading.Event()

    def finish() -> None:
        release.wait()
        episode.end_exchange()

    worker = threading.Thread(target=finish)
    worker.start()
    closed: list[object] = []
    closer = threading.Thread(target=lambda: closed.append(simulator.close_episode(episode.id)))
    closer.start()
    closer.join(0.2)
    assert closer.is_alive() and not closed  # close_episode is waiting for the exchange
    release.set()
    closer.join(10)
    worker.join(10)
    assert closed == [episode] and episode.wait_idle(0)
