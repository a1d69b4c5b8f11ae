"""Speed-up of the Ray executor over the serial one on this machine: the evidence suite on
digits (one seed, a few experiments), each experiment a Ray task declaring one CPU; or, with
``--bench trojans``, the trojan benchmark's quick preset (its zoo's 12 trojaned and clean
models are the Ray tasks; the rest runs in this process).

Runs are interleaved (serial, ray, serial, ray, ...), each in an empty stage cache (the dataset
cache is shared), in one local Ray instance with ``--workers`` CPUs started once before the
first run (its start-up time is printed apart). Serial runs use torch's default threads; each
Ray worker one thread. Prints each run's wall time, the median ratio serial / ray, the load
average before and after, and checks that both records agree (apart from timings, memory use,
the executor and the git state).

    python benchmarks/ray_speedup.py
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
    p.add_argument("--serial-threads", type=int, default=None,
                   help="torch threads of the serial runs (default: torch's, all cores)")
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ray-speedup-"))
    os.environ.setdefault("EISBENCH_HOME", str(root / "home"))
    import ray
    import torch

    import eisbench
    from eisbench.runs.executor import steady
    from eisbench.runs.store import Store

    if args.serial_threads:
        torch.set_num_threads(args.serial_threads)
    print(f"load average before: {os.getloadavg()}; {os.cpu_count()} CPUs; serial runs use "
          f"{torch.get_num_threads()} torch threads, each Ray worker 1")
    t = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    print(f"ray start-up: {time.perf_counter() - t:.1f} s ({args.workers} workers)")
    times: dict[str, list[float]] = {"serial": [], "ray": []}
    recs: dict[str, Any] = {}
    for i in range(args.repeats):
        for name in ("serial", "ray"):
            t = time.perf_counter()
            if args.bench == "trojans":
                recs[name] = eisbench.run(
                    "trojans", "quick", dataset=args.data, out=root / f"{name}-{i}",
                    store=Store(root / f"cache-{name}-{i}"), executor=name)
            else:
                recs[name] = eisbench.run(
                    "features-vs-bugs", dataset="digits", seeds=1, out=root / f"{name}-{i}",
                    store=Store(root / f"cache-{name}-{i}"), executor=name,
                    overrides=["experiments=" + args.experiments]
                    + (["overrides=" + args.set] if args.set else []))
            times[name].append(time.perf_counter() - t)
            print(f"run {i + 1} {name}: {times[name][-1]:.1f} s", flush=True)
    ray.shutdown()
    same = steady(dict(recs["serial"])) == steady(dict(recs["ray"]))
    s, r = statistics.median(times["serial"]), statistics.median(times["ray"])
    print(f"bench trojans, quick preset, {args.data}" if args.bench == "trojans" else
          f"experiments: {args.experiments} (digits, 1 seed; {args.set or 'no overrides'})")
    print(f"median serial {s:.1f} s, ray {r:.1f} s: speed-up x{s / r:.2f} with {args.workers} "
          f"Ray workers; records agree: {same}")
    print(f"load average after: {os.getloadavg()}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
