"""The report's tables, each built from scored episodes into a :class:`~coordlab.reports.model.Table`.

Every builder groups episodes by framework x variant x fault profile (plus task when
``by_task``), computes its numbers with :mod:`coordlab.reports.stats`, and emits cells
whose value is the exact number and whose text is how a person reads it. Groups never
pool two fault profiles: a success rate averaged over "no faults" and "10% faults"
answers no question anyone asks.
"""

from __future__ import annotations

import math
from collections import defaultdict
from functools import lru_cache
from itertools import combinations
from operator import attrgetter
from typing import Callable, Iterable, Mapping, Sequence

from .data import (EpisodeRecord, FaultMet, PriceTable, is_deterministic, mutating_steps, parse_task_key, profile_info,
                   suite_task)
from .model import Cell, Table
from .pairing import PairedCounts, PairKey, pair_key
from .stats import (geometric_mean, holm_adjust, mcnemar_exact, median, pass_hat_k,
                    percentile, task_clustered_interval, wilson_interval)

REFERENCE = "plain"
"""The framework-free reference adapter: the control group and the overhead floor."""

DEFAULT_MAX_K = 8
"""pass^k is shown up to this k unless asked otherwise (tau-bench reports k = 1..8)."""

Key = tuple[str, ...]

# -- ordering -----------------------------------------------------------------------------------

_FRAMEWORK_ORDER = {"plain": 0, "crewai": 1, "autogen": 2, "langgraph": 3, "n8n": 4}
_VARIANT_ORDER = {"linear": 0, "gated": 1, "delegated": 2}


def framework_sort_key(system: str) -> tuple[int, str, str, str]:
    """``plain`` first (the reference), then CrewAI, AutoGen, LangGraph, n8n, then anything else by name;
    a framework's ``+mcp`` twin right after it."""
    name, _, transport = system.partition("@")[0].partition("+")
    return _FRAMEWORK_ORDER.get(name, len(_FRAMEWORK_ORDER)), name, transport, system


def variant_sort_key(variant: str) -> tuple[int, str]:
    """linear, gated, delegated: from least to most control."""
    return _VARIANT_ORDER.get(variant, len(_VARIANT_ORDER)), variant


def profile_sort_key(profile: str) -> tuple[float, str]:
    """By fault rate (``none`` first); profiles of unknown rate last, by name."""
    info = profile_info(profile)
    return (info.rate if info else math.inf), profile


def task_sort_key(task: str) -> tuple[str, str, tuple[tuple[str, int], ...]]:
    """By name, then version, then parameters numerically (``chain n=2`` before ``n=10``)."""
    try:
        name, version, params = parse_task_key(task)
    except ValueError:
        return task, "", ()
    return name, version, tuple(sorted(params.items()))


_DIMENSIONS: dict[str, tuple[str, Callable[[str], object]]] = {
    "framework": ("system", framework_sort_key),
    "variant": ("variant", variant_sort_key),
    "profile": ("profile", profile_sort_key),
    "task": ("task", task_sort_key),
}
"""Each grouping column: the EpisodeRecord attribute it reads, and how its values sort."""


def dimensions(by_task: bool) -> list[str]:
    """The grouping columns: framework, variant, profile (and task)."""
    return ["framework", "variant", "profile", *(["task"] if by_task else [])]


def group(episodes: Iterable[EpisodeRecord], dims: Sequence[str]) -> list[tuple[Key, list[EpisodeRecord]]]:
    """Episodes grouped by ``dims``, groups in the report's order (not the store's)."""
    # attrgetter reads several attributes in C: this loop runs over every episode of every table.
    getter = attrgetter(*(_DIMENSIONS[d][0] for d in dims))
    groups: dict[Key, list[EpisodeRecord]] = defaultdict(list)
    if len(dims) == 1:
        for episode in episodes:
            groups[(getter(episode),)].append(episode)
    else:
        for episode in episodes:
            groups[getter(episode)].append(episode)
    sorters = [_DIMENSIONS[d][1] for d in dims]
    return sorted(groups.items(), key=lambda item: tuple(s(v) for s, v in zip(sorters, item[0])))  # type: ignore[misc]


# -- cells --------------------------------------------------------------------------------------

def text(value: str) -> Cell:
    """A label cell."""
    return Cell(value, value)


def count(value: int) -> Cell:
    """An integer count."""
    return Cell(value, f"{value:,}")


def rate(value: float | None) -> Cell:
    """A proportion shown as a percentage with one decimal."""
    return Cell.of(value, "{:.1%}")


def number(value: float | None, decimals: int = 2) -> Cell:
    """A plain number."""
    return Cell.of(value, f"{{:,.{decimals}f}}")


def millis(value: float | None) -> Cell:
    """A duration in milliseconds."""
    return Cell.of(value, "{:,.1f}" if value is None or abs(value) < 1000 else "{:,.0f}")


