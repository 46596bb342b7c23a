"""The few statistics the reports need, as small pure functions.

Each function takes plain counts or numbers and returns plain floats, so the tables, the
plots and the tests all compute a number the same way, and a hand computation in a test
can pin it down exactly. Only the verdict's statistics (the clustered interval and the
McNemar power) need scipy, for the t quantile and binomial tails; they import it when
called, because ``scipy.stats`` takes most of a second to import and most uses of this
module need none of it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy

Z_95 = 1.959963984540054
"""The two-sided 95% normal quantile, Phi^-1(0.975)."""


def wilson_interval(successes: float, n: float, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion ``successes / n``.

    Counts are usually whole; an effective sample size (n divided by a design effect) and
    the successes it implies need not be, and the formula holds for them as it stands.

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


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni step-down adjusted p-values, in the order given.

    The verdict tests many framework pairs at once, so a per-test 5% would find some
    "difference" by chance. Holm controls the family-wise error rate (the chance of any false
    rejection) at the nominal level under any dependence between the tests (the episodes share
    tasks, so they are dependent), and is uniformly more powerful than plain Bonferroni: it
    rejects everything Bonferroni rejects, and sometimes more.

    With the m p-values sorted ascending, p_(0) <= ... <= p_(m-1), the adjusted value of
    p_(i) is max over j <= i of min(1, (m - j) · p_(j)); an adjusted p-value <= alpha is a
    rejection at family-wise level alpha. No p-values give no adjusted values.
    """
    for index, p in enumerate(p_values):
        if not 0 <= p <= 1:
            raise ValueError(f"holm_adjust needs p-values in [0, 1], got {p} at position {index}")
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class ClusteredProportion:
    """A success rate over all episodes with its 95% task-clustered interval (see :func:`clustered_proportion_interval`)."""

    estimate: float
    """Successes over episodes, all tasks pooled."""
    low: float | None
    """Lower 95% bound, clamped to [0, 1]; None with a single cluster, where no interval exists."""
    high: float | None
    """Upper 95% bound, clamped to [0, 1]; None with a single cluster."""
    clusters: int
    """Number of clusters (tasks); the interval uses a t distribution with clusters - 1 degrees of freedom."""
    episodes: int
    """Number of episodes over all clusters."""


def clustered_proportion_interval(successes_by_cluster: Sequence[tuple[int, int]]) -> ClusteredProportion:
    """Pooled success rate with a 95% cluster-robust (CR1 sandwich) interval; one cluster per task.

    Why clustered: the episodes of one task are not independent draws (a task that is hard
    for a framework fails most of its seeds), so a Wilson interval over all episodes pooled
    treats correlated episodes as independent evidence and overstates the precision. The
    sandwich estimator lets the episodes of a task be arbitrarily correlated and takes the
    tasks as the independent units.

    ``successes_by_cluster`` holds one ``(successes, episodes)`` per cluster. With N episodes,
    G clusters and p = Σ s_g / N, this is exactly what statsmodels reports for OLS of the 0/1
    outcome on a constant with ``cov_type="cluster"`` and ``use_t=True`` (its default
    corrections, K = 1 regressor):

        var = G/(G-1) · (N-1)/(N-K) · Σ_g (s_g - n_g·p)² / N²,   p ± t(0.975, G-1) · sqrt(var)

    then clamped to [0, 1]. The t quantile with G - 1 degrees of freedom is the usual
    small-G correction (statsmodels' own default is the normal quantile; with a dozen tasks
    that is visibly too narrow).

    Edge cases: with a single cluster there is no between-cluster variation to estimate, so
    ``low`` and ``high`` are None (the estimate is still given). When every cluster has the
    same rate (e.g. every task all-success) the estimated variance is zero and the interval
    collapses to the point estimate: that is what the estimator says, not a claim of
    certainty, so callers show the per-task Wilson intervals beside it.
    """
    from scipy.stats import t as student_t  # scipy.stats takes most of a second to import

    if not successes_by_cluster:
        raise ValueError("clustered_proportion_interval needs at least one cluster")
    for index, (successes, episodes) in enumerate(successes_by_cluster):
        if episodes <= 0 or not 0 <= successes <= episodes:
            raise ValueError("clustered_proportion_interval needs 0 <= successes <= episodes and episodes > 0 "
                             f"in every cluster, got {successes} of {episodes} in cluster {index}")
    clusters = len(successes_by_cluster)
    episodes = sum(n for _, n in successes_by_cluster)
    estimate = sum(s for s, _ in successes_by_cluster) / episodes
    if clusters == 1:
        return ClusteredProportion(estimate, None, None, clusters, episodes)
    half = float(student_t.ppf(0.975, clusters - 1)) * math.sqrt(_cluster_robust_variance(successes_by_cluster))
    return ClusteredProportion(estimate, max(0.0, estimate - half), min(1.0, estimate + half), clusters, episodes)


