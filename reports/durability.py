"""The durability experiment's report: after a crash and a resume, did each side effect happen exactly once?

Rates are over the episodes whose first run died at the crash point (a run that ended
before reaching it has nothing to resume and is only counted). Intervals are Wilson 95%.
Frameworks are compared with ``plain`` on the same (task, variant, seed, crash point):
exact McNemar tests on exactly-once and on harm (a duplicated side effect), Holm-adjusted
over every comparison in the report; where a difference is not significant, the table
says what difference the pairs could have detected with 80% power.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter, defaultdict
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from coordlab.runners.durability.experiment import QUESTION
from coordlab.runners.durability.store import code_version

from .model import Cell, Figure, Finding, Report, Table
from .plots import _export, _new_figure, colour
from .stats import holm_adjust, mcnemar_exact, median, minimum_detectable_difference, wilson_interval
from .tables import framework_sort_key, variant_sort_key

Row = Mapping[str, Any]
REFERENCE = "plain"
ALPHA = 0.05


def load_rows(store: Path) -> list[dict[str, Any]]:
    """Every durable episode in the store, as dicts."""
    if not Path(store).is_file():
        raise FileNotFoundError(f"{store}: no durability store here (run `coordlab experiment durability` first)")
    connection = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM durable_episodes")]
    finally:
        connection.close()


def _keys(row: Row) -> str:
    return "on" if row["idempotency_keys"] else "off"


def _rate(rows: Sequence[Row], test: Callable[[Row], bool]) -> tuple[int, int]:
    return sum(1 for r in rows if test(r)), len(rows)


def _rate_cell(hits: int, n: int) -> Cell:
    if not n:
        return Cell(None, "—")
    low, high = wilson_interval(hits, n)
    return Cell(hits / n, f"{hits / n:.0%} [{low:.0%}, {high:.0%}]")


def _cells(rows: Iterable[Row]) -> dict[tuple[str, str, str], list[Row]]:
    cells: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in rows:
        cells[(row["framework"], row["variant"], _keys(row))].append(row)
    return dict(sorted(cells.items(), key=lambda item: (framework_sort_key(item[0][0]),
                                                        variant_sort_key(item[0][1]), item[0][2])))


def crashed(rows: Iterable[Row]) -> list[Row]:
    """The episodes whose first run died at the crash point."""
    return [r for r in rows if r["crashed"]]


def scored(rows: Iterable[Row]) -> list[Row]:
    """The episodes a rate is over: those killed at the crash point, and those whose first run failed before
    reaching it (a framework must not escape a crash by failing first). A first run that succeeded without
    reaching the point met no crash."""
    return [r for r in rows if r["crashed"] or r["status"] != "success"]


def outcome_table(rows: Sequence[Row]) -> Table:
    """Per framework, variant and idempotency setting: how crashed episodes ended."""
    table_rows = []
    for (framework, variant, keys), cell in _cells(rows).items():
        hit = scored(cell)
        resumed = sum(1 for r in hit if r["resumed_from"])
        recover = [r["recover_s"] for r in hit if r["recover_s"] is not None]
        table_rows.append([
            Cell.of(framework), Cell.of(variant), Cell.of(keys),
            Cell(len(hit), f"{len(crashed(cell))} of {len(cell)}" + (f" (+{len(hit) - len(crashed(cell))} failed first)"
                                                                     if len(hit) > len(crashed(cell)) else "")),
            Cell(resumed / len(hit) if hit else None, f"{resumed} of {len(hit)}"),
            _rate_cell(*_rate(hit, lambda r: r["status"] == "success")),
            _rate_cell(*_rate(hit, lambda r: bool(r["exactly_once"]))),
            _rate_cell(*_rate(hit, lambda r: r["duplicated"] > 0)),
            _rate_cell(*_rate(hit, lambda r: r["lost"] > 0)),
            Cell.of(sum(r["redone_calls"] for r in hit) / len(hit) if hit else None, "{:.2f}"),
            Cell.of(median(recover) if recover else None, "{:.2f}"),
        ])
    return Table("durability", "After a crash: completed, exactly once, duplicated, lost (95% intervals)",
                 ["framework", "variant", "idempotency keys", "crashed", "resumed from saved state", "completed",
                  "exactly once", "duplicated (harmful)", "lost", "model calls redone per crash",
                  "recovery p50 (s)"], table_rows,
                 "Rates are over the episodes whose first run died at the crash point, and any whose first run "
                 "failed before reaching it. Exactly once: every side effect of the correct run happened once, "
                 "none repeated (by tool, whatever its arguments), none missing. Recovery: from the kill to the "
                 "resumed run's first model call that is not a repeat.")


def _pairs(rows: Sequence[Row], framework: str, variant: str, keys: str,
           outcome: Callable[[Row], bool]) -> tuple[int, int, int, int]:
    """(pairs, framework only, plain only, both) on ``outcome`` over the episodes of ``rows`` both ran."""
    def index(name: str) -> dict[tuple[str, int], Row]:
        return {(r["task"], r["seed"]): r for r in rows
                if r["framework"] == name and r["variant"] == variant and _keys(r) == keys}
    mine, reference = index(framework), index(REFERENCE)
    shared = mine.keys() & reference.keys()
    only_mine = sum(1 for k in shared if outcome(mine[k]) and not outcome(reference[k]))
    only_reference = sum(1 for k in shared if outcome(reference[k]) and not outcome(mine[k]))
    both = sum(1 for k in shared if outcome(mine[k]) and outcome(reference[k]))
    return len(shared), only_mine, only_reference, both


OUTCOMES: dict[str, Callable[[Row], bool]] = {
    "exactly once": lambda r: bool(r["exactly_once"]),
    "duplicated (harm)": lambda r: r["duplicated"] > 0,
}


def paired_table(rows: Sequence[Row], key: str = "durability_paired", what: str = "crashes") -> Table:
    """Each framework against plain on the same episodes (``rows``: crashed ones, or reviewed ones), on exactly-once
    and on harm, Holm-adjusted over the table."""
    tests = []
    frameworks = sorted({r["framework"] for r in rows} - {REFERENCE}, key=framework_sort_key)
    if REFERENCE in {r["framework"] for r in rows}:
        for variant in sorted({r["variant"] for r in rows}, key=variant_sort_key):
            for keys in ("off", "on"):
                for framework in frameworks:
                    for name, outcome in OUTCOMES.items():
                        pairs, only_mine, only_reference, _ = _pairs(rows, framework, variant, keys, outcome)
                        if pairs:
                            tests.append((framework, variant, keys, name, pairs, only_mine, only_reference,
                                          mcnemar_exact(only_mine, only_reference)))
    adjusted = holm_adjust([t[-1] for t in tests]) if tests else []
    table_rows = []
    for (framework, variant, keys, name, pairs, only_mine, only_reference, p), p_holm in zip(tests, adjusted):
        difference = (only_mine - only_reference) / pairs
        detectable = None
        if p_holm >= ALPHA:
            detectable = minimum_detectable_difference(pairs, min(only_mine, only_reference) / pairs, ALPHA)
        table_rows.append([Cell.of(framework), Cell.of(variant), Cell.of(keys), Cell.of(name), Cell.of(pairs),
                           Cell(difference, f"{difference:+.0%}"), Cell(only_mine, str(only_mine)),
                           Cell(only_reference, str(only_reference)), Cell.of(p_holm, "{:.3g}"),
                           Cell(p_holm < ALPHA, "yes" if p_holm < ALPHA else "no"),
                           Cell.of(detectable, "{:.0%}")])
    return Table(key, f"Against {REFERENCE} on the same {what} (exact McNemar, Holm-adjusted)",
                 ["framework", "variant", "idempotency keys", "outcome", "pairs", "difference", "only framework",
                  f"only {REFERENCE}", "p (Holm)", "significant", "detectable difference (80% power)"], table_rows,
                 f"A pair is one (task, seed) both {REFERENCE} and the framework ran, with the same crash point or "
                 "the same reviewer's answers. "
                 "Difference: the framework's rate minus plain's. Where nothing is significant, the last column says "
                 "what difference these pairs could have detected.")


def kind_table(rows: Sequence[Row]) -> Table:
    """Exactly-once by where the crash fell, without idempotency keys."""
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in scored(rows):
        if not row["idempotency_keys"]:
            groups[(row["framework"], row["variant"], row["crash_kind"])].append(row)
    table_rows = []
    for (framework, variant, kind), cell in sorted(groups.items(), key=lambda item: (
            framework_sort_key(item[0][0]), variant_sort_key(item[0][1]), item[0][2])):
        table_rows.append([Cell.of(framework), Cell.of(variant), Cell.of(kind), Cell.of(len(cell)),
                           _rate_cell(*_rate(cell, lambda r: bool(r["exactly_once"]))),
                           _rate_cell(*_rate(cell, lambda r: r["duplicated"] > 0)),
                           Cell.of(sum(r["redone_calls"] for r in cell) / len(cell), "{:.2f}")])
    return Table("durability_by_crash", "Where the crash fell (idempotency keys off)",
                 ["framework", "variant", "crash", "crashes", "exactly once", "duplicated", "calls redone per crash"],
                 table_rows, "after_effect: killed right after a change to the world, before the framework could "
                             "record the step as done; before_step: killed between two steps.")


def resume_table(rows: Sequence[Row]) -> Table:
    """Each framework's resume path, and what its resumed runs actually read back."""
    table_rows = []
    for framework in sorted({r["framework"] for r in rows}, key=framework_sort_key):
        hit = [r for r in scored(rows) if r["framework"] == framework]
        path = next((r["resume_path"] for r in rows if r["framework"] == framework), "")
        read = Counter(_shape(r["resumed_from"]) for r in hit if r["resumed_from"])
        scratch = sum(1 for r in hit if not r["resumed_from"])
        table_rows.append([Cell.of(framework), Cell.of(path or "none: a restart runs from the beginning"),
                           Cell(scratch, f"{scratch} of {len(hit)}"),
                           Cell.of("; ".join(f"{text} ({n})" for text, n in read.most_common(3)) or None)])
    return Table("resume_paths", "How each framework resumed",
                 ["framework", "resume path", "restarted from scratch", "what resumed runs read back (most common)"],
                 table_rows, "Read back: the adapter's own words for the saved state it found, with step names "
                             "and counts kept.")