def ratio(value: float | None) -> Cell:
    """A ratio such as 1.84x."""
    return Cell.of(value, "{:.2f}x")


def money(value: float | None, currency: str = "USD") -> Cell:
    """An amount with three significant digits even when it is a small fraction of a cent."""
    if value is None:
        return Cell(None, "—")
    symbol = "$" if currency == "USD" else f"{currency} "
    if value == 0:
        return Cell(value, f"{symbol}0")
    decimals = max(2, 2 - math.floor(math.log10(abs(value))))
    return Cell(value, f"{symbol}{value:,.{decimals}f}")


def points(value: float) -> Cell:
    """A difference of two rates in signed percentage points, such as +7.5 pp."""
    return Cell(value, f"{100 * value:+.1f} pp")


def p_value(value: float) -> Cell:
    """A p-value; below 0.001 it reads "<0.001" (the value keeps every digit)."""
    return Cell(value, "<0.001" if value < 0.001 else f"{value:.3f}")


def _labels(key: Key) -> list[Cell]:
    return [text(part) for part in key]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _known_mean(episodes: Sequence[EpisodeRecord], counter: str) -> float | None:
    """The mean of ``counter`` over the episodes that measured it (None, "not measured", is skipped, not zero)."""
    return _mean([value for e in episodes if (value := getattr(e, counter)) is not None])


def _scope(by_task: bool) -> str:
    return " by task" if by_task else ""


def _key(name: str, by_task: bool) -> str:
    return f"{name}_by_task" if by_task else name


# -- tables -------------------------------------------------------------------------------------

def success_table(episodes: Sequence[EpisodeRecord], by_task: bool = False) -> Table:
    """Success rate with its 95% interval, the harmful-failure rate and how the failures ended.

    Across tasks the interval is task-clustered (a cluster-robust interval with the tasks as
    the independent units): the seeds of one task are not independent draws, and a Wilson
    interval over every episode pooled would overstate the precision. Per task it is
    Wilson's. A deterministic profile's row has no interval: its one episode per task is a
    fact, not a sample.
    """
    dims = dimensions(by_task)
    rows = []
    for key, group_episodes in group(episodes, dims):
        n = len(group_episodes)
        successes = sum(e.success for e in group_episodes)
        harmful = sum(e.harmful_failure for e in group_episodes)
        low, high = success_interval(group_episodes, by_task)
        statuses = [sum(e.status == s for e in group_episodes) for s in ("failed_check", "error", "timeout")]
        rows.append([*_labels(key), count(n), count(successes), rate(successes / n), rate(low), rate(high),
                     count(harmful), rate(harmful / n), *map(count, statuses)])
    interval = "95% CI" if by_task else "95% CI (task-clustered)"
    return Table(_key("success", by_task), f"Success rate{_scope(by_task)}",
                 [*dims, "episodes", "successes", "success rate", f"{interval} low", f"{interval} high",
                  "harmful failures", "harmful rate", "failed check", "error", "timeout"], rows,
                 note="Success means the end state matched the oracle's side effects exactly and every check held; "
                      "failed checks, errors and timeouts are failures; a harmful failure left a wrong, extra or "
                      "repeated side effect behind. "
                      + ("The interval is Wilson's 95% score interval over the task's seeds. " if by_task else
                         "The interval is task-clustered: Wilson's interval at the effective number of episodes, the "
                         "episodes divided by the design effect of the tasks (the cluster-robust variance over the "
                         "binomial one, at least 1), since a task's seeds are not independent draws. ")
                      + "Rows of a profile that injects nothing have no interval: the simulated model is deterministic "
                        "there, so each task's one episode is a fact, not a sample.")


def success_interval(episodes: Sequence[EpisodeRecord], by_task: bool) -> tuple[float | None, float | None]:
    """The success rate's 95% interval for one row: task-clustered across tasks, Wilson within one, none if fixed."""
    if not episodes or is_deterministic(episodes[0]):
        return None, None
    successes = sum(e.success for e in episodes)
    if by_task:
        return wilson_interval(successes, len(episodes))
    per_task = [(sum(e.success for e in g), len(g)) for _, g in group(episodes, ["task"])]
    if len(per_task) == 1:
        return wilson_interval(successes, len(episodes))
    clustered = task_clustered_interval(per_task)
    return clustered.low, clustered.high


def resolve_max_k(episodes: Sequence[EpisodeRecord], max_k: int | None) -> int:
    """The K of pass^1..pass^K: ``max_k`` if given, else the most trials any unit of :func:`pass_k_trials` has (a task
    group's seeds; a seed's repeated trials where episodes were repeated), at most 8."""
    if max_k is not None:
        if max_k < 1:
            raise ValueError(f"max_k must be at least 1, got {max_k}")
        return max_k
    sizes = [n for _, g in group(episodes, dimensions(True)) for units in pass_k_trials(g)[1] for _, n in units]
    return max(1, min(DEFAULT_MAX_K, max(sizes, default=1)))


