"""Confidence intervals for metrics: t-intervals over seeds, Wilson intervals over examples,
percentile bootstrap intervals (of replicates, or of a mean resampled by cluster), and the seeds a
t-interval needs to refute a null effect (:func:`seeds_needed`)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch
from scipy import stats


def mean_ci(values: Sequence[float], *, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided t-interval over independent runs (seeds); n=1 gives a zero-width one."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    m = sum(values) / n
    if n == 1:
        return m, m, m
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return m, m - half, m + half


def wilson_ci(successes: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if n == 0:
        raise ValueError("n must be positive")
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))  # brackets p


def percentile_ci(replicates: Sequence[float], *, estimate: float,
                  level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval: the (1 - level)/2 and (1 + level)/2 quantiles (linear
    interpolation, as numpy's default) of the bootstrap ``replicates``, for the statistic whose
    value on the full data is ``estimate``. The interval is widened to contain ``estimate``
    when it falls outside (a biased or very skewed statistic), so that it always brackets the
    value shown. Its width does not shrink with the number of replicates.

    Example:
        >>> [round(v, 9) for v in percentile_ci([float(i) for i in range(101)], estimate=50.0)]
        [2.5, 97.5]
        >>> percentile_ci([1.0, 2.0, 3.0], estimate=5.0)
        (1.05, 5.0)
    """
    xs = sorted(replicates)
    if not xs or not all(math.isfinite(x) for x in xs) or not math.isfinite(estimate):
        raise ValueError(f"need finite replicates and estimate, got {len(xs)} replicates "
                         f"(non-finite: {sum(not math.isfinite(x) for x in xs)}), "
                         f"estimate {estimate}")

    def quantile(q: float) -> float:
        pos = q * (len(xs) - 1)
        i = min(int(pos), len(xs) - 2) if len(xs) > 1 else 0
        return xs[i] + (pos - i) * (xs[min(i + 1, len(xs) - 1)] - xs[i])

    lo, hi = quantile((1 - level) / 2), quantile((1 + level) / 2)
    return min(lo, estimate), max(hi, estimate)


def cluster_bootstrap_ci(values: Sequence[float], clusters: Sequence[Hashable], *,
                         n_boot: int = 2000, generator: torch.Generator,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (N,), resampling whole
    clusters: each of ``n_boot`` resamples draws as many clusters as there are, with
    replacement (from ``generator``), and takes the mean over every value of the clusters
    drawn (the pooled mean, so a cluster weighs by its size, as in the estimate). Values that
    share a cluster (images of one model, trojans of one model) move together, so the interval
    is over the clusters, the unit of replication; with one value per cluster it is the plain
    percentile bootstrap of the mean. Needs at least 2 clusters (one gives no interval). The
    percentile bootstrap is too narrow with few clusters (measured on normal data: 95% intervals
    cover the mean about 0.80 of the time with 4 clusters, 0.90 with 10, 0.93 with 20).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> cluster_bootstrap_ci([0.0, 0.0, 1.0, 1.0], ["a", "a", "b", "b"], generator=g)
        (0.0, 1.0)
    """
    if len(values) != len(clusters) or not values:
        raise ValueError(f"need one cluster per value, got {len(values)} values and "
                         f"{len(clusters)} clusters")
    ids = {c: k for k, c in enumerate(dict.fromkeys(clusters))}
    if len(ids) < 2:
        raise ValueError("a cluster bootstrap needs at least 2 clusters")
    index = torch.tensor([ids[c] for c in clusters])
    x = torch.tensor([float(v) for v in values], dtype=torch.float64)
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, index, x)
    counts = torch.bincount(index, minlength=len(ids)).to(torch.float64)
    draw = torch.randint(len(ids), (n_boot, len(ids)), generator=generator)  # (B, C)
    boot = sums[draw].sum(1) / counts[draw].sum(1)  # (B,)
    return percentile_ci(boot.tolist(), estimate=float(x.mean()), level=level)


def seeds_needed(sd: float, margin: float, *, power: float = 0.8, alpha: float = 0.05,
                 max_n: int = 100) -> int | None:
    """The fewest seeds n >= 2 for which a two-sided (1 - alpha) t-interval over n seeds
    (:func:`mean_ci`), when the true mean sits exactly at a rule's bar, ends short of
    bar + ``margin`` (bar - ``margin`` where lower values reproduce: the same by symmetry)
    with probability at least ``power``: how many seeds a rule of the form of
    :func:`eisbench.runs.claims.decide_against` needs to refute a null effect. ``sd`` is the
    between-seed standard deviation of the metric (one value per seed). None if ``max_n``
    seeds are not enough.

    The probability is exact for normal per-seed values, not the usual approximation
    (t_{n-1, 1-alpha/2} + z_power) * sd / sqrt(n) <= margin: with Z the standardised mean
    error and V = s / sd, the interval ends short of bar + margin when
    Z + t V < margin sqrt(n) / sd, and (margin sqrt(n) / sd - Z) / V is noncentral t with
    n - 1 degrees of freedom and noncentrality margin sqrt(n) / sd, so the probability is
    that variable's survival function at t. A margin of 0 or less returns None: with
    margin 0 the probability is exactly alpha / 2 for every n (Z / V is Student's t), and
    less with a negative margin, so no number of seeds reaches any useful power. ``sd`` 0
    gives 2 (a zero-width interval sits on the bar).

    Example:
        >>> seeds_needed(1.0, 1.0)
        10
        >>> seeds_needed(0.05, 0.05, power=0.9), seeds_needed(0.1, 0.02)
        (13, None)
        >>> seeds_needed(0.1, 0.0) is None
        True
    """
    if not (math.isfinite(sd) and sd >= 0 and math.isfinite(margin)):
        raise ValueError(f"need a finite sd >= 0 and a finite margin, got sd={sd}, "
                         f"margin={margin}")
    if not (0 < power < 1 and 0 < alpha < 1):
        raise ValueError(f"power and alpha must lie in (0, 1), got power={power}, "
                         f"alpha={alpha}")
    if margin <= 0 or max_n < 2:
        return None
    if sd == 0:
        return 2
    for n in range(2, max_n + 1):
        t = float(stats.t.ppf(1 - alpha / 2, n - 1))
        if float(stats.nct.sf(t, n - 1, margin * math.sqrt(n) / sd)) >= power:
            return n
    return None