def _cluster_robust_variance(successes_by_cluster: Sequence[tuple[int, int]]) -> float:
    """CR1 variance of the pooled proportion: G/(G-1) · Σ_g (s_g - n_g·p)² / N² (needs G >= 2)."""
    clusters = len(successes_by_cluster)
    episodes = sum(n for _, n in successes_by_cluster)
    estimate = sum(s for s, _ in successes_by_cluster) / episodes
    meat = sum((s - n * estimate) ** 2 for s, n in successes_by_cluster)
    # (N-1)/(N-K) is 1 with K = 1.
    return clusters / (clusters - 1) * meat / (episodes * episodes)


@dataclass(frozen=True)
class DesignEffectInterval:
    """A pooled success rate with Wilson's interval at the sample size the clustering leaves (Kish's design effect)."""

    estimate: float
    low: float
    high: float
    design_effect: float
    """Cluster-robust variance over the binomial variance, at least 1: how many episodes count as one."""
    effective_episodes: float
    """Episodes / design effect: the independent observations the interval is computed from."""


def task_clustered_interval(successes_by_cluster: Sequence[tuple[int, int]]) -> DesignEffectInterval:
    """The report's success interval across tasks: Wilson's, at the effective sample size N / DEFF.

    The tasks are the clusters: a task that is hard for a framework fails most of its seeds,
    so N pooled episodes carry less evidence than N independent ones. Kish's design effect
    DEFF = var_CR1 / (p(1-p)/N), floored at 1, says by how much; Wilson's interval computed
    at N / DEFF episodes (as Korn & Graubard, 1998, do for complex surveys) widens with the
    clustering, yet keeps Wilson's behaviour near 0 and 1. The bare cluster-robust interval
    (:func:`clustered_proportion_interval`) would collapse to a point whenever every task has
    the same rate (every task 100%, say), claiming a certainty the data does not hold; this
    one falls back to the pooled Wilson interval there (DEFF 1), never narrower.
    """
    clusters = len(successes_by_cluster)
    if not successes_by_cluster:
        raise ValueError("task_clustered_interval needs at least one cluster")
    clustered_proportion_interval(successes_by_cluster)  # the same checks of the counts
    episodes = sum(n for _, n in successes_by_cluster)
    estimate = sum(s for s, _ in successes_by_cluster) / episodes
    binomial = estimate * (1 - estimate) / episodes
    effect = 1.0
    if clusters > 1 and binomial > 0:
        effect = max(1.0, _cluster_robust_variance(successes_by_cluster) / binomial)
    effective = episodes / effect
    low, high = wilson_interval(estimate * effective, effective)  # type: ignore[arg-type]
    return DesignEffectInterval(estimate, low, high, effect, effective)


@functools.lru_cache(maxsize=64)
def _mcnemar_rejection_bounds(max_discordant: int, alpha: float) -> tuple[int, ...]:
    """Per d = 0..max_discordant, the largest k with mcnemar_exact(k, d - k) <= alpha, or -1 if none.

    The exact test's p-value grows with min(b, c), so with d discordant pairs it rejects exactly
    when min(b, c) <= k_d. Since k_d <= k_(d+1) <= k_d + 1, one candidate per d suffices, and
    the lower tail T(d, k) = Σ_(i<=k) C(d, i) is carried from d to d + 1 in exact integers by
    T(d+1, k) = 2·T(d, k) - C(d, k), so all bounds up to 2000 pairs take milliseconds.
    """
    bounds = [-1]
    k, tail, at_k, above_k = -1, 0, 0, 1  # k, T(d, k), C(d, k), C(d, k + 1) at d = 0
    for d in range(1, max_discordant + 1):
        # Step d - 1 -> d with k fixed (C(d, k) = C(d-1, k) · d / (d - k), exact in integers).
        tail, at_k, above_k = 2 * tail - at_k, at_k * d // (d - k), above_k + at_k
        # Try k + 1, comparing mcnemar_exact's own correctly rounded float, so the region is
        # exactly where mcnemar_exact(b, c) <= alpha, even for an alpha that is an attainable p-value.
        if min(1.0, 2 * (tail + above_k) / 2**d) <= alpha:
            k, tail, at_k = k + 1, tail + above_k, above_k
            above_k = above_k * (d - k) // (k + 1)
        bounds.append(k)
    return tuple(bounds)


