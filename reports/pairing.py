"""Paired counts: two frameworks on identical episodes, the unit of every paired test in the reports.

Both frameworks met the same faults (same task, variant, fault profile and seed), so only
the discordant pairs carry evidence; the paired table and the context experiment's table
count them the same way, here. With repeated trials (``--trials``) trial i of A pairs with
trial i of B: both met that seed's fault schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

PairKey = tuple[str, str, str, int, int]
"""(task, variant, profile, seed, trial): what two frameworks' episodes share to be a pair."""

from .data import EpisodeRecord
from .stats import paired_difference_interval


def pair_key(episode: EpisodeRecord) -> PairKey:
    """The key that pairs ``episode`` with another framework's: same task, variant, fault profile, seed and trial."""
    return episode.task, episode.variant, episode.profile, episode.seed, episode.trial


@dataclass(frozen=True)
class PairedCounts:
    """Framework A against framework B on episodes paired by task, variant, fault profile, seed and trial."""

    pairs: int
    both: int
    only_a: int
    """Pairs where A succeeded and B did not."""
    only_b: int
    """Pairs where B succeeded and A did not."""
    harm_a: int
    """Pairs where only A's episode was a harmful failure."""
    harm_b: int
    """Pairs where only B's episode was a harmful failure."""
    harm_both: int = 0
    """Pairs where both episodes were harmful failures."""

    @property
    def neither(self) -> int:
        """Pairs where both failed."""
        return self.pairs - self.both - self.only_a - self.only_b

    @property
    def difference(self) -> float:
        """A's success rate minus B's, over the pairs."""
        return (self.only_a - self.only_b) / self.pairs

    @classmethod
    def of(cls, pairs: Sequence[tuple[EpisodeRecord, EpisodeRecord]]) -> "PairedCounts":
        """Count (A, B) episode pairs that met the same task, variant, profile, seed and trial."""
        return cls(len(pairs), sum(a.success and b.success for a, b in pairs),
                   sum(a.success and not b.success for a, b in pairs), sum(b.success and not a.success for a, b in pairs),
                   sum(a.harmful_failure and not b.harmful_failure for a, b in pairs),
                   sum(b.harmful_failure and not a.harmful_failure for a, b in pairs),
                   sum(a.harmful_failure and b.harmful_failure for a, b in pairs))

    @property
    def success_rates(self) -> tuple[float, float]:
        """(A's success rate, B's success rate) over the pairs."""
        return (self.both + self.only_a) / self.pairs, (self.both + self.only_b) / self.pairs

    @property
    def harm_rates(self) -> tuple[float, float]:
        """(A's harmful-failure rate, B's harmful-failure rate) over the pairs."""
        return (self.harm_both + self.harm_a) / self.pairs, (self.harm_both + self.harm_b) / self.pairs

    @property
    def harm_difference(self) -> float:
        """A's harmful-failure rate minus B's, over the pairs."""
        return (self.harm_a - self.harm_b) / self.pairs

    def interval(self) -> tuple[float, float]:
        """The 95% interval of :attr:`difference`."""
        return paired_difference_interval(self.both, self.only_a, self.only_b, self.neither)

    def harm_interval(self) -> tuple[float, float]:
        """The 95% interval of :attr:`harm_difference`."""
        neither = self.pairs - self.harm_both - self.harm_a - self.harm_b
        return paired_difference_interval(self.harm_both, self.harm_a, self.harm_b, neither)