def pass_k_trials(episodes: Sequence[EpisodeRecord]) -> tuple[bool, list[list[tuple[int, int]]]]:
    """What pass^k counts in one row: (repeated, per task the (successes, trials) of each of its units).

    Where some cell (task, framework, variant, profile, seed) holds more than one trial
    (``--trials``; or a trial past the first, its others lost to infra errors), the episodes
    were repeated: each cell is a unit and its trials are the trials (repeated is True).
    Otherwise each task is one unit whose seeds are the trials.
    """
    cells: dict[tuple[str, str, str, str, int], list[EpisodeRecord]] = defaultdict(list)
    for e in episodes:
        cells[(e.task, e.system, e.variant, e.profile, e.seed)].append(e)
    if not any(len(cell) > 1 for cell in cells.values()) and not any(e.trial for e in episodes):
        return False, [[(sum(e.success for e in g), len(g))] for _, g in group(episodes, ["task"])]
    by_task: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for key in sorted(cells, key=lambda k: (task_sort_key(k[0]), k[1:])):
        by_task[key[0]].append((sum(e.success for e in cells[key]), len(cells[key])))
    return True, list(by_task.values())


def pass_k_table(episodes: Sequence[EpisodeRecord], max_k: int, by_task: bool = False) -> Table:
    """pass^k for k = 1..max_k (tau-bench's estimator), labelled for what its trials are here.

    Within a task group (one task key, framework, variant, profile) the n seeds are the
    trials and c of them succeed: pass^k = C(c, k) / C(n, k). Without ``by_task`` the
    value is the mean over the row's task groups that have at least k seeds, as tau-bench
    averages over tasks. Against the simulator the model is deterministic and a seed only
    changes the fault draws, so the trials are independent fault draws and pass^k measures
    how faults compound over k runs, not the consistency of a stochastic model that
    tau-bench means; only a live endpoint's repeated trials measure that. A deterministic
    profile's cell has one episode (its copies are collapsed) and no pass^k beyond k = 1.

    Where episodes were repeated (``--trials``, live only), a seed's n trials met the same
    fault schedule and are the trials instead: pass^k is computed per seed, averaged over
    the task's seeds that have at least k trials, then over the row's tasks (see
    :func:`pass_k_trials`). A table of one trial per episode is exactly as before.
    """
    dims = dimensions(by_task)
    measured = []
    for key, group_episodes in group(episodes, dims):
        repeated, tasks = pass_k_trials(group_episodes)
        values = []
        for k in range(1, max_k + 1):
            per_task = [_mean([pass_hat_k(c, n, k) for c, n in units if n >= k]) for units in tasks]
            values.append(number(_mean([value for value in per_task if value is not None]), 3))
        live = any(e.live for e in group_episodes)
        seeds = len({(e.task, e.seed) for e in group_episodes})
        measured.append((key, repeated, live, len(tasks), seeds, len(group_episodes), values))
    any_repeated = any(repeated for _, repeated, *_ in measured)
    rows = []
    for key, repeated, live, tasks_count, seeds, size, values in measured:
        if repeated:
            label = text("repeated trials")
        elif live:  # as before; beside rows of repeated trials, a live row's trials are its seeds and says so
            label = text("live seeds" if any_repeated else "repeated trials")
        else:
            label = text("fault draws")
        if any_repeated:  # the episodes are seeds x trials: both counts are shown
            sizes = [count(seeds), count(size)] if by_task else [count(tasks_count), count(seeds), count(size)]
        else:
            sizes = [count(size)] if by_task else [count(tasks_count), count(size)]
        rows.append([*_labels(key), label, *sizes, *values])
    if any_repeated:
        size_columns = ["seeds", "episodes"] if by_task else ["tasks", "seeds", "episodes"]
    else:
        size_columns = ["seeds"] if by_task else ["tasks", "episodes"]
    trials = "trials" if any_repeated else "seeds"
    return Table(_key("pass_k", by_task), f"pass^k: success on every one of k {trials}{_scope(by_task)}",
                 [*dims, f"{trials} are", *size_columns, *(f"pass^{k}" for k in range(1, max_k + 1))], rows,
                 note=_pass_k_note(by_task, any_repeated, all(repeated for _, repeated, *_ in measured)))