def _conditional_power(max_discordant: int, alpha: float, share_a: float) -> numpy.ndarray:
    """Per d = 0..max_discordant, P(mcnemar_exact(B, d - B) <= alpha) for B ~ Binomial(d, share_a)."""
    import numpy
    from scipy.stats import binom

    bounds = numpy.array(_mcnemar_rejection_bounds(max_discordant, alpha))
    discordant = numpy.arange(max_discordant + 1)
    return binom.cdf(bounds, discordant, share_a) + binom.sf(discordant - bounds - 1, discordant, share_a)


def _power(pairs: int, discordance: float, conditional: numpy.ndarray) -> float:
    """E[conditional[D]] for D ~ Binomial(pairs, discordance), over D's support within mean ± 12 sd."""
    import numpy
    from scipy.stats import binom

    spread = 12 * math.sqrt(pairs * discordance * (1 - discordance)) + 12
    first = max(0, math.floor(pairs * discordance - spread))
    last = min(pairs, math.ceil(pairs * discordance + spread))
    discordant = numpy.arange(first, last + 1)
    return min(1.0, float(numpy.dot(binom.pmf(discordant, pairs, discordance), conditional[first:last + 1])))


def _check_power_arguments(function: str, alpha: float, power: float | None = None) -> None:
    """Raise ValueError unless 0 < alpha < 1 and, when given, alpha < power < 1 (a power <= alpha needs no effect)."""
    if not 0 < alpha < 1:
        raise ValueError(f"{function} needs 0 < alpha < 1, got alpha={alpha}")
    if power is not None and not alpha < power < 1:
        raise ValueError(f"{function} needs alpha < power < 1, got power={power} with alpha={alpha}")


def mcnemar_power(pairs: int, p_only_a: float, p_only_b: float, alpha: float = 0.05) -> float:
    """Exact power of the two-sided exact McNemar test (:func:`mcnemar_exact` <= alpha).

    Each of ``pairs`` pairs is independently discordant for A (A succeeds, B fails) with
    probability ``p_only_a``, for B with ``p_only_b``, and concordant otherwise. The power is
    the unconditional probability of a rejection: Σ_d P(D = d) · P(reject | d), where
    D ~ Binomial(pairs, p_only_a + p_only_b) discordant pairs split as
    Binomial(d, p_only_a / (p_only_a + p_only_b)). No discordance at all gives power 0.

    Exact tests are discrete, so the power is not monotone in ``pairs`` (one more pair can
    lower it slightly): see :func:`pairs_for_power`. Counts of discordant pairs more than
    12 standard deviations (+ 12) from their mean are left out: their total probability is
    below 1e-26 (checked from 1 to 20,000 pairs, discordance 1e-4 to 0.999).
    """
    if pairs < 1:
        raise ValueError(f"mcnemar_power needs pairs >= 1, got pairs={pairs}")
    if p_only_a < 0 or p_only_b < 0 or p_only_a + p_only_b > 1:
        raise ValueError("mcnemar_power needs p_only_a, p_only_b >= 0 with p_only_a + p_only_b <= 1, "
                         f"got p_only_a={p_only_a}, p_only_b={p_only_b}")
    _check_power_arguments("mcnemar_power", alpha)
    discordance = p_only_a + p_only_b
    if discordance == 0:
        return 0.0
    return _power(pairs, discordance, _conditional_power(pairs, alpha, p_only_a / discordance))


