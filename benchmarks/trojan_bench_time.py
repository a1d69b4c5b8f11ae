"""Wall time and peak memory of `eisbench bench trojans` (targets on 2 CPU cores, MNIST:
quick <= 5 min, full <= 30 min), from a fresh cache, then again from the warm cache.

Runs in a scratch ``EISBENCH_HOME`` (only the dataset cache is copied in), so the zoo, the
judge, every tool's images and every scan are computed; prints the time of each stage kind,
the rest (judge questions, attribution, report), the peak resident memory, the headline
metrics, PASS/FAIL against the target, and the time of the same command on the warm cache
(everything loaded: what re-running after a change to the report costs).

    python benchmarks/trojan_bench_time.py --mode quick
    python benchmarks/trojan_bench_time.py --mode full --out /tmp/trojans_full
"""

from __future__ import annotations

import sys
from typing import Any

from bench_timing import time_bench

HEADLINE = ("judge/true_trigger_acc", "judge/noise_acc", "tool/all/success_rate",
            "tool/best_pair/success_rate", "tool/best_pair_cv/success_rate",
            "tool/noise/success_rate", "tool/trigger-views/success_rate", "detection/auroc")


def extra(rec: dict[str, Any]) -> list[str]:
    missed = [z["name"] for z in rec["details"]["zoo"] if not z["meets_target"]]
    return [f"zoo trojans missing ASR >= 0.90 / drop <= 1 pt: {missed or 'none'}"]


if __name__ == "__main__":
    sys.exit(time_bench("trojans", doc=__doc__, headline=HEADLINE,
                        rest="questions, attribution, report, start-up", extra=extra))
