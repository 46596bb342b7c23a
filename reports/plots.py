"""The report's plots, each a :class:`~coordlab.reports.model.Figure` (PNG bytes and SVG text), or None.

A plot function returns None when the store holds none of the data it needs (no empty
axes in a report). Plots use matplotlib's object API on an explicit Agg canvas, never
pyplot and never ``matplotlib.use``, so building a report needs no display and leaves no
global figure or backend state behind in the caller's process. One
style throughout: a framework keeps its colour and a variant its line style and marker
in every plot, so a reader learns the legend once.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from typing import Any, Iterable, Sequence

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from .data import EpisodeRecord, PriceTable, parse_task_key, profile_info, task_steps
from .model import Figure
from .stats import wilson_interval
from .tables import episode_costs, framework_sort_key, profile_sort_key, task_sort_key, variant_sort_key

DPI = 110
"""Resolution of the PNGs: sharp in a browser without making the HTML report heavy."""

CHAIN_TASK = "chain"
"""The synthetic pipeline whose parameter n is its length."""

_FRAMEWORK_COLOURS = {"plain": "#4d4d4d", "crewai": "#d95f02", "autogen": "#1b9e77", "langgraph": "#7570b3",
                      "n8n": "#e41a1c"}
_OTHER_COLOURS = ("#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1f78b4", "#b2df8a")
_VARIANT_STYLES = {"linear": ("-", "o"), "gated": ("--", "s"), "delegated": (":", "^")}
_STYLE: dict[str, Any] = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.6, "lines.linewidth": 1.6, "lines.markersize": 5,
    "svg.hashsalt": "coordlab",  # stable element ids: the same store gives the same SVG
    "text.parse_math": False,  # names come from the store: "$x^$" in a profile name must print, not crash mathtext
}
_CURVE = {"color": "black", "linestyle": (0, (1, 1.5)), "linewidth": 1.2}


def colour(system: str, systems: Sequence[str] = ()) -> str:
    """A framework's colour: fixed for the known four, then a stable pick for others."""
    name = system.partition("@")[0]
    if name in _FRAMEWORK_COLOURS and "@" not in system:
        return _FRAMEWORK_COLOURS[name]
    others = sorted(s for s in systems if s not in _FRAMEWORK_COLOURS) or [system]
    index = others.index(system) if system in others else sum(map(ord, system))
    return _OTHER_COLOURS[index % len(_OTHER_COLOURS)]


def variant_style(variant: str) -> tuple[Any, str]:
    """A variant's line style and marker."""
    return _VARIANT_STYLES.get(variant, ("-.", "D"))


def _new_figure(panels: int, *, width: float = 4.3, height: float = 3.3,
                max_columns: int = 3) -> tuple[MplFigure, list[Axes]]:
    columns = min(max_columns, panels)
    rows = math.ceil(panels / columns)
    figure = MplFigure(figsize=(width * columns, height * rows + 0.9), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, axes[:panels]


def _export(figure: MplFigure, key: str, title: str, caption: str) -> Figure:
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=DPI)
    svg = io.BytesIO()
    figure.savefig(svg, format="svg", metadata={"Date": None})
    return Figure(key, title, png.getvalue(), svg.getvalue().decode("utf-8"), caption)


def _legend(figure: MplFigure, pairs: Iterable[tuple[str, str]], systems: Sequence[str],
            extra: Sequence[Line2D] = ()) -> None:
    handles: list[Line2D] = []
    for system, variant in pairs:
        line, marker = variant_style(variant)
        handles.append(Line2D([], [], color=colour(system, systems), linestyle=line, marker=marker,
                              label=f"{system} · {variant}"))
    handles += list(extra)
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), frameon=False)


def _dodge(index: int, count: int, step: float) -> float:
    """A small sideways offset for series ``index`` of ``count``, so identical results do not hide each other."""
    return (index - (count - 1) / 2) * step


def _success(episodes: Sequence[EpisodeRecord]) -> tuple[float, float, float]:
    """Success rate and the distances to its Wilson bounds (for error bars)."""
    n = len(episodes)
    successes = sum(e.success for e in episodes)
    low, high = wilson_interval(successes, n)
    value = successes / n
    return value, value - low, high - value


