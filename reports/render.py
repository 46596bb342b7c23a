"""Render a :class:`~coordlab.reports.model.Report` as REPORT.md, report.html and summary.json.

The three outputs serve different readers: Markdown for a diff or a pull request, HTML for
a person with a browser and nothing else (one file, no network: it must open the same way
on an air-gapped laptop a year from now), JSON for scripts, which get the semantic cell
values rather than the display strings. Renderers only read the model; ``write_report``
puts the files in place atomically, so a reader never sees half a report.
"""

from __future__ import annotations

import base64
import html as html_lib
import json
import math
import re
from pathlib import Path
from typing import Any

from tabulate import tabulate

from coordlab.runners.export import ExportError, write_atomically

from .data import ReportError
from .model import Figure, Finding, Report, Table, Value

FIGURES_DIR = "figures"
"""Sub-folder of the report folder that holds ``<key>.png`` and ``<key>.svg``."""

SUMMARY_SCHEMA_VERSION = 3
"""Bumped when the shape of summary.json changes, so scripts reading old reports can tell.

2: the faults table counts recovered faults (was: caught), the coordination table splits
failed handoffs into lost and model errors (was: handoff failures per request).
3: a ``verdict`` list (heading, sentences, links) opens the summary; success intervals are task-clustered.
"""

_BOLD = re.compile(r"\*\*(.+?)\*\*")
"""The one mark-up a finding's sentence may carry: ``**word**``."""

_SAFE_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
"""Figure keys become file names: no separators, no leading dot, nothing a shell must quote."""

_OWN_FIGURE_FILE = re.compile(rf"{FIGURES_DIR}/{_SAFE_KEY.pattern}\.(png|svg)")

_COMMAND_KEYS = ("command",)
"""Provenance keys shown as a copyable command instead of a list item."""


class ReportWriteError(ExportError, ReportError):
    """A report file cannot be written (no permission, a full disk, a file where the folder should be).

    A :class:`ReportError`, so the CLI prints it like every other report error, and an
    ``OSError`` (through :class:`ExportError`), as the failure it wraps.
    """


# -- shared helpers -----------------------------------------------------------------------------

def figure_files(figure: Figure) -> list[str]:
    """The files a figure is written to, relative to the report folder."""
    return [f"{FIGURES_DIR}/{figure.key}.png", f"{FIGURES_DIR}/{figure.key}.svg"]


def _is_number(value: Value) -> bool:
    # bool is an int subclass, but True/False read as words, not quantities.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_columns(table: Table) -> list[bool]:
    """Per column: True when every measured value is a number, so the column is right-aligned.

    Decided from ``Cell.value``, not the text, because texts like ``83.3%`` or ``1.2 s``
    are numbers to a reader but not to a parser; ``None`` ("not measured") does not count.
    """
    flags = []
    for index in range(len(table.columns)):
        values = [row[index].value for row in table.rows if index < len(row) and row[index].value is not None]
        flags.append(bool(values) and all(_is_number(value) for value in values))
    return flags


def _plain(value: Any) -> str:
    """A provenance value as one line: lists joined by commas, mappings as ``name value`` pairs.

    Mapping entries are separated by semicolons so that a list inside one (``variants
    linear, gated``) still reads as one entry.
    """
    if isinstance(value, dict):
        return "; ".join(f"{key} {_plain(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return ", ".join(_plain(item) for item in items)
    return str(value)


def _lines(value: Any) -> list[str]:
    """A provenance value as lines: one per item of a list of records (runs), else one line."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(item, dict) for item in value):
        return [_plain(item) for item in value]
    return [_plain(value)]


def _label(key: str) -> str:
    return key.replace("_", " ")


def _provenance_items(report: Report) -> list[tuple[str, list[str]]]:
    """(label, lines) for every non-empty provenance entry except the command, in the builder's order."""
    return [(_label(key), _lines(value)) for key, value in report.provenance.items()
            if key not in _COMMAND_KEYS and value not in (None, "", [], {})]


def _command(report: Report) -> str | None:
    for key in _COMMAND_KEYS:
        if report.provenance.get(key):
            return str(report.provenance[key])
    return None


def _anchor(prefix: str, key: str) -> str:
    """An HTML id for a table or figure key: stable, unique per prefix, safe in a URL fragment."""
    return f"{prefix}-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", key).strip("-") or "x")