def _pass_k_note(by_task: bool, any_repeated: bool, all_repeated: bool) -> str:
    """What the pass^k table's trials are: a seed's repeated trials, a task's seeds, or (in one table) both."""
    seeds = ("pass^k = C(c,k)/C(n,k) over a task's n seeds with c successes (tau-bench's estimator)"
             + ("" if by_task else ", averaged over the row's tasks that have at least k seeds") +
             "; a dash means no task has k seeds. Against the simulator (seeds are fault draws) the model "
             "is deterministic, so pass^k is the chance that k runs with independent fault draws all "
             "succeed: how faults compound, not the consistency of a stochastic model that tau-bench "
             "means by it. Only rows whose seeds are repeated trials of a live model measure consistency. "
             "A profile that injects nothing has one episode per task (its seeds are copies).")
    if not any_repeated:
        return seeds
    repeated = ("Rows of repeated trials ran every seed K times against a live model (coordlab run --trials K): a "
                "seed's trials met the same seeded fault schedule, so they differ only by the model's own randomness. "
                "pass^k = C(c,k)/C(n,k) over one seed's n trials with c successes (tau-bench's estimator) is the "
                "chance that k runs of that very episode all succeed: the consistency tau-bench means. It is "
                "averaged over the task's seeds that have at least k trials"
                + ("" if by_task else ", then over the row's tasks") + "; a dash means no seed has k trials.")
    if all_repeated:
        return repeated
    return f"{repeated} In the other rows a task's seeds are its trials (live seeds, or fault draws): {seeds}"


def coordination_table(episodes: Sequence[EpisodeRecord], by_task: bool = False) -> Table:
    """Handoffs and failed handoffs by cause, framework retries, transport retries and gate rejections per episode.

    A counter an episode did not measure (recorded before the store's schema 2) is left out
    of that column's mean rather than read as zero; a column no episode measured is empty.
    """
    dims = dimensions(by_task)
    rows = []
    for key, group_episodes in group(episodes, dims):
        measured = list(group_episodes)
        per_episode = [_known_mean(measured, name) for name in
                       ("handoffs", "handoffs_lost", "handoff_model_errors", "framework_retries", "transport_retries",
                        "gate_rejections")]
        rows.append([*_labels(key), count(len(measured)), *(number(v) for v in per_episode)])
    return Table(_key("coordination", by_task), f"Coordination events per episode{_scope(by_task)}",
                 [*dims, "episodes", "handoffs / ep", "handoffs lost / ep", "handoff model errors / ep",
                  "framework retries / ep", "transport retries / ep", "gate rejections / ep"], rows,
                 note="A handoff is one field reaching one attempt of the step that reads it, counted once however "
                      "many requests of that attempt showed it. Lost: the producing model emitted the value right and "
                      "the framework did not deliver it intact (dropped, truncated, altered). Model error: the "
                      "producing model emitted it wrong or left it out, or a routing model sent the work to the wrong "
                      "agent and nothing made it good. The simulator sees both ends, so it can tell them apart; behind a live "
                      "model nobody knows what it meant, so live episodes are left out of those two columns. "
                      "Transport retries are requests re-sent after a failed HTTP exchange. Episodes recorded before "
                      "handoffs were split by cause (store schema 1) are left out of those two columns, not counted "
                      "as zero.")


def faults_table(episodes: Sequence[EpisodeRecord], by_task: bool = False) -> Table:
    """Faults injected against faults recovered (their effect did not reach the episode's end state)."""
    dims = dimensions(by_task)
    rows = []
    for key, group_episodes in group(episodes, dims):
        measured = list(group_episodes)
        injected = sum(e.faults_injected for e in measured)
        known = [e for e in measured if e.faults_recovered is not None]
        recovered = sum(e.faults_recovered or 0 for e in known) if known else None
        injected_known = sum(e.faults_injected for e in known)
        share = recovered / injected_known if recovered is not None and injected_known else None
        exposed = sum(1 for e in measured if e.faults_injected)
        rows.append([*_labels(key), count(len(measured)), count(exposed), count(injected), Cell.of(recovered, "{:,}"),
                     rate(share), number(injected / len(measured) if measured else None)])
    return Table(_key("faults", by_task), f"Faults injected and recovered{_scope(by_task)}",
                 [*dims, "episodes", "episodes with a fault", "faults injected", "faults recovered", "recovered share",
                  "injected / ep"], rows,
                 note="A fault is recovered when its effect did not reach the episode's end state: a repeated side "
                      "effect never is; a failed HTTP exchange is when its step later got an answer; a bad tool call "
                      "or answer is when its step later answered without a fault and no side effect of the step is "
                      "missing; a wrong value is when, besides, the wrong value shows in no side effect and not in the "
                      "final output; a misroute is when the step was later routed right and the wrong agent spoiled "
                      "nothing; a wrapped answer is when its values still reached their readers. Episodes recorded "
                      "before recovery was measured (store schema 1, which counted a fault as \"caught\" when its "
                      "step was merely worked on again) are unknown: left out of the recovered count and share, not "
                      "counted as zero.")


