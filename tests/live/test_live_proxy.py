"""Live mode end to end (``make test-live``): a real model behind the fault proxy, every framework.

llama.cpp serves SmolLM2-135M on 127.0.0.1; one episode per framework runs through its
worker's fault proxy with a 429 burst forced on the first step. The model is weak, so the
outcome is whatever it is; what must hold is the lab's bookkeeping: the burst is acted out
and logged where it was scheduled, the client's retries are counted, the real model's
answers are logged with their bodies, and the end state is scored.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Iterator

import pytest

from coordlab.runners.local_model import LocalModelServer, model_identity
from coordlab.runners.runner import run_sweep
from coordlab.runners.sweep import LiveEndpoint, Sweep

pytestmark = pytest.mark.live

DATA = Path(__file__).parents[1] / "data"
FRAMEWORKS = ["plain", "crewai", "autogen", "langgraph"]


@pytest.fixture(scope="module")
def local_model() -> Iterator[LiveEndpoint]:
    with LocalModelServer() as server:
        yield LiveEndpoint(server.base_url, server.model, None, local=model_identity(server.model_path))


def test_every_framework_meets_a_forced_429_burst_in_front_of_a_real_model(local_model: LiveEndpoint,
                                                                           tmp_path: Path) -> None:
    store = tmp_path / "live.sqlite"
    sweep = Sweep.build(tasks=["chain:n=1"], frameworks=FRAMEWORKS, variants=["linear"],
                        profiles=[str(DATA / "burst2.yaml")], seeds=1, live=local_model, forced=["stage_1:http_429"])
    summary = run_sweep(sweep, store, workers=2, time_limit=300)
    assert summary.ran == len(FRAMEWORKS) and "infra_error" not in summary.statuses, summary.statuses
    with sqlite3.connect(store) as connection:
        connection.row_factory = sqlite3.Row
        episodes = {row["framework"]: row for row in connection.execute("SELECT * FROM episodes")}
        for framework in FRAMEWORKS:
            episode = episodes[framework]
            events = [(row["kind"], json.loads(row["detail_json"]))
                      for row in connection.execute("SELECT kind, detail_json FROM events WHERE episode_id = ? "
                                                    "ORDER BY seq", (episode["episode_id"],))]
            calls = [detail for kind, detail in events if kind == "model_call"]
            faults = [detail for kind, detail in events if kind == "fault"]
            assert [c["status"] for c in calls[:2]] == [429, 429], framework  # the burst, where it was scheduled
            assert [f["fault"] for f in faults if f["fault"] == "http_429"] == ["http_429"] * 2, framework
            assert episode["faults_injected"] >= 2 and episode["transport_retries"] >= 2, framework
            # Past the burst the real model answered (a 200, or the endpoint's own error), and it was logged.
            assert any(c["status"] != 429 for c in calls), framework
            assert episode["model_calls"] == sum(1 for c in calls if c["kind"] != "transport_fault"), framework
            verdict = json.loads(episode["verdict_json"])
            assert episode["status"] in ("success", "failed_check", "error")
            assert (episode["status"] == "success") == (verdict["success"] and episode["termination"] != "error")
            (bodies,) = connection.execute("SELECT requests FROM exchanges WHERE episode_id = ?",
                                           (episode["episode_id"],)).fetchone()
            assert bodies == len(calls), framework