def _percent_axis(axes: Axes) -> None:
    axes.set_ylim(-0.03, 1.05)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def _by(episodes: Iterable[EpisodeRecord], *fields: str) -> dict[tuple[Any, ...], list[EpisodeRecord]]:
    groups: dict[tuple[Any, ...], list[EpisodeRecord]] = defaultdict(list)
    for e in episodes:
        groups[tuple(getattr(e, f) for f in fields)].append(e)
    return groups


# -- plots ----------------------------------------------------------------------------------------

def rate_ticks(rates: Iterable[float]) -> tuple[list[float], list[str]]:
    """Ticks of a fault-rate axis: one at each rate measured, labelled with the decimals it needs (0.5%, 3%, 10%).

    A percent formatter with fixed decimals on automatic ticks would print 0.5% as "0%" or
    "1%" and repeat labels; ticks at the profiles' own rates read as the rates they are.
    """
    positions = sorted(set(rates))
    return positions, [f"{round(rate * 100, 4):g}%" for rate in positions]


def success_vs_fault_rate(episodes: Sequence[EpisodeRecord]) -> Figure | None:
    """End-to-end success against the per-step fault rate, per task, beside (1-p)^n.

    Only semantic profiles of known rate take part (transport faults are retried by the
    clients, so (1-p)^n does not model them), and only tasks measured at two or more rates.
    """
    with matplotlib.rc_context(_STYLE):
        figure = fault_rate_figure(episodes)
        if figure is None:
            return None
        return _export(figure, "success_vs_fault_rate", "End-to-end success vs per-step fault rate",
                       "Measured success (95% Wilson intervals) at each semantic fault profile's per-step rate, "
                       "beside the analytical (1 - p)^n of n independent steps that each fail with probability p. "
                       "A variant that catches and repairs faults sits above the curve; transport-fault profiles "
                       "are left out, since clients retry those faults.")


def fault_rate_figure(episodes: Sequence[EpisodeRecord]) -> MplFigure | None:
    """The matplotlib figure :func:`success_vs_fault_rate` exports (its axes are what a test reads)."""
    rated = [e for e in episodes if (info := profile_info(e.profile)) is not None and not info.transport]
    cells = _by(rated, "task", "system", "variant", "profile")
    rates_of: dict[str, set[float]] = defaultdict(set)
    for task, _, _, profile in cells:
        rates_of[task].add(profile_info(profile).rate)  # type: ignore[union-attr]
    tasks = sorted((t for t, rates in rates_of.items() if len(rates) >= 2), key=task_sort_key)
    if not tasks:
        return None
    systems = sorted({e.system for e in rated}, key=framework_sort_key)
    shown: set[tuple[str, str]] = set()
    curve_shown = False
    with matplotlib.rc_context(_STYLE):
        figure, axes_list = _new_figure(len(tasks))
        for axes, task in zip(axes_list, tasks):
            rates = sorted(rates_of[task])
            series = sorted({(s, v) for t, s, v, _ in cells if t == task},
                            key=lambda p: (framework_sort_key(p[0]), variant_sort_key(p[1])))
            for index, (system, variant) in enumerate(series):
                shift = _dodge(index, len(series), 0.004 * max(rates))
                # Two profiles of one rate (a user's copy of a built-in) pool: the x axis is the rate.
                points = []
                for p in rates:
                    group = [e for (t, s, v, profile), cell in cells.items() if (t, s, v) == (task, system, variant)
                             and profile_info(profile).rate == p for e in cell]  # type: ignore[union-attr]
                    if group:
                        points.append((p + shift, *_success(group)))
                line, marker = variant_style(variant)
                xs, ys, below, above = zip(*points)
                axes.errorbar(xs, ys, yerr=[below, above], color=colour(system, systems), linestyle=line,
                              marker=marker, capsize=2.5, elinewidth=0.8)
                shown.add((system, variant))
            n = task_steps(task)
            if n is not None:
                top = max(rates)
                ps = [top * 1.05 * i / 100 for i in range(101)]
                axes.plot(ps, [(1 - p) ** n for p in ps], **_CURVE)
                curve_shown = True
            axes.set_title(task + (f"  (n = {n} steps)" if n is not None else "  (n unknown: no curve)"))
            axes.set_xlabel("per-step fault rate p")
            axes.set_ylabel("end-to-end success")
            axes.set_xticks(*rate_ticks(rates))
            _percent_axis(axes)
        curve = [Line2D([], [], label="(1 - p)^n, analytical", **_CURVE)] if curve_shown else []
        _legend(figure, sorted(shown, key=lambda p: (framework_sort_key(p[0]), variant_sort_key(p[1]))), systems,
                curve)
        figure.suptitle("End-to-end success against per-step fault rate")
        return figure