def fault_exposure_table(episodes: Sequence[EpisodeRecord], faults: Mapping[int, tuple[FaultMet, ...]]) -> Table:
    """How many episodes met each fault kind, on a mutating step or not, and how each framework came out of them.

    A recovery share means little without its exposure: "recovered 2 of 2" and "recovered
    180 of 200" are different evidence, and a fault on a step that changes the world (an
    email, a CRM update) is a different test from one on a read. So every count here is of
    episodes: how many met the fault, and of those how many still succeeded and how many
    left harm behind. Rows pool the variants; the profile is never pooled.
    """
    cells: dict[tuple[str, str, str, str], list[EpisodeRecord]] = defaultdict(list)
    for episode in episodes:
        mutating = mutating_steps(episode.task) or frozenset()
        met = {(fault.fault, "mutating" if fault.step in mutating else "other")
               for fault in faults.get(episode.episode_id, ())}
        for kind, where in met:
            cells[(episode.profile, kind, where, episode.system)].append(episode)
    rows = []
    order = sorted({key[:3] for key in cells}, key=lambda k: (profile_sort_key(k[0]), k[1], k[2]))
    systems = sorted({key[3] for key in cells}, key=framework_sort_key)
    for profile, kind, where in order:
        row = [text(profile), text(kind), text("mutating step" if where == "mutating" else "other step")]
        for system in systems:
            met = cells.get((profile, kind, where, system), [])
            if not met:
                row.append(Cell(None, "—"))
                continue
            successes = sum(e.success for e in met)
            harmful = sum(e.harmful_failure for e in met)
            row.append(Cell(successes / len(met), f"{len(met)} met: {successes} ok, {harmful} harmful"))
        rows.append(row)
    return Table("fault_exposure", "Fault exposure: episodes that met each fault, and how they ended",
                 ["profile", "fault", "where", *systems], rows,
                 note="Each cell counts episodes (all variants) that met the fault at least once on that kind of step: "
                      "how many, how many still succeeded, how many failed harmfully; its value is the success share. "
                      "A mutating step is one that calls a tool changing the world. A mechanism (clash, length, "
                      "buried, tool_overload, brief_loss) shows under its own name. Read every recovery figure with "
                      "its exposure: a share over a handful of episodes is a handful of observations.")


def usage_table(episodes: Sequence[EpisodeRecord], prices: PriceTable, by_task: bool = False) -> Table:
    """Model calls and tokens per episode, prompt tokens per call, and cost per successful episode.

    Cost per successful episode is everything the group spent (failed episodes included)
    divided by its successes: what one good outcome really costs.
    """
    dims = dimensions(by_task)
    rows = []
    missing: set[str] = set()
    for key, group_episodes in group(episodes, dims):
        measured = list(group_episodes)
        n = len(measured)
        calls = sum(e.model_calls for e in measured)
        prompt = sum(e.prompt_tokens for e in measured)
        completion = sum(e.completion_tokens for e in measured)
        cost = episode_costs(measured, prices, missing)
        successes = sum(e.success for e in measured)
        rows.append([*_labels(key), count(n), number(calls / n if n else None), number(prompt / n if n else None, 1),
                     number(completion / n if n else None, 1), number(prompt / calls if calls else None, 1),
                     money(cost / n if cost is not None and n else None, prices.currency),
                     money(cost / successes if cost is not None and successes else None, prices.currency)])
    note = ("Token counts are the simulator's estimate (4 characters a token; no tokenizer is downloaded), or a live "
            "endpoint's own counts where it reports them. Cost per "
            "successful episode divides everything spent, failures included, by the successes; prices come from "
            f"{prices.source}" + (f" ({prices.note})" if prices.note else "") + ".")
    if missing:
        note += f" No price for {', '.join(sorted(missing))}: those costs are left empty."
    return Table(_key("usage", by_task), f"Model calls, tokens and cost{_scope(by_task)}",
                 [*dims, "episodes", "model calls / ep", "prompt tokens / ep", "completion tokens / ep",
                  "prompt tokens / call", "cost / ep", "cost / successful ep"], rows, note=note)


def episode_costs(episodes: Iterable[EpisodeRecord], prices: PriceTable, missing: set[str] | None = None) -> float | None:
    """The total cost of ``episodes``, or None when a model they used has no price (added to ``missing``)."""
    total = 0.0
    known = True
    for episode in episodes:
        price = prices.price(episode.model)
        if price is None:
            known = False
            if missing is not None:
                missing.add(episode.model)
            continue
        total += price.cost(episode.prompt_tokens, episode.completion_tokens)
    return total if known else None


