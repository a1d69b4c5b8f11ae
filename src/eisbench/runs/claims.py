"""Claims, built and judged in one place: verdicts, the worlds they support, metric helpers.

Every experiment and benchmark states its claims through :func:`make_claim` and judges them with
:func:`verdict`; the numbers behind a claim are summarised by :func:`metric_over_seeds` (a mean
with its 95% t-interval over seeds), :func:`mean_metric` (a mean over units nested in clusters,
with a cluster bootstrap over the clusters), :func:`rate` (k of n, Wilson) or :func:`ci_metric`
(an interval computed elsewhere), and shown by :func:`fmt` / :func:`ci` / :func:`n_label`.
Each sets the metric's ``unit``: what ``n`` counts, then in parentheses what the interval is,
e.g. ``"seeds (95% t-interval)"``.

The evidence suite's rules all have one form, :func:`decide_against`: a claim is reproduced when
its 95% interval lies past a bar, and refuted when the interval's far end stays short of the bar
plus a stated margin (an equivalence bound: "the effect, if any, is smaller than the margin").
With n = 3 seeds a t-interval is wide (t = 4.30), so "refuted only when the whole interval is
past the bar" is nearly unreachable; a margin taken from the published effect makes a
refutation possible without moving the bar. Parts of a compound rule are combined by
:func:`conjunction`, :func:`unanimous`, :func:`needed` and :func:`provided`. The bars and
margins, and :data:`RULES_VERSION` (re-exported here), live in :mod:`eisbench.runs.preregistered`.

Checks gate verdicts. A robust accuracy from an attack suite comes with the suite's sanity
checks (:mod:`eisbench.evaluation.checks`). :func:`merge_checks` folds the checks of every
evaluation behind a metric (seeds, models) into ``{check: passed}``: False if the check failed on
any of them, None if it never ran (no control model given, no gradient-free attack), True
otherwise; the experiment stores that as the metric's ``checks``. A claim passes
``checks=checks_of(metrics, ...)`` for the metrics its rule reads; :func:`make_claim` records them
on the claim, and if any is False the verdict is ``inconclusive`` whatever the rule said, and
``measured`` names the failed checks. A check that could not run is listed but does not gate.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import torch

from eisbench.core.stats import cluster_bootstrap_ci, mean_ci, wilson_ci
from eisbench.runs.preregistered import RULES_VERSION as RULES_VERSION  # re-exported
from eisbench.runs.record import EXHIBITS, ROLES, VERDICTS, WORLDS, Claim, Metric

REPRODUCED, REFUTED, UNSURE = VERDICTS


def make_claim(*, claim: str, rule: str, measured: str, verdict: str, exhibit: str,
               if_reproduced: str, if_not: str = "inconclusive", literature: str = "",
               role: str = "evidence",
               checks: Mapping[str, bool | None] | None = None) -> Claim:
    """A :class:`~eisbench.runs.record.Claim` for the verdict table (arguments checked: a typo
    fails here). ``role="check"`` marks an identity or a sanity check: it supports no world
    (:func:`world`), and when it fails its exhibit's evidence counts as inconclusive.

    ``checks`` (``{check: passed}``, from :func:`checks_of`): the sanity checks of the
    evaluations behind the numbers the rule reads, stored on the claim. If any is False the
    verdict is ``inconclusive`` whatever the rule said, and ``measured`` says which failed;
    None (could not run) is listed but does not gate.

    Example:
        >>> make_claim(claim="x", rule="r", measured="m", verdict="reproduced", exhibit="D",
        ...            if_reproduced="features")["verdict"]
        'reproduced'
        >>> c = make_claim(claim="x", rule="r", measured="m", verdict="reproduced",
        ...                exhibit="D", if_reproduced="features",
        ...                checks={"gradients": False, "control-falls": None})
        >>> c["verdict"], c["measured"][:53]
        ('inconclusive', 'm; inconclusive: the sanity check(s) gradients failed')
    """
    if verdict not in VERDICTS or exhibit not in EXHIBITS:
        raise ValueError(f"bad verdict {verdict!r} or exhibit {exhibit!r}")
    if if_reproduced not in WORLDS or if_not not in WORLDS:
        raise ValueError(f"worlds must be among {WORLDS}: {if_reproduced!r}, {if_not!r}")
    if role not in ROLES:
        raise ValueError(f"role must be among {ROLES}, got {role!r}")
    out: Claim = {"claim": claim, "rule": rule, "measured": measured, "verdict": verdict,
                  "exhibit": exhibit, "if_reproduced": if_reproduced, "if_not": if_not,
                  "literature": literature, "role": role}
    if checks is None:
        return out
    out["checks"] = dict(checks)
    failed = [name for name, passed in checks.items() if passed is False]
    if failed:
        out["verdict"] = UNSURE
        out["measured"] = (f"{measured}; inconclusive: the sanity check(s) {', '.join(failed)} "
                           "failed on the evaluation behind these numbers")
    return out


def merge_checks(evaluations: Iterable[Sequence[Mapping[str, object]]]
                 ) -> dict[str, bool | None]:
    """``{check: passed}`` over several evaluations (each the ``"checks"`` list of an
    ``evaluate_stage`` output: ``{"name", "passed", ...}`` per check): False if the check
    failed on any evaluation, None if it ran on none (``passed`` None or absent everywhere),
    True otherwise. Names keep their first order.

    Example:
        >>> merge_checks([[{"name": "gradients", "passed": True},
        ...                {"name": "control-falls", "passed": None}],
        ...               [{"name": "gradients", "passed": False}]])
        {'gradients': False, 'control-falls': None}
    """
    out: dict[str, bool | None] = {}
    for checks in evaluations:
        for c in checks:
            name, passed = str(c["name"]), c["passed"]
            if passed is not None and not isinstance(passed, bool):
                raise ValueError(f"check {name!r} has passed={passed!r}: True, False or None")
            out[name] = _merge(out.get(name), passed)
    return out


def checks_of(metrics: Mapping[str, Metric], *names: str) -> dict[str, bool | None]:
    """The ``checks`` of the metrics ``names`` merged as by :func:`merge_checks` (a metric
    without ``checks`` adds none): what a claim reading those metrics passes to
    :func:`make_claim`.

    Example:
        >>> m = {"a": {**metric_over_seeds([0.5]), "checks": {"gradients": True}},
        ...      "b": {**metric_over_seeds([0.4]), "checks": {"gradients": False}},
        ...      "c": metric_over_seeds([0.3])}
        >>> checks_of(m, "a", "b", "c")
        {'gradients': False}
    """
    out: dict[str, bool | None] = {}
    for n in names:
        for name, passed in metrics[n].get("checks", {}).items():
            out[name] = _merge(out.get(name), passed)
    return out


def _merge(a: bool | None, b: bool | None) -> bool | None:
    """One check's outcome over two sets of evaluations: a failure anywhere wins, then a pass;
    None only if it never ran."""
    if a is False or b is False:
        return False
    return True if a or b else None


def verdict(reproduced: bool, refuted: bool) -> str:
    """``reproduced`` if the rule's reproduce condition holds, else ``not reproduced`` if its
    refute condition holds, else ``inconclusive``.

    Example:
        >>> verdict(False, True)
        'not reproduced'
    """
    if reproduced:
        return "reproduced"
    return "not reproduced" if refuted else "inconclusive"


def decide_against(value: float, lo: float, hi: float, *, bar: float, margin: float,
                   higher_means_reproduced: bool = True) -> str:
    """The verdict of "the quantity lies past ``bar``" from its estimate and 95% interval.

    With ``higher_means_reproduced`` (the default): ``reproduced`` if ``lo > bar``; else
    ``not reproduced`` if ``hi < bar + margin`` (a positive margin is an equivalence bound:
    the interval rules out any effect of ``margin`` or more past the bar; a negative one keeps
    a pre-registered gap between "clearly" and "barely"); else ``inconclusive``. Mirrored when
    lower values reproduce: ``reproduced`` if ``hi < bar``, ``not reproduced`` if
    ``lo > bar - margin``.

    Example:
        >>> decide_against(0.21, 0.17, 0.24, bar=0.20, margin=0.05)
        'not reproduced'
        >>> decide_against(0.30, 0.25, 0.35, bar=0.20, margin=0.05)
        'reproduced'
    """
    if not (math.isfinite(value) and lo <= value + 1e-9 and value <= hi + 1e-9):
        raise ValueError(f"interval [{lo}, {hi}] does not bracket the estimate {value}")
    if not higher_means_reproduced:
        value, lo, hi, bar = -value, -hi, -lo, -bar
    if lo > bar:
        return REPRODUCED
    return REFUTED if hi < bar + margin else UNSURE


def decide_metric(metrics: Mapping[str, Metric], name: str, *, bar: float, margin: float,
                  higher_means_reproduced: bool = True) -> str:
    """:func:`decide_against` on metric ``name``'s estimate and interval."""
    return decide_against(*ci(metrics, name), bar=bar, margin=margin,
                          higher_means_reproduced=higher_means_reproduced)


