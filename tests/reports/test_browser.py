"""report.html opened from disk in headless Chromium: no network, no console errors, readable at 1280x800.

The browser comes from ``tests/browser_support.py`` (Debian's Chromium, installed when missing).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from browser_support import VIEWPORT, Visit
from playwright.sync_api import Page

from coordlab.reports.model import Report
from coordlab.reports.render import write_report

pytestmark = pytest.mark.browser


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