def minimum_detectable_difference(pairs: int, background: float, alpha: float, power: float = 0.8) -> float | None:
    """The smallest paired difference in success rate (A minus B) that ``pairs`` pairs detect with ``power``.

    ``background`` is the rate of discordance in the other direction (pairs B wins): with
    difference δ, A wins a pair with probability background + δ and B with background, so
    0 means every disagreement favours one side (the most favourable case for detection).
    The answer δ is the smallest with mcnemar_power(pairs, background + δ, background, alpha)
    >= power, found by bisection on (0, 1 - 2·background] to 1e-9: the power rises with δ,
    up to wiggles of order 1e-7 from the test's discreteness, so the answer has power >= the
    target at δ and less just below it, and is the smallest such δ whenever no wiggle
    straddles the target.

    Read it as "the data could have detected a difference of δ with 80% power": a true
    difference of δ goes unnoticed with probability 1 - power (one time in five at 0.8), a
    smaller one more often, so a non-significant comparison is no evidence against
    differences below δ. None when even δ = 1 - 2·background falls short of the power
    (always at background 0.5, where every pair is already discordant half each way).
    """
    if pairs < 1:
        raise ValueError(f"minimum_detectable_difference needs pairs >= 1, got pairs={pairs}")
    if not 0 <= background <= 0.5:
        raise ValueError(f"minimum_detectable_difference needs 0 <= background <= 0.5, got background={background}")
    _check_power_arguments("minimum_detectable_difference", alpha, power)

    def power_at(difference: float) -> float:
        discordance = min(1.0, 2 * background + difference)
        return _power(pairs, discordance, _conditional_power(pairs, alpha, (background + difference) / discordance))

    low, high = 0.0, 1 - 2 * background  # power_at(0) <= alpha < power: the exact test is conservative
    if power_at(high) < power:
        return None
    while high - low > 1e-9:
        middle = (low + high) / 2
        low, high = (low, middle) if power_at(middle) >= power else (middle, high)
    return high


MAX_PAIRS_FOR_POWER = 20_000
"""pairs_for_power gives up beyond this many pairs: the lab runs hundreds of pairs per comparison."""

POWER_WINDOW = 20
"""pairs_for_power's n must keep the power for this many consecutive pair counts, n included."""


def pairs_for_power(difference: float, background: float, alpha: float, power: float = 0.8) -> int:
    """The number of pairs from which the exact McNemar test keeps ``power`` for a paired difference.

    Same model as :func:`minimum_detectable_difference`: A wins a pair with probability
    background + difference, B with background. Because the exact test is discrete, its
    power zigzags in the number of pairs, so "the smallest n with enough power" can be an
    isolated lucky n followed by a dip below the target. The rule used here: the smallest n
    such that mcnemar_power(m, background + difference, background, alpha) >= power for every
    m in n, n + 1, ..., n + 19 (:data:`POWER_WINDOW`). Raises ValueError if that needs more
    than :data:`MAX_PAIRS_FOR_POWER` pairs.
    """
    if background < 0 or not 0 < difference <= 1 - 2 * background:
        raise ValueError("pairs_for_power needs background >= 0 and 0 < difference <= 1 - 2·background, "
                         f"got difference={difference}, background={background}")
    _check_power_arguments("pairs_for_power", alpha, power)
    discordance = min(1.0, 2 * background + difference)
    share_a = (background + difference) / discordance
    last = MAX_PAIRS_FOR_POWER + POWER_WINDOW - 1  # the window of the largest allowed answer ends here
    computed = [0, _conditional_power(0, alpha, share_a)]  # conditional powers up to computed[0] discordant pairs

    def reaches(pairs: int) -> bool:
        if pairs > computed[0]:  # doubling keeps the total work within a constant of the last extension
            computed[0] = min(last, max(2 * computed[0], pairs, 256))
            computed[1] = _conditional_power(computed[0], alpha, share_a)
        return _power(pairs, discordance, computed[1]) >= power

    # Every run of POWER_WINDOW consecutive counts holds a multiple of POWER_WINDOW, so the answer is
    # at least the first multiple that reaches the power, less POWER_WINDOW - 1: scan from there.
    first = next((n for n in range(POWER_WINDOW, last + 1, POWER_WINDOW) if reaches(n)), last + 1)
    streak = 0
    for pairs in range(max(1, first - POWER_WINDOW + 1), last + 1):
        streak = streak + 1 if reaches(pairs) else 0
        if streak == POWER_WINDOW:
            return pairs - POWER_WINDOW + 1
    raise ValueError(f"pairs_for_power: a difference of {difference} over background {background} needs more "
                     f"than {MAX_PAIRS_FOR_POWER} pairs for power {power} at alpha={alpha}")
