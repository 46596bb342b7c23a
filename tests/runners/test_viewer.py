"""The episode viewer over real HTTP, against stores written by a real sweep of the ``plain`` adapter.

The stores come from ``run_sweep`` (worker processes, the simulator over HTTP, the store),
so the bodies the viewer shows are the ones the simulator received and sent. The browser
tests drive Debian's Chromium through the fixtures of ``tests/browser_support.py``.
"""

from __future__ import annotations

import hashlib
import html
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from coordlab.runners.cli import main
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.redaction import REDACTED, Redactor
from coordlab.runners.runner import run_sweep
from coordlab.runners.scripted import run_scripted
from coordlab.runners.simulator import Simulator
from coordlab.runners.store import EpisodeKey, StoreError, open_readonly, unpack_exchanges
from coordlab.runners.sweep import Sweep
from coordlab.runners.viewer import VIEWER_PORT, Viewer, ViewerError, episode_key_url, episode_url
from coordlab.runners.viewer import pages
from coordlab.runners.worker import packed_bodies
from coordlab.tasks.loader import load_suite_task


OLD_DUMP = Path(__file__).parents[1] / "data" / "store_schema_1.sql"


def _sweep() -> Sweep:
    return Sweep.build(tasks=["appointment_rebooking"], frameworks=["plain"], variants=["linear", "gated"],
                       profiles=["semantic_10pct"], seeds=3)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six episodes of plain (linear and gated, 3 seeds, 10% semantic faults), bodies kept (the default)."""
    path = tmp_path_factory.mktemp("viewer") / "results.sqlite"
    summary = run_sweep(_sweep(), path, workers=1)
    assert summary.ran == 6 and summary.statuses.get("infra_error", 0) == 0
    return path


@pytest.fixture(scope="module")
def bare_store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same sweep run with ``--no-bodies``."""
    path = tmp_path_factory.mktemp("viewer-bare") / "results.sqlite"
    assert run_sweep(_sweep(), path, workers=1, bodies=False).ran == 6
    return path