def notes_table(rows: Sequence[Row]) -> Table:
    """What the adapters said about how they ran (each note once, with how many episodes carry it)."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for row in rows:
        for note in set(json.loads(row["notes_json"])):
            if "before the crash point" not in note:
                counts[(row["framework"], row["scenario"], _fold(note))] += 1
    table_rows = [[Cell.of(framework), Cell.of(scenario), Cell.of(note), Cell.of(n)]
                  for (framework, scenario, note), n in sorted(counts.items(), key=lambda item: (
                      framework_sort_key(item[0][0]), item[0][1], -item[1]))]
    return Table("adapter_notes", "What the adapters noted", ["framework", "scenario", "note", "episodes"], table_rows,
                 "Each adapter says where its framework departs from the ideal (a resume that dropped a gate, a "
                 "variant where nobody is asked), with step names and numbers folded so that one remark is one row.")


def _fold(text: str) -> str:
    """``text`` with numbers, ids and quoted names folded, so the same kind of remark groups across tasks."""
    return re.sub(r"'[a-z_][a-z0-9_]*'", "'…'", re.sub(r"\b\w*\d\w*\b", "N", text))


def _shape(text: str) -> str:
    """What a resumed run read back, folded (:func:`_fold`) and cut to a table cell."""
    return _fold(text)[:90]


def exactly_once_figure(rows: Sequence[Row]) -> Figure | None:
    """Exactly-once rate with its 95% interval, per framework and variant, keys off and on."""
    cells = _cells(scored(rows))
    if not cells:
        return None
    frameworks = sorted({k[0] for k in cells}, key=framework_sort_key)
    variants = sorted({k[1] for k in cells}, key=variant_sort_key)
    figure, axes = _new_figure(2, width=5.0)
    for panel, keys in zip(axes, ("off", "on")):
        width = 0.8 / len(frameworks)
        for index, framework in enumerate(frameworks):
            xs, ys, low, high = [], [], [], []
            for position, variant in enumerate(variants):
                cell = cells.get((framework, variant, keys))
                if not cell:
                    continue
                hits = sum(1 for r in cell if r["exactly_once"])
                lo, hi = wilson_interval(hits, len(cell))
                rate = hits / len(cell)
                xs.append(position - 0.4 + width * (index + 0.5))
                ys.append(rate)
                low.append(rate - lo)
                high.append(hi - rate)
            panel.bar(xs, ys, width * 0.9, color=colour(framework), label=framework,
                      yerr=[low, high], capsize=2, error_kw={"linewidth": 0.8})
        panel.set_xticks(range(len(variants)), variants)
        panel.set_ylim(0, 1.05)
        panel.set_title(f"idempotency keys {keys}")
        panel.set_ylabel("exactly once after a crash")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(frameworks), frameon=False)
    return _export(figure, "durability_exactly_once", "Exactly once after a crash and a resume",
                   "Share of crashed episodes in which every side effect happened exactly once (95% Wilson interval).")


def redone_figure(rows: Sequence[Row]) -> Figure | None:
    """Model calls the resumed run repeated, per crash, by framework and variant (keys off)."""
    cells = {k: v for k, v in _cells(scored(rows)).items() if k[2] == "off"}
    if not cells:
        return None
    frameworks = sorted({k[0] for k in cells}, key=framework_sort_key)
    variants = sorted({k[1] for k in cells}, key=variant_sort_key)
    figure, axes = _new_figure(1, width=6.0)
    width = 0.8 / len(frameworks)
    for index, framework in enumerate(frameworks):
        xs, ys = [], []
        for position, variant in enumerate(variants):
            cell = cells.get((framework, variant, "off"))
            if cell:
                xs.append(position - 0.4 + width * (index + 0.5))
                ys.append(sum(r["redone_calls"] for r in cell) / len(cell))
        axes[0].bar(xs, ys, width * 0.9, color=colour(framework), label=framework)
    axes[0].set_xticks(range(len(variants)), variants)
    axes[0].set_ylabel("model calls redone per crash")
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(frameworks),
                  frameon=False)
    return _export(figure, "durability_redone", "Work redone after a resume",
                   "Mean model calls per crashed episode that repeat one the killed run had already made.")


def review_table(rows: Sequence[Row]) -> Table:
    """The human-in-the-loop episodes: how the reviewer answered, and how each framework coped."""
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        groups[(row["framework"], row["variant"])].append(row)
    table_rows = []
    for (framework, variant), cell in sorted(groups.items(), key=lambda item: (
            framework_sort_key(item[0][0]), variant_sort_key(item[0][1]))):
        answers: Counter[str] = Counter()
        for row in cell:
            answers.update(json.loads(row["reviews_json"] or "{}"))
        died = [r for r in cell if r["crashed"]]
        table_rows.append([
            Cell.of(framework), Cell.of(variant), Cell.of(len(cell)),
            Cell(answers["approve"], f"{answers['approve']} / {answers['reject']} / {answers['late']}"),
            Cell(len(died), f"{len(died)}, {sum(1 for r in died if r['resumed_from'])} resumed from saved state"),
            _rate_cell(*_rate(cell, lambda r: r["status"] == "success")),
            _rate_cell(*_rate(cell, lambda r: bool(r["exactly_once"]))),
            _rate_cell(*_rate(cell, lambda r: r["duplicated"] > 0)),
            _rate_cell(*_rate(cell, lambda r: (r["unapproved"] or 0) > 0)),
        ])
    return Table("review", "A human approves each step that changes the world (scripted, seeded reviewer)",
                 ["framework", "variant", "episodes", "answers: approve / reject / late", "died waiting",
                  "completed", "exactly once", "duplicated (harmful)", "changed the world unapproved"], table_rows,
                 "The reviewer's first answer for each gated step is drawn from (seed, task, step): approve, reject "
                 "with a reason (the work is redone and submitted again) or late (the asking process is killed while "
                 "it waits, and the resumed run is answered). Later requests are approved. Unapproved: a change was "
                 "made for a step the reviewer had not approved.")


def findings(rows: Sequence[Row], reviewed: Sequence[Row] = ()) -> list[Finding]:
    """One line per idempotency setting (each framework's exactly-once rate over all variants), one for review."""
    result = []
    for keys in ("off", "on"):
        parts = []
        for framework in sorted({r["framework"] for r in rows}, key=framework_sort_key):
            hit = [r for r in scored(rows) if r["framework"] == framework and _keys(r) == keys]
            if hit:
                once = sum(1 for r in hit if r["exactly_once"])
                twice = sum(1 for r in hit if r["duplicated"] > 0)
                parts.append(f"**{framework}** {once / len(hit):.0%} exactly once, {twice / len(hit):.0%} "
                             f"duplicated ({len(hit)} crashes)")
        if parts:
            result.append(Finding(f"After a crash, idempotency keys {keys}", ("; ".join(parts) + ".",)))
    parts = []
    for framework in sorted({r["framework"] for r in reviewed}, key=framework_sort_key):
        mine = [r for r in reviewed if r["framework"] == framework]
        once = sum(1 for r in mine if r["exactly_once"])
        unapproved = sum(1 for r in mine if (r["unapproved"] or 0) > 0)
        parts.append(f"**{framework}** {once / len(mine):.0%} exactly once, {unapproved / len(mine):.0%} changed the "
                     f"world unapproved ({len(mine)} episodes)")
    if parts:
        result.append(Finding("With a human approving each change", ("; ".join(parts) + ".",)))
    return result


def durability_report(store: Path, command: str) -> Report:
    """The whole report from a durability store."""
    every = load_rows(store)
    rows = [r for r in every if r["scenario"] == "crash"]
    reviewed = [r for r in every if r["scenario"] == "review"]
    versions = {f"{r['framework']}": r["framework_version"] for r in every}
    report = Report("coordlab — durability", {
        "question": QUESTION,
        "command": command, "store": str(store), "crash episodes": len(rows), "crashed": len(crashed(rows)),
        "reviewed episodes": len(reviewed),
        "framework versions": versions, "coordlab version": version("coordlab"),
        "coordlab commit (episodes)": sorted({r["code_version"] or "unknown" for r in every}),
        "coordlab commit (report)": code_version(),
    })
    report.verdict = findings(rows, reviewed)
    report.verdict_intro = ("Exactly once over the crashed episodes of every task and variant; per-cell rates, "
                            "paired tests against plain and the resume paths follow.")
    report.tables = [outcome_table(rows), paired_table(scored(rows)), kind_table(rows), resume_table(rows)]
    if reviewed:
        report.tables += [review_table(reviewed), paired_table(reviewed, "review_paired", "reviewed episodes")]
    report.tables.append(notes_table(every))
    report.figures = [f for f in (exactly_once_figure(rows), redone_figure(rows)) if f is not None]
    not_reached = len(rows) - len(scored(rows))
    off_point = [r for r in crashed(rows) if r["crash_kind"] == "after_effect"
                 and r["effects_at_crash"] is not None and r["effects_at_crash"] != r["crash_effect"]]
    report.notes += [
        "The crash point is a pure function of (seed, task): every framework is killed at the same logical moment "
        "(right after the N-th change to the world, or when the first request of a step arrives). The world is the "
        "outside system: its changes are journaled before the tool returns and survive the kill.",
        "No other fault is injected (profile none): every failure here comes from the crash and the resume.",
        "Each run is a fresh process forked from a server that has the framework imported; the resumed run reads "
        "only what the framework (or plain's journal) saved on disk.",
        f"{not_reached} episodes succeeded before reaching their crash point (nothing to resume); they are counted "
        "in 'crashed' as the difference and left out of every rate.",
        f"In {len(off_point)} of the {sum(1 for r in crashed(rows) if r['crash_kind'] == 'after_effect')} crashes "
        "after a change, the world held another number of changes than the crash point names when the process died "
        "(the journal, read before the resumed run started).",
    ]
    return report


def write_durability_report(store: Path, out: Path, command: str) -> Path:
    """Build and write the report (Markdown, HTML, summary.json, figures) into ``out``."""
    from .render import write_report

    return write_report(durability_report(store, command), out)

