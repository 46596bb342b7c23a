"""The few statistics the reports need, as small pure functions (no scipy).

Each function takes plain counts or numbers and returns plain floats, so the tables, the
plots and the tests all compute a number the same way, and a hand computation in a test
can pin it down exactly.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

Z_95 = 1.959963984540054
"""The two-sided 95% normal quantile, Phi^-1(0.975)."""


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion ``successes / n``.

    Wilson rather than the textbook normal ("Wald") interval because the lab's success
    rates sit near 0 and 1 with a few dozen seeds, where Wald's interval collapses to a
    point (0/20 gives [0, 0]) or leaves [0, 1]. Wilson's stays inside [0, 1] and keeps
    roughly its nominal coverage there.

    center = (p + z²/2n) / (1 + z²/n),  half = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²)
    """
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got {successes} of {n}")
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At p = 0 (or 1) the bound is 0 (or 1) exactly; rounding can leave it a hair off.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def pass_hat_k(c: int, n: int, k: int) -> float:
    """tau-bench's unbiased estimator of pass^k: the chance that k trials drawn from n all succeed.

    With ``c`` successes among ``n`` repeated trials of one task, C(c, k) / C(n, k) is the
    probability that k trials picked without replacement are all successes. It measures
    consistency (does it work *every* time), which a success rate averages away.
    """
    if n <= 0 or not 1 <= k <= n:
        raise ValueError(f"pass_hat_k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_hat_k needs 0 <= c <= n, got c={c}, n={n}")
    # Python's int / int is correctly rounded, so even huge binomials give the nearest float.
    return math.comb(c, k) / math.comb(n, k)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs.

    Under the null hypothesis (both systems equally likely to win a discordant pair) the
    split of the b + c discordant pairs is Binomial(b + c, 1/2); the two-sided p-value is
    twice the smaller tail, capped at 1. Exact because the lab's discordant counts are
    small, where the chi-squared approximation misleads. Computed in integers, so it is
    exact up to the final division.
    """
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact needs non-negative counts, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = 0
    term = 1  # C(n, 0)
    for i in range(min(b, c) + 1):
        tail += term
        term = term * (n - i) // (i + 1)  # C(n, i+1) from C(n, i), exact in integers
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between order statistics.

    This is the common definition (numpy's default, Hyndman & Fan type 7), so p50 is the
    usual median and a reader can reproduce any p95 in a spreadsheet.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile needs 0 <= q <= 100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    fraction = position - below
    return ordered[below] + (ordered[above] - ordered[below]) * fraction


def median(values: Sequence[float]) -> float:
    """The median (the 50th percentile, averaging the two middle values of an even count)."""
    return percentile(values, 50)


def geometric_mean(values: Sequence[float]) -> float:
    """The geometric mean of positive numbers: the right average of ratios (2x and 0.5x average to 1x)."""
    if not values or any(v <= 0 for v in values):
        raise ValueError("geometric_mean needs one or more positive values")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def paired_difference_interval(both: int, only_a: int, only_b: int, neither: int) -> tuple[float, float]:
    """95% interval of the paired difference in success, A's minus B's: Newcombe's square-and-add (hybrid score).

    Newcombe (1998, Stat Med 17:2635), as Fagerland, Lydersen & Laake give it (Statistical
    Analysis of Contingency Tables, 2017, ch. 8): each rate's Wilson interval, combined with the
    estimated correlation between the paired rates. It stays inside [-1, 1] and, unlike Wald's,
    does not collapse to a point when every pair agrees, which with common random numbers is common.
    """
    n = both + only_a + only_b + neither
    if n <= 0:
        raise ValueError("paired_difference_interval needs at least one pair")
    a_successes, b_successes = both + only_a, both + only_b
    p1, p2 = a_successes / n, b_successes / n
    l1, u1 = wilson_interval(a_successes, n)
    l2, u2 = wilson_interval(b_successes, n)
    psi = 0.0
    if 0 < a_successes < n and 0 < b_successes < n:
        product = a_successes * (n - a_successes) * b_successes * (n - b_successes)
        agreement = both * neither - only_a * only_b
        if agreement > n / 2:
            psi = (agreement - n / 2) / math.sqrt(product)
        elif agreement < 0:
            psi = agreement / math.sqrt(product)
    difference = p1 - p2
    low = difference - math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * psi * (p1 - l1) * (u2 - p2)))
    high = difference + math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * psi * (p2 - l2) * (u1 - p1)))
    return max(-1.0, low), min(1.0, high)
