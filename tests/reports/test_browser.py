"""report.html opened from disk in headless Chromium: no network, no console errors, readable at 1280x800.

Chromium is Debian's (/usr/bin/chromium), driven by the ``playwright`` package's protocol
client; Playwright's own browser download does not work offline and is never used. The
session fixture installs the Debian package when it is missing, so a fresh CI machine
needs no extra step, and fails with the command to run when it cannot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import Page, sync_playwright

from coordlab.reports.model import Report
from coordlab.reports.render import write_report

pytestmark = pytest.mark.browser

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


def check_report_page(page: Page, visit: Visit, report_html: Path, screenshot: Path) -> None:
    """Open ``report_html`` from disk and assert it is offline, error-free and readable at 1280x800."""
    page.goto(report_html.resolve().as_uri(), wait_until="load")
    # A quiet moment lets anything deferred (a lazy image, a prefetch) show up in the records.
    page.wait_for_timeout(300)

    height = VIEWPORT["height"]
    if page.locator("#verdict").count():
        # The verdict opens the report: its heading and its first finding are on the first screen.
        first = page.locator("#verdict li").first
        assert first.is_visible(), "the verdict has no visible finding"
        box = first.bounding_box()
        assert box and 0 <= box["y"] and box["y"] + min(box["height"], 60) < height, \
            f"the verdict's first finding is not on the first screen: {box}"
        assert page.locator("#verdict h2").bounding_box()["y"] < height / 2  # type: ignore[index]
    table = page.locator("table").first
    table.scroll_into_view_if_needed()
    assert table.is_visible(), "the comparison table is not visible"
    box = table.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 40, f"comparison table has no real size: {box}"
    assert box["x"] >= 0 and box["x"] + min(box["width"], 600) <= VIEWPORT["width"]
    if not page.locator("#verdict").count():
        # Without a verdict the comparison table is the first thing: its first rows on the first screen.
        page.evaluate("window.scrollTo(0, 0)")
        box = table.bounding_box()
        assert box and 0 <= box["y"] < height - 120, f"comparison table starts at y={box['y']}, below the first screen"

    image = page.locator("figure img").first
    image.scroll_into_view_if_needed()
    assert image.is_visible(), "no figure image is visible"
    box = image.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 100, f"figure has no real size: {box}"
    assert box["y"] < height and box["y"] + box["height"] > 0, f"figure not in the viewport after scrolling: {box}"
    assert image.evaluate("img => img.complete && img.naturalWidth > 0"), "the figure's PNG did not decode"
    caption = page.locator("figure figcaption").first
    assert caption.is_visible() and caption.inner_text().strip()

    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 20_000, "screenshot is suspiciously small (blank page?)"
    assert visit.errors == [], visit.errors
    assert visit.requests == [], f"report.html made network requests: {visit.requests}"


def test_hand_built_report_opens_offline_and_readable(browser_page: tuple[Page, Visit], report: Report,
                                                      tmp_path: Path) -> None:
    page, visit = browser_page
    html_path = write_report(report, tmp_path / "report")
    check_report_page(page, visit, html_path, tmp_path / "report.png")
    # The table of contents works: following a link lands the target in view.
    page.locator('nav a[href="#table-by_fault"]').click()
    box = page.locator("#table-by_fault").bounding_box()
    assert box and -2 <= box["y"] < VIEWPORT["height"], box  # sub-pixel rounding


def test_report_of_a_real_store_opens_offline_and_readable(browser_page: tuple[Page, Visit], tmp_path: Path) -> None:
    """The whole path: `coordlab run` (plain and a positive control on appointment_rebooking), build_report,
    write_report, a browser: the verdict, which flags the control, is on the first screen."""
    from coordlab.reports.build import build_report  # here, so the hand-built case never depends on it

    page, visit = browser_page
    store = tmp_path / "results.sqlite"
    run = subprocess.run([sys.executable, "-m", "coordlab", "run", "--frameworks", "plain", "control_drop_field",
                          "--tasks", "appointment_rebooking", "--faults", "none", "semantic_10pct", "--seeds", "10",
                          "--store", str(store)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = build_report(store)
    assert report.tables and report.figures
    html_path = write_report(report, tmp_path / "report")
    check_report_page(page, visit, html_path, tmp_path / "report.png")
    page.evaluate("window.scrollTo(0, 0)")
    assert "control_drop_field worse on success" in page.locator("#verdict").inner_text()
    assert page.locator("figure img").count() == len(report.figures)
    assert page.evaluate("[...document.images].every(img => img.complete && img.naturalWidth > 0)")


def test_the_recorder_sees_network_requests_and_console_errors(browser_page: tuple[Page, Visit],
                                                                tmp_path: Path) -> None:
    """The two records above must be able to fail: a page that reaches out shows up in both."""
    page, visit = browser_page
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><title>bad</title><img src="https://example.invalid/x.png">'
                   "<script>console.error('boom')</script>", encoding="utf-8")
    page.goto(bad.as_uri(), wait_until="load")
    page.wait_for_timeout(300)
    assert any("example.invalid" in url for url in visit.requests), visit.requests
    assert any("boom" in error for error in visit.errors), visit.errors
