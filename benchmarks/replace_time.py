"""Wall time and peak memory of `eisbench bench replace` (targets on 2 CPU cores, MNIST:
quick <= 5 min, full <= 30 min), from a fresh cache, then again from the warm cache.

Runs in a scratch ``EISBENCH_HOME`` (only the dataset cache is copied in), so every network is
trained and every replacement distilled; prints the time of each stage kind, the rest (the
distiller sweeps, the report), the peak resident memory, the headline metrics with the
recovered rule of challenge 1, PASS/FAIL against the target, and the time of the same command
on the warm cache (networks loaded; the sweeps run again).

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
            "replace/model/network_acc")


def extra(rec: dict[str, Any]) -> list[str]:
    c1 = rec["details"]["challenge1"]
    return [*(f"recovered rule: {r}" for r in c1["rules"]), f"true rule:      {c1['true_rule']}"]


if __name__ == "__main__":
    sys.exit(time_bench("replace", doc=__doc__, headline=HEADLINE,
                        rest="distiller sweeps, report, start-up", extra=extra))
