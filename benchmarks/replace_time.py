"""Wall time and peak memory of `eisbench bench replace` (targets on 2 CPU cores, MNIST:
quick <= 5 min, full <= 30 min), from a fresh cache, then again from the warm cache.

Runs in a scratch ``EISBENCH_HOME`` (only the dataset cache is copied in), so every network is
trained and every replacement distilled; prints the time of each stage kind, the rest (the
distiller sweeps, the report), the peak resident memory, the headline metrics with the
recovered rule of challenge 1, challenge 2's held-out accuracy per seed beside the published
network's and every distiller's accuracy on the true labels beside the network's, PASS/FAIL
against the target, and the time of the same command on the warm cache (networks loaded; the
sweeps run again).

    python benchmarks/replace_time.py --mode quick
    python benchmarks/replace_time.py --mode full --out /tmp/replace_full
"""

from __future__ import annotations

import sys
from typing import Any

from bench_timing import time_bench

HEADLINE = ("replace/challenge1/agreement", "replace/challenge1/network_acc",
            "replace/challenge1/ablation_agreement", "replace/challenge1/rule_truth_acc",
            "replace/challenge2/fidelity", "replace/challenge2/network_acc",
            "replace/challenge2/best_distiller_minus_network",
            "replace/challenge2/published_agreement", "replace/model/network_acc")


def extra(rec: dict[str, Any]) -> list[str]:
    c1, c2 = rec["details"]["challenge1"], rec["details"]["challenge2"]
    pub = c2["published_network"]
    return [*(f"recovered rule: {r}" for r in c1["rules"]), f"true rule:      {c1['true_rule']}",
            f"challenge 2 held-out accuracy per seed: {c2['network_acc']} (published network: "
            f"{c2['published_acc']} by the challenge's count, {pub['heldout_acc']:.4f} on the "
            "held-out half)",
            *(f"challenge 2 seed #{s}: true-label accuracy on the held-out half: network "
              f"{c2['network_acc'][s]:.4f}, "
              + ", ".join(f"{k} {v:.4f}" for k, v in t.items())
              + f"; chosen on validation: {c2['truth_pick'][s]}"
              for s, t in enumerate(c2["truth_acc"]))]


if __name__ == "__main__":
    sys.exit(time_bench("replace", doc=__doc__, headline=HEADLINE,
                        rest="distiller sweeps, report, start-up", extra=extra))
