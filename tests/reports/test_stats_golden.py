"""The verdict's statistics against cases worked out by hand (the arithmetic is in the comments).

Holm's adjustment, the task-clustered interval of a success rate, and the power of the exact
McNemar test, with the minimum detectable difference and the pairs needed derived from it.
"""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import product

import pytest

from coordlab.reports import stats
from coordlab.reports.stats import (
    ClusteredProportion,
    clustered_proportion_interval,
    holm_adjust,
    mcnemar_exact,
    mcnemar_power,
    minimum_detectable_difference,
    pairs_for_power,
)

TOL = 1e-9

# -- Holm ------------------------------------------------------------------------------------------


def test_holm_adjust_by_hand() -> None:
    # Sorted: 0.005, 0.01, 0.03, 0.04 (m = 4) -> 4·0.005 = 0.02, 3·0.01 = 0.03, 2·0.03 = 0.06,
    # 1·0.04 = 0.04 raised to the running maximum 0.06; back in input order:
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=TOL)
    # Capped at 1 and monotone: sorted 0.01, 0.5, 0.5 -> 3·0.01 = 0.03, min(1, 2·0.5) = 1, max(1, 0.5) = 1.
    assert holm_adjust([0.5, 0.5, 0.01]) == pytest.approx([1.0, 1.0, 0.03], abs=TOL)
    # 0.4, 0.6 -> 2·0.4 = 0.8, max(0.8, 0.6) = 0.8: the larger p-value inherits the step before it.
    assert holm_adjust([0.6, 0.4]) == pytest.approx([0.8, 0.8], abs=TOL)
    # One test is its own family; no tests, no adjusted values.
    assert holm_adjust([0.02]) == [0.02]
    assert holm_adjust([]) == []


def test_holm_adjust_never_below_the_raw_p_nor_above_bonferroni() -> None:
    p_values = [0.001, 0.2, 0.013, 0.04, 0.0049, 0.5, 0.013]
    adjusted = holm_adjust(p_values)
    for p, q in zip(p_values, adjusted):
        assert p <= q <= min(1.0, len(p_values) * p) + TOL


@pytest.mark.parametrize("p_values", [[0.1, 1.2], [-0.01], [float("nan")]])
def test_holm_adjust_rejects_what_is_not_a_p_value(p_values: list[float]) -> None:
    with pytest.raises(ValueError, match="holm_adjust needs p-values in \\[0, 1\\]"):
        holm_adjust(p_values)


# -- the clustered interval -------------------------------------------------------------------------

# t quantile with 2 degrees of freedom in closed form: F(t) = 1/2 + t / (2 sqrt(2 + t²)), so
# t(u) = a · sqrt(2 / (1 - a²)) with a = 2u - 1; at u = 0.975, a = 0.95: 0.95 · sqrt(2 / 0.0975).
T_975_DF2 = 0.95 * math.sqrt(2 / 0.0975)  # 4.30265272975...


def test_clustered_interval_by_hand() -> None:
    # Clusters (2 of 3), (1 of 2), (3 of 4): N = 9, G = 3, p = 6/9 = 2/3.
    # Per-cluster residual sums s_g - n_g·p: 2 - 3·2/3 = 0, 1 - 2·2/3 = -1/3, 3 - 4·2/3 = 1/3.
    # Sandwich: meat Σ (s_g - n_g p)² = 0 + 1/9 + 1/9 = 2/9; bread (X'X)^-1 = 1/N = 1/9;
    # CR1 factor G/(G-1) · (N-1)/(N-K) = 3/2 · 8/8 = 3/2; var = 3/2 · 2/9 / 81 = 1/243.
    # half = t(0.975, 2) / sqrt(243) = 4.30265273 / 15.58845727 = 0.27601530.
    result = clustered_proportion_interval([(2, 3), (1, 2), (3, 4)])
    half = T_975_DF2 / math.sqrt(243)
    assert result == ClusteredProportion(pytest.approx(2 / 3, abs=TOL), pytest.approx(2 / 3 - half, abs=TOL),
                                         pytest.approx(2 / 3 + half, abs=TOL), 3, 9)
    assert (result.low, result.high) == (pytest.approx(0.390651365, abs=1e-8), pytest.approx(0.942681968, abs=1e-8))


