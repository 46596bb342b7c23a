"""The verdict: what the report found, said first, with the statistics that back it.

For every condition (variant x fault profile) each framework is compared with the
framework-free reference on identical episodes (same task, variant, profile, seed and
trial: the same fault draws), on success and on harm. The tests are McNemar's exact test on the
discordant pairs; every test of the report is one family, Holm-adjusted, so a reader can
take any "significantly worse" at face value however many comparisons were made. Where a
test finds nothing, the verdict says how large a difference the data could have shown,
not just "p = 1". Each difference found is explained by the failure modes of the episodes
that make it (diagnosed from their traces) and linked to example episodes.

A profile that injects nothing is deterministic against the simulator: one episode per
cell, no sampling, so no test: any difference there is simply a fact, and said as one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Iterable, Mapping, Sequence

from .data import EpisodeRecord, is_deterministic
from .failure_modes import Diagnosis, FailureMode
from .model import Cell, Table
from .pairing import PairedCounts, PairKey, pair_key
from .stats import holm_adjust, mcnemar_exact, minimum_detectable_difference
from .tables import (REFERENCE, count, framework_sort_key, p_value, points, profile_sort_key, text,
                     variant_sort_key)

ALPHA = 0.05
"""The family-wise error rate the verdict controls."""

POWER = 0.8
"""The power at which a detectable difference is stated."""

EXAMPLES = 2
"""Example episodes linked per finding."""


class Outcome(StrEnum):
    """What a comparison is about: succeeding, or leaving harm behind when failing."""

    SUCCESS = "success"
    HARM = "harm"


@dataclass(frozen=True)
class Condition:
    """One variant under one fault profile."""

    variant: str
    profile: str

    def __str__(self) -> str:
        return f"{self.variant} · {self.profile}"


@dataclass(frozen=True)
class Comparison:
    """One framework against the reference under one condition, on one outcome."""

    condition: Condition
    framework: str
    reference: str
    outcome: Outcome
    counts: PairedCounts
    p_value: float
    adjusted_p: float
    detectable: float | None
    """The smallest difference this many pairs detect with :data:`POWER` at the family's strictest level."""
    explained_by: tuple[EpisodeRecord, ...]
    """The discordant episodes that make the difference: the side that failed (or harmed) where the other did not."""

    @property
    def discordant(self) -> tuple[int, int]:
        """The outcome's discordant pair counts, (the framework's side, the reference's side): pairs only it
        succeeded in for success, pairs only it harmed in for harm."""
        c = self.counts
        return (c.only_a, c.only_b) if self.outcome is Outcome.SUCCESS else (c.harm_a, c.harm_b)

    @property
    def difference(self) -> float:
        """The framework's rate minus the reference's: success rate, or harmful-failure rate."""
        return self.counts.difference if self.outcome is Outcome.SUCCESS else self.counts.harm_difference

    @property
    def interval(self) -> tuple[float, float]:
        """95% interval of :attr:`difference` (Newcombe's paired score interval)."""
        return self.counts.interval() if self.outcome is Outcome.SUCCESS else self.counts.harm_interval()

    @property
    def significant(self) -> bool:
        """Whether the Holm-adjusted p-value is below :data:`ALPHA`."""
        return self.adjusted_p < ALPHA

    @property
    def better(self) -> bool:
        """Whether the framework does better than the reference: succeeds more, or harms less."""
        return self.difference > 0 if self.outcome is Outcome.SUCCESS else self.difference < 0

    def rates(self) -> tuple[float, float]:
        """(framework's rate, reference's rate) of the outcome over the pairs."""
        return self.counts.success_rates if self.outcome is Outcome.SUCCESS else self.counts.harm_rates


@dataclass(frozen=True)
class DeterministicCell:
    """A framework under a profile that injects nothing: one episode per task, so facts, not estimates."""

    condition: Condition
    framework: str
    episodes: tuple[EpisodeRecord, ...]

    @property
    def failures(self) -> tuple[EpisodeRecord, ...]:
        """The tasks the framework failed (reproducibly: the same episode fails on every run)."""
        return tuple(e for e in self.episodes if not e.success)


