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

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

TARGET_S = {"quick": 300.0, "full": 1800.0}
HEADLINE = ("edit/before/asr", "edit/true-trigger/der", "edit/no-trigger/der",
            "edit/neural-cleanse/der", "edit/tabor/der", "edit/adversarial-patch/der",
            "edit/snafue/der", "edit/feature-adversary-generator/der",
            "edit/feature-adversary-perturbation/der", "edit/fine-pruning/der", "edit/lat/der",
            "lat/robust_gain", "lat/clean_gain", "ablation/conductance/selectivity",
            "ablation/conductance/selectivity_ood", "ablation/random/selectivity")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mode", choices=sorted(TARGET_S), default="quick")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="keep the record and report here")
    p.add_argument("--no-warm", action="store_true", help="skip the warm-cache rerun")
    args = p.parse_args()

    from eisbench import data
    from eisbench.paths import data_dir

    data.fetch(args.dataset)  # not part of the benchmark's time
    data.fetch("fashion-mnist" if args.dataset == "mnist" else "mnist")  # natural triggers
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        shutil.copytree(data_dir(), home / "data")
        out = args.out or Path(tmp) / "out"
        env = {**os.environ, "EISBENCH_HOME": str(home), "EISBENCH_QUIET": "1"}
        cmd = [sys.executable, "-m", "eisbench.cli", "bench", "edit", f"--{args.mode}",
               "--dataset", args.dataset, "--device", args.device, "--out", str(out)]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        rec = json.loads((out / "record.json").read_text())
        warm = float("nan")
        if not args.no_warm:
            t1 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            warm = time.perf_counter() - t1
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    per_kind: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for s in rec["stages"]:
        per_kind[s["name"]] += s["seconds"]
        count[s["name"]] += 1
    print(f"\nbench edit --{args.mode} on {args.dataset} ({rec['device']}, "
          f"{os.cpu_count()} cores)")
    for kind, sec in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        print(f"  stage {kind:<14} {sec:7.1f} s  ({count[kind]} computed)")
    staged = sum(per_kind.values())
    print(f"  rest             {wall - staged:7.1f} s  (unedited models' scores, report, "
          "start-up)")
    for name in HEADLINE:
        if name in rec["metrics"]:
            m = rec["metrics"][name]
            print(f"  {name:<42} {m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] "
                  f"(n={m['n']})")
    for c in rec["claims"]:
        print(f"  [{c['verdict']:>14}] {c['claim']}: {c['measured']}")
    target = TARGET_S[args.mode]
    ok = wall <= target
    print(f"  total            {wall:7.1f} s  (target <= {target:.0f} s: "
          f"{'PASS' if ok else 'FAIL'})")
    print(f"  warm cache       {warm:7.1f} s")
    print(f"  peak memory      {peak_gib:7.2f} GiB")
    print(json.dumps({"mode": args.mode, "dataset": args.dataset, "wall_s": wall,
                      "warm_s": warm, "target_s": target, "peak_rss_gib": peak_gib,
                      "per_stage_s": per_kind, "pass": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