def test_clustered_interval_is_clamped_to_the_unit_interval() -> None:
    # (3 of 3), (3 of 3), (2 of 3): p = 8/9; residual sums 1/3, 1/3, -2/3; meat = 1/9 + 1/9 + 4/9 = 2/3;
    # var = 3/2 · 2/3 / 81 = 1/81, se = 1/9; half = 4.30265 / 9 = 0.47807: 8/9 + half > 1 -> 1.
    result = clustered_proportion_interval([(3, 3), (3, 3), (2, 3)])
    assert result.estimate == pytest.approx(8 / 9, abs=TOL)
    assert result.low == pytest.approx(8 / 9 - T_975_DF2 / 9, abs=TOL)  # 0.41081636
    assert result.high == 1.0


def test_clustered_interval_is_wider_than_pooled_wilson_when_tasks_differ() -> None:
    # Two easy tasks and two hard ones, 10 episodes each: 20 of 40 overall, but the episodes of a task
    # agree, so the tasks (4 units), not the 40 episodes, carry the information.
    result = clustered_proportion_interval([(10, 10), (10, 10), (0, 10), (0, 10)])
    low, high = stats.wilson_interval(20, 40)
    assert result.low is not None and result.high is not None
    assert result.high - result.low > high - low


def test_a_zero_variance_clustered_estimate_is_a_point() -> None:
    # Every task all-success: every residual sum is 0, the variance 0, the interval [1, 1].
    assert clustered_proportion_interval([(3, 3), (4, 4)]) == ClusteredProportion(1.0, 1.0, 1.0, 2, 7)
    # The same rate in every task (1/2) also gives residual sums of 0: the point 0.5.
    assert clustered_proportion_interval([(1, 2), (2, 4), (3, 6)]) == ClusteredProportion(0.5, 0.5, 0.5, 3, 12)


def test_one_cluster_gives_an_estimate_without_interval() -> None:
    # No between-cluster variation to estimate (and G - 1 = 0 degrees of freedom): no bounds.
    assert clustered_proportion_interval([(3, 5)]) == ClusteredProportion(0.6, None, None, 1, 5)


