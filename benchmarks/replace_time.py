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
HEADLINE = ("replace/challenge1/agreement", "replace/challenge1/network_acc",
            "replace/challenge1/ablation_agreement", "replace/challenge1/rule_truth_acc",
            "replace/challenge2/fidelity", "replace/challenge2/network_acc",
            "replace/model/network_acc")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mode", choices=sorted(TARGET_S), default="quick")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="keep the record and report here")
    p.add_argument("--no-warm", action="store_true", help="skip the warm-cache run")
    args = p.parse_args()

    from eisbench import data
    from eisbench.paths import data_dir

    data.fetch(args.dataset)  # not part of the benchmark's time
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        shutil.copytree(data_dir(), home / "data")
        out = args.out or Path(tmp) / "out"
        env = {**os.environ, "EISBENCH_HOME": str(home), "EISBENCH_QUIET": "1"}
        cmd = [sys.executable, "-m", "eisbench.cli", "bench", "replace", f"--{args.mode}",
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
    print(f"\nbench replace --{args.mode} on {args.dataset} ({rec['device']}, "
          f"{os.cpu_count()} cores)")
    for kind, sec in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        print(f"  stage {kind:<17} {sec:7.1f} s  ({count[kind]} computed)")
    staged = sum(per_kind.values())
    print(f"  rest                    {wall - staged:7.1f} s  (distiller sweeps, report, "
          "start-up)")
    for name in HEADLINE:
        if name in rec["metrics"]:
            m = rec["metrics"][name]
            print(f"  {name:<40} {m['value']:.4f} [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}] "
                  f"(n={m['n']})")
    for rule in rec["details"]["challenge1"]["rules"]:
        print(f"  recovered rule: {rule}")
    print(f"  true rule:      {rec['details']['challenge1']['true_rule']}")
    for c in rec["claims"]:
        print(f"  [{c['verdict']:>14}] {c['claim']}")
    target = TARGET_S[args.mode]
    ok = wall <= target
    print(f"  total          {wall:7.1f} s  (target <= {target:.0f} s: "
          f"{'PASS' if ok else 'FAIL'})")
    print(f"  warm cache     {warm:7.1f} s")
    print(f"  peak memory    {peak_gib:7.2f} GiB")
    print(json.dumps({"mode": args.mode, "dataset": args.dataset, "wall_s": wall,
                      "warm_s": warm, "target_s": target, "peak_rss_gib": peak_gib,
                      "per_stage_s": per_kind, "pass": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
