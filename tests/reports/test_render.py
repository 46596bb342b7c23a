"""The three renderers and write_report, on a report built by hand (tests/reports/conftest.py)."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

from typing import Callable

import pytest

from coordlab.reports import render
from coordlab.reports.model import Cell, Figure, Report, Table


def files_in(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


# -- summary.json ---------------------------------------------------------------------------------

def test_summary_holds_semantic_values_not_display_text(report: Report) -> None:
    data = render.summary(report)
    comparison, by_fault = data["tables"]
    assert comparison["key"] == "comparison" and comparison["columns"][2] == "success"
    first, _, missing = comparison["rows"]
    assert first["success"] == pytest.approx(0.8333) and first["episodes"] == 60 and first["framework"] == "plain"
    assert isinstance(first["episodes"], int)
    assert missing["success"] is None and missing["p50 wall (s)"] is None  # not "—"
    assert by_fault["rows"][0]["recovered by gate"] is True
    assert by_fault["rows"][1]["recovered"] is None  # NaN has no JSON spelling; null is "not measured"
    assert "83.3%" not in json.dumps(data)


def test_summary_is_strict_json_with_provenance_notes_and_figure_files(report: Report) -> None:
    data = json.loads(json.dumps(render.summary(report), allow_nan=False))
    assert data["provenance"]["git_commit"] == "856abc1"
    assert data["provenance"]["runs"] == ["run-0001", "run-0002"]
    assert data["notes"] == report.notes
    assert data["figures"] == [{"key": "success_vs_length", "title": "Success against pipeline length",
                                "caption": report.figures[0].caption,
                                "files": ["figures/success_vs_length.png", "figures/success_vs_length.svg"]}]


def test_summary_makes_odd_provenance_values_json(report: Report) -> None:
    report.provenance["store"] = Path("/tmp/s.sqlite")
    report.provenance["profiles"] = {"semantic_3pct", "none"}
    data = json.loads(json.dumps(render.summary(report)))
    assert data["provenance"]["store"] == "/tmp/s.sqlite"
    assert data["provenance"]["profiles"] == ["none", "semantic_3pct"]


# -- REPORT.md --------------------------------------------------------------------------------------

def test_markdown_has_title_provenance_notes_tables_and_figures(report: Report) -> None:
    text = render.markdown(report)
    assert text.startswith("# coordlab test report <hand-built>\n")
    for expected in ("/tmp/store/results.sqlite", "run-0001, run-0002", "langgraph 1.2.22", "856abc1",
                     "```sh\ncoordlab report --store /tmp/store/results.sqlite --out /tmp/report\n```",
                     "- 2 infra errors excluded from every rate.",
                     "## Framework comparison", "## Faults injected & recovered",
                     "*Success excludes infra errors; — means not measured.*",
                     "![Success against pipeline length](figures/success_vs_length.png)",
                     "figures/success_vs_length.svg"):
        assert expected in text, expected


def test_markdown_tables_show_text_right_align_numbers_and_escape_pipes(report: Report) -> None:
    lines = render.markdown(report).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| framework"))
    cells = [cell.strip() for cell in lines[header].strip("|").split("|")]
    assert cells == report.tables[0].columns
    rule = [cell.strip() for cell in lines[header + 1].strip("|").split("|")]
    # framework and variant are words (left), success is a number (right), the CI is text (left).
    assert [cell.endswith(":") for cell in rule] == [False, False, True, False, True, True, True]
    plain = [cell.strip() for cell in lines[header + 2].strip("|").split("|")]
    assert plain == ["plain", "linear", "83.3%", "0.71–0.91", "5.0%", "60", "0.41"]
    assert [cell.strip() for cell in lines[header + 4].strip("|").split("|")][2] == "—"
    assert any(line.startswith("| omitted_field \\| partial ") for line in lines)
    # Every row of a table has the same number of unescaped separators as its header.
    separators = len(re.findall(r"(?<!\\)\|", lines[header]))
    assert all(len(re.findall(r"(?<!\\)\|", line)) == separators for line in lines[header:header + 5])


def test_markdown_keeps_display_text_exactly() -> None:
    table = Table("t", "T", ["x"], [[Cell(0.5, "0.50")], [Cell(1e6, "1,000,000")]])
    text = render.markdown(Report("r", {}, tables=[table]))
    assert "0.50 |" in text and "1,000,000 |" in text


# -- report.html ------------------------------------------------------------------------------------

def test_html_is_self_contained(report: Report, parse_html) -> None:
    page = render.html(report)
    assert not re.search(r"https?://", page, re.IGNORECASE), "external reference in report.html"
    outside_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"//|url\(|@import|@font-face", outside_images, re.IGNORECASE)
    parsed = parse_html(page)
    assert not parsed.all("script") and not parsed.all("iframe") and not parsed.all("object")
    assert len(parsed.all("style")) == 1
    for attrs in parsed.all("link"):
        assert attrs.get("rel") == "icon" and attrs.get("href") == "data:,"  # no favicon request either
    for attrs in parsed.all("img"):
        assert (attrs.get("src") or "").startswith("data:image/png;base64,")
    for attrs in parsed.all("a"):
        assert (attrs.get("href") or "").startswith("#")
    csp = [a for a in parsed.all("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in (csp[0].get("content") or "")


def test_html_embeds_the_figure_png_with_a_caption(report: Report, parse_html) -> None:
    page = render.html(report)
    figure = report.figures[0]
    assert f'src="data:image/png;base64,{base64.b64encode(figure.png).decode()}"' in page
    parsed = parse_html(page)
    assert [a["alt"] for a in parsed.all("img")] == [figure.title]
    match = re.search(r"<figcaption>(.*?)</figcaption>", page, re.S)
    assert match and figure.title in match.group(1) and "0.97^n curve" in match.group(1)


def test_html_table_of_contents_links_every_table_and_figure(report: Report, parse_html) -> None:
    parsed = parse_html(render.html(report))
    ids = {attrs["id"] for _, attrs in parsed.tags if attrs.get("id")}
    links = [attrs["href"] for attrs in parsed.all("a")]
    assert {"#table-comparison", "#table-by_fault", "#figure-success_vs_length", "#provenance", "#notes"} <= set(links)
    assert all(link[1:] in ids for link in links)
    nav = parsed.all("nav")
    assert nav and nav[0].get("aria-label") == "Contents"


def test_html_comparison_table_comes_first_with_numbers_right_aligned(report: Report) -> None:
    page = render.html(report)
    assert page.index('id="table-comparison"') < page.index('id="table-by_fault"') < page.index("<figure")
    first_row = re.search(r"<tbody>\s*<tr>(.*?)</tr>", page, re.S).group(1)  # type: ignore[union-attr]
    cells = re.findall(r"<td( class=\"num\")?>(.*?)</td>", first_row)
    assert [(bool(numeric), text) for numeric, text in cells] == [
        (False, "plain"), (False, "linear"), (True, "83.3%"), (False, "0.71–0.91"), (True, "5.0%"),
        (True, "60"), (True, "0.41")]
    assert re.search(r"th\.num, td\.num \{ text-align: right; \}", page)


def test_html_escapes_report_text(report: Report, parse_html) -> None:
    page = render.html(report)
    assert "<hand-built>" not in page and "&lt;hand-built&gt;" in page
    assert "p &lt; 0.05 &amp; n ≥ 20" in page
    assert "Faults injected &amp; recovered" in page
    text = "".join(parse_html(page).text)
    assert "coordlab test report <hand-built>" in text and "omitted_field | partial" in text


# -- write_report -------------------------------------------------------------------------------------

def test_write_report_writes_every_file_and_returns_the_html(report: Report, tmp_path: Path) -> None:
    out = tmp_path / "new" / "report"
    path = render.write_report(report, out)
    assert path == out / "report.html"
    assert files_in(out) == {"REPORT.md", "report.html", "summary.json",
                             "figures/success_vs_length.png", "figures/success_vs_length.svg"}
    assert path.read_text(encoding="utf-8") == render.html(report)
    assert (out / "REPORT.md").read_text(encoding="utf-8") == render.markdown(report)
    assert json.loads((out / "summary.json").read_text(encoding="utf-8")) == render.summary(report)
    assert (out / "figures/success_vs_length.png").read_bytes() == report.figures[0].png
    assert (out / "figures/success_vs_length.svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")


def test_write_report_writes_figures_first_and_report_md_last(report: Report, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    real_replace = os.replace

    def recording_replace(source: str, target: str | Path) -> None:
        order.append(Path(target).name)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", recording_replace)
    render.write_report(report, tmp_path)
    assert order[:2] == ["success_vs_length.png", "success_vs_length.svg"]
    assert order[-1] == "REPORT.md"
    assert sorted(order) == sorted(Path(name).name for name in files_in(tmp_path))


def test_write_report_overwrites_an_earlier_report_and_prunes_its_figures(
        report: Report, make_figure: Callable[[str], Figure], tmp_path: Path) -> None:
    earlier = render.write_report(Report("earlier", {}, figures=[make_figure("old_plot")]), tmp_path)
    (tmp_path / "results.sqlite").write_bytes(b"not ours")  # a store sharing the folder stays
    (tmp_path / "figures" / "mine.png").write_bytes(b"not ours either")
    assert render.write_report(report, tmp_path) == earlier
    assert "earlier" not in earlier.read_text(encoding="utf-8")
    assert "hand-built" in (tmp_path / "REPORT.md").read_text(encoding="utf-8")
    assert files_in(tmp_path) == {"REPORT.md", "report.html", "summary.json", "results.sqlite",
                                  "figures/mine.png",
                                  "figures/success_vs_length.png", "figures/success_vs_length.svg"}


def test_write_report_failure_midway_leaves_old_files_whole_and_no_temp_files(
        report: Report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    render.write_report(Report("earlier", {}, tables=report.tables[:1]), tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("REPORT.md", "report.html", "summary.json")}
    real_replace = os.replace

    def failing_replace(source: str, target: str | Path) -> None:
        if Path(target).name == "report.html":
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        render.write_report(report, tmp_path)
    assert (tmp_path / "report.html").read_bytes() == before["report.html"]
    assert (tmp_path / "REPORT.md").read_bytes() == before["REPORT.md"]  # never newer than the rest
    assert not [name for name in files_in(tmp_path) if name.endswith(".tmp") or "/." in f"/{name}"]


def test_write_report_refuses_keys_that_collide_or_escape(
        report: Report, make_figure: Callable[[str], Figure], tmp_path: Path) -> None:
    report.figures.append(make_figure("../outside"))
    report.tables.append(report.tables[0])
    with pytest.raises(ValueError) as error:
        render.write_report(report, tmp_path / "out")
    assert "'comparison' is used twice" in str(error.value) and "'../outside'" in str(error.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "outside.png").exists()
