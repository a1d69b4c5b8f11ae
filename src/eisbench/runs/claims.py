"""Claims, built and judged in one place: verdicts, the worlds they support, metric helpers.

Every experiment and benchmark states its claims through :func:`make_claim` and judges them with
:func:`verdict`; the numbers behind a claim are summarised by :func:`metric_over_seeds` (a mean
with its 95% interval over the unit of replication) and shown by :func:`fmt` / :func:`ci`.

The evidence suite's rules all have one form, :func:`decide_against`: a claim is reproduced when
its 95% interval lies past a bar, and refuted when the interval's far end stays short of the bar
plus a stated margin (an equivalence bound: "the effect, if any, is smaller than the margin").
With n = 3 seeds a t-interval is wide (t = 4.30), so "refuted only when the whole interval is
past the bar" is nearly unreachable; a margin taken from the published effect makes a
refutation possible without moving the bar. Parts of a compound rule are combined by
:func:`conjunction`, :func:`unanimous`, :func:`needed` and :func:`provided`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from eisbench.core.stats import mean_ci
from eisbench.runs.record import EXHIBITS, ROLES, VERDICTS, WORLDS, Claim, Metric

REPRODUCED, REFUTED, UNSURE = VERDICTS

RULES_VERSION = 2
"""The version of the claims' decision rules, recorded in every record (``versions``'s
``claim_rules``). A rule changed after results were seen bumps it, and says so here:

- 1: the first rules (refuted only when a whole interval lies past the bar; several claims
  could only ever support one world).
- 2 (2026-12): every claim states what each outcome means for each world (``if_not``);
  identities and sanity checks are checks (``role="check"``), never evidence; rules take the
  form :func:`decide_against` with a stated margin, so a refutation is reachable; some reproduce
  rules tightened (D_NR, squares: the interval's lower bound, not the mean) or paired (A1-A3).
  Chosen after the rule-1 verdicts of the digits and MNIST suites had been seen.
"""


def make_claim(*, claim: str, rule: str, measured: str, verdict: str, exhibit: str,
               if_reproduced: str, if_not: str = "inconclusive", literature: str = "",
               role: str = "evidence") -> Claim:
    """A :class:`~eisbench.runs.record.Claim` for the verdict table (arguments checked: a typo
    fails here). ``role="check"`` marks an identity or a sanity check: it supports no world
    (:func:`world`), and when it fails its exhibit's evidence counts as inconclusive.

    Example:
        >>> make_claim(claim="x", rule="r", measured="m", verdict="reproduced", exhibit="D",
        ...            if_reproduced="features")["verdict"]
        'reproduced'
    """
    if verdict not in VERDICTS or exhibit not in EXHIBITS:
        raise ValueError(f"bad verdict {verdict!r} or exhibit {exhibit!r}")
    if if_reproduced not in WORLDS or if_not not in WORLDS:
        raise ValueError(f"worlds must be among {WORLDS}: {if_reproduced!r}, {if_not!r}")
    if role not in ROLES:
        raise ValueError(f"role must be among {ROLES}, got {role!r}")
    return {"claim": claim, "rule": rule, "measured": measured, "verdict": verdict,
            "exhibit": exhibit, "if_reproduced": if_reproduced, "if_not": if_not,
            "literature": literature, "role": role}


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


def metric_over_seeds(values: Sequence[float], *, higher_is_better: bool = True,
                      lower: float = 0.0, upper: float = 1.0) -> Metric:
    """Mean and 95% t-interval over seeds, clipped to the metric's range [lower, upper].

    Example:
        >>> metric_over_seeds([0.5, 0.5])["ci95"]
        [0.5, 0.5]
    """
    m, lo, hi = mean_ci(list(values))
    return {"value": m, "ci95": [max(lower, lo), min(upper, hi)], "n": len(values),
            "higher_is_better": higher_is_better}


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