@dataclass
class Verdict:
    """Every comparison of a report, adjusted as one family, plus the deterministic cells."""

    comparisons: list[Comparison]
    deterministic: list[DeterministicCell]
    diagnoses: Mapping[int, Diagnosis] = field(default_factory=dict)
    """The failure diagnosis of every failed episode the verdict cites, by episode id."""

    @property
    def family_size(self) -> int:
        """How many tests the Holm adjustment covers."""
        return len(self.comparisons)

    def conditions(self) -> list[Condition]:
        """The stochastic conditions, in report order."""
        found = {c.condition for c in self.comparisons}
        return sorted(found, key=lambda c: (profile_sort_key(c.profile), variant_sort_key(c.variant)))


def pair_up(episodes: Iterable[EpisodeRecord]) -> dict[Condition, dict[str, dict[PairKey, EpisodeRecord]]]:
    """Episodes by condition, then system, then :func:`~coordlab.reports.pairing.pair_key` (task, variant, profile,
    seed, trial): the pairing key within a condition."""
    cells: dict[Condition, dict[str, dict[PairKey, EpisodeRecord]]] = defaultdict(lambda: defaultdict(dict))
    for episode in episodes:
        cells[Condition(episode.variant, episode.profile)][episode.system][pair_key(episode)] = episode
    return cells


def _reference(systems: Iterable[str]) -> str | None:
    """The reference system's label (with several plain versions, the lowest label)."""
    candidates = sorted(s for s in systems if s.partition("@")[0] == REFERENCE)
    return candidates[0] if candidates else None


def build_verdict(episodes: Sequence[EpisodeRecord], diagnoses: Mapping[int, Diagnosis] | None = None) -> Verdict:
    """Compare every framework with the reference under every condition, on success and on harm.

    ``diagnoses`` maps failed episodes' ids to their failure diagnosis (read from the store's
    traces); the verdict explains each difference it finds with them.
    """
    tests: list[Comparison] = []
    deterministic: list[DeterministicCell] = []
    for condition, by_system in pair_up(episodes).items():
        if all(is_deterministic(e) for cell in by_system.values() for e in cell.values()):
            deterministic += [DeterministicCell(condition, system, tuple(cell[key] for key in sorted(cell)))
                              for system, cell in by_system.items()]
            continue
        reference = _reference(by_system)
        if reference is None:
            continue
        for system, cell in by_system.items():
            shared = sorted(cell.keys() & by_system[reference].keys())
            if system != reference and shared:
                tests += _tests(condition, system, reference, [(cell[k], by_system[reference][k]) for k in shared])
    # One family: every test the verdict makes. The detectable difference is stated at its strictest level.
    strictest = ALPHA / max(1, len(tests))
    comparisons = [replace(test, adjusted_p=adjusted, detectable=minimum_detectable_difference(
                       test.counts.pairs, min(test.discordant) / test.counts.pairs, strictest, POWER))
                   for test, adjusted in zip(tests, holm_adjust([t.p_value for t in tests]))]
    comparisons.sort(key=lambda c: (profile_sort_key(c.condition.profile), variant_sort_key(c.condition.variant),
                                    framework_sort_key(c.framework), c.outcome != Outcome.SUCCESS))
    deterministic.sort(key=lambda d: (profile_sort_key(d.condition.profile), variant_sort_key(d.condition.variant),
                                      framework_sort_key(d.framework)))
    return Verdict(comparisons, deterministic, diagnoses or {})


def _tests(condition: Condition, system: str, reference: str,
           pairs: Sequence[tuple[EpisodeRecord, EpisodeRecord]]) -> list[Comparison]:
    """The success and the harm test of ``system`` against ``reference`` on (system's, reference's) episode pairs.

    Each is explained by the discordant episodes of the side that did worse: the one that
    failed (or harmed) where the other did not.
    """
    counts = PairedCounts.of(pairs)
    system_failed = tuple(a for a, b in pairs if b.success and not a.success)
    reference_failed = tuple(b for a, b in pairs if a.success and not b.success)
    system_harmed = tuple(a for a, b in pairs if a.harmful_failure and not b.harmful_failure)
    reference_harmed = tuple(b for a, b in pairs if b.harmful_failure and not a.harmful_failure)
    return [Comparison(condition, system, reference, Outcome.SUCCESS, counts,
                       mcnemar_exact(counts.only_a, counts.only_b), 1.0, None,
                       system_failed if counts.only_a <= counts.only_b else reference_failed),
            Comparison(condition, system, reference, Outcome.HARM, counts, mcnemar_exact(counts.harm_a, counts.harm_b),
                       1.0, None, system_harmed if counts.harm_a >= counts.harm_b else reference_harmed)]


