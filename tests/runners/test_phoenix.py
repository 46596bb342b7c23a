"""A real trace receiver: Arize Phoenix on 127.0.0.1 takes a run's spans over OTLP/HTTP and gives them back.

Phoenix is installed from the package registry into its own virtual environment under
``.cache/phoenix`` the first time (about 40 s, 0.9 GB; kept for later runs), started with
its telemetry, external resources, assistant and MCP server off, and stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from coordlab.runners.cli import main
from coordlab.runners.store import open_readonly

pytestmark = pytest.mark.receiver

PHOENIX = "arize-phoenix==20.26.1"
VENV = Path(__file__).resolve().parents[2] / ".cache" / "phoenix" / "venv"
START_LIMIT_S = 180.0
QUIET = str(Path(__file__).parents[1] / "data" / "quiet.yaml")
"""A stochastic profile that injects nothing in practice: unlike ``none``, every seed of it is its own episode."""


def _install() -> Path:
    """Phoenix's own virtual environment (created once, from the registry)."""
    phoenix = VENV / "bin" / "phoenix"
    if not phoenix.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=300)
        subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", PHOENIX], check=True,
                       timeout=1200)
    return phoenix


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory, unused_port) -> Iterator[str]:
    """A running Phoenix server on 127.0.0.1; its base URL."""
    executable = _install()
    port, work = unused_port(), tmp_path_factory.mktemp("phoenix")
    env = {**os.environ, "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(port),
           "PHOENIX_GRPC_PORT": str(unused_port()), "PHOENIX_WORKING_DIR": str(work),
           "PHOENIX_TELEMETRY_ENABLED": "false", "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
           "PHOENIX_DISABLE_AGENT_ASSISTANT": "true", "PHOENIX_ENABLE_MCP_SERVER": "false"}
    log = (work / "phoenix.log").open("w")
    server = subprocess.Popen([str(executable), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_LIMIT_S
        while not _healthy(url):
            assert server.poll() is None, (work / "phoenix.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Phoenix did not start in time"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _get(url: str, path: str, **query: Any) -> Any:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(query)}", timeout=10) as answer:
        return json.load(answer)


def _spans_in(url: str, project: str, expected: int) -> list[dict[str, Any]]:
    """Every span of ``project``, once Phoenix has ingested ``expected`` of them (ingestion is asynchronous)."""
    deadline, spans = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        try:
            spans, cursor = [], None
            while True:
                page = _get(url, f"/v1/projects/{project}/spans", limit=1000, **({"cursor": cursor} if cursor else {}))
                spans += page["data"]
                cursor = page.get("next_cursor")
                if not cursor:
                    break
            if len(spans) >= expected:
                return spans
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # 404 until the project exists
                raise
        time.sleep(0.5)
    return spans


def test_phoenix_receives_a_runs_spans_and_gives_back_the_tree_as_sent(phoenix: str, tmp_path: Path,
                                                                       capsys) -> None:
    store = tmp_path / "s.sqlite"
    # Four distinct episodes (2 tasks x 2 seeds): `none` would run one seed only, being deterministic.
    assert main(["run", "--tasks", "appointment_rebooking", "chain:n=2", "--frameworks", "plain", "--variants",
                 "gated", "--faults", QUIET, "--seeds", "2", "--store", str(store), "--workers", "1",
                 "--otlp-endpoint", phoenix, "--project", "coordlab-ci"]) == 0
    assert "4 episode(s) sent" in capsys.readouterr().err
    assert main(["export", "--format", "otel", "--store", str(store), "--out", str(tmp_path / "t.jsonl")]) == 0
    sent = [span for line in (tmp_path / "t.jsonl").read_text().splitlines()
            for resource in json.loads(line)["resourceSpans"] for scope in resource["scopeSpans"]
            for span in scope["spans"]]

    received = _spans_in(phoenix, "coordlab-ci", len(sent))
    assert len(received) == len(sent)
    assert Counter(s["name"] for s in received) == Counter(s["name"] for s in sent)
    by_id = {s["context"]["span_id"]: s for s in received}
    assert set(by_id) == {s["spanId"] for s in sent}
    sent_parents = {s["spanId"]: s.get("parentSpanId") for s in sent}
    assert {i: s["parent_id"] for i, s in by_id.items()} == sent_parents, "the parent tree arrives as sent"

    chats = [s for s in received if s["name"].startswith("chat ")]
    with open_readonly(store) as readable:
        model_calls = sum(r["model_calls"] for r in readable.episodes())
        prompt_tokens = sum(r["prompt_tokens"] for r in readable.episodes())
    assert len(chats) == model_calls
    assert sum(s["attributes"]["gen_ai.usage.input_tokens"] for s in chats) == prompt_tokens
    roots = [s for s in received if s["parent_id"] is None]
    assert len(roots) == 4 and all(s["name"].startswith("invoke_workflow ") for s in roots)