def gap(metrics: Mapping[str, Metric], a: str, b: str) -> tuple[float, float, float]:
    """``a - b`` with the interval ``[a_lo - b_hi, a_hi - b_lo]``: for two metrics with no
    paired difference recorded; wider than a paired interval, so a rule on it errs towards
    inconclusive. ``gap(...)[1] > 0`` is "a's interval lies above b's"."""
    va, la, ha = ci(metrics, a)
    vb, lb, hb = ci(metrics, b)
    return va - vb, la - hb, ha - lb


def conjunction(*verdicts: str) -> str:
    """A claim that needs every part: reproduced if every part is, refuted if any part is."""
    if REFUTED in verdicts:
        return REFUTED
    return REPRODUCED if all(v == REPRODUCED for v in verdicts) else UNSURE


def unanimous(*verdicts: str) -> str:
    """A claim over several measures of one thing: reproduced if every part is, refuted only
    if every part is."""
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return REFUTED if all(v == REFUTED for v in verdicts) else UNSURE


def needed(v: str) -> str:
    """A precondition of reproduction whose failure says nothing about the claim's world (an
    attack that did not reach its target, a model that did not train): refuted becomes
    inconclusive."""
    return UNSURE if v == REFUTED else v


def provided(v: str, precondition: str) -> str:
    """``v``, except that a refutation counts only when ``precondition`` is reproduced (e.g.
    "the inversion reached its target on the inverted model itself"); otherwise it is
    inconclusive. A reproduction does not need the precondition."""
    return UNSURE if v == REFUTED and precondition != REPRODUCED else v