@pytest.fixture(scope="module")
def viewer(store_path: Path) -> Iterator[Viewer]:
    with Viewer(store_path, port=0) as running:
        yield running


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str, dict[str, str]]:
    """(status, final URL, body, headers) of a GET, following redirects; an HTTP error is a status, not a raise."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.geturl(), response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, url, error.read().decode(), dict(error.headers)


def episode_ids(page_html: str) -> list[int]:
    """The episode ids a list page links to, in order."""
    ids = []
    for chunk in page_html.split('class="episode-link" href="/episodes/')[1:]:
        ids.append(int(chunk.split('"', 1)[0]))
    return ids


def test_links_have_a_fixed_default_port() -> None:
    assert VIEWER_PORT == 8470
    assert episode_url(123) == "http://127.0.0.1:8470/episodes/123"
    assert episode_url(7, port=9000) == "http://127.0.0.1:9000/episodes/7"
    key = "chain@1[n=6]/plain@2.0/linear/none/0"
    url = episode_key_url(key)
    assert url.startswith("http://127.0.0.1:8470/episodes/by-key?key=")
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(url).query) == {"key": [key]}


def test_the_runs_page_lists_the_run(viewer: Viewer, store_path: Path) -> None:
    with open_readonly(store_path) as store:
        (run,) = store.runs()
    status, _, body, headers = get(viewer.url + "/")
    assert status == 200 and run["run_id"] in body and "finished" in body
    assert f'href="/episodes?run={run["run_id"]}"' in body and "appointment_rebooking" in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]


def test_the_episode_list_filters_with_the_query_string(viewer: Viewer, store_path: Path) -> None:
    with open_readonly(store_path) as store:
        everything = [row["episode_id"] for row in store.episodes()]
        gated = [row["episode_id"] for row in store.episodes() if row["variant"] == "gated"]
        fault, met = store.query("SELECT json_extract(detail_json, '$.fault'), group_concat(DISTINCT episode_id) "
                                 "FROM events WHERE kind = 'fault' GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")[0]
    met_ids = sorted(int(i) for i in met.split(","))
    assert episode_ids(get(viewer.url + "/episodes")[2]) == everything and len(everything) == 6
    assert episode_ids(get(viewer.url + "/episodes?variant=gated")[2]) == gated and len(gated) == 3
    assert episode_ids(get(viewer.url + f"/episodes?fault={fault}")[2]) == met_ids
    both = episode_ids(get(viewer.url + f"/episodes?variant=gated&fault={fault}&framework=plain")[2])
    assert both == sorted(set(gated) & set(met_ids))
    status, _, body, _ = get(viewer.url + "/episodes?status=timeout")
    assert status == 200 and episode_ids(body) == [] and "No episode matches" in body
    assert f'<option value="{fault}" selected>' in get(viewer.url + f"/episodes?fault={fault}")[2]


def test_the_episode_list_pages_with_limit_and_offset(store_path: Path, viewer: Viewer) -> None:
    with open_readonly(store_path) as store:
        first = pages.episodes(store, pages.EpisodeFilter(), page=1, page_size=4)
        second = pages.episodes(store, pages.EpisodeFilter(), page=2, page_size=4)
        beyond = pages.episodes(store, pages.EpisodeFilter(), page=9, page_size=4)
    assert (first.total, first.pages, len(first.rows), len(second.rows)) == (6, 2, 4, 2)
    assert [r["episode_id"] for r in first.rows + second.rows] == list(range(1, 7))
    assert beyond.page == 2 and beyond.rows == second.rows  # past the end: the last page
    status, _, body, _ = get(viewer.url + "/episodes?page=0")
    assert status == 400 and "a page is a whole number from 1" in body


def test_an_episode_shows_its_verdict_requests_responses_tools_and_side_effects(viewer: Viewer,
                                                                              store_path: Path) -> None:
    with open_readonly(store_path) as store:
        row = store.episodes()[0]
        exchanges = store.exchanges(row["episode_id"])
        kinds = [event["kind"] for event in store.events(row["episode_id"])]
    assert exchanges and len(exchanges) == kinds.count("model_call") == row["model_calls"]
    status, _, body, _ = get(viewer.url + f"/episodes/{row['episode_id']}")
    assert status == 200
    key = str(EpisodeKey(row["task"], row["framework"], row["framework_version"], row["variant"], row["profile"],
                         row["seed"]))
    assert html.escape(key) in body and f"coordlab show {key} --store {store_path}" in html.unescape(body)
    assert f'class="badge status-{row["status"]}"' in body
    # A request's message as the simulator received it, and the response it sent.
    first_request = exchanges[0].request["messages"][-1]["content"]
    assert first_request.splitlines()[0] in html.unescape(body)
    response = exchanges[0].response["choices"][0]["message"]
    assert response["tool_calls"][0]["function"]["name"] == "crm_lookup" and "calls <strong>crm_lookup</strong>" in body
    # A tool's result (the tool message of a later request), and the side effects the world recorded.
    assert "Dana Whitfield" in body and "result of call" in body
    assert "side effect" in body and "send_email" in body and "dana.whitfield@example.com" in body
    assert body.count('class="event kind-') == len(kinds)
    assert "<details" in body and "<script" not in body


def test_a_link_by_key_survives_and_redirects_to_the_episode(viewer: Viewer, store_path: Path) -> None:
    with open_readonly(store_path) as store:
        row = store.episodes()[4]
    key = EpisodeKey(row["task"], row["framework"], row["framework_version"], row["variant"], row["profile"],
                     row["seed"])
    status, final, body, _ = get(episode_key_url(key, viewer.port))
    assert status == 200 and final == viewer.episode_url(row["episode_id"])
    release = row["task"].split("+")[0]  # the task named without its content hash, the framework without a version
    short = f"{release}/{row['framework']}/{row['variant']}/{row['profile']}/{row['seed']}"
    assert get(episode_key_url(short, viewer.port, run_id=row["run_id"]))[1] == final


def test_bad_input_gets_a_page_with_a_sentence(viewer: Viewer) -> None:
    status, _, body, _ = get(viewer.url + "/episodes/99999")
    assert status == 404 and "There is no episode 99999" in body and "by-key" in body
    status, _, body, _ = get(episode_key_url("appointment_rebooking@1/plain/linear/none/99", viewer.port))
    assert status == 404 and "no episode appointment_rebooking@1/plain/linear/none/99" in body
    status, _, body, _ = get(viewer.url + "/episodes/by-key?key=not-a-key")
    assert status == 400 and "expected TASK/FRAMEWORK" in body
    status, _, body, _ = get(viewer.url + "/nowhere")
    assert status == 404 and "There is no page /nowhere" in body
    status, _, body, _ = get(viewer.url + "/episodes?harmful=maybe")
    assert status == 400 and "choose yes or no" in body


def test_the_viewer_answers_only_to_a_loopback_host_and_only_reads(viewer: Viewer) -> None:
    assert get(viewer.url + "/episodes", {"Host": "attacker.example"})[0] == 403  # DNS rebinding
    assert get(viewer.url + "/episodes", {"Host": f"localhost:{viewer.port}"})[0] == 200
    request = urllib.request.Request(viewer.url + "/episodes", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405


def test_a_store_without_bodies_says_so(bare_store_path: Path) -> None:
    with open_readonly(bare_store_path) as store:
        row = store.episodes()[0]
        assert store.exchanges(row["episode_id"]) == [] and row["model_calls"] > 0
    with Viewer(bare_store_path, port=0) as bare:
        status, _, body, _ = get(bare.episode_url(row["episode_id"]))
    assert status == 200 and "recorded without its model request and response bodies" in body
    assert "--no-bodies" in body and 'class="event kind-model_call' in body and "<h3>request</h3>" not in body


def test_an_old_store_is_shown_read_only_without_bodies(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as connection:
        connection.executescript(OLD_DUMP.read_text())
    connection.close()
    digest = hashlib.sha256(old.read_bytes()).hexdigest()
    with Viewer(old, port=0) as viewing:
        listing = get(viewing.url + "/episodes")[2]
        status, _, body, _ = get(viewing.episode_url(1))
        faulted = get(viewing.url + "/episodes?fault=repeated_side_effect")
    assert episode_ids(listing) == [1, 2, 3]
    assert status == 200 and "written before coordlab kept model request and response bodies" in body
    assert faulted[0] == 200 and episode_ids(faulted[2])
    assert hashlib.sha256(old.read_bytes()).hexdigest() == digest  # read, never migrated


def test_starting_fails_clearly_before_serving(tmp_path: Path, store_path: Path, viewer: Viewer) -> None:
    with pytest.raises(ViewerError, match="127.0.0.1 only"):
        Viewer(store_path, port=0, host="0.0.0.0")
    with pytest.raises(ViewerError, match=f"port {viewer.port} .* already in use.*--port"):
        Viewer(store_path, port=viewer.port).start()
    with pytest.raises(StoreError, match="no store at"):
        Viewer(tmp_path / "missing.sqlite", port=0)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a coordlab store"):
        Viewer(garbage, port=0)


def test_the_cli_names_the_busy_port_and_the_missing_store(viewer: Viewer, store_path: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["view", "--store", str(store_path), "--port", str(viewer.port)]) == 1
    assert f"port {viewer.port}" in capsys.readouterr().err
    assert main(["view", "--store", str(tmp_path / "nope.sqlite"), "--port", "0"]) == 1
    assert "no store at" in capsys.readouterr().err


def test_the_cli_prints_the_url_and_stops_on_ctrl_c(store_path: Path) -> None:
    # Ctrl-C as a terminal sends it. Started from a background job (`make test &`), the tests inherit SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler in the child: the child gets the default back.
    process = subprocess.Popen([sys.executable, "-m", "coordlab", "view", "--store", str(store_path), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert line.startswith("coordlab viewer: http://127.0.0.1:"), line + (process.stderr.read()
                                                                               if process.stderr else "")
        url = line.split()[2]
        assert get(url + "/episodes")[0] == 200
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=15)
    finally:
        process.kill()
    assert process.returncode == 0 and "Traceback" not in err
    with socket.socket() as probe:  # nothing listens on the port any more (a closed connection may linger)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", int(url.rsplit(":", 1)[1])))


def test_bodies_are_redacted_and_compressed_before_they_leave_the_worker() -> None:
    redact = Redactor(("sk-live-0123456789abcdef",))
    request = {"messages": [{"role": "user", "content": "my key is sk-live-0123456789abcdef"}],
               "api_key": "whatever-was-put-here", "max_tokens": 12,
               "tools": [{"type": "function", "function": {"name": "login", "parameters": {
                   "type": "object", "properties": {"password": {"type": "string"}}}}}]}
    response = {"error": {"message": "bad credentials: Authorization: Bearer abcd1234efgh5678ijkl"}}
    count, blob = packed_bodies([(0, request, response), (1, request, None)], redact)
    first, second = unpack_exchanges(blob)
    stored_request, stored_response = first.request, first.response
    assert count == 2 and (first.seq, second.seq) == (0, 1) and second.response is None  # nothing sent stays nothing
    assert stored_request["messages"][0]["content"] == f"my key is {REDACTED}"
    assert stored_request["api_key"] == REDACTED and stored_request["max_tokens"] == 12
    assert stored_request["tools"][0]["function"]["parameters"]["properties"]["password"] == {"type": "string"}
    assert "abcd1234efgh5678ijkl" not in json.dumps(stored_response) and REDACTED in json.dumps(stored_response)
    assert packed_bodies([], redact) is None  # a live episode: no simulator saw its bodies


def test_the_simulator_keeps_each_body_as_it_was_sent(simulator: Simulator) -> None:
    task = load_suite_task("appointment_rebooking")
    streamed = run_scripted(task, simulator, FaultPlan(load_profile("none"), 0), stream=True)
    for record in streamed.records:
        assert record.request_body["stream"] is True and record.request_body["messages"]
        message, finish, _ = pages.assemble_stream(record.response_body)
        assert finish and [c["function"]["name"] for c in message.get("tool_calls", [])] == list(record.tool_calls)
        if record.kind == "final":
            assert json.loads(message["content"]) == record.outputs  # the chunks put back together
        assert "request_body" not in record.to_dict() and "response_body" not in record.to_dict()  # the log stays small

    def faulted(fault: Fault):
        result = run_scripted(task, simulator, FaultPlan(load_profile("none"), 0, (ForcedFault("find_slot", fault),)))
        return next(r for r in result.records if r.fault == fault.value)

    limited = faulted(Fault.HTTP_429)
    assert limited.response_body["error"]["code"] == 429 and limited.request_body["messages"]
    cut = faulted(Fault.TRUNCATED_BODY)
    assert isinstance(cut.response_body, str) and cut.response_body.startswith('{"id": "chatcmpl-')
    with pytest.raises(ValueError):
        json.loads(cut.response_body)
    reset = faulted(Fault.CONNECTION_RESET)
    assert reset.response_body is None and reset.request_body["messages"]  # nothing was sent, the request was kept


def test_transport_faults_show_what_was_sent(tmp_path: Path) -> None:
    path = tmp_path / "faults.sqlite"
    sweep = Sweep.build(tasks=["appointment_rebooking"], frameworks=["plain"], variants=["linear"], profiles=["none"],
                        seeds=1, forced=["find_slot:truncated_body", "draft:http_429", "send:connection_reset"])
    assert run_sweep(sweep, path, workers=1).statuses == {"success": 1}
    with Viewer(path, port=0) as viewing:
        status, _, body, _ = get(viewing.episode_url(1))
    text = html.unescape(body)
    assert status == 200 and text.count("transport_fault, attempt 0") == 3
    assert "The body was cut short after" in text and "HTTP 429: an error, not an answer." in text
    assert "Rate limit reached (injected by coordlab)" in text and "Nothing was sent back" in text


# -- in a browser ------------------------------------------------------------------------------------

@pytest.mark.browser
def test_the_viewer_in_chromium_lists_filters_and_opens_a_timeline(browser_page, viewer: Viewer) -> None:
    page, visit = browser_page
    elsewhere: list[str] = []

    def only_loopback(route) -> None:  # every request the page makes passes here; none may leave the viewer
        if route.request.url.startswith(viewer.url + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_loopback)
    page.goto(viewer.url + "/episodes", wait_until="load")
    links = page.locator("a.episode-link")
    assert links.count() == 6
    page.select_option("#filter-variant", "gated")
    page.locator("form.filters button[type=submit]").click()
    page.wait_for_url("**/episodes?*variant=gated*")
    assert links.count() == 3 and "3 episodes match" in page.locator("#episode-count").inner_text()

    links.first.click()
    page.wait_for_url("**/episodes/*")
    assert page.locator("#verdict h1").inner_text().startswith("Episode")
    assert "coordlab show" in page.locator("#show-command").inner_text()
    events = page.locator("ol.timeline > li")
    assert events.count() > 10 and page.locator("li.kind-model_call .request .message").count() > 0
    assert page.locator("li.kind-side_effect").count() >= 1
    earlier = page.locator("details.earlier").first
    assert not earlier.locator(".message").first.is_visible()
    earlier.locator("summary").click()  # <details> opens without any script
    assert earlier.locator(".message").first.is_visible()
    page.wait_for_timeout(200)
    assert visit.errors == [], visit.errors
    assert elsewhere == [] and visit.requests and all(url.startswith(viewer.url + "/") for url in visit.requests), \
        visit.requests


def test_a_failed_episode_says_how_it_failed(tmp_path: Path) -> None:
    """The diagnosis from the trace (failure mode, its MAST id, the fault behind it) heads a failed episode's page."""
    path = tmp_path / "results.sqlite"
    run_sweep(Sweep.build(tasks=["appointment_rebooking"], frameworks=["plain"], variants=["linear"],
                          profiles=["none"], seeds=1, forced=["send:repeated_side_effect"]), path, workers=1)
    with open_readonly(path) as store:
        row = store.episodes()[0]
    assert row["status"] == "failed_check" and row["harmful"]
    with Viewer(path, port=0) as running:
        status, _, body, _ = get(running.url + f"/episodes/{row['episode_id']}")
    assert status == 200
    failure = html.unescape(body.split('id="failure">', 1)[1].split("</p>", 1)[0])
    assert failure.startswith("how it failed: ") and "MAST FM-1.3" in failure and "send_email" in failure
