"""Wall time of `eisbench run features-vs-bugs` (quick <= 10 min, full <= 60 min on 2 cores).

Runs the experiment in a fresh cache (only the dataset cache is shared), so every stage is
computed, and prints the time per stage kind and PASS/FAIL against the target.

    python benchmarks/features_vs_bugs_time.py --mode quick
    python benchmarks/features_vs_bugs_time.py --mode full --dataset fashion-mnist
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

TARGET_S = {"quick": 600.0, "full": 3600.0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mode", choices=sorted(TARGET_S), default="quick")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="keep the record/report here")
    args = p.parse_args()

    from eisbench import data
    from eisbench.paths import data_dir

    data.fetch(args.dataset)  # timed separately: the download is not part of the experiment
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        shutil.copytree(data_dir(), home / "data")
        out = args.out or Path(tmp) / "out"
        env = {**os.environ, "EISBENCH_HOME": str(home), "EISBENCH_QUIET": "1"}
        cmd = [sys.executable, "-m", "eisbench.cli", "run", "features-vs-bugs", f"--{args.mode}",
               "--dataset", args.dataset, "--device", args.device, "--out", str(out)]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        wall = time.perf_counter() - t0
        rec = json.loads((out / "record.json").read_text())
    per_kind: dict[str, float] = defaultdict(float)
    for s in rec["stages"]:
        per_kind[s["name"]] += s["seconds"]
    print(f"\nfeatures-vs-bugs --{args.mode} on {args.dataset} ({rec['device']}, "
          f"torch threads {os.cpu_count()} cores)")
    for kind, sec in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<10} {sec:7.1f} s")
    target = TARGET_S[args.mode]
    verdict = "PASS" if wall <= target else "FAIL"
    print(f"  total      {wall:7.1f} s  (target <= {target:.0f} s: {verdict})")
    print(json.dumps({"mode": args.mode, "dataset": args.dataset, "wall_s": wall,
                      "target_s": target, "pass": wall <= target, "per_stage_s": per_kind}))
    return 0 if wall <= target else 1


if __name__ == "__main__":
    sys.exit(main())