@pytest.mark.parametrize("clusters, message", [
    ([], "at least one cluster"),
    ([(2, 3), (4, 3)], "got 4 of 3 in cluster 1"),
    ([(0, 0)], "got 0 of 0 in cluster 0"),
    ([(-1, 3)], "got -1 of 3 in cluster 0"),
])
def test_clustered_interval_rejects_impossible_counts(clusters: list[tuple[int, int]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clustered_proportion_interval(clusters)


# -- McNemar power ------------------------------------------------------------------------------------


def brute_force_power(pairs: int, p_only_a: float, p_only_b: float, alpha: float) -> float:
    """Σ over every (b, c) of its multinomial probability, where mcnemar_exact(b, c) <= alpha."""
    total = 0.0
    for b, c in product(range(pairs + 1), repeat=2):
        if b + c <= pairs and mcnemar_exact(b, c) <= alpha:
            ways = math.factorial(pairs) // (math.factorial(b) * math.factorial(c) * math.factorial(pairs - b - c))
            total += ways * p_only_a ** b * p_only_b ** c * (1 - p_only_a - p_only_b) ** (pairs - b - c)
    return total


def test_mcnemar_power_by_hand() -> None:
    # 6 pairs, A wins a pair with probability 1/2 and B never: b = d, c = 0, and mcnemar_exact(d, 0)
    # = 2/2^d <= 0.05 iff 2^(d-1) >= 20 iff d >= 6 (d = 5 gives 2/32 = 0.0625). So the power is
    # P(D = 6) = (1/2)^6 = 1/64.
    assert mcnemar_power(6, 0.5, 0.0) == pytest.approx(1 / 64, abs=TOL)
    # alpha equal to an attainable p-value: mcnemar_exact(6, 0) = 2/64 <= 2/64 still rejects; just below does not.
    assert mcnemar_power(6, 0.5, 0.0, alpha=2 / 64) == pytest.approx(1 / 64, abs=TOL)
    assert mcnemar_power(6, 0.5, 0.0, alpha=2 / 64 - 1e-12) == 0.0
    # 7 pairs, p_only_a = 0.6, p_only_b = 0.2: D ~ Bin(7, 0.8), split q = 0.6/0.8 = 3/4.
    # Rejection at 0.05: d <= 5 never (min(b, c) = 0 gives 2/2^d >= 1/16 > 0.05); d = 6: only min = 0
    # (2/64; min = 1 gives 14/64); d = 7: only min = 0 (2/128; min = 1 gives 16/128).
    # P(D=6) = 7·0.8^6·0.2 = 28672/78125, P(reject | 6) = (3/4)^6 + (1/4)^6 = 730/4096;
    # P(D=7) = 0.8^7 = 16384/78125,       P(reject | 7) = (3/4)^7 + (1/4)^7 = 2188/16384;
    # power = (7·730 + 2188) / 78125 = 7298/78125 = 0.0934144.
    assert mcnemar_power(7, 0.6, 0.2) == pytest.approx(float(Fraction(7298, 78125)), abs=TOL)
    # No discordance, no evidence: power 0.
    assert mcnemar_power(50, 0.0, 0.0) == 0.0


@pytest.mark.parametrize("pairs, p_only_a, p_only_b, alpha", [
    (1, 0.5, 0.2, 0.05), (9, 0.3, 0.1, 0.05), (12, 0.25, 0.05, 0.01), (14, 0.4, 0.4, 0.05),
    (15, 0.9, 0.1, 0.05 / 36), (16, 0.2, 0.0, 0.2),
])
def test_mcnemar_power_matches_enumerating_every_table(pairs: int, p_only_a: float, p_only_b: float,
                                                       alpha: float) -> None:
    assert mcnemar_power(pairs, p_only_a, p_only_b, alpha) == pytest.approx(
        brute_force_power(pairs, p_only_a, p_only_b, alpha), abs=1e-12)


def test_mcnemar_power_is_symmetric_and_at_most_alpha_under_the_null() -> None:
    assert mcnemar_power(80, 0.15, 0.05) == pytest.approx(mcnemar_power(80, 0.05, 0.15), abs=1e-12)
    # The exact test is conservative: with no difference it rejects at most alpha of the time.
    for pairs in (10, 57, 300, 2000):
        assert 0 < mcnemar_power(pairs, 0.1, 0.1, 0.05) <= 0.05


def test_mcnemar_power_is_quick_for_two_thousand_pairs() -> None:
    # A real difference with 2000 pairs is near-certain to be found; the call must not be slow (no timing
    # assertion, but the rejection bounds are O(pairs) integer steps, not O(pairs²)).
    assert mcnemar_power(2000, 0.1, 0.05, 0.05 / 36) > 0.99


@pytest.mark.parametrize("args, message", [
    ((0, 0.1, 0.1), "pairs >= 1"),
    ((10, -0.1, 0.1), "p_only_a, p_only_b >= 0"),
    ((10, 0.6, 0.5), "p_only_a \\+ p_only_b <= 1"),
    ((10, 0.1, 0.1, 0.0), "0 < alpha < 1"),
    ((10, 0.1, 0.1, 1.0), "0 < alpha < 1"),
])
def test_mcnemar_power_rejects_impossible_arguments(args: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mcnemar_power(*args)  # type: ignore[arg-type]


# -- minimum detectable difference --------------------------------------------------------------------


def test_minimum_detectable_difference_by_hand() -> None:
    # 6 pairs, background 0: rejection needs all 6 pairs won by A (above), so power(δ) = δ^6 and
    # δ^6 = 0.8 gives δ = 0.8^(1/6) = 0.96349...
    assert minimum_detectable_difference(6, 0.0, 0.05) == pytest.approx(0.8 ** (1 / 6), abs=1e-8)
    # 7 pairs: rejection needs d >= 6 with no B win, so power = P(D >= 6) = 7δ^6(1-δ) + δ^7 = 7δ^6 - 6δ^7.
    delta = minimum_detectable_difference(7, 0.0, 0.05)
    assert delta is not None and 7 * delta ** 6 - 6 * delta ** 7 == pytest.approx(0.8, abs=1e-8)
    # 5 pairs can never reject at 0.05 (the smallest p-value is 2/32 = 0.0625): None.
    assert minimum_detectable_difference(5, 0.0, 0.05) is None
    # Background 0.5 leaves no room for a difference (0.5 + δ + 0.5 <= 1 forces δ = 0): None, not an error,
    # since observed discordance can be split evenly (1 win each way in 2 pairs).
    assert minimum_detectable_difference(2, 0.5, 0.05) is None
    assert minimum_detectable_difference(400, 0.5, 0.05) is None


@pytest.mark.parametrize("pairs, background, alpha", [
    (120, 0.0, 0.05 / 36), (150, 0.0, 0.05 / 36), (120, 0.02, 0.05 / 36), (180, 0.02, 0.05 / 36),
    (40, 0.1, 0.05), (500, 0.2, 0.01),
])
def test_minimum_detectable_difference_is_where_the_power_crosses(pairs: int, background: float,
                                                                   alpha: float) -> None:
    delta = minimum_detectable_difference(pairs, background, alpha)
    assert delta is not None and 0 < delta <= 1 - 2 * background
    assert mcnemar_power(pairs, background + delta, background, alpha) >= 0.8
    assert mcnemar_power(pairs, background + delta - 1e-6, background, alpha) < 0.8
    # More pairs detect a smaller difference.
    smaller = minimum_detectable_difference(2 * pairs, background, alpha)
    assert smaller is not None and smaller < delta


@pytest.mark.parametrize("args, message", [
    ((0, 0.0, 0.05), "pairs >= 1"),
    ((100, 0.6, 0.05), "0 <= background <= 0.5"),
    ((100, -0.1, 0.05), "0 <= background <= 0.5"),
    ((100, 0.0, 0.0), "0 < alpha < 1"),
    ((100, 0.0, 0.05, 1.0), "alpha < power < 1"),
    ((100, 0.0, 0.05, 0.01), "alpha < power < 1"),
])
def test_minimum_detectable_difference_rejects_impossible_arguments(args: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        minimum_detectable_difference(*args)  # type: ignore[arg-type]


# -- pairs for power -------------------------------------------------------------------------------------


def test_pairs_for_power_by_hand() -> None:
    # Every pair won by A (difference 1): power is 1 from 6 pairs on (2/2^6 <= 0.05) and 0 below.
    assert pairs_for_power(1.0, 0.0, 0.05) == 6


@pytest.mark.parametrize("difference, background, alpha", [
    (0.10, 0.0, 0.05 / 36), (0.10, 0.02, 0.05 / 36), (0.10, 0.02, 0.05 / 12), (0.5, 0.0, 0.05),
    (0.3, 0.05, 0.05), (0.2, 0.1, 0.01),
])
def test_pairs_for_power_round_trips_with_mcnemar_power(difference: float, background: float, alpha: float) -> None:
    pairs = pairs_for_power(difference, background, alpha)
    p_only_a = background + difference
    # The power holds over the whole window of 20 pair counts from `pairs`, and the window one earlier
    # fails, which (the rest of it holding) means the power at pairs - 1 is short.
    assert all(mcnemar_power(m, p_only_a, background, alpha) >= 0.8 for m in range(pairs, pairs + 20))
    if pairs > 1:
        assert mcnemar_power(pairs - 1, p_only_a, background, alpha) < 0.8
    # And no earlier n starts a window of 20 (scanned from 1, as the rule reads).
    powers = [mcnemar_power(m, p_only_a, background, alpha) >= 0.8 for m in range(1, pairs + 19)]
    assert not any(all(powers[n - 1:n + 19]) for n in range(1, pairs))


def test_pairs_for_power_skips_a_lucky_pair_count() -> None:
    # Background 0.2, difference 0.6: every pair is discordant (0.8 + 0.2), so D = n and B ~ Bin(n, 0.8).
    # n = 20: 2·(1 + 20 + 190 + 1140 + 4845 + 15504)/2^20 = 0.0414 <= 0.05 but adding C(20,6) = 38760
    # gives 0.1153, so reject iff min(b, c) <= 5: power = P(B <= 5) + P(B >= 15) = 0.804.
    # n = 21: still min(b, c) <= 5 (2·82160/2^21 = 0.078 for 6), now needing B >= 16: power 0.769.
    # So 20 is the first count to reach 0.8 but 21 and 22 fall back; the power stays up from 23.
    powers = {n: mcnemar_power(n, 0.8, 0.2) for n in range(1, 50)}
    assert min(n for n in powers if powers[n] >= 0.8) == 20
    assert powers[20] == pytest.approx(0.8042079657, abs=1e-9) and powers[21] == pytest.approx(0.7692959282, abs=1e-9)
    assert pairs_for_power(0.6, 0.2, 0.05) == 23
    assert all(powers[n] >= 0.8 for n in range(23, 50)) and powers[22] < 0.8


def test_pairs_for_power_gives_up_beyond_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "MAX_PAIRS_FOR_POWER", 50)
    with pytest.raises(ValueError, match="needs more than 50 pairs"):
        pairs_for_power(0.05, 0.2, 0.05)


@pytest.mark.parametrize("args, message", [
    ((0.0, 0.0, 0.05), "0 < difference <= 1 - 2·background"),
    ((0.7, 0.2, 0.05), "0 < difference <= 1 - 2·background"),
    ((0.1, -0.1, 0.05), "background >= 0"),
    ((0.1, 0.0, 1.5), "0 < alpha < 1"),
    ((0.1, 0.0, 0.05, 0.05), "alpha < power < 1"),
])
def test_pairs_for_power_rejects_impossible_arguments(args: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pairs_for_power(*args)  # type: ignore[arg-type]
