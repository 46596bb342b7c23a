"""A report built by hand, so the renderer tests depend on the report model only, not on a store."""

from __future__ import annotations

import io
import math
from html.parser import HTMLParser
from typing import Callable

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from coordlab.reports.model import Cell, Figure, Report, Table


def success_curve_figure(key: str = "success_vs_length") -> Figure:
    """A real matplotlib plot (Agg canvas, no pyplot state) in both formats the report writes."""
    lengths = list(range(1, 13))
    plot = MplFigure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(plot)
    axes = plot.add_subplot()
    axes.plot(lengths, [0.97 ** n for n in lengths], "--", color="0.4", label="0.97^n")
    axes.plot(lengths, [0.97 ** n - 0.01 * (n % 3) for n in lengths], "o-", label="plain (measured)")
    axes.set_xlabel("pipeline length n")
    axes.set_ylabel("end-to-end success")
    axes.set_ylim(0, 1.05)
    axes.legend()
    png, svg = io.BytesIO(), io.StringIO()
    plot.savefig(png, format="png")
    plot.savefig(svg, format="svg", metadata={"Date": None})
    return Figure(key=key, title="Success against pipeline length", png=png.getvalue(), svg=svg.getvalue(),
                  caption="Measured success of plain beside the analytical 0.97^n curve.")


def build_report() -> Report:
    """Two tables (a comparison first, then a breakdown), one figure, notes and full provenance.

    The values are chosen so text and value differ visibly (83.3% vs 0.8333, an em dash vs
    None) and so escaping matters (``<``, ``&`` and ``|`` in titles, notes and cells).
    """
    comparison = Table(
        key="comparison",
        title="Framework comparison",
        columns=["framework", "variant", "success", "95% CI", "harmful", "episodes", "p50 wall (s)"],
        rows=[
            [Cell.of("plain"), Cell.of("linear"), Cell.of(0.8333, "{:.1%}"), Cell("0.71–0.91", "0.71–0.91"),
             Cell.of(0.05, "{:.1%}"), Cell.of(60), Cell.of(0.412, "{:.2f}")],
            [Cell.of("langgraph"), Cell.of("gated"), Cell.of(0.9, "{:.1%}"), Cell("0.80–0.95", "0.80–0.95"),
             Cell.of(0.0, "{:.1%}"), Cell.of(60), Cell.of(1.5, "{:.2f}")],
            [Cell.of("crewai"), Cell.of("linear"), Cell.of(None), Cell.of(None),
             Cell.of(None), Cell.of(0), Cell.of(None)],
        ],
        note="Success excludes infra errors; — means not measured.",
    )
    breakdown = Table(
        key="by_fault",
        title="Faults injected & recovered",
        columns=["fault", "injected", "recovered", "recovered by gate"],
        rows=[
            [Cell.of("wrong_value"), Cell.of(12), Cell.of(9), Cell.of(True)],
            [Cell.of("omitted_field | partial"), Cell.of(4), Cell.of(math.nan, "n/a"), Cell.of(False)],
        ],
        note="Counts over all seeds; a fault is recovered when its effect did not reach the end state & nothing is "
             "wrong.",
    )
    return Report(
        title="coordlab test report <hand-built>",
        provenance={
            "question": "Does one gate cut failures?",
            "store": "/tmp/store/results.sqlite",
            "runs": ["run-0001", "run-0002"],
            "packages": {"coordlab": "0.1.0", "langgraph": "1.2.22", "crewai": "1.15.30"},
            "git_commit": "856abc1",
            "command": "coordlab report --store /tmp/store/results.sqlite --out /tmp/report",
        },
        tables=[comparison, breakdown],
        figures=[success_curve_figure()],
        notes=["2 infra errors excluded from every rate.", "p < 0.05 & n ≥ 20 for paired comparisons."],
    )


@pytest.fixture
def report() -> Report:
    """A fresh hand-built report per test (tests may change it)."""
    return build_report()


@pytest.fixture
def make_figure() -> Callable[[str], Figure]:
    """Builds a real figure under a given key (for reports with other or more figures)."""
    return success_curve_figure


class HtmlPage(HTMLParser):
    """Collects what a self-containedness check needs: tags, ids, links, sources and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


@pytest.fixture
def parse_html() -> Callable[[str], HtmlPage]:
    """Parse a rendered page into its tags and text."""
    def parse(page: str) -> HtmlPage:
        parser = HtmlPage()
        parser.feed(page)
        parser.close()
        return parser

    return parse
