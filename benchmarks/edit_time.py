"""Wall time and peak memory of `eisbench bench edit` (targets on 2 CPU cores, MNIST:
quick <= 5 min, full <= 30 min), from a fresh cache, then again from the warm cache.

Runs in a scratch ``EISBENCH_HOME`` (only the dataset cache is copied in), so the zoo, every
tool's reconstruction, every edit and every ablation are computed; prints the time of each
stage kind, the rest (evaluation of the unedited models, report, start-up), the peak resident
memory, the headline metrics, the verdicts, PASS/FAIL against the target, and the time of the
same command on the warm cache.

    python benchmarks/edit_time.py --mode quick
    python benchmarks/edit_time.py --mode full --out /tmp/edit_full
"""

from __future__ import annotations

import sys

from bench_timing import time_bench

HEADLINE = ("edit/before/asr", "edit/true-trigger/der", "edit/no-trigger/der",
            "edit/neural-cleanse/der", "edit/tabor/der", "edit/adversarial-patch/der",
            "edit/snafue/der", "edit/feature-adversary-generator/der",
            "edit/feature-adversary-perturbation/der", "edit/fine-pruning/der", "edit/lat/der",
            "lat/robust_gain", "lat/clean_gain", "ablation/conductance/selectivity",
            "ablation/conductance/selectivity_ood", "ablation/random/selectivity")


if __name__ == "__main__":
    sys.exit(time_bench("edit", doc=__doc__, headline=HEADLINE,
                        rest="unedited models' scores, report, start-up"))
