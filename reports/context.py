"""The context experiment's results: success and harm against each mechanism's strength, paired against ``plain``.

``coordlab experiment context`` names its generated profiles ``ctx_<mechanism>_<strength>``
(``ctx_clash_0.30``), and a mechanism without scheduled faults has the built-in ``none``
profile as its strength 0, shared by all of them (run in the union of their variants). So
a mechanism's episodes are those of its ``ctx_`` profiles, plus those of ``none`` in the
variants its ``ctx_`` profiles ran in when it has no strength-0 profile of its own. Within
a strength, every framework is paired with ``plain`` on the same task, variant, profile and
seed: the two met the same draws (common random numbers) and differ only by what they sent.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Collection, Sequence

import matplotlib
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from coordlab.runners.mechanisms import Mechanism

from .data import EpisodeRecord
from .model import Figure, Table
from .plots import _STYLE, _dodge, _export, _new_figure, _percent_axis, colour
from .pairing import PairedCounts
from .stats import mcnemar_exact, wilson_interval
from .tables import REFERENCE, count, framework_sort_key, number, p_value, points, rate, text, variant_sort_key

CONTEXT_PREFIX = "ctx_"
"""How the context experiment's generated profiles begin (``runners/experiments.py`` writes them)."""

BASELINE = "none"
"""The shared strength 0 of every mechanism that has no strength-0 profile of its own."""

_MECHANISM_ORDER = {m.value: i for i, m in enumerate(Mechanism)}
_NAME = re.compile(rf"{CONTEXT_PREFIX}(?P<mechanism>{'|'.join(m.value for m in Mechanism)})_(?P<strength>\d+\.\d+)")


def context_point(profile: str) -> tuple[str, float] | None:
    """(mechanism, strength) of a context profile key such as ``ctx_clash_0.30@8ea41e8e``; None for any other."""
    match = _NAME.fullmatch(profile.partition("@")[0])
    return (match["mechanism"], float(match["strength"])) if match else None


def context_cells(episodes: Sequence[EpisodeRecord],
                  profiles: Collection[str] | None = None) -> dict[str, dict[float, list[EpisodeRecord]]]:
    """Episodes by mechanism and strength (mechanisms in ``Mechanism`` order, strengths ascending).

    ``profiles`` keeps only those profile keys (an experiment passes the keys of the profiles it
    ran, so an edited profile's older episodes in the same store stay out); by default every
    ``ctx_`` profile and the ``none`` baseline count.
    """
    kept = [e for e in episodes if profiles is None or e.profile in profiles]
    cells: dict[str, dict[float, list[EpisodeRecord]]] = defaultdict(lambda: defaultdict(list))
    for episode in kept:
        point = context_point(episode.profile)
        if point is not None:
            cells[point[0]][point[1]].append(episode)
    baseline = [e for e in kept if e.profile == BASELINE]
    for strengths in cells.values():
        if 0.0 not in strengths:
            variants = {e.variant for cell in strengths.values() for e in cell}
            shared = [e for e in baseline if e.variant in variants]
            if shared:
                strengths[0.0] = shared
    return {mechanism: {s: cells[mechanism][s] for s in sorted(cells[mechanism])}
            for mechanism in sorted(cells, key=lambda m: _MECHANISM_ORDER.get(m, len(_MECHANISM_ORDER)))}


def _pair_key(episode: EpisodeRecord) -> tuple[str, str, str, int]:
    return episode.task, episode.variant, episode.profile, episode.seed


def paired_counts(cell: Sequence[EpisodeRecord]) -> dict[str, PairedCounts]:
    """Each framework of ``cell`` but plain, paired with plain on task, variant, profile and seed."""
    by_system: dict[str, dict[tuple[str, str, str, int], EpisodeRecord]] = defaultdict(dict)
    for episode in cell:
        by_system[episode.system][_pair_key(episode)] = episode
    references = sorted((s for s in by_system if s.partition("@")[0] == REFERENCE))
    if not references:
        return {}
    reference = by_system[references[0]]  # with several plain versions, the lowest label is the reference
    result = {}
    for system in sorted(by_system, key=framework_sort_key):
        if system in references:
            continue
        shared = [(by_system[system][key], reference[key]) for key in by_system[system].keys() & reference.keys()]
        if not shared:
            continue
        result[system] = PairedCounts.of(shared)
    return result


def context_table(episodes: Sequence[EpisodeRecord], profiles: Collection[str] | None = None) -> Table:
    """Each framework against plain at every mechanism and strength: paired success and harm, McNemar's exact test.

    No rows when the episodes hold no context profile (or no plain to pair with).
    """
    rows = []
    for mechanism, strengths in context_cells(episodes, profiles).items():
        for strength, cell in strengths.items():
            variants = ", ".join(sorted({e.variant for e in cell}, key=variant_sort_key))
            for system, paired in paired_counts(cell).items():
                low, high = paired.interval()
                rows.append([text(mechanism), number(strength), text(variants), text(system), count(paired.pairs),
                             count(paired.both), count(paired.only_a), count(paired.only_b), count(paired.neither),
                             *map(rate, paired.success_rates), points(paired.difference), points(low), points(high),
                             p_value(mcnemar_exact(paired.only_a, paired.only_b)),
                             count(paired.harm_a), count(paired.harm_b),
                             p_value(mcnemar_exact(paired.harm_a, paired.harm_b))])
    return Table("context_paired", "Context: each framework against plain as a mechanism strengthens",
                 ["mechanism", "strength", "variants", "framework", "pairs", "both succeed", "only framework",
                  "only plain", "neither", "framework success", "plain success", "difference", "95% CI low",
                  "95% CI high", "McNemar p", "only framework harmful", "only plain harmful", "harm McNemar p"], rows,
                 note="Strength is the mechanism's rate (strength 0: the mechanism off). A pair is the framework's "
                      "and plain's episode of the same task, variant, profile and seed, pooled over tasks and the "
                      "listed variants; both met the same fault and mechanism draws, so they differ only by what "
                      "the framework sent. Difference is the framework's success minus plain's in percentage points, "
                      "with Newcombe's paired 95% interval; McNemar's exact test is on the discordant pairs (only "
                      "framework vs only plain), the harm test on pairs where only one side failed harmfully. "
                      "p-values are not adjusted for the number of comparisons.")


