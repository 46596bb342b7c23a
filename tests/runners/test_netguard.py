"""The loopback-only guard: other hosts are refused before any packet leaves; loopback works."""

from __future__ import annotations

import sys

import openai
import pytest

from coordlab.runners.netguard import NetworkViolation, is_loopback, loopback_only
from coordlab.runners.simulator import Simulator


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("localhost", True), ("/tmp/sock", True),
    ("10.0.0.1", False), ("192.0.2.1", False), ("api.openai.com", False), ("telemetry.crewai.com", False),
])
def test_loopback_classification(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_connect_beyond_loopback_is_refused_by_the_audit_hook() -> None:
    # The audit event is raised by hand: if the guard were broken, no packet would be sent.
    import socket

    with loopback_only(), socket.socket() as sock:
        with pytest.raises(NetworkViolation, match="connect to 192.0.2.1:443"):
            sys.audit("socket.connect", sock, ("192.0.2.1", 443, "guard-test"))


def test_name_lookup_beyond_loopback_is_refused() -> None:
    with loopback_only(), pytest.raises(NetworkViolation, match="name lookup of 'guard-test.example'"):
        sys.audit("socket.getaddrinfo", "guard-test.example", 443, 0, 0, 0)


def test_simulator_works_under_the_guard() -> None:
    with loopback_only(), Simulator() as simulator:
        client = openai.OpenAI(base_url=f"{simulator.url}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list()] == ["coordlab-sim"]
        client.close()