def world(c: Claim) -> str:
    """The world a judged claim supports: features, bugs or inconclusive (always inconclusive
    for a check)."""
    if c.get("role", "evidence") == "check":
        return "inconclusive"
    if c["verdict"] == "reproduced":
        return c.get("if_reproduced", "inconclusive")
    if c["verdict"] == "not reproduced":
        return c.get("if_not", "inconclusive")
    return "inconclusive"


SEEDS = "seeds (95% t-interval)"
"""The unit of :func:`metric_over_seeds` unless told otherwise."""


def metric_over_seeds(values: Sequence[float], *, higher_is_better: bool = True,
                      lower: float = 0.0, upper: float = 1.0, unit: str = SEEDS) -> Metric:
    """Mean and 95% t-interval over ``values`` (one per seed), clipped to the metric's range
    [lower, upper]. ``unit``: what the values are and the interval is over (:data:`SEEDS`;
    with the default and one seed, ``"seeds (one seed: no interval)"``).

    Example:
        >>> m = metric_over_seeds([0.5, 0.5])
        >>> m["ci95"], m["unit"]
        ([0.5, 0.5], 'seeds (95% t-interval)')
    """
    m, lo, hi = mean_ci(list(values))
    if unit == SEEDS and len(values) == 1:
        unit = "seeds (one seed: no interval)"
    return {"value": m, "ci95": [max(lower, lo), min(upper, hi)], "n": len(values),
            "higher_is_better": higher_is_better, "unit": unit}


def ci_metric(value: float, lo: float, hi: float, n: int, *, unit: str,
              higher: bool = True) -> Metric:
    """A record metric whose interval [lo, hi] (computed elsewhere) is widened to contain
    ``value``; ``unit`` says what ``n`` counts and what the interval is (no default: only the
    caller knows).

    Example:
        >>> ci_metric(0.3, 0.35, 0.5, 40, unit="test images (Wilson)")["ci95"]
        [0.3, 0.5]
    """
    return {"value": value, "ci95": [min(lo, value), max(hi, value)], "n": n,
            "higher_is_better": higher, "unit": unit}