def success_vs_length(episodes: Sequence[EpisodeRecord]) -> Figure | None:
    """Success of the ``chain`` task against its length n, with Wilson bands and the (1-p)^n curve."""
    chain: dict[tuple[str, str, str, int], list[EpisodeRecord]] = defaultdict(list)
    for (task, system, variant, profile), cell in _by(episodes, "task", "system", "variant", "profile").items():
        try:
            name, _, params = parse_task_key(task)
        except ValueError:
            continue
        if name == CHAIN_TASK and "n" in params:
            chain[(profile, system, variant, params["n"])].extend(cell)
    lengths_of: dict[str, set[int]] = defaultdict(set)
    for profile, _, _, n in chain:
        lengths_of[profile].add(n)
    profiles = sorted((p for p, lengths in lengths_of.items() if len(lengths) >= 2), key=profile_sort_key)
    if not profiles:
        return None
    systems = sorted({s for p, s, _, _ in chain if p in profiles}, key=framework_sort_key)
    pairs = sorted({(s, v) for p, s, v, _ in chain if p in profiles},
                   key=lambda p: (framework_sort_key(p[0]), variant_sort_key(p[1])))
    with matplotlib.rc_context(_STYLE):
        figure, axes_list = _new_figure(len(profiles), max_columns=2, width=5.2)
        curve_drawn = False
        for axes, profile in zip(axes_list, profiles):
            lengths = sorted(lengths_of[profile])
            for index, (system, variant) in enumerate(pairs):
                shift = _dodge(index, len(pairs), 0.05)
                points = [(n + shift, *_success(chain[(profile, system, variant, n)])) for n in lengths
                          if (profile, system, variant, n) in chain]
                if not points:
                    continue
                line, marker = variant_style(variant)
                xs, ys, below, above = zip(*points)
                tint = colour(system, systems)
                axes.plot(xs, ys, color=tint, linestyle=line, marker=marker)
                axes.fill_between(xs, [y - b for y, b in zip(ys, below)], [y + a for y, a in zip(ys, above)],
                                  color=tint, alpha=0.12, linewidth=0)
            info = profile_info(profile)
            curve = ""
            if info is not None and not info.transport and info.rate > 0:
                grid = [lengths[0] + (lengths[-1] - lengths[0]) * i / 100 for i in range(101)]
                axes.plot(grid, [(1 - info.rate) ** n for n in grid], **_CURVE)
                curve, curve_drawn = f": curve {1 - info.rate:g}^n", True
            axes.set_title(f"chain, profile {profile}{curve}")
            axes.set_xlabel("pipeline length n (steps)")
            axes.set_ylabel("end-to-end success")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            _percent_axis(axes)
        curve_legend = [Line2D([], [], label="(1 - p)^n at the profile's rate p", **_CURVE)] if curve_drawn else []
        _legend(figure, pairs, systems, curve_legend)
        figure.suptitle("Success against pipeline length")
        return _export(figure, "success_vs_length", "Success vs pipeline length (chain)",
                       "Success of the synthetic chain task at each length n, with 95% Wilson bands, beside "
                       "(1 - p)^n for the profile's per-step fault rate p: six steps at 97% give 0.97^6 ≈ 0.833.")


