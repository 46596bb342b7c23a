"""What a report is, independent of how it is rendered.

A :class:`Report` is a list of tables and figures. Every table cell keeps its semantic
value (a float, an int, None for "not measured") apart from its display string, so
sorting, plotting and ``summary.json`` use the values while Markdown and HTML show the
text. Renderers (Markdown, HTML, JSON) only read this model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Value = float | int | str | bool | None


@dataclass(frozen=True)
class Cell:
    """One table cell: the value computations use, and the text people read."""

    value: Value
    text: str

    @classmethod
    def of(cls, value: Value, fmt: str = "{}") -> "Cell":
        """A cell whose text is ``fmt`` applied to ``value`` (an em dash when the value is None)."""
        return cls(value, "—" if value is None else fmt.format(value))


@dataclass
class Table:
    """A titled table; ``key`` names it in ``summary.json`` and in HTML anchors."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    note: str = ""
    """One or two sentences under the table: how to read it, what it leaves out."""

    def values(self) -> list[dict[str, Value]]:
        """The rows as dicts of semantic values (what ``summary.json`` holds)."""
        return [{column: cell.value for column, cell in zip(self.columns, row)} for row in self.rows]

    def texts(self) -> list[list[str]]:
        """The rows as display strings (what Markdown and HTML show)."""
        return [[cell.text for cell in row] for row in self.rows]


@dataclass
class Figure:
    """A plot in both formats: PNG for the HTML report, SVG for print and zoom."""

    key: str
    title: str
    png: bytes
    svg: str
    caption: str = ""


@dataclass(frozen=True)
class Link:
    """A link a finding cites, e.g. an example episode in the viewer; ``title`` is shown on hover."""

    text: str
    url: str
    title: str = ""


@dataclass(frozen=True)
class Finding:
    """One line of the verdict: a heading (a condition) and what was found there.

    Sentences may mark words ``**bold**``; renderers turn that, and nothing else, into emphasis.
    """

    heading: str
    sentences: tuple[str, ...]
    links: tuple[Link, ...] = ()


@dataclass
class Report:
    """Everything one report shows."""

    title: str
    provenance: dict[str, Any]
    """Where the numbers come from: store path, run ids, package versions, git commit, command."""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Caveats every reader should see (excluded infra errors, unfaithful variants...)."""
    verdict: list[Finding] = field(default_factory=list)
    """What was found, per condition: the report opens with it."""
    verdict_intro: str = ""
    """How the verdict was reached, in one sentence (tests, adjustment)."""
