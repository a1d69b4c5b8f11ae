"""Wall time of `eisbench audit` on a small CNN (target on 2 CPU cores, MNIST: <= 10 min),
from a fresh cache: the reference models the audit trains are part of the time; the audited
model (cnn-small, standard training, seed 1, 5 epochs) is trained beforehand and is not.

    python benchmarks/audit_time.py
    python benchmarks/audit_time.py --out /tmp/audit_cnn   # keep the record and report
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
from pathlib import Path

TARGET_S = 600.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    from eisbench import data
    from eisbench.core.paths import data_dir

    data.fetch(args.dataset)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        shutil.copytree(data_dir(), home / "data")
        env = {**os.environ, "EISBENCH_HOME": str(home), "EISBENCH_QUIET": "1"}
        ckpt = Path(tmp) / "audited"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "eisbench.cli", "train", "--arch", "cnn-small",
                        "--dataset", args.dataset, "--epochs", "5", "--lr", "3e-3", "--seed",
                        "1", "--device", args.device, "--out", str(ckpt)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        train_s = time.perf_counter() - t0
        out = args.out or Path(tmp) / "out"
        t1 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "eisbench.cli", "audit", "--checkpoint",
                               str(ckpt), "--data", args.dataset, "--full", "--device",
                               args.device, "--out", str(out)], env=env, check=True,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t1
        rec = json.loads((out / "record.json").read_text())
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(done.stdout)
    stages = {f"{s['name']} {s['key']}": s["seconds"] for s in rec["stages"]}
    print(f"audit of a cnn-small on {args.dataset} ({os.cpu_count()} cores): {wall:.1f} s "
          f"(target <= {TARGET_S:.0f} s: {'PASS' if wall <= TARGET_S else 'FAIL'}); reference "
          f"training inside it: {sum(stages.values()):.1f} s; the audited model trained "
          f"beforehand in {train_s:.1f} s; peak memory {peak_gib:.2f} GiB")
    print(json.dumps({"wall_s": wall, "target_s": TARGET_S, "pass": wall <= TARGET_S,
                      "stages_s": stages, "peak_rss_gib": peak_gib}))
    return 0 if wall <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
