"""Claims, built and judged in one place: verdicts, the worlds they support, metric helpers.

Every experiment and benchmark states its claims through :func:`make_claim` and judges them with
:func:`verdict`; the numbers behind a claim are summarised by :func:`metric_over_seeds` (a mean
with its 95% interval over the unit of replication) and shown by :func:`fmt` / :func:`ci`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eisbench.core.stats import mean_ci
from eisbench.runs.record import EXHIBITS, VERDICTS, WORLDS, Claim, Metric


def make_claim(*, claim: str, rule: str, measured: str, verdict: str, exhibit: str,
               if_reproduced: str, if_not: str = "inconclusive", literature: str = "") -> Claim:
    """A :class:`~eisbench.runs.record.Claim` for the verdict table (arguments checked: a typo
    fails here).

    Example:
        >>> make_claim(claim="x", rule="r", measured="m", verdict="reproduced", exhibit="D",
        ...            if_reproduced="features")["verdict"]
        'reproduced'
    """
    if verdict not in VERDICTS or exhibit not in EXHIBITS:
        raise ValueError(f"bad verdict {verdict!r} or exhibit {exhibit!r}")
    if if_reproduced not in WORLDS or if_not not in WORLDS:
        raise ValueError(f"worlds must be among {WORLDS}: {if_reproduced!r}, {if_not!r}")
    return {"claim": claim, "rule": rule, "measured": measured, "verdict": verdict,
            "exhibit": exhibit, "if_reproduced": if_reproduced, "if_not": if_not,
            "literature": literature}


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


def world(c: Claim) -> str:
    """The world a judged claim supports: features, bugs or inconclusive."""
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
