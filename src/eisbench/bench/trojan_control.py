"""Which trojans the trojan benchmark grades, and its clean-model control (issue 20, 3 and 5c).

- Graded trojans: only a trojan that meets its implant targets
  (:func:`~eisbench.trojans.zoo.meets_target`: attack success rate and clean-accuracy drop)
  grades the tools and detection: a trigger the model never learned is nothing a tool could
  find. The others are reported apart (:func:`excluded`).
- The clean-model control: for every graded trojan, each tool also runs on a clean model of
  the zoo with the trojan's target, and the judge is asked the trojan's question (its kind's 8
  options, its true answer) about those images. A clean model holds no trigger, so the success
  there is the tool's chance rate on that question (the judge's preferences and the tool's
  style included); the *lift* is the trojan success minus it, per trojan.
- Cost: the clean model of a target is fixed (:func:`control_models`), so trojans with one
  target share its images, cached per (clean model, tool, target, seed) as the trojans' are.
- Units: trojans, clustered by the models they share (:func:`linked_clusters`): two trojans
  asked about one clean model's images are not independent.

Example:
    >>> control_models([4, 5, 4, 1], n_clean=2)
    [0, 1, 0, 0]
    >>> linked_clusters([("t0", "c0"), ("t1", "c1"), ("t2", "c0")])
    [0, 1, 0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eisbench.bench.trojan_scores import CLEAN, MIN_GRADED, mean_metric
from eisbench.runs.record import Metric
from eisbench.trojans.zoo import MAX_DROP, TrojanMetrics

Grid = list[list[bool]]  # per trojan, per tool seed: did the judge pick the true option


def graded_indices(metrics: Sequence[TrojanMetrics]) -> list[int]:
    """Indices of the trojans that meet the implant targets (they grade tools and detection)."""
    return [i for i, m in enumerate(metrics) if m.meets_target]


def excluded(metrics: Sequence[TrojanMetrics]) -> list[dict[str, Any]]:
    """The trojans that miss the implant targets, each with its numbers and why."""
    return [{"name": m.name, "asr": m.asr, "drop": m.drop,
             "why": f"ASR {m.asr:.3f}" + (f", clean-accuracy drop {100 * m.drop:.2f} points"
                                          if m.drop > MAX_DROP else "")}
            for m in metrics if not m.meets_target]


def graded_details(metrics: Sequence[TrojanMetrics], graded: Sequence[int]) -> dict[str, Any]:
    """How many trojans were graded of how many implanted, which, and the excluded ones."""
    return {"n": len(graded), "of": len(metrics), "min": MIN_GRADED,
            "trojans": [metrics[i].name for i in graded], "excluded": excluded(metrics)}


def control_models(targets: Sequence[int], *, n_clean: int) -> list[int]:
    """Per trojan (its target), the clean model its control question asks about: the k-th
    distinct target (in order of appearance) gets clean model ``k mod n_clean``."""
    if n_clean < 1:
        raise ValueError("the clean-model control needs at least one clean model")
    order = list(dict.fromkeys(targets))
    return [order.index(t) % n_clean for t in targets]


def linked_clusters(keys: Sequence[Sequence[str]]) -> list[int]:
    """Per unit, the cluster of units linked through any shared model key (union-find over
    each unit's keys), numbered in order of first appearance."""
    parent: dict[str, str] = {}

    def root(k: str) -> str:
        while parent.setdefault(k, k) != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for ks in keys:
        for k in ks[1:]:
            parent[root(k)] = root(ks[0])
    roots = [root(ks[0]) for ks in keys]
    number = {r: n for n, r in enumerate(dict.fromkeys(roots))}
    return [number[r] for r in roots]


def rates(grid: Grid) -> list[float]:
    """Per trojan, the success fraction over tool seeds."""
    return [sum(g) / len(g) for g in grid]


def control_metrics(trojan: Mapping[str, Grid], clean: Mapping[str, Grid], *,
                    trojan_keys: Sequence[str], clean_keys: Sequence[str]
                    ) -> dict[str, Metric]:
    """Per row of ``clean`` (tools, all tools): ``tool/{row}/clean_success_rate`` (units:
    trojans, clustered by clean model) and ``tool/{row}/lift`` = trojan success - clean
    success, per trojan (clustered by trojan and clean model together)."""
    both = linked_clusters(list(zip(trojan_keys, clean_keys, strict=True)))
    out: dict[str, Metric] = {}
    for row, grid in clean.items():
        c, t = rates(grid), rates(trojan[row])
        out[f"tool/{row}/clean_success_rate"] = mean_metric(c, list(clean_keys), higher=False,
                                                            unit=CLEAN)
        out[f"tool/{row}/lift"] = mean_metric(
            [a - b for a, b in zip(t, c, strict=True)], both, lower=-1.0, upper=1.0,
            unit="groups of graded trojans linked by a shared trojaned or clean model")
    return out