# -- words ---------------------------------------------------------------------------------------

def mode_phrase(mode: FailureMode) -> str:
    """A failure mode in a sentence: "step repetition (FM-1.3)", or the lab's own words where MAST has no mode."""
    return f"{mode.description} ({mode.mast.id})" if mode.mast else mode.description


def mode_column(mode: FailureMode) -> str:
    """A failure mode as a column head: the lab's label and its MAST id in brackets."""
    return f"{mode.value} [{mode.mast.id}]" if mode.mast else mode.value


def how(episodes: Sequence[EpisodeRecord], diagnoses: Mapping[int, Diagnosis], limit: int = 3) -> str:
    """The commonest failure modes and unrecovered faults of ``episodes``, as a clause."""
    modes: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    for episode in episodes:
        diagnosis = diagnoses.get(episode.episode_id)
        if diagnosis is None:
            continue
        if diagnosis.primary is not None:
            modes[mode_phrase(diagnosis.primary)] += 1
        faults.update(diagnosis.unrecovered_kinds)
    parts = []
    if modes:
        parts.append(", ".join(f"{mode} in {n} of {len(episodes)}" for mode, n in modes.most_common(limit)))
    # A fault behind one episode in forty is a coincidence, not the mechanism: name those behind a tenth or more.
    common = [(fault, n) for fault, n in faults.most_common(limit) if n >= max(2, len(episodes) / 10)]
    if common:
        parts.append("faults behind it: " + ", ".join(f"{fault} in {n}" for fault, n in common))
    return "; ".join(parts)


@dataclass(frozen=True)
class Example:
    """An episode a verdict line cites: a label, its viewer URL and the key ``coordlab show`` takes."""

    label: str
    episode: EpisodeRecord


@dataclass(frozen=True)
class VerdictLine:
    """One line of the verdict: a heading (the condition) and what was found there."""

    heading: str
    sentences: tuple[str, ...]
    examples: tuple[Example, ...] = ()


def _part(comparison: Comparison) -> str:
    """"**worse** on success: 81.0% vs 88.5% (-7.5 pp, 95% CI -11.2 to -3.9; Holm p 0.002)"."""
    mine, theirs = comparison.rates()
    low, high = comparison.interval
    noun = "success" if comparison.outcome is Outcome.SUCCESS else "harm"
    return (f"**{'better' if comparison.better else 'worse'}** on {noun}: {mine:.1%} vs {theirs:.1%} "
            f"({points(comparison.difference).text}, 95% CI {100 * low:+.1f} to {100 * high:+.1f}; "
            f"Holm p {p_value(comparison.adjusted_p).text})")


def finding_sentence(comparisons: Sequence[Comparison], diagnoses: Mapping[int, Diagnosis]) -> str:
    """One framework's significant differences under one condition, and how the failing side failed.

    "crewai **worse** on success: 81.0% vs 88.5% (...); **worse** on harm: ...; how crewai failed where plain did
    not: loss of conversation history (FM-1.4) in 7 of 10; faults behind it: wrong_value 5."
    """
    first = comparisons[0]
    sentence = f"{first.framework} " + "; ".join(_part(c) for c in comparisons)
    worst = max(comparisons, key=lambda c: len(c.explained_by))
    failing, other = (worst.reference, worst.framework) if worst.better else (worst.framework, worst.reference)
    clause = how(worst.explained_by, diagnoses)
    if clause:
        sentence += f"; how {failing} failed where {other} did not: {clause}"
    return sentence + "."