def _rate_point(cell: Sequence[EpisodeRecord], hits: int) -> tuple[float, float, float]:
    low, high = wilson_interval(hits, len(cell))
    value = hits / len(cell)
    return value, value - low, high - value


def context_figure(episodes: Sequence[EpisodeRecord], profiles: Collection[str] | None = None) -> Figure | None:
    """One column per mechanism: success, harmful-failure rate and the paired difference to plain against strength.

    None when the episodes hold no context profile.
    """
    cells = context_cells(episodes, profiles)
    if not cells:
        return None
    systems = sorted({e.system for strengths in cells.values() for cell in strengths.values() for e in cell},
                     key=framework_sort_key)
    compared = any(paired_counts(cell) for strengths in cells.values() for cell in strengths.values())
    rows = 3 if compared else 2
    columns = len(cells)
    with matplotlib.rc_context(_STYLE):
        figure, axes_list = _new_figure(rows * columns, width=3.6, height=2.7, max_columns=columns)
        for column, (mechanism, strengths) in enumerate(cells.items()):
            success_axes, harm_axes = axes_list[column], axes_list[columns + column]
            xs = list(strengths)
            step = 0.012 * (max(xs) or 1.0)
            top_harm = 0.0
            for index, system in enumerate(systems):
                shift = _dodge(index, len(systems), step)
                success, harm = [], []
                for strength, cell in strengths.items():
                    own = [e for e in cell if e.system == system]
                    if own:
                        success.append((strength + shift, *_rate_point(own, sum(e.success for e in own))))
                        harm.append((strength + shift, *_rate_point(own, sum(e.harmful_failure for e in own))))
                for axes, points in ((success_axes, success), (harm_axes, harm)):
                    if points:
                        x, y, below, above = zip(*points)
                        axes.errorbar(x, y, yerr=[below, above], color=colour(system, systems), marker="o",
                                      capsize=2.5, elinewidth=0.8)
                top_harm = max([top_harm, *(y + a for _, y, _, a in harm)])
            variants = ", ".join(sorted({e.variant for cell in strengths.values() for e in cell}, key=variant_sort_key))
            success_axes.set_title(f"{mechanism}\n({variants})")
            _percent_axis(success_axes)
            harm_axes.set_ylim(-0.01, max(0.2, top_harm * 1.1))
            harm_axes.yaxis.set_major_formatter(PercentFormatter(1.0))  # 2.5% ticks must not read as 3%
            axes_for_x = [success_axes, harm_axes]
            if compared:
                difference_axes = axes_list[2 * columns + column]
                difference_axes.axhline(0, color="0.5", linewidth=0.8)
                for index, system in enumerate(systems):
                    points = []
                    for strength, cell in strengths.items():
                        paired = paired_counts(cell).get(system)
                        if paired is not None:
                            low, high = paired.interval()
                            points.append((strength + _dodge(index, len(systems), step), paired.difference,
                                           paired.difference - low, high - paired.difference))
                    if points:
                        x, y, below, above = zip(*points)
                        difference_axes.errorbar(x, y, yerr=[below, above], color=colour(system, systems),
                                                 marker="o", capsize=2.5, elinewidth=0.8)
                difference_axes.set_ylim(-1.05, 1.05)
                difference_axes.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
                axes_for_x.append(difference_axes)
            for axes in axes_for_x:
                axes.set_xticks(xs, [f"{x:g}" for x in xs])
            axes_for_x[-1].set_xlabel("strength (the mechanism's rate)")
        axes_list[0].set_ylabel("end-to-end success")
        axes_list[columns].set_ylabel("harmful failures")
        if compared:
            axes_list[2 * columns].set_ylabel("success − plain's (paired)")
        handles = [Line2D([], [], color=colour(s, systems), marker="o", label=s) for s in systems]
        figure.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)), frameon=False)
        figure.suptitle("Success and harm as each request-dependent mechanism strengthens")
        return _export(figure, "context_mechanisms", "Context: success and harm against mechanism strength",
                       "One column per mechanism, each acting alone, pooled over tasks and the variants in which it "
                       "can act (under the title). Top: end-to-end success; middle: harmful failures (95% Wilson "
                       "intervals); bottom: each framework's success minus plain's on the same episodes (task, "
                       "variant, profile, seed), with Newcombe's paired 95% interval. Strength 0 is the mechanism "
                       "off. The settings of every profile are printed with the report.")