# -- Markdown ---------------------------------------------------------------------------------------

_MD_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}

_MD_LINK = re.compile(r"\](?=[(\[:])")
"""A "]" that would close a link's text: "](" inline, "][" by reference, "]:" a definition."""


def _md_text(text: Any) -> str:
    """Text from a store, a price table or the command line, made inert in Markdown: it shows as written.

    Profile, framework and model names are whatever a store holds, and a Markdown viewer
    renders raw HTML, so "<", ">" and "&" become entities; backslashes are doubled (they
    would escape what follows them), link syntax is broken, and line breaks become spaces
    (a line could start a heading, a list or an HTML block). Backticks, "*" and "_" stay:
    the lab's own notes use them and they cannot run code or load anything.
    """
    flat = re.sub(r"\r\n|[\r\n\u2028\u2029]", " ", str(text)).replace("\\", "\\\\")
    inert = re.sub("[&<>]", lambda match: _MD_HTML[match.group()], flat)
    return _MD_LINK.sub(lambda _: "\\]", inert)


def _md_cell(text: str) -> str:
    # A bare "|" would split the cell in GitHub's table syntax.
    return _md_text(text).replace("|", "\\|")


def _md_fence(code: str) -> list[str]:
    """A fenced code block that ``code`` cannot close early: the fence is longer than any backtick run in it."""
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}sh", code, fence]


def markdown_table(table: Table) -> str:
    """One table in GitHub syntax, cells as displayed, numeric columns right-aligned."""
    alignment = ["right" if numeric else "left" for numeric in numeric_columns(table)]
    rows = [[_md_cell(text) for text in row] for row in table.texts()]
    # disable_numparse: the display text is final ("0.50" must not become "0.5").
    text = tabulate(rows, headers=[_md_cell(column) for column in table.columns], tablefmt="github",
                    colalign=alignment or None, disable_numparse=True)
    # tabulate pads right-aligned columns but its "github" rule carries no alignment marks,
    # so GitHub would render them left-aligned; mark them "---:" as GitHub's syntax asks.
    if not table.columns:
        return text
    header, rule, *body = text.split("\n")
    segments = rule.split("|")
    for index, where in enumerate(alignment, start=1):
        if where == "right" and index < len(segments) - 1:
            segments[index] = segments[index][:-1] + ":"
    return "\n".join([header, "|".join(segments), *body])


def _md_finding(finding: Finding) -> str:
    """A verdict line: the heading in bold, the sentences, then the example episodes as links."""
    sentences = " ".join(_md_text(sentence) for sentence in finding.sentences)
    links = ", ".join(f"[{_md_text(link.text)}]({link.url}" + (f' "{_md_text(link.title)}"' if link.title else "") + ")"
                      for link in finding.links)
    return f"- **{_md_text(finding.heading)}**: {sentences}" + (f" Examples: {links}." if links else "")


