"""EIS VII challenge 1 without the hint: the replace benchmark's challenge-1 part alone (the
program distiller only), on real MNIST, every network seed of the preset.

Prints, per case, the chosen program's agreement with its network on the test set and its
accuracy on the true rule (t-interval over seeds, the bench's interval), the network's
accuracy, where the clue ranks among the nearest training images and the rule found, beside
the old first-K figures (image 6 among the candidates, and excluded). Needs MNIST in
``$EISBENCH_HOME``; networks go to its stage cache.

    python benchmarks/replace_nohint.py               # FULL preset: seeds 0, 1, 2
    python benchmarks/replace_nohint.py --seeds 0     # one seed
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch

from eisbench.bench.replace import FULL, setting
from eisbench.bench.replace_parts import challenge_1
from eisbench.core.paths import cache_dir
from eisbench.runs.record import Metric
from eisbench.runs.store import Store


def _ci(m: Metric) -> str:
    lo, hi = m["ci95"]
    return f"{m['value']:.4f} [{lo:.4f}, {hi:.4f}] (n={m['n']}, {m['unit']})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default=",".join(map(str, FULL.seeds)))
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    cfg = dataclasses.replace(FULL, distillers=("program",),
                              seeds=tuple(int(s) for s in args.seeds.split(",")))
    t0 = time.perf_counter()
    st = setting(cfg, Store(cache_dir()))
    metrics, details, _ = challenge_1(st, cfg)
    print(f"challenge 1, {len(cfg.seeds)} seed(s), {time.perf_counter() - t0:.0f} s, "
          f"load {os.getloadavg()}")
    for key in ("agreement", "ablation_agreement", "network_acc"):
        print(f"first-K {key:26s} {_ci(metrics[f'replace/challenge1/{key}'])}")
    for case, recs in details["nohint"].items():
        for key in ("agreement", "rule_truth_acc", "network_acc"):
            m = metrics.get(f"replace/challenge1/{case}/{key}")
            if m is not None:
                print(f"{case:10s} {key:24s} {_ci(m)}")
        for r in recs:
            print(f"  clue {r['clue']}: rank {r['clue_rank']}, nearest {r['nearest']} "
                  f"{r['nearest_corr']}, probe agreement {r['probe_agreement']:.4f}, "
                  f"template corr {r['template_corr']:.4f}, size {r['point']['size']}, "
                  f"agreement {r['point']['agree_test']:.4f}, truth {r['truth_acc']:.4f}")
            print(f"    found: {r['rule']}")
            print(f"    true:  {r['true_rule']}")


if __name__ == "__main__":
    main()