def rate(correct: Sequence[bool], *, higher_is_better: bool = True,
         unit: str = "trials") -> Metric:
    """The rate of True in ``correct`` (independent trials: ``unit`` names them) with its
    Wilson 95% interval; the recorded unit is ``"<unit> (Wilson)"``.

    Example:
        >>> rate([True, False, True, True], unit="clean models")["unit"]
        'clean models (Wilson)'
    """
    n = len(correct)
    if n == 0:
        raise ValueError("no trials to score")
    k = int(sum(correct))
    lo, hi = wilson_ci(k, n)
    return ci_metric(k / n, lo, hi, n, higher=higher_is_better, unit=f"{unit} (Wilson)")


def mean_metric(values: Sequence[float], clusters: Sequence[Hashable], *, lower: float = 0.0,
                upper: float = 1.0, higher: bool = True, n_boot: int = 2000,
                min_clusters: int = 3, unit: str = "clusters") -> Metric:
    """The mean of ``values`` (one per unit: a trojan's success over seeds, an image's
    correlation, a (model, class) pair's selectivity) with the 95% percentile bootstrap
    interval of exactly that mean, resampling ``clusters`` (the models the units are nested in;
    a fixed generator); n = clusters, and ``unit`` names them. With fewer than
    ``min_clusters`` clusters the interval is the whole range [lower, upper]: a bootstrap over
    1 or 2 units has 1 or 3 possible outcomes and says nothing. Where the mean is exactly a
    count k of n independent successes (every value 0 or 1, one unit per cluster), the
    interval is Wilson's for k of n: a percentile bootstrap of a small count is too narrow
    (1 of 12: [0, 0.25] against Wilson's [0.015, 0.354]). A paired comparison passes the
    per-unit differences, so that a cluster's differences are resampled together. The
    recorded unit is ``"<unit> (<interval>)"``.

    Example:
        >>> m = mean_metric([1.0, 0.0, 0.5], ["m0", "m1", "m2"], unit="models")
        >>> m["n"], m["unit"]
        (3, 'models (95% percentile bootstrap)')
        >>> mean_metric([0.1, 0.2, 0.3], ["m0", "m0", "m1"], unit="models")["ci95"]
        [0.0, 1.0]
    """
    if not values:
        raise ValueError("no units to summarise")
    v = sum(values) / len(values)
    k = len(set(clusters))
    if k < max(2, min_clusters):
        return ci_metric(v, lower, upper, k, higher=higher,
                         unit=f"{unit} (fewer than {max(2, min_clusters)}: the whole range)")
    if set(values) <= {0.0, 1.0} and k == len(values):
        lo, hi = wilson_ci(int(sum(values)), len(values))
        return ci_metric(v, lo, hi, len(values), higher=higher, unit=f"{unit} (Wilson)")
    lo, hi = cluster_bootstrap_ci(values, clusters, n_boot=n_boot,
                                  generator=torch.Generator().manual_seed(0))
    how = "95% cluster bootstrap" if k < len(values) else "95% percentile bootstrap"
    return ci_metric(v, lo, hi, k, higher=higher, unit=f"{unit} ({how})")


def ci(metrics: Mapping[str, Metric], name: str) -> tuple[float, float, float]:
    """``(value, ci low, ci high)`` of metric ``name``."""
    m = metrics[name]
    return m["value"], m["ci95"][0], m["ci95"][1]


def fmt(metrics: Mapping[str, Metric], name: str, *, label: str | None = None) -> str:
    """``"<label> = v [lo, hi]"`` with three decimals (``label`` defaults to ``name``).

    Example:
        >>> fmt({"a": metric_over_seeds([0.25])}, "a")
        'a = 0.250 [0.250, 0.250]'
    """
    v, lo, hi = ci(metrics, name)
    return f"{name if label is None else label} = {v:.3f} [{lo:.3f}, {hi:.3f}]"


def n_label(m: Mapping[str, Any], *, how: bool = True) -> str:
    """``"n=12"``, with the metric's unit where it has one: ``"n=12 graded trojans' models,
    95% percentile bootstrap"`` (``how=False``: without the interval's kind).

    Example:
        >>> n_label(metric_over_seeds([0.5, 0.7]))
        'n=2 seeds, 95% t-interval'
        >>> n_label({"n": 4}), n_label(metric_over_seeds([0.5, 0.7]), how=False)
        ('n=4', 'n=2 seeds')
    """
    unit = m.get("unit")
    if not unit:
        return f"n={m['n']}"
    what, _, kind = str(unit).partition(" (")
    kind = kind[:-1] if kind.endswith(")") else kind
    return f"n={m['n']} {what}" + (f", {kind}" if how and kind else "")