def markdown(report: Report) -> str:
    """REPORT.md: title, notes, every table with its note, the figures by file name, then provenance.

    Provenance (store, runs, versions, commit, the command to regenerate) goes last, as in
    the HTML, so the numbers come first on GitHub too.
    """
    lines = [f"# {report.title}", ""]
    if report.provenance.get("question"):
        lines += [f"*{report.provenance['question']}*", ""]
    if report.verdict:
        lines += ["## Verdict", ""] + ([_md_text(report.verdict_intro), ""] if report.verdict_intro else [])
        lines += [_md_finding(finding) for finding in report.verdict] + [""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {_md_text(note)}" for note in report.notes] + [""]
    for table in report.tables:
        lines += [f"## {table.title}", "", markdown_table(table), ""]
        if table.note:
            lines += [f"*{_md_text(table.note)}*", ""]
    if report.figures:
        lines += ["## Figures", ""]
        for figure in report.figures:
            png, svg = figure_files(figure)
            lines += [f"### {figure.title}", "", f"![{figure.title}]({png})", ""]
            if figure.caption:
                lines += [_md_text(figure.caption), ""]
            lines += [f"Vector version: [{svg}]({svg})", ""]
    lines += ["## Provenance", ""]
    for label, texts in _provenance_items(report):
        label, texts = _md_text(label), [_md_text(text) for text in texts]
        lines += [f"- **{label}**: {texts[0]}"] if len(texts) == 1 else [f"- **{label}**:"] + [f"  - {t}" for t in texts]
    command = _command(report)
    if command:
        lines += ["", "Regenerate with:", ""] + _md_fence(command)
    return "\n".join(lines).rstrip("\n") + "\n"


# -- HTML ---------------------------------------------------------------------------------------------

_CSS = """
:root { --fg: #1d2125; --muted: #5b6570; --line: #d6dbe0; --band: #f4f6f8; --accent: #1f5fa8; --warn: #fff6dc; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.45;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header, nav, main, footer { max-width: 1320px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 20px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 28px 0 8px; }
.lede { color: var(--muted); margin: 0 0 10px; }
nav { font-size: 0.9rem; }
nav ol { list-style: none; margin: 0; padding: 6px 0 10px; display: flex; flex-wrap: wrap; gap: 4px 18px;
         border-bottom: 1px solid var(--line); }
nav a, footer a { color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
.verdict { margin: 10px 0 0; }
.verdict h2 { margin: 8px 0 4px; }
.verdict ul { margin: 0; padding-left: 18px; }
.verdict li { margin: 2px 0; max-width: 150ch; }
.verdict .examples { color: var(--muted); font-size: 0.88rem; }
.verdict-intro { color: var(--muted); font-size: 0.85rem; margin: 4px 0 0; max-width: 150ch; }
.notes { background: var(--warn); border: 1px solid #ecd9a0; border-radius: 6px; padding: 8px 14px;
         margin: 14px 0 0; font-size: 0.92rem; }
.notes ul { margin: 4px 0; padding-left: 18px; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.92rem; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; font-size: 1.05rem; padding: 0 0 6px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top;
         white-space: nowrap; }
/* Headers may wrap ("handoff failures / ep") so a wide comparison fits a laptop screen; values never do. */
thead th { background: var(--band); border-bottom: 2px solid var(--line); white-space: normal;
           vertical-align: bottom; min-width: 4.5em; max-width: 9em; }
tbody tr:hover { background: var(--band); }
th.num, td.num { text-align: right; }
.table-note { color: var(--muted); font-size: 0.88rem; margin: 6px 0 0; max-width: 80ch; }
section { margin: 22px 0 8px; }
figure { margin: 24px 0; }
figure img { display: block; max-width: min(100%, 960px); height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 0.9rem; margin-top: 6px; max-width: 90ch; }
figcaption b { color: var(--fg); }
dl.provenance { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: 0.88rem; }
dl.provenance dt { color: var(--muted); }
dl.provenance dd { margin: 0; overflow-wrap: anywhere; }
pre { background: var(--band); padding: 8px 12px; border-radius: 4px; overflow-x: auto; font-size: 0.88rem; }
footer { color: var(--muted); font-size: 0.85rem; padding-bottom: 32px; }
@media print { nav { display: none; } tbody tr:hover { background: none; } }
"""

# The page may load nothing from anywhere: no fetch, no font, no script; images only from
# data: URIs. A mistake that sneaks in an external reference then fails loudly in the
# browser (a console error the browser test catches) instead of phoning home.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(text: Any) -> str:
    return html_lib.escape(str(text), quote=True)


def html_table(table: Table) -> str:
    """One table as HTML with its caption; numeric columns carry class ``num`` (right-aligned)."""
    numeric = numeric_columns(table)

    def klass(index: int) -> str:
        return ' class="num"' if index < len(numeric) and numeric[index] else ""

    head = "".join(f'<th scope="col"{klass(i)}>{_e(column)}</th>' for i, column in enumerate(table.columns))
    body = "\n".join("<tr>" + "".join(f"<td{klass(i)}>{_e(text)}</td>" for i, text in enumerate(row)) + "</tr>"
                     for row in table.texts())
    note = f'\n<p class="table-note">{_e(table.note)}</p>' if table.note else ""
    return (f'<section id="{_anchor("table", table.key)}" class="table-section">\n<div class="table-wrap">\n'
            f"<table>\n<caption>{_e(table.title)}</caption>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}\n</tbody>\n</table>\n</div>{note}\n</section>")


def html_figure(figure: Figure) -> str:
    """A figure embedded as a PNG data URI, with its title and caption under it."""
    data = base64.b64encode(figure.png).decode("ascii")
    caption = f"<b>{_e(figure.title)}</b>" + (f" — {_e(figure.caption)}" if figure.caption else "")
    return (f'<figure id="{_anchor("figure", figure.key)}">\n'
            f'<img src="data:image/png;base64,{data}" alt="{_e(figure.title)}">\n'
            f"<figcaption>{caption}</figcaption>\n</figure>")


def _html_sentence(sentence: str) -> str:
    return _BOLD.sub(lambda match: f"<strong>{match.group(1)}</strong>", _e(sentence))


def html_verdict(report: Report) -> str:
    """The verdict section: the first thing on the page."""
    if not report.verdict:
        return ""
    items = []
    for finding in report.verdict:
        sentences = " ".join(_html_sentence(sentence) for sentence in finding.sentences)
        links = ", ".join(f'<a href="{_e(link.url)}" title="{_e(link.title)}">{_e(link.text)}</a>'
                          for link in finding.links)
        items.append(f"<li><b>{_e(finding.heading)}</b>: {sentences}"
                     + (f' <span class="examples">Examples: {links}.</span>' if links else "") + "</li>")
    intro = f'<p class="verdict-intro">{_e(report.verdict_intro)}</p>' if report.verdict_intro else ""
    return f'<section id="verdict" class="verdict">\n<h2>Verdict</h2>\n<ul>{"".join(items)}</ul>\n{intro}\n</section>'


def html(report: Report) -> str:
    """report.html: one self-contained page (inline CSS, images as data URIs, no script).

    Layout for a laptop screen: title, a one-line table of contents, the notes every
    reader must see, then the first table (the comparison) above the fold; figures and
    provenance follow.
    """
    toc = []
    if report.verdict:
        toc.append('<li><a href="#verdict">Verdict</a></li>')
    if report.notes:
        toc.append('<li><a href="#notes">Notes</a></li>')
    toc += [f'<li><a href="#{_anchor("table", t.key)}">{_e(t.title)}</a></li>' for t in report.tables]
    toc += [f'<li><a href="#{_anchor("figure", f.key)}">{_e(f.title)}</a></li>' for f in report.figures]
    toc.append('<li><a href="#provenance">Provenance</a></li>')

    question = report.provenance.get("question")
    lede = f'<p class="lede">{_e(question)}</p>' if question else ""
    notes = ""
    if report.notes:
        items = "".join(f"<li>{_e(note)}</li>" for note in report.notes)
        notes = f'<aside id="notes" class="notes"><strong>Read first</strong><ul>{items}</ul></aside>'

    tables = "\n".join(html_table(table) for table in report.tables)
    figures = ""
    if report.figures:
        figures = "<h2>Figures</h2>\n" + "\n".join(html_figure(figure) for figure in report.figures)

    provenance = "".join(f"<dt>{_e(label)}</dt><dd>{'<br>'.join(_e(text) for text in texts)}</dd>"
                         for label, texts in _provenance_items(report))
    command = _command(report)
    regenerate = f"<p>Regenerate with:</p>\n<pre><code>{_e(command)}</code></pre>" if command else ""

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<link rel="icon" href="data:,">
<title>{_e(report.title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{_e(report.title)}</h1>
{lede}
</header>
<nav aria-label="Contents"><ol>{"".join(toc)}</ol></nav>
<main>
{html_verdict(report)}
{notes}
{tables}
{figures}
<h2 id="provenance">Provenance</h2>
<dl class="provenance">{provenance}</dl>
{regenerate}
</main>
<footer>Self-contained report written by coordlab; figures are also in {FIGURES_DIR}/ as PNG and SVG.</footer>
</body>
</html>
"""


# -- JSON ---------------------------------------------------------------------------------------------

def _json_value(value: Any) -> Any:
    """A value JSON can hold: NaN and infinities become null (JSON has neither), odd types their str."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return [_json_value(item) for item in sorted(value, key=str)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def summary(report: Report) -> dict[str, Any]:
    """summary.json: provenance, notes, each table's rows as {column: semantic value}, the figure files."""
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "title": report.title,
        "provenance": _json_value(report.provenance),
        "verdict": [{"heading": f.heading, "sentences": list(f.sentences),
                     "links": [{"text": link.text, "url": link.url, "title": link.title} for link in f.links]}
                    for f in report.verdict],
        "verdict_intro": report.verdict_intro,
        "notes": list(report.notes),
        "tables": [{"key": table.key, "title": table.title, "columns": list(table.columns),
                    "rows": _json_value(table.values()), "note": table.note}
                   for table in report.tables],
        "figures": [{"key": figure.key, "title": figure.title, "caption": figure.caption,
                     "files": figure_files(figure)} for figure in report.figures],
    }


# -- writing --------------------------------------------------------------------------------------------

def _previous_figure_files(out_dir: Path) -> set[str]:
    """The figure files an earlier report in ``out_dir`` listed in its summary.json (empty if none)."""
    try:
        previous = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
        return {name for figure in previous.get("figures", []) for name in figure.get("files", [])
                if isinstance(name, str) and _OWN_FIGURE_FILE.fullmatch(name)}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()


def check_keys(report: Report) -> None:
    """Refuse keys that would collide or escape the report folder, before anything is written.

    Table keys name anchors and summary.json entries, figure keys name files; two of a kind
    with one key would silently overwrite or shadow each other.
    """
    problems = []
    for kind, keys in (("table", [t.key for t in report.tables]), ("figure", [f.key for f in report.figures])):
        seen: set[str] = set()
        for key in keys:
            if key in seen:
                problems.append(f"{kind} key {key!r} is used twice")
            seen.add(key)
    problems += [f"figure key {f.key!r} cannot be a file name; use letters, digits, '_', '-' and '.'"
                 for f in report.figures if not _SAFE_KEY.fullmatch(f.key)]
    if problems:
        raise ValueError("report not written: " + "; ".join(problems))


def write_report(report: Report, out_dir: Path | str) -> Path:
    """Write figures, summary.json, report.html and REPORT.md into ``out_dir``; return report.html's path.

    Everything is rendered before the first byte is written, and every file goes through a
    temp file and a rename in its own folder, so a failure leaves each file either old or
    new, never half-written. REPORT.md goes last: once it is new, the whole report is.
    Figure files that the previous report listed and this one does not are then removed,
    and nothing else, so a folder shared with other files (a store, say) is left alone.
    """
    check_keys(report)
    out = Path(out_dir)
    texts = {"summary.json": json.dumps(summary(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
             "report.html": html(report),
             "REPORT.md": markdown(report)}
    stale = _previous_figure_files(out)

    try:
        for figure in report.figures:
            png, svg = figure_files(figure)
            write_atomically(out / png, figure.png)
            write_atomically(out / svg, figure.svg)
        for name in ("summary.json", "report.html", "REPORT.md"):
            write_atomically(out / name, texts[name])
    except ExportError as exc:
        raise ReportWriteError(f"report in {out} not written (REPORT.md keeps its earlier content): {exc}",
                               exc.errno) from None
    _prune(out, stale - {name for figure in report.figures for name in figure_files(figure)})
    return out / "report.html"


def _prune(out_dir: Path, names: set[str]) -> None:
    """Remove figure files the new report no longer lists; one that cannot be removed is left.

    The report is complete by then and links none of them, so a leftover file costs some
    disk space, not correctness: not worth failing a written report over.
    """
    for name in names:
        try:
            (out_dir / name).unlink(missing_ok=True)
        except OSError:
            continue