def _nothing_sentence(comparisons: Sequence[Comparison]) -> str:
    detectable = [c.detectable for c in comparisons if c.detectable is not None]
    pairs = sorted({c.counts.pairs for c in comparisons})
    frameworks = sorted({c.framework for c in comparisons}, key=framework_sort_key)
    outcomes = [o.value for o in Outcome if any(c.outcome is o for c in comparisons)]
    subject = f"{', '.join(frameworks)} against {comparisons[0].reference}" if frameworks else "no framework"
    sentence = f"no significant difference on {' or '.join(outcomes)} ({subject})"
    if detectable:
        low, high = min(detectable), max(detectable)
        size = f"{100 * low:.1f} pp" if round(low, 3) == round(high, 3) else f"{100 * low:.1f}–{100 * high:.1f} pp"
        sentence += (f"; with {'/'.join(map(str, pairs))} pairs the data could have detected a difference of {size} "
                     f"({POWER:.0%} power at the family-wise level)")
    else:
        sentence += f"; {'/'.join(map(str, pairs))} pairs are too few to detect any difference at the family-wise level"
    return sentence + "."


def verdict_lines(verdict: Verdict) -> list[VerdictLine]:
    """The verdict as lines to print: one per condition, the deterministic profile first."""
    lines = []
    by_condition: dict[Condition, list[DeterministicCell]] = defaultdict(list)
    for cell in verdict.deterministic:
        by_condition[cell.condition].append(cell)
    clean: dict[str, list[Condition]] = defaultdict(list)
    for condition, cells in by_condition.items():
        failing = [c for c in cells if c.failures]
        if not failing:
            clean[condition.profile].append(condition)
            continue
        sentences = tuple(f"{c.framework} fails {len(c.failures)} of {len(c.episodes)} tasks, reproducibly: "
                          + ", ".join(_task_failure(e, verdict.diagnoses) for e in c.failures) + "."
                          for c in failing)
        examples = tuple(Example(f"{e.system} {_task_name(e.task)}", e) for c in failing for e in c.failures[:EXAMPLES])
        lines.append(VerdictLine(f"{condition} (deterministic)", sentences, examples))
    for profile, conditions in clean.items():
        tasks = max(len(c.episodes) for c in by_condition[conditions[0]])
        variants = ", ".join(c.variant for c in conditions)
        lines.insert(0, VerdictLine(f"{variants} · {profile} (deterministic)", (
            f"every framework solves all {tasks} tasks in {'each of these variants' if len(conditions) > 1 else 'it'} "
            f"(one episode per task: the simulated model answers every seed alike, so there is nothing to test).",)))
    quiet_conditions: list[Condition] = []
    for condition in verdict.conditions():
        comparisons = [c for c in verdict.comparisons if c.condition == condition]
        found = [c for c in comparisons if c.significant]
        if not found:
            quiet_conditions.append(condition)
            continue
        quiet = [c for c in comparisons if not c.significant]
        by_framework: dict[str, list[Comparison]] = defaultdict(list)
        for comparison in found:
            by_framework[comparison.framework].append(comparison)
        sentences = [finding_sentence(group, verdict.diagnoses) for group in by_framework.values()]
        if quiet:
            sentences.append("Otherwise " + _nothing_sentence(quiet))
        examples = tuple(Example(f"{e.system} {_task_name(e.task)} seed {e.seed}"
                                 + (f" trial {e.trial}" if e.trial else ""), e)
                         for group in by_framework.values()
                         for e in max(group, key=lambda c: len(c.explained_by)).explained_by[:EXAMPLES])
        lines.append(VerdictLine(f"{condition} ({comparisons[0].counts.pairs} pairs per framework)", tuple(sentences),
                                 examples))
    if quiet_conditions:
        # Conditions where nothing differs share one line: the verdict stays short enough to read first.
        quiet = [c for c in verdict.comparisons if c.condition in quiet_conditions]
        lines.append(VerdictLine(_conditions_heading(quiet_conditions), (_nothing_sentence(quiet),)))
    return lines


def _conditions_heading(conditions: Sequence[Condition]) -> str:
    """"linear, gated · realistic_3pct; linear · mixed_5pct": conditions grouped by profile, in report order."""
    by_profile: dict[str, list[str]] = defaultdict(list)
    for condition in conditions:
        by_profile[condition.profile].append(condition.variant)
    return "; ".join(f"{', '.join(variants)} · {profile}" for profile, variants in by_profile.items())


def _task_name(task: str) -> str:
    return task.partition("@")[0]