def latency_table(episodes: Sequence[EpisodeRecord], by_task: bool = False) -> Table:
    """p50 and p95 wall time per episode."""
    dims = dimensions(by_task)
    rows = []
    for key, group_episodes in group(episodes, dims):
        walls = [e.wall_ms for e in group_episodes]
        rows.append([*_labels(key), count(len(walls)), millis(percentile(walls, 50)), millis(percentile(walls, 95))])
    return Table(_key("latency", by_task), f"Wall time per episode{_scope(by_task)}",
                 [*dims, "episodes", "p50 wall (ms)", "p95 wall (ms)"], rows,
                 note="Wall time covers building the framework's objects and running the episode; percentiles "
                      "interpolate linearly between order statistics (p50 is the median).")


def overhead_per_call(episode: EpisodeRecord) -> float | None:
    """(execution time - simulator time) / model calls: what the framework itself spends per model call."""
    if episode.model_calls <= 0:
        return None
    return (episode.execution_ms - episode.simulator_ms) / episode.model_calls


def overhead_table(episodes: Sequence[EpisodeRecord], by_task: bool = False) -> Table:
    """Framework overhead per model call, and its ratio to ``plain`` on the same task, variant and profile.

    Per task the ratio is the framework's median over plain's median. Across tasks it is
    the geometric mean of the per-task ratios, so a task where plain is fast and one
    where it is slow weigh alike, and 2x on one task and 0.5x on another average to 1x.
    """
    per_cell: dict[Key, list[float]] = {}
    for key, group_episodes in group(episodes, dimensions(True)):
        values = [v for v in map(overhead_per_call, group_episodes) if v is not None]
        if values:
            per_cell[key] = values
    medians = {key: median(values) for key, values in per_cell.items()}

    reference_medians: dict[Key, float] = {}
    for key in sorted(medians, key=lambda k: k[0]):  # with several plain versions, the lowest label is the reference
        if key[0].partition("@")[0] == REFERENCE:
            reference_medians.setdefault(key[1:], medians[key])

    def plain_median(key: Key) -> float | None:
        return reference_medians.get(key[1:])

    def task_ratio(key: Key) -> float | None:
        reference = plain_median(key)
        if reference is None or reference <= 0 or medians[key] <= 0:
            return None
        return medians[key] / reference

    dims = dimensions(by_task)
    rows = []
    if by_task:
        for key in medians:  # already in the report's order: built from the sorted groups
            rows.append([*_labels(key), count(len(per_cell[key])), millis(medians[key]), millis(plain_median(key)),
                         ratio(task_ratio(key))])
        columns = [*dims, "episodes", "median overhead / call (ms)", "plain median (ms)", "ratio to plain"]
    else:
        for key, group_episodes in group(episodes, dims):
            values = [v for v in map(overhead_per_call, group_episodes) if v is not None]
            if not values:
                continue
            ratios = [r for k in medians if k[:3] == key and (r := task_ratio(k)) is not None]
            rows.append([*_labels(key), count(len(values)), millis(median(values)),
                         ratio(geometric_mean(ratios) if ratios else None), count(len(ratios))])
        columns = [*dims, "episodes", "median overhead / call (ms)", "ratio to plain", "tasks compared"]
    return Table(_key("overhead", by_task), f"Framework overhead per model call{_scope(by_task)}", columns, rows,
                 note="Overhead per call is (execution time - time the simulator spent answering) / model calls, "
                      "per episode; the ratio compares medians with plain's on the same task, variant and profile"
                      + ("." if by_task else ", as a geometric mean over tasks."))


