"""Speed-up of the Ray executor over the serial one on this machine: the evidence suite on
digits (one seed, a few experiments), each experiment a Ray task declaring one CPU; or, with
``--bench trojans``, the trojan benchmark's quick preset (its zoo's 12 trojaned and clean
models are the Ray tasks; the rest runs in this process).

Runs are interleaved (serial, ray, serial, ray, ...), each in an empty stage cache (the dataset
cache is shared), in one local Ray instance with ``--workers`` CPUs started once before the
first run (its start-up time is printed apart). Both run on ``--threads`` torch threads (each
Ray task too, declaring as many CPUs), so their records must agree (apart from timings, memory
use, the executor and the git state): the script checks it. When ``--threads`` is not torch's
default, a third arm, serial on torch's default threads (what a user gets without flags), is
timed too. Prints each run's wall time, the median ratios, and the load average before and
after.

    python benchmarks/ray_speedup.py                      # 1 thread: two tasks at once
    python benchmarks/ray_speedup.py --threads 2          # tasks one at a time on 2 cores
    python benchmarks/ray_speedup.py --repeats 3 --experiments goh-linear,ntk,superposition
    python benchmarks/ray_speedup.py --bench trojans --data digits --repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--experiments", default="goh-linear,superposition,ntk,goh-leakage")
    p.add_argument("--set", default="goh-leakage:n_construct=1000",
                   help="the suite's per-experiment overrides, comma-separated")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--bench", choices=["suite", "trojans"], default="suite",
                   help="the workload: the evidence suite (default) or bench trojans (quick)")
    p.add_argument("--data", default="digits", help="dataset of --bench trojans")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the serial runs and of each Ray task (default 1)")
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ray-speedup-"))
    os.environ.setdefault("EISBENCH_HOME", str(root / "home"))
    import ray
    import torch

    import eisbench
    from eisbench.runs.executor import steady
    from eisbench.runs.store import Store

    default = torch.get_num_threads()
    arms = [("serial", args.threads), ("ray", args.threads)]
    if args.threads != default:
        arms.append(("serial", default))
    print(f"load average before: {os.getloadavg()}; {os.cpu_count()} CPUs; arms (executor, "
          f"torch threads): {arms}")
    t = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    print(f"ray start-up: {time.perf_counter() - t:.1f} s ({args.workers} workers)")
    times: dict[tuple[str, int], list[float]] = {arm: [] for arm in arms}
    recs: dict[tuple[str, int], Any] = {}
    for i in range(args.repeats):
        for name, n in arms:
            t = time.perf_counter()
            tag = f"{name}-{n}t-{i}"
            if args.bench == "trojans":
                recs[name, n] = eisbench.run(
                    "trojans", "quick", dataset=args.data, out=root / tag,
                    store=Store(root / f"cache-{tag}"), executor=name, threads=n)
            else:
                recs[name, n] = eisbench.run(
                    "features-vs-bugs", dataset="digits", seeds=1, out=root / tag,
                    store=Store(root / f"cache-{tag}"), executor=name, threads=n,
                    overrides=["experiments=" + args.experiments]
                    + (["overrides=" + args.set] if args.set else []))
            times[name, n].append(time.perf_counter() - t)
            print(f"run {i + 1} {name}, {n} threads: {times[name, n][-1]:.1f} s", flush=True)
    ray.shutdown()
    k = args.threads
    same = steady(dict(recs["serial", k])) == steady(dict(recs["ray", k]))
    med = {arm: statistics.median(v) for arm, v in times.items()}
    print(f"bench trojans, quick preset, {args.data}" if args.bench == "trojans" else
          f"experiments: {args.experiments} (digits, 1 seed; {args.set or 'no overrides'})")
    print(f"median serial {med['serial', k]:.1f} s, ray {med['ray', k]:.1f} s at {k} threads: "
          f"speed-up x{med['serial', k] / med['ray', k]:.2f} with {args.workers} Ray CPUs; "
          f"records agree: {same}")
    if ("serial", default) in med:
        print(f"against serial on torch's default {default} threads "
              f"({med['serial', default]:.1f} s): x{med['serial', default] / med['ray', k]:.2f}")
    print(f"load average after: {os.getloadavg()}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
