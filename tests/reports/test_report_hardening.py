"""Reports under abuse: hostile names in a store, a damaged store, outputs that cannot be written, bad prices.

Every case used to end in raw HTML in REPORT.md, silently published numbers, a traceback,
or a price table accepted with a value nobody meant.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from coordlab.reports import render
from coordlab.reports.build import PriceTableError, ReportError, build_report
from coordlab.reports.data import load_prices
from coordlab.reports.model import Report
from coordlab.runners import export
from coordlab.runners.cli import main
from coordlab.runners.store import COUNT_COLUMNS, Store

HOSTILE_PROFILE = "<img src=x onerror=alert(1)>"
HOSTILE_FRAMEWORK = "evil|[click](javascript:alert(1))"
HOSTILE_NOTE = "<script>alert(1)</script> & [x]: http://example.invalid/"
MATH_PROFILE = "$x^$"


def episode_row(framework: str, variant: str, profile: str, seed: int, success: bool) -> dict[str, Any]:
    """A complete row for ``Store.record_episode``."""
    return {"task": "chain@1[n=2]", "framework": framework, "framework_version": "1.0", "variant": variant,
            "profile": profile, "seed": seed, "status": "success" if success else "failed_check",
            "harmful": 0, "termination": "completed", "verdict_json": "{}",
            **dict.fromkeys(COUNT_COLUMNS, 2), "wall_ms": 100.0 + seed, "construction_ms": 10.0,
            "execution_ms": 90.0, "simulator_ms": 1.0, "knobs_json": "{}",
            "notes_json": json.dumps([f"variant not faithful: {HOSTILE_NOTE}"] if framework != "plain" else []),
            "error": None, "finished_at": 1_700_000_000.0}


def write_store(path: Path, profiles: list[str], frameworks: list[str], *, trace_events: int = 0) -> Path:
    """A store with every framework x variant x profile over four seeds (one failure each)."""
    trace = [{"kind": "model_call", "at_ms": float(i), "role": "worker", "step": "stage_1",
              "detail": {"attempt": 1, "text": "x" * 80}} for i in range(trace_events)]
    with Store(path) as store:
        store.create_run("run-1", "identity-1", {"tasks": ["chain@1[n=2]"], "profiles": profiles}, {"git_commit": "c0"})
        for framework in frameworks:
            for variant in ("linear", "gated"):
                for profile in profiles:
                    for seed in range(4):
                        store.record_episode("run-1", episode_row(framework, variant, profile, seed, seed != 2), trace)
    return path


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(f"currency: USD\nnote: {json.dumps(HOSTILE_NOTE)}\n"
                    "models:\n  coordlab-sim: {input_per_mtok: 1.0, output_per_mtok: 2.0}\n")
    return path


@pytest.fixture
def hostile_report(tmp_path: Path, prices: Path) -> Report:
    store = write_store(tmp_path / "hostile.sqlite", [HOSTILE_PROFILE, "none"], ["plain", HOSTILE_FRAMEWORK])
    report = build_report(store, prices_path=prices)
    report.provenance["command"] = "coordlab report --out '```'"
    return report


# -- 6. names from the store cannot inject markup ------------------------------------------------------------

def test_markdown_shows_hostile_store_names_as_text(hostile_report: Report) -> None:
    text = render.markdown(hostile_report)
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "&lt;script&gt;" in text
    assert "<img" not in text and "<script" not in text
    # A "]" that would close a link's text ("](" inline, "]:" a definition) is escaped; only the figure links remain.
    links = re.findall(r"(?<!\\)\]\(([^)]*)\)", text)
    assert links and all(link.startswith("figures/") for link in links)
    assert not re.search(r"(?<!\\)\]:", text)
    # The command's fence is longer than any run of backticks inside it, so the command cannot close it.
    fence_lines = [line for line in text.splitlines() if line.startswith("```")]
    assert fence_lines == ["````sh", "````"]


def test_markdown_table_rows_keep_their_shape_with_hostile_names(hostile_report: Report) -> None:
    text = render.markdown(hostile_report)
    success = text.split("## Success rate", 1)[1].split("\n\n")[1].splitlines()
    separators = {line.count("|") - line.count("\\|") for line in success}
    assert len(separators) == 1 and len(success) == 2 + 2 * 2 * 2


def test_html_shows_hostile_store_names_as_text(hostile_report: Report, parse_html) -> None:
    parsed = parse_html(render.html(hostile_report))
    assert not [tag for tag, _ in parsed.tags if tag == "script"]
    assert all((attrs.get("src") or "").startswith("data:image/png;base64,") for tag, attrs in parsed.tags
               if tag == "img")
    assert all((attrs.get("href") or "").startswith(("#", "data:")) for tag, attrs in parsed.tags
               if tag in ("a", "link"))
    assert HOSTILE_PROFILE in "".join(parsed.text)


def test_dollar_signs_in_store_names_are_drawn_as_text(tmp_path: Path, prices: Path) -> None:
    store = write_store(tmp_path / "math.sqlite", [MATH_PROFILE, "none"], ["plain", "langgraph"])
    report = build_report(store, prices_path=prices)
    assert report.figures and any(MATH_PROFILE in (figure.svg or "") for figure in report.figures)


# -- 3. a damaged store gives a report error, not numbers -------------------------------------------------------

def test_reporting_a_damaged_store_is_a_report_error(tmp_path: Path, capsys) -> None:
    store = write_store(tmp_path / "damaged.sqlite", ["none"], ["plain", "langgraph"], trace_events=10)
    data = bytearray(store.read_bytes())
    middle = (len(data) // 2) // 4096 * 4096
    data[middle:middle + 3 * 4096] = bytes((i * 37 + 11) % 256 for i in range(3 * 4096))
    store.write_bytes(bytes(data))
    with pytest.raises(ReportError, match=f"store {store} is damaged.*nothing was written"):
        build_report(store)
    code = main(["report", "--store", str(store), "--out", str(tmp_path / "report")])
    assert code == 1 and "is damaged" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


# -- 4. report outputs that cannot be written ---------------------------------------------------------------

def test_report_into_a_file_is_a_report_error(report: Report, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "report.txt"
    blocker.write_text("keep me")
    with pytest.raises(ReportError, match=f"{blocker} is a file, not a folder.*choose another --out"):
        render.write_report(report, blocker)
    with pytest.raises(ReportError, match=f"{blocker} is a file, not a folder"):
        render.write_report(Report("no figures", {}), blocker / "deeper")
    store = write_store(tmp_path / "s.sqlite", ["none"], ["plain"])
    assert main(["report", "--store", str(store), "--out", str(blocker)]) == 1
    err = capsys.readouterr().err
    assert f"report in {blocker} not written" in err and "Traceback" not in err
    assert blocker.read_text() == "keep me"


def test_report_into_an_unwritable_place_is_a_report_error(report: Report) -> None:
    with pytest.raises(ReportError, match="cannot write /proc/coordlab-report/"):
        render.write_report(report, Path("/proc/coordlab-report"))


def test_a_full_disk_leaves_the_earlier_report_whole(report: Report, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    render.write_report(Report("earlier", {}, tables=report.tables[:1]), tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}

    def disk_full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export.os, "fsync", disk_full)
    with pytest.raises(ReportError, match="the disk is full") as failure:
        render.write_report(report, tmp_path)
    assert isinstance(failure.value, OSError) and failure.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before
    assert not [path for path in tmp_path.rglob("*") if path.name.endswith(".tmp")]


# -- 7. price tables: every doubtful value is refused, naming the field ----------------------------------------

@pytest.mark.parametrize("text, field", [
    ("models:\n  m: {input_per_mtok: .nan, output_per_mtok: 1}\n", "models.m.input_per_mtok"),
    ("models:\n  m: {input_per_mtok: 1, output_per_mtok: -0.5}\n", "models.m.output_per_mtok"),
    ("models:\n  m: {input_per_mtok: '0.15', output_per_mtok: 1}\n", "models.m.input_per_mtok"),
    ("models:\n  m: {input_per_mtok: [1], output_per_mtok: 1}\n", "models.m.input_per_mtok"),
    ("models:\n  m: [1, 2]\n", "models.m: expected"),
    ("models:\n  m: {input_per_mtok: 1" + "0" * 400 + ", output_per_mtok: 1}\n", "models.m.input_per_mtok"),
    ("1: x\nb: y\nmodels: {m: {input_per_mtok: 1, output_per_mtok: 1}}\n", "unknown field 1"),
    ("models:\n  m: {input_per_mtok: 1, output_per_mtok: 1, 2: x, y: z}\n", "models.m: unknown field 2"),
    ("note: [a, b]\nmodels:\n  m: {input_per_mtok: 1, output_per_mtok: 1}\n", "note: expected text"),
    ("models:\n  m: {input_per_mtok: 1, output_per_mtok: 1, note: {a: 1}}\n", "models.m.note: expected text"),
    ("models:\n  ~: {input_per_mtok: 1, output_per_mtok: 1}\n", "model name None is not text"),
    ("models:\n  on: {input_per_mtok: 1, output_per_mtok: 1}\n", "model name True is not text"),
])
def test_a_doubtful_price_table_is_refused_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(PriceTableError, match=field.replace(".", r"\.").replace("[", r"\[")) as refused:
        load_prices(path)
    assert str(refused.value).startswith(f"price table {path}: ")


def test_a_price_table_that_is_not_text_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_bytes(b"models:\n  m: {input_per_mtok: 1, output_per_mtok: 1}\n\xff\xfe\x00")
    with pytest.raises(PriceTableError, match="not UTF-8 text"):
        load_prices(path)