def paired_table(episodes: Sequence[EpisodeRecord], by_task: bool = False) -> Table:
    """Frameworks compared on identical episodes (same task, variant, profile, seed and trial), with McNemar's exact
    test.

    Pairing removes the luck of the fault draw: both frameworks met the very same faults,
    so only the discordant pairs (one succeeded, the other did not) carry evidence.
    """
    dims = ["variant", "profile", *(["task"] if by_task else [])]
    rows = []
    tests: list[tuple[float, float]] = []
    for key, group_episodes in group(episodes, dims):
        by_system: dict[str, dict[PairKey, EpisodeRecord]] = defaultdict(dict)
        for e in group_episodes:
            by_system[e.system][pair_key(e)] = e
        for a, b in combinations(sorted(by_system, key=framework_sort_key), 2):
            shared = by_system[a].keys() & by_system[b].keys()
            if not shared:
                continue
            pairs = PairedCounts.of([(by_system[a][k], by_system[b][k]) for k in shared])
            rate_a, rate_b = pairs.success_rates
            tests.append((mcnemar_exact(pairs.only_a, pairs.only_b), mcnemar_exact(pairs.harm_a, pairs.harm_b)))
            rows.append([*_labels(key), text(a), text(b), count(pairs.pairs), count(pairs.both), count(pairs.only_a),
                         count(pairs.only_b), count(pairs.neither), rate(rate_a), rate(rate_b),
                         points(pairs.difference), p_value(tests[-1][0]),
                         count(pairs.harm_a), count(pairs.harm_b), p_value(tests[-1][1])])
    adjusted = holm_adjust([p for pair in tests for p in pair])
    for index, row in enumerate(rows):
        row.insert(len(dims) + 11, p_value(adjusted[2 * index]))
        row.append(p_value(adjusted[2 * index + 1]))
    return Table(_key("paired", by_task), f"Paired comparison on identical episodes{_scope(by_task)}",
                 [*dims, "framework A", "framework B", "pairs", "both succeed", "only A", "only B", "neither",
                  "A success", "B success", "difference", "McNemar p", "Holm p", "only A harmful", "only B harmful",
                  "harm McNemar p", "harm Holm p"], rows,
                 note="Pairs share task, variant, fault profile and seed (and trial, where episodes were repeated), "
                      "so both frameworks met the same faults; "
                      "success rates here are over the pairs, and the difference is A's minus B's in percentage "
                      "points. McNemar's exact test is the two-sided binomial test on the discordant pairs (only A "
                      "vs only B); the harm test is the same on harmful failures (only A harmful vs only B harmful), "
                      "because a framework can succeed more often and still do more harm (a retry that rescues "
                      "answers and repeats side effects). Holm p adjusts every p-value of this table (success and "
                      "harm, every row) as one family, so a Holm p below 0.05 holds however many pairs are compared. "
                      "Under a profile that injects nothing each pair is one deterministic episode per task.")


STEP_FAILING_FAULTS = frozenset({"wrong_value", "omitted_field", "empty_answer", "premature_stop"})
"""Faults that leave a chain step's value wrong or missing unless the framework redoes the step. The other faults
a chain step admits need not fail it: format drift keeps the value (wrapped in text); clients retry transport faults."""

COMPOUNDING_VARIANT = "linear"
"""The variant (1-p)^n describes: nothing redoes a step."""

_REDOES = {"gated": "a gate can send a step back (the built-in chain declares none, so there it repeats linear)",
           "delegated": "a router can send a step back"}
"""Why the other variants are left out of the compounding table."""


@lru_cache(maxsize=None)
def chain_step_failure(profile: str) -> tuple[float | None, str]:
    """The share p of chain step attempts that meet a step-failing fault under ``profile``, or None and the reason
    (1-p)^n does not describe the profile.

    p is the profile's rate times the share of its weights, among the faults a chain step
    admits (the simulator renormalises over those), held by :data:`STEP_FAILING_FAULTS`:
    the rate itself for the semantic profiles, less where harmless faults are mixed in.
    """
    from coordlab.runners.faults import applicable_faults, load_profile
    from coordlab.tasks.loader import load_suite_task

    info = profile_info(profile)
    if info is None:
        return None, "its settings are not known here (a profile file of your own, or forced faults)"
    if info.transport:
        return None, "it injects transport faults, which the clients retry"
    settings = load_profile(profile)
    if settings.mechanisms.active:
        return None, "its mechanisms act on what each request holds, not at a fixed rate per step"
    admitted = applicable_faults(load_suite_task("chain", {"n": 1}).steps[0], routed=False)
    weights = {fault.value: weight for fault, weight in settings.weights.items() if fault in admitted and weight > 0}
    failing = sum(weight for fault, weight in weights.items() if fault in STEP_FAILING_FAULTS)
    if settings.rate == 0 or not weights:
        return None, "it injects nothing into a chain step"
    if not failing:
        return None, "none of its faults fails a chain step"
    return settings.rate * failing / sum(weights.values()), ""


@lru_cache(maxsize=None)
def _fault_drawn(task_key: str, profile: str, seed: int) -> bool | None:
    """Whether the seed draws a step-failing fault on the first attempt of any step of chain ``task_key``: the
    draws every framework meets (common random numbers). None when the suite no longer has that exact task."""
    from coordlab.runners.faults import FaultPlan, load_profile

    task = suite_task(task_key)
    if task is None:
        return None
    plan = FaultPlan(load_profile(profile), seed, routed=False)
    return any((fault := plan.fault_for(task.release, step, 0)) is not None and fault.value in STEP_FAILING_FAULTS
               for step in task.steps)


