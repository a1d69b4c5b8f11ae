"""Wall time and peak memory of `eisbench run features-vs-bugs` (the evidence suite: quick
<= 10 min, full <= 60 min, memory < 8 GiB on 2 cores), experiment by experiment.

Runs in a fresh cache (only the dataset cache is shared), so every stage is computed, and
prints the time of each experiment and of each stage kind, the peak resident memory of the
run, and PASS/FAIL against the targets. ``--experiment ilyas`` times one experiment alone.

    python benchmarks/features_vs_bugs_time.py --mode quick
    python benchmarks/features_vs_bugs_time.py --mode full --dataset fashion-mnist
    python benchmarks/features_vs_bugs_time.py --mode quick --experiment ilyas
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

TARGET_S = {"quick": 600.0, "full": 3600.0}
MEMORY_GIB = 8.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mode", choices=sorted(TARGET_S), default="quick")
    p.add_argument("--experiment", default="features-vs-bugs")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="keep the records/reports here")
    args = p.parse_args()

    from eisbench import data
    from eisbench.core.paths import data_dir

    data.fetch(args.dataset)  # timed separately: the download is not part of the experiment
    if args.dataset == "mnist":
        try:
            data.fetch("fashion-mnist")  # wallace's foreign images
        except data.DataError as e:
            print(f"wallace will use its fallback foreign set (photo patches): {e}",
                  file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        shutil.copytree(data_dir(), home / "data")
        out = args.out or Path(tmp) / "out"
        env = {**os.environ, "EISBENCH_HOME": str(home), "EISBENCH_QUIET": "1"}
        cmd = [sys.executable, "-m", "eisbench.cli", "run", args.experiment, f"--{args.mode}",
               "--dataset", args.dataset, "--device", args.device, "--out", str(out)]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        wall = time.perf_counter() - t0
        rec = json.loads((out / "record.json").read_text())
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    per_kind: dict[str, float] = defaultdict(float)
    for s in rec["stages"]:
        per_kind[s["name"]] += s["seconds"]
    print(f"\n{args.experiment} --{args.mode} on {args.dataset} ({rec['device']}, "
          f"{os.cpu_count()} cores)")
    runs = rec["details"].get("runs", [])
    for r in runs:
        status = "ok" if r["ok"] else f"{r['status']} ({r['error']})"
        print(f"  {r['experiment']:<14} {r['seconds']:7.1f} s  {status}")
    for kind, sec in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        print(f"  stage {kind:<9} {sec:7.1f} s")
    target = TARGET_S[args.mode]
    ok_time, ok_mem = wall <= target, peak_gib < MEMORY_GIB
    ok_runs = all(r["ok"] for r in runs)
    print(f"  total          {wall:7.1f} s  (target <= {target:.0f} s: "
          f"{'PASS' if ok_time else 'FAIL'})")
    print(f"  peak memory    {peak_gib:7.2f} GiB (target < {MEMORY_GIB:g} GiB: "
          f"{'PASS' if ok_mem else 'FAIL'})")
    print(json.dumps({"experiment": args.experiment, "mode": args.mode, "dataset": args.dataset,
                      "wall_s": wall, "target_s": target, "peak_rss_gib": peak_gib,
                      "per_experiment_s": {r["experiment"]: r["seconds"] for r in runs},
                      "not_ok": [r["experiment"] for r in runs if not r["ok"]],
                      "pass": ok_time and ok_mem and ok_runs, "per_stage_s": per_kind}))
    return 0 if ok_time and ok_mem and ok_runs else 1


if __name__ == "__main__":
    sys.exit(main())