def gate_effect(episodes: Sequence[EpisodeRecord]) -> Figure | None:
    """Linear against gated success per framework, on the tasks where a framework ran both."""
    panels: dict[str, dict[str, tuple[list[EpisodeRecord], list[EpisodeRecord]]]] = {}
    for (system, profile), cell in _by(episodes, "system", "profile").items():
        by_task = _by(cell, "task", "variant")
        tasks = {t for t, v in by_task if v == "linear" and (t, "gated") in by_task}
        if tasks:
            linear = [e for t in tasks for e in by_task[(t, "linear")]]
            gated = [e for t in tasks for e in by_task[(t, "gated")]]
            panels.setdefault(profile, {})[system] = (linear, gated)
    if not panels:
        return None
    profiles = sorted(panels, key=profile_sort_key)
    systems = sorted({s for p in panels.values() for s in p}, key=framework_sort_key)
    with matplotlib.rc_context(_STYLE):
        figure, axes_list = _new_figure(len(profiles), max_columns=2, width=5.0)
        for axes, profile in zip(axes_list, profiles):
            present = sorted(panels[profile], key=framework_sort_key)
            for index, system in enumerate(present):
                for offset, variant, group, hatch in ((-0.2, "linear", panels[profile][system][0], None),
                                                      (0.2, "gated", panels[profile][system][1], "//")):
                    value, below, above = _success(group)
                    axes.bar(index + offset, value, width=0.38, color=colour(system, systems),
                             alpha=0.55 if variant == "linear" else 0.95, hatch=hatch, edgecolor="white",
                             yerr=[[below], [above]], capsize=2.5, error_kw={"elinewidth": 0.8})
                    axes.annotate(f"{value:.0%}", (index + offset, value + above), xytext=(0, 2),
                                  textcoords="offset points", ha="center", fontsize=7)
            axes.set_xticks(range(len(present)), present)
            axes.set_title(f"profile {profile}")
            axes.set_ylabel("end-to-end success")
            axes.grid(axis="x", visible=False)
            _percent_axis(axes)
        handles = [Patch(facecolor="#999999", alpha=0.55, label="linear (no verification)"),
                   Patch(facecolor="#999999", hatch="//", edgecolor="white",
                                            label="gated (gate before each side effect)")]
        figure.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
        figure.suptitle("Effect of the verification gate")
        return _export(figure, "gate_effect", "Effect of the gate: linear vs gated",
                       "Success of each framework's linear and gated variants (95% Wilson intervals), pooled over "
                       "the tasks on which that framework ran both, so the two bars cover the same episodes.")


def cost_vs_reliability(episodes: Sequence[EpisodeRecord], prices: PriceTable) -> Figure | None:
    """Cost per successful episode against success rate, one point per framework x variant, per profile."""
    points: dict[str, list[tuple[str, str, float, float, float, float]]] = defaultdict(list)
    for (system, variant, profile), cell in _by(list(episodes),
                                                "system", "variant", "profile").items():
        successes = sum(e.success for e in cell)
        cost = episode_costs(cell, prices)
        if cost is None or successes == 0:
            continue
        value, below, above = _success(cell)
        points[profile].append((system, variant, cost / successes, value, below, above))
    if not points:
        return None
    profiles = sorted(points, key=profile_sort_key)
    systems = sorted({p[0] for ps in points.values() for p in ps}, key=framework_sort_key)
    symbol = "$" if prices.currency == "USD" else f"{prices.currency} "
    with matplotlib.rc_context(_STYLE):
        figure, axes_list = _new_figure(len(profiles), max_columns=2, width=5.0)
        for axes, profile in zip(axes_list, profiles):
            for system, variant, cost, value, below, above in sorted(points[profile], key=lambda p: (
                    framework_sort_key(p[0]), variant_sort_key(p[1]))):
                _, marker = variant_style(variant)
                # Open markers: a circle and a square on the same spot both stay visible.
                axes.errorbar([cost], [value], yerr=[[below], [above]], color=colour(system, systems), marker=marker,
                              markersize=7, markerfacecolor="none", markeredgewidth=1.5, linestyle="none",
                              capsize=2.5, elinewidth=0.8)
            top = max(p[2] for p in points[profile])
            axes.set_xlim(0, top * 1.15 if top > 0 else 1.0)  # from zero: costs compare as ratios
            axes.set_title(f"profile {profile}")
            axes.set_xlabel(f"cost per successful episode ({prices.currency})")
            axes.set_ylabel("end-to-end success")
            axes.xaxis.set_major_locator(MaxNLocator(nbins=4))
            axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{symbol}{x:.3g}"))
            _percent_axis(axes)
        pairs = sorted({(p[0], p[1]) for ps in points.values() for p in ps},
                       key=lambda p: (framework_sort_key(p[0]), variant_sort_key(p[1])))
        handles = [Line2D([], [], color=colour(s, systems), marker=variant_style(v)[1], linestyle="none",
                          markersize=7, markerfacecolor="none", markeredgewidth=1.5, label=f"{s} · {v}")
                   for s, v in pairs]
        figure.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), frameon=False)
        figure.suptitle("Cost against reliability")
        return _export(figure, "cost_vs_reliability", "Cost vs reliability",
                       "Each point is a framework and variant: cost per successful episode (everything spent, "
                       f"failures included, over the successes; prices from {prices.source}) against success rate "
                       "(95% Wilson interval). Up and to the left is better.")