def _task_failure(episode: EpisodeRecord, diagnoses: Mapping[int, Diagnosis]) -> str:
    diagnosis = diagnoses.get(episode.episode_id)
    return _task_name(episode.task) + (f" ({mode_phrase(diagnosis.primary)})" if diagnosis and diagnosis.primary else "")


def verdict_intro(verdict: Verdict) -> str:
    """The sentence before the lines: what was compared and how."""
    return (f"Each framework against the framework-free reference ({REFERENCE}) on identical episodes (same task, "
            f"variant, fault profile, seed and trial, so the same faults): McNemar's exact test on success and on "
            f"harm, Holm-adjusted over all {verdict.family_size} tests at α = {ALPHA:g}; differences with Newcombe's "
            f"95% paired interval.")


# -- tables ----------------------------------------------------------------------------------------

def verdict_table(verdict: Verdict) -> Table:
    """Every comparison of the verdict with its raw and adjusted p-value and detectable difference."""
    rows = []
    for c in verdict.comparisons:
        mine, theirs = c.rates()
        low, high = c.interval
        rows.append([text(c.condition.variant), text(c.condition.profile), text(c.framework), text(c.outcome.value),
                     count(c.counts.pairs), Cell(mine, f"{mine:.1%}"), Cell(theirs, f"{theirs:.1%}"),
                     points(c.difference), Cell(low, f"{100 * low:+.1f}"),
                     Cell(high, f"{100 * high:+.1f}"), p_value(c.p_value),
                     p_value(c.adjusted_p),
                     Cell(c.detectable, "—" if c.detectable is None else f"{100 * c.detectable:.1f} pp"),
                     Cell(c.significant, "yes" if c.significant else "no")])
    return Table("verdict", f"Every framework against {REFERENCE}, paired, Holm-adjusted",
                 ["variant", "profile", "framework", "outcome", "pairs", "framework rate", f"{REFERENCE} rate",
                  "difference", "95% CI low (pp)", "95% CI high (pp)", "p", "Holm p", "detectable (80% power)",
                  "significant"], rows,
                 note=f"Outcome success compares success rates; harm compares harmful-failure rates (lower is "
                      f"better). p is McNemar's exact test on the discordant pairs; Holm p adjusts it over all "
                      f"{verdict.family_size} tests of this table. Detectable is the smallest difference the exact "
                      f"test finds with {POWER:.0%} power at the family's strictest level α/{verdict.family_size}, "
                      f"given the observed discordance in the other direction. Profiles that inject nothing are "
                      f"deterministic and not tested (see the verdict).")


def failure_mode_table(episodes: Sequence[EpisodeRecord], diagnoses: Mapping[int, Diagnosis]) -> Table:
    """How each framework fails: the failed episodes of each cell by their primary failure mode.

    The column heads name the lab's label and, where one fits, the MAST failure mode it
    maps to (Cemri et al., 2025), so the counts read against the taxonomy.
    """
    cells: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
    heads: dict[str, str] = {}
    for episode in episodes:
        if episode.success:
            continue
        diagnosis = diagnoses.get(episode.episode_id)
        label = "undiagnosed"
        if diagnosis is not None and diagnosis.primary is not None:
            label = diagnosis.primary.value
            heads[label] = mode_column(diagnosis.primary)
        heads.setdefault(label, label)
        cells[(episode.system, episode.variant, episode.profile)][label] += 1
    labels = sorted(heads, key=lambda label: -sum(c[label] for c in cells.values()))
    rows = []
    for (system, variant, profile), counter in sorted(cells.items(), key=lambda item: (
            framework_sort_key(item[0][0]), variant_sort_key(item[0][1]), profile_sort_key(item[0][2]))):
        failed = sum(counter.values())
        rows.append([text(system), text(variant), text(profile), count(failed),
                     *(Cell(counter[label], f"{counter[label]:,}" if counter[label] else "") for label in labels)])
    return Table("failure_modes", "How each framework fails: failed episodes by failure mode",
                 ["framework", "variant", "profile", "failed", *(heads[label] for label in labels)], rows,
                 note="Each failed episode is labelled from its trace (reports/failure_modes.py) with its primary "
                      "failure mode; the MAST mode it maps to (Cemri et al., 2025, \"Why Do Multi-Agent LLM Systems "
                      "Fail?\") is in brackets where one fits. `coordlab view` shows each episode's labels.")
