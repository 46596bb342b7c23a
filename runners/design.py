"""The default suite's design: which conditions it runs and how many seeds, from a power calculation.

The default suite exists to answer "does this framework do better or worse than the
reference here?", so its size is chosen for that answer: enough seeds that McNemar's exact
test, at the strictest level Holm's adjustment applies over every test the verdict makes,
detects a difference of :data:`TARGET_DIFFERENCE` in success with :data:`TARGET_POWER`
power, when the frameworks' disagreements in the other direction run at
:data:`BACKGROUND_DISCORDANCE`. Fewer seeds could only report "no difference" for
differences that matter; more would break the demo's 10-minute budget on 2 cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STOCHASTIC_PROFILES = ("realistic_3pct", "mixed_5pct")
"""The fault profiles the verdict tests under: an ordinary day of a strong model, and a harsher soup."""

DETERMINISTIC_PROFILE = "none"
"""Run once per task and variant: every seed of it is the same episode."""

VARIANTS = ("linear", "gated", "delegated")
COMPARED_FRAMEWORKS = 3
"""Frameworks compared with the reference (CrewAI, AutoGen, LangGraph)."""

TASKS = 6
"""Tasks of the built-in suite: each seed gives one pair per task."""

TARGET_DIFFERENCE = 0.12
"""The difference in success rate the suite should find (12 percentage points: CrewAI's delegated loss under a
lossy brief was 10-12 pp in the context experiment; a smaller one needs more seeds than the demo's budget)."""

BACKGROUND_DISCORDANCE = 0.01
"""Assumed share of pairs disagreeing the other way. Measured in docs/experiments/realistic_3pct (120 pairs per
framework and variant): 0 to 5%, 1% or less in 8 of 9 comparisons with plain."""

TARGET_POWER = 0.8
ALPHA = 0.05

SEEDS = 24
"""Seeds per cell: what :func:`design` computes (a test keeps them equal), kept as a constant so that building
the default sweep needs no calculation."""


@dataclass(frozen=True)
class SuiteDesign:
    """The power calculation behind the default suite's seed count."""

    tests: int
    """Tests the verdict makes: frameworks x variants x stochastic profiles x (success, harm)."""
    level: float
    """Holm's strictest level, ALPHA / tests: what the most significant difference must beat."""
    pairs_needed: int
    seeds: int
    power: float
    """The power reached with ``seeds`` (>= TARGET_POWER)."""

    def explain(self) -> str:
        """The calculation in one paragraph, as `coordlab demo` prints it and the report records it."""
        return (f"{self.seeds} seeds: {self.seeds} x {TASKS} tasks = {self.seeds * TASKS} pairs per framework and "
                f"condition. McNemar's exact test at Holm's strictest level {ALPHA:g}/{self.tests} "
                f"({self.tests} tests: {COMPARED_FRAMEWORKS} frameworks x {len(VARIANTS)} variants x "
                f"{len(STOCHASTIC_PROFILES)} profiles x success and harm) needs {self.pairs_needed} pairs to detect a "
                f"{TARGET_DIFFERENCE:.0%} difference in success with {TARGET_POWER:.0%} power when "
                f"{BACKGROUND_DISCORDANCE:.0%} of pairs disagree the other way; {self.seeds * TASKS} pairs give "
                f"{self.power:.0%}.")


def design() -> SuiteDesign:
    """The default suite's power calculation (a second or two: exact binomial sums over a few hundred pairs)."""
    from coordlab.reports.stats import mcnemar_power, pairs_for_power

    tests = COMPARED_FRAMEWORKS * len(VARIANTS) * len(STOCHASTIC_PROFILES) * 2
    level = ALPHA / tests
    needed = pairs_for_power(TARGET_DIFFERENCE, BACKGROUND_DISCORDANCE, level, TARGET_POWER)
    seeds = math.ceil(needed / TASKS)
    power = mcnemar_power(seeds * TASKS, BACKGROUND_DISCORDANCE + TARGET_DIFFERENCE, BACKGROUND_DISCORDANCE, level)
    return SuiteDesign(tests, level, needed, seeds, power)
