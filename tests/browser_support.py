"""Debian's Chromium for browser tests: found or installed once per session, one fresh page per test.

Chromium is Debian's (/usr/bin/chromium), driven by the ``playwright`` package's protocol
client; Playwright's own browser download does not work offline and is never used. The
session fixture installs the Debian package when it is missing, so a fresh CI machine
needs no extra step, and fails with the command to run when it cannot. ``tests/conftest.py``
makes both fixtures available to every test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import Page, sync_playwright

VIEWPORT = {"width": 1280, "height": 800}

# Headless on a machine with no display and no network: without the background-networking
# flags Chromium tries to reach Google's hosts at every start (update, sync, field trials).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

INSTALL_HINT = "apt-get update && apt-get install -y chromium"


def _find_chromium() -> str | None:
    for candidate in (os.environ.get("COORDLAB_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium, installed with apt-get as test setup when it is not there yet."""
    found = _find_chromium()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(f"Chromium not found and cannot be installed here (needs root and apt-get); run: {INSTALL_HINT}",
                    pytrace=False)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(command)} did not finish in 15 minutes; run: {INSTALL_HINT}", pytrace=False)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed (exit {result.returncode}); run: {INSTALL_HINT}\n"
                        f"{result.stderr[-2000:]}", pytrace=False)
    found = _find_chromium()
    if not found:
        pytest.fail(f"apt-get installed chromium but /usr/bin/chromium is missing; run: {INSTALL_HINT}", pytrace=False)
    return found


@dataclass
class Visit:
    """What the page did while it loaded: console errors, uncaught exceptions, non-local requests."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def browser_page(chromium_path: str, tmp_path: Path) -> Iterator[tuple[Page, Visit]]:
    """A fresh Chromium profile and page at 1280x800, with every console error and request recorded."""
    visit = Visit()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=chromium_path, headless=True,
            args=CHROMIUM_FLAGS, viewport=VIEWPORT, timeout=30_000)
        try:
            context.on("request", lambda request: None if request.url.startswith(("file:", "data:"))
                       else visit.requests.append(request.url))
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", lambda message: visit.errors.append(f"console: {message.text}")
                    if message.type == "error" else None)
            page.on("pageerror", lambda error: visit.errors.append(f"page error: {error}"))
            page.set_default_timeout(10_000)
            yield page, visit
        finally:
            context.close()