def _compounding_cells(episodes: Sequence[EpisodeRecord]) -> tuple[
        dict[tuple[str, str, str, int], list[EpisodeRecord]], dict[str, int]]:
    """The chain episodes (1-p)^n describes, by framework, variant, profile and n; and the others: reason -> count."""
    cells: dict[tuple[str, str, str, int], list[EpisodeRecord]] = defaultdict(list)
    left_out: dict[str, int] = defaultdict(int)
    for episode in episodes:
        try:
            name, _, params = parse_task_key(episode.task)
        except ValueError:
            continue
        if name != "chain" or "n" not in params:
            continue
        if episode.variant != COMPOUNDING_VARIANT:
            left_out[f"the {episode.variant} variant: " + _REDOES.get(episode.variant, "it may redo a step")] += 1
            continue
        p, why_not = chain_step_failure(episode.profile)
        if p is None:
            left_out[f"profile {episode.profile}: {why_not}"] += 1
            continue
        cells[(episode.system, episode.variant, episode.profile, params["n"])].append(episode)
    return cells, left_out


def _left_out_text(left_out: Mapping[str, int]) -> str:
    """The chain episodes the compounding table leaves out, each group with its reason ("" when none are)."""
    return "; ".join(f"{n:,} episode{'s' if n != 1 else ''} of {reason}" for reason, n in sorted(left_out.items()))


def compounding_note(episodes: Sequence[EpisodeRecord]) -> str:
    """Why the report has no compounding table although it holds chain episodes ("" when it has one, or none)."""
    cells, left_out = _compounding_cells(episodes)
    if cells or not left_out:
        return ""
    return (f"No compounding table: (1-p)^n describes none of the chain episodes, which it does only in the linear "
            f"variant under a built-in profile whose faults fail a chain step, without transport faults or "
            f"mechanisms. Left out: {_left_out_text(left_out)}.")


def compounding_table(episodes: Sequence[EpisodeRecord]) -> Table:
    """Measured success of ``chain`` at each length n against the analytical (1-p)^n, where the curve applies.

    This is the compounding claim made checkable: with a step-failing fault on a share p of
    step attempts and nothing that redoes a step, a pipeline of n steps succeeds (1-p)^n of
    the time. Every framework meets the same fault draws, so the table also counts what the
    draws themselves predict: the episodes whose seed drew no step-failing fault at all. A
    framework departs from the curve where it succeeds despite a drawn fault (it redid the
    step) or fails without one (it lost a value on its own); whether the curve lies in the
    interval is about the seeds as much as the framework.
    """
    cells, left_out_counts = _compounding_cells(episodes)
    rows = []
    for (system, variant, profile, n), cell in sorted(cells.items(), key=lambda item: (
            framework_sort_key(item[0][0]), variant_sort_key(item[0][1]), profile_sort_key(item[0][2]), item[0][3])):
        successes = sum(e.success for e in cell)
        low, high = wilson_interval(successes, len(cell))
        p = chain_step_failure(profile)[0]
        expected = (1 - p) ** n  # type: ignore[operator]
        drawn = [_fault_drawn(e.task, e.profile, e.seed) for e in cell]
        known = None not in drawn
        rows.append([text(system), text(variant), text(profile), count(n), count(len(cell)),
                     rate(successes / len(cell)), rate(low), rate(high), rate(p), number(expected, 3),
                     Cell(low <= expected <= high, "yes" if low <= expected <= high else "NO"),
                     rate(drawn.count(False) / len(cell) if known else None),
                     Cell.of(sum(e.success and d for e, d in zip(cell, drawn)) if known else None, "{:,}"),
                     Cell.of(sum(not e.success and not d for e, d in zip(cell, drawn)) if known else None, "{:,}")])
    left_out = _left_out_text(left_out_counts)
    return Table("compounding", "Compounding: chain success against (1-p)^n",
                 ["framework", "variant", "profile", "n", "episodes", "success rate", "95% CI low", "95% CI high",
                  "p", "(1-p)^n", "within CI", "no fault drawn", "succeeded despite a fault",
                  "failed without a fault"], rows,
                 "Only where (1-p)^n applies: the built-in chain task (n steps, no tools, no gate) in the linear "
                 "variant, under a built-in profile without transport faults or mechanisms. p is the share of step "
                 "attempts meeting a fault that fails a chain step (a wrong value, an omitted field, an empty or "
                 "premature answer): the profile's rate times those faults' share of its weights, so the rate itself "
                 "for the semantic profiles (format drift keeps the value, so it is not counted). \"within CI\" says "
                 "whether the success rate's 95% Wilson interval holds (1-p)^n. Every framework meets the same fault "
                 "draws, so \"no fault drawn\" (the share of the row's seeds that drew no step-failing fault on any "
                 "step) is what any framework scores when each drawn fault fails its episode and nothing else does: "
                 "when it lies outside the interval as well, the seeds drew more (or fewer) faults than p predicts, "
                 "and \"NO\" is about the seeds, not the framework. A framework departs from the curve in the last "
                 "two columns: it succeeded despite a drawn fault (it redid the step) or failed without one (it "
                 "lost a value on its own); a dash means the suite no longer has the exact task to redraw."
                 + (f" Left out, where (1-p)^n does not describe them: {left_out}." if left_out else ""))
