"""Shared fixtures. Every test runs under the network guard: anything beyond 127.0.0.1 fails it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from browser_support import browser_page, chromium_path  # noqa: F401 - fixtures shared by the browser tests

from coordlab.runners.netguard import loopback_only, violations
from coordlab.runners.simulator import Simulator

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True, scope="session")
def _network_guard() -> Iterator[None]:
    """Arm the loopback-only guard for the whole session and fail loudly if anything slipped."""
    with loopback_only():
        yield
    deliberate = ("connect to 192.0.2.", "name lookup of 'guard-test")  # raised on purpose by test_netguard
    assert not [v for v in violations() if not v.startswith(deliberate)], violations()


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    """One simulated model for the session; each test opens its own episodes on it."""
    with Simulator() as server:
        yield server


@pytest.fixture
def data_dir() -> Path:
    """Test data: a minimal valid task and a folder of broken ones."""
    return DATA
