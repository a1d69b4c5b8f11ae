"""The cluster bootstrap: clusters move together (duplicated values do not narrow the interval),
the statistic is the pooled mean, and the interval covers a known mean about 95% of the time
when the clusters, not the values, are the independent units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from eisbench.core.stats import cluster_bootstrap_ci, seeds_needed


def _width(ci: tuple[float, float]) -> float:
    return ci[1] - ci[0]


def test_duplicated_values_in_one_cluster_do_not_narrow_the_interval() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.rand(10, generator=g).tolist()
    dup = [v for v in base for _ in range(5)]  # each unit measured 5 times, identically
    clustered = cluster_bootstrap_ci(dup, [i // 5 for i in range(50)],
                                     generator=torch.Generator().manual_seed(1))
    independent = cluster_bootstrap_ci(dup, list(range(50)),
                                       generator=torch.Generator().manual_seed(1))
    alone = cluster_bootstrap_ci(base, list(range(10)),
                                 generator=torch.Generator().manual_seed(1))
    # treating the 50 copies as independent shrinks the interval by about sqrt(5)
    assert _width(clustered) > 1.8 * _width(independent)
    # clustered copies give the interval of the 10 units themselves
    assert _width(clustered) == pytest.approx(_width(alone), rel=0.15)
    mean = sum(base) / 10
    assert clustered[0] < mean < clustered[1]


def test_the_statistic_is_the_pooled_mean_of_the_clusters_drawn() -> None:
    # a: four zeros, b: one 1. Resamples of two clusters: aa -> 0 (1/4), ab -> 1/5 (1/2),
    # bb -> 1 (1/4); the 40% and 60% quantiles both lie in ab's mass. The mean of the cluster
    # means would give 0.5 there. Resampling the 5 values instead reaches 1 with chance
    # 0.2^5, so its 95% interval ends at 0.6, where the clustered one reaches 1.
    values, clusters = [0.0, 0.0, 0.0, 0.0, 1.0], ["a"] * 4 + ["b"]
    lo, hi = cluster_bootstrap_ci(values, clusters, level=0.2, n_boot=4000,
                                  generator=torch.Generator().manual_seed(0))
    assert (lo, hi) == pytest.approx((0.2, 0.2))
    assert cluster_bootstrap_ci(values, clusters, n_boot=4000,
                                generator=torch.Generator().manual_seed(0)) == (0.0, 1.0)


def test_coverage_of_a_known_mean_with_clustered_data() -> None:
    # 20 clusters of 1..5 values: a cluster effect N(0, 1) shared by its values plus small
    # noise; the true mean is 0. Intervals that ignored the clusters would cover far less.
    g = torch.Generator().manual_seed(0)
    reps, covered, naive_covered = 200, 0, 0
    for r in range(reps):
        sizes = torch.randint(1, 6, (20,), generator=g).tolist()
        effect = torch.randn(20, generator=g)
        values = [float(effect[c] + 0.1 * torch.randn(1, generator=g)) for c, k in
                  enumerate(sizes) for _ in range(k)]
        clusters = [c for c, k in enumerate(sizes) for _ in range(k)]
        lo, hi = cluster_bootstrap_ci(values, clusters, n_boot=500,
                                      generator=torch.Generator().manual_seed(r))
        covered += lo <= 0.0 <= hi
        lo, hi = cluster_bootstrap_ci(values, list(range(len(values))), n_boot=500,
                                      generator=torch.Generator().manual_seed(r))
        naive_covered += lo <= 0.0 <= hi
    assert 0.88 <= covered / reps <= 0.99
    assert naive_covered / reps < 0.8


def test_bad_input_fails_loudly() -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="one cluster per value"):
        cluster_bootstrap_ci([1.0, 2.0], ["a"], generator=g)
    with pytest.raises(ValueError, match="at least 2 clusters"):
        cluster_bootstrap_ci([1.0, 2.0], ["a", "a"], generator=g)
    assert cluster_bootstrap_ci([3.0, 3.0], ["a", "b"], generator=g) == (3.0, 3.0)


# seeds_needed: the seeds a t-interval rule needs to refute a mean that sits on its bar.


def _refute_rate_by_integral(n: int, delta: float, alpha: float = 0.05) -> float:
    """P(Z + t V < delta), Z ~ N(0, 1), V = sqrt(chi2_{n-1} / (n-1)), by quadrature over V:
    the chance that the interval's upper end stays short of bar + margin, where delta =
    margin sqrt(n) / sd. Independent of the noncentral t the function uses."""
    df, t = n - 1, float(stats.t.ppf(1 - alpha / 2, n - 1))

    def integrand(v: float) -> float:  # density of V at v times P(Z < delta - t v)
        return float(stats.chi2.pdf(df * v * v, df) * 2 * df * v
                     * stats.norm.cdf(delta - t * v))

    return integrate.quad(integrand, 0, np.inf, limit=200)[0]


def _refute_rate_simulated(n: int, sd: float, margin: float, draws: int = 20_000) -> float:
    """Fraction of ``draws`` simulated n-seed experiments (true mean 0 = the bar) whose 95%
    t-interval ends below the margin."""
    x = np.random.default_rng(0).normal(0.0, sd, size=(draws, n))  # (draws, n)
    hi = x.mean(1) + stats.t.ppf(0.975, n - 1) * x.std(1, ddof=1) / math.sqrt(n)  # (draws,)
    return float((hi < margin).mean())


def test_sd_equal_to_margin_needs_the_n_a_quadrature_gives() -> None:
    expected = next(n for n in range(2, 100) if _refute_rate_by_integral(n, math.sqrt(n)) >= 0.8)
    assert expected == 10  # 0.748 at n = 9, 0.803 at n = 10
    assert seeds_needed(1.0, 1.0) == expected
    assert seeds_needed(0.02, 0.02) == expected  # only sd / margin matters
    at_90 = next(n for n in range(2, 100) if _refute_rate_by_integral(n, math.sqrt(n)) >= 0.9)
    assert seeds_needed(1.0, 1.0, power=0.9) == at_90 == 13
    # sd = 0.8 margin: the textbook approximation says 7 seeds, where the power is only 0.79
    at_08 = next(n for n in range(2, 100)
                 if _refute_rate_by_integral(n, math.sqrt(n) / 0.8) >= 0.8)
    assert seeds_needed(0.8, 1.0) == at_08 == 8


def test_simulated_experiments_refute_at_the_returned_n_and_not_one_seed_fewer() -> None:
    n = seeds_needed(0.025, 0.05)  # exact rates: 0.91 at n = 5, 0.76 at n = 4
    assert n is not None
    assert _refute_rate_simulated(n, 0.025, 0.05) >= 0.8
    assert _refute_rate_simulated(n - 1, 0.025, 0.05) < 0.8


def _need(sd: float, margin: float, *, power: float = 0.8, alpha: float = 0.05) -> int:
    n = seeds_needed(sd, margin, power=power, alpha=alpha, max_n=500)
    assert n is not None, (sd, margin, power, alpha)
    return n


def test_more_spread_needs_more_seeds_and_a_wider_margin_fewer() -> None:
    by_sd = [_need(sd, 0.05) for sd in (0.005, 0.02, 0.04, 0.06, 0.1)]
    by_margin = [_need(0.05, m) for m in (0.01, 0.03, 0.05, 0.1, 0.3)]
    assert by_sd == sorted(by_sd) and by_sd[0] < by_sd[-1]
    assert by_margin == sorted(by_margin, reverse=True) and by_margin[0] > by_margin[-1]
    assert _need(0.05, 0.05, power=0.95) > _need(0.05, 0.05, power=0.5)
    assert _need(0.05, 0.05, alpha=0.01) > _need(0.05, 0.05, alpha=0.2)


def test_the_exact_answer_stays_within_one_seed_of_the_textbook_approximation() -> None:
    z = float(stats.norm.ppf(0.8))
    for ratio in (0.3, 0.5, 1.0, 1.5, 2.0, 3.0):  # sd / margin
        approx = next(n for n in range(2, 1000)
                      if (stats.t.ppf(0.975, n - 1) + z) * ratio / math.sqrt(n) <= 1)
        exact = seeds_needed(ratio, 1.0, max_n=1000)
        assert exact is not None and abs(exact - approx) <= 1, (ratio, exact, approx)


def test_no_margin_no_refutation_and_too_few_seeds_allowed_give_none() -> None:
    assert seeds_needed(0.1, 0.0) is None
    assert seeds_needed(0.1, -0.05) is None
    assert seeds_needed(0.1, 0.02) is None  # needs ~199 seeds, past max_n = 100
    assert seeds_needed(0.1, 0.02, max_n=1000) is not None
    assert seeds_needed(1.0, 1.0, max_n=9) is None and seeds_needed(1.0, 1.0, max_n=10) == 10
    assert seeds_needed(0.0, 0.01) == 2  # no spread: a zero-width interval on the bar
    # why margin 0 is hopeless: the interval ends below the bar alpha/2 of the time, any n
    for n in (3, 30):
        assert abs(_refute_rate_simulated(n, 1.0, 0.0) - 0.025) < 0.005


def test_seeds_needed_rejects_bad_input() -> None:
    for sd, margin, power, alpha in ((-0.1, 0.1, 0.8, 0.05), (math.nan, 0.1, 0.8, 0.05),
                                     (0.1, math.inf, 0.8, 0.05), (0.1, 0.1, 1.0, 0.05),
                                     (0.1, 0.1, 0.8, 0.0)):
        with pytest.raises(ValueError):
            seeds_needed(sd, margin, power=power, alpha=alpha)
