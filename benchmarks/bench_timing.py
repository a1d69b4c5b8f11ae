"""Shared by the `eisbench bench NAME` timing scripts (trojan_bench_time.py, edit_time.py,
replace_time.py): run the benchmark in a scratch ``EISBENCH_HOME`` (only the dataset cache is
copied in, so every stage is computed), then again on the warm cache; print the time of each
stage kind, the rest, the headline metrics, the verdicts, the peak resident memory and
PASS/FAIL against the mode's target, and a final JSON line.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

TARGET_S = {"quick": 300.0, "full": 1800.0}  # every benchmark: quick <= 5 min, full <= 30 min


def time_bench(name: str, *, doc: str | None, headline: Sequence[str], rest: str,
               extra: Callable[[dict[str, Any]], list[str]] | None = None) -> int:
    """Parse ``--mode/--dataset/--device/--out/--no-warm``, time ``eisbench bench NAME`` and
    print the report; ``extra(record)`` adds lines (e.g. a recovered rule). Exit code 0 on
    PASS."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--mode", choices=sorted(TARGET_S), default="quick")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="keep the record and report here")
    p.add_argument("--no-warm", action="store_true", help="skip the warm-cache rerun")
    args = p.parse_args()

    from eisbench import data
    from eisbench.core.paths import data_dir

    data.fetch(args.dataset)  # not part of the benchmark's time
    data.fetch("fashion-mnist" if args.dataset == "mnist" else "mnist")  # natural triggers
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        shutil.copytree(data_dir(), home / "data")
        out = args.out or Path(tmp) / "out"
        env = {**os.environ, "EISBENCH_HOME": str(home), "EISBENCH_QUIET": "1"}
        cmd = [sys.executable, "-m", "eisbench.cli", "bench", name, f"--{args.mode}",
               "--dataset", args.dataset, "--device", args.device, "--out", str(out)]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        rec = json.loads((out / "record.json").read_text())
        warm = float("nan")
        if not args.no_warm:
            t1 = time.perf_counter()
            subprocess.run([*cmd, "--force"], env=env, check=True, stdout=subprocess.DEVNULL)
            warm = time.perf_counter() - t1
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    per_kind: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for s in rec["stages"]:
        if not s["cached"]:
            per_kind[s["name"]] += s["seconds"]
            count[s["name"]] += 1
    print(f"\nbench {name} --{args.mode} on {args.dataset} ({rec['device']}, "
          f"{os.cpu_count()} cores)")
    for kind, sec in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        print(f"  stage {kind:<18} {sec:7.1f} s  ({count[kind]} computed)")
    print(f"  rest                 {wall - sum(per_kind.values()):7.1f} s  ({rest})")
    for key in headline:
        if key in rec["metrics"]:
            m = rec["metrics"][key]
            print(f"  {key:<42} {m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] "
                  f"(n={m['n']})")
    for line in (extra(rec) if extra else []):
        print(f"  {line}")
    for c in rec["claims"]:
        print(f"  [{c['verdict']:>14}] {c['claim']}: {c['measured']}")
    target = TARGET_S[args.mode]
    ok = wall <= target
    print(f"  total                {wall:7.1f} s  (target <= {target:.0f} s: "
          f"{'PASS' if ok else 'FAIL'})")
    print(f"  warm cache           {warm:7.1f} s")
    print(f"  peak memory          {peak_gib:7.2f} GiB")
    print(json.dumps({"benchmark": name, "mode": args.mode, "dataset": args.dataset,
                      "wall_s": wall, "warm_s": warm, "target_s": target,
                      "peak_rss_gib": peak_gib, "per_stage_s": per_kind, "pass": ok}))
    return 0 if ok else 1
