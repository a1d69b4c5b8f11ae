"""The cluster bootstrap: clusters move together (duplicated values do not narrow the interval),
the statistic is the pooled mean, and the interval covers a known mean about 95% of the time
when the clusters, not the values, are the independent units."""

from __future__ import annotations

import pytest
import torch

from eisbench.core.stats import cluster_bootstrap_ci


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
