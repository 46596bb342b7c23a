"""Dev-only cross-check of the verdict's statistics against statsmodels (skipped when it is absent).

statsmodels is in the ``dev`` extra only: the lab computes these numbers itself (reports/stats.py),
and this file checks they are the numbers an independent, widely used implementation gives.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from coordlab.reports.stats import clustered_proportion_interval, holm_adjust, mcnemar_exact, wilson_interval

sm = pytest.importorskip("statsmodels.api")
np = pytest.importorskip("numpy")
multitest = pytest.importorskip("statsmodels.stats.multitest")
contingency_tables = pytest.importorskip("statsmodels.stats.contingency_tables")

Z_95 = 1.959963984540054


def random_p_values(rng: random.Random, m: int) -> list[float]:
    """p-values with the awkward cases mixed in: ties, exact 0 and 1, values that cap at 1."""
    values = [rng.random() ** 3 for _ in range(m)]
    values[rng.randrange(m)] = 1.0
    values[rng.randrange(m)] = values[rng.randrange(m)]
    if m > 3:
        values[rng.randrange(m)] = 0.0
    return values


@pytest.mark.parametrize("seed", range(20))
def test_holm_matches_statsmodels(seed: int) -> None:
    rng = random.Random(seed)
    p_values = random_p_values(rng, rng.randint(1, 40))
    _, expected, _, _ = multitest.multipletests(p_values, alpha=0.05, method="holm")
    assert holm_adjust(p_values) == pytest.approx(list(expected), abs=1e-12)


def test_holm_matches_statsmodels_on_the_hand_case() -> None:
    _, expected, _, _ = multitest.multipletests([0.01, 0.04, 0.03, 0.005], method="holm")
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx(list(expected), abs=1e-12)


def cluster_fit(clusters: list[tuple[int, int]], use_t: bool | None) -> Any:
    """OLS of the 0/1 outcomes on a constant with task-clustered (CR1) standard errors."""
    outcomes, groups = [], []
    for index, (successes, episodes) in enumerate(clusters):
        outcomes += [1.0] * successes + [0.0] * (episodes - successes)
        groups += [index] * episodes
    y = np.array(outcomes)
    return sm.OLS(y, np.ones_like(y)).fit(cov_type="cluster", cov_kwds={"groups": np.array(groups)}, use_t=use_t)


def random_clusters(rng: random.Random) -> list[tuple[int, int]]:
    clusters = []
    for _ in range(rng.randint(2, 30)):
        episodes = rng.randint(1, 25)
        rate = rng.choice([0.0, 1.0, rng.random(), rng.random()])
        clusters.append((sum(rng.random() < rate for _ in range(episodes)), episodes))
    return clusters


@pytest.mark.parametrize("seed", range(30))
def test_clustered_interval_matches_statsmodels_with_t_on_g_minus_1_df(seed: int) -> None:
    # statsmodels' defaults for cov_type="cluster" are use_correction=True (the CR1 factor
    # G/(G-1)·(N-1)/(N-K)) and df_correction=True (df_resid_inference = G - 1); but use_t defaults
    # to False there, i.e. the normal quantile. The lab's interval uses t(G - 1), so pass use_t=True.
    clusters = random_clusters(random.Random(seed))
    fit = cluster_fit(clusters, use_t=True)
    assert fit.use_t and fit.df_resid_inference == len(clusters) - 1
    low, high = fit.conf_int(alpha=0.05)[0]
    result = clustered_proportion_interval(clusters)
    assert result.estimate == pytest.approx(float(fit.params[0]), abs=1e-12)
    assert result.low == pytest.approx(max(0.0, low), abs=1e-10)
    assert result.high == pytest.approx(min(1.0, high), abs=1e-10)


def test_statsmodels_default_is_the_normal_quantile_with_the_same_standard_error() -> None:
    # Apples to apples: with use_t left at its default, statsmodels' interval is p ± 1.96·se with the
    # same CR1 standard error, narrower than the lab's t(G - 1) interval.
    clusters = [(2, 3), (1, 2), (3, 4)]
    fit = cluster_fit(clusters, use_t=None)
    assert not fit.use_t
    standard_error = float(fit.bse[0])
    assert standard_error == pytest.approx((1 / 243) ** 0.5, abs=1e-12)  # the hand case's sqrt(var)
    low, high = fit.conf_int(alpha=0.05)[0]
    assert (low, high) == (pytest.approx(2 / 3 - Z_95 * standard_error, abs=1e-10),
                           pytest.approx(2 / 3 + Z_95 * standard_error, abs=1e-10))
    result = clustered_proportion_interval(clusters)
    assert result.low is not None and result.high is not None and result.low < low and result.high > high


def test_statsmodels_agrees_a_zero_variance_clustered_estimate_is_a_point() -> None:
    fit = cluster_fit([(3, 3), (4, 4)], use_t=True)
    assert float(fit.bse[0]) == pytest.approx(0.0, abs=1e-12)
    assert clustered_proportion_interval([(3, 3), (4, 4)]).low == 1.0


@pytest.mark.parametrize("b, c", [(0, 0), (0, 1), (1, 5), (5, 1), (0, 6), (3, 3), (7, 2), (12, 30), (40, 41),
                                  (0, 25), (100, 140), (400, 600)])
def test_mcnemar_exact_matches_statsmodels(b: int, c: int) -> None:
    # statsmodels' table is [[both, only_a], [only_b, neither]]; only the off-diagonal counts matter.
    result = contingency_tables.mcnemar([[17, b], [c, 9]], exact=True)
    assert mcnemar_exact(b, c) == pytest.approx(float(result.pvalue), rel=1e-10, abs=1e-300)


def test_wilson_matches_statsmodels_proportion_confint() -> None:
    from statsmodels.stats.proportion import proportion_confint

    for successes, n in [(0, 10), (5, 10), (6, 8), (10, 10), (37, 120)]:
        low, high = proportion_confint(successes, n, alpha=0.05, method="wilson")
        assert wilson_interval(successes, n) == (pytest.approx(low, abs=1e-10), pytest.approx(high, abs=1e-10))


@pytest.mark.parametrize("seed", range(10))
def test_the_task_clustered_interval_is_statsmodels_wilson_at_the_design_effects_sample_size(seed: int) -> None:
    # The report's interval: DEFF = the CR1 variance (statsmodels' cluster-robust bse², its default corrections)
    # over the binomial variance p(1-p)/N, at least 1; then Wilson's interval at N / DEFF episodes.
    from statsmodels.stats.proportion import proportion_confint

    from coordlab.reports.stats import task_clustered_interval

    clusters = random_clusters(random.Random(seed))
    episodes = sum(n for _, n in clusters)
    p = sum(s for s, _ in clusters) / episodes
    fit = cluster_fit(clusters, use_t=True)
    effect = max(1.0, float(fit.bse[0]) ** 2 / (p * (1 - p) / episodes)) if 0 < p < 1 else 1.0
    low, high = proportion_confint(p * episodes / effect, episodes / effect, alpha=0.05, method="wilson")
    result = task_clustered_interval(clusters)
    assert result.design_effect == pytest.approx(effect, rel=1e-9)
    assert (result.low, result.high) == (pytest.approx(low, abs=1e-10), pytest.approx(high, abs=1e-10))
