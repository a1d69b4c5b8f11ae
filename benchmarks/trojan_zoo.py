"""The trojan zoo on MNIST or Fashion-MNIST: every trojan against its target (ASR >= 90%,
clean-accuracy drop <= 1 point) and the wall time of the whole zoo (12 trojaned + n clean
models, target <= 6 min on 2 CPU cores) in the cache of ``$EISBENCH_HOME``.

Run it with a scratch ``EISBENCH_HOME`` (copy ``~/.cache/eisbench/data`` into it first) to
time every model from scratch; a second run only loads them.

    EISBENCH_HOME=/tmp/zoo_home python benchmarks/trojan_zoo.py --dataset mnist
    python benchmarks/trojan_zoo.py --dataset fashion-mnist --epochs 5 --n-train 30000

Defaults are the dataset's preset (``eisbench.trojans.zoo.PRESETS``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections import defaultdict

TARGET_S = 360.0


def main() -> int:
    from eisbench.core.paths import cache_dir
    from eisbench.runs.store import Store
    from eisbench.trojans.zoo import format_table, missed, run_zoo, zoo_config

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--n-train", type=int, help="default: the preset's")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--poison-rate", type=float)
    p.add_argument("--class-poison-rate", type=float)
    p.add_argument("--cover-rate", type=float)
    p.add_argument("--n-clean", type=int)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    base = zoo_config(args.dataset, device=args.device)
    train = dataclasses.replace(base.train, epochs=args.epochs or base.train.epochs,
                                lr=args.lr or base.train.lr,
                                batch_size=args.batch_size or base.train.batch_size)
    given = {k: v for k, v in (("n_train", args.n_train), ("poison_rate", args.poison_rate),
                               ("class_poison_rate", args.class_poison_rate),
                               ("cover_rate", args.cover_rate), ("n_clean", args.n_clean))
             if v is not None}
    cfg = dataclasses.replace(base, train=train, **given)
    t0 = time.perf_counter()
    run = run_zoo(cfg, Store(cache_dir()))
    wall = time.perf_counter() - t0
    per_kind: dict[str, list[float]] = defaultdict(list)
    cached = sum(e["cached"] for e in run.log.entries)
    for e in run.log.entries:
        per_kind[e["name"]].append(e["seconds"])
    print(format_table(run.metrics))
    for kind, secs in per_kind.items():
        print(f"stage {kind}: {len(secs)} models, {sum(secs):.1f} s "
              f"({sum(secs) / len(secs):.1f} s each, when computed)")
    print(f"{cached} of {len(run.log.entries)} models loaded from the cache")
    bad = missed(run.metrics)
    print(f"clean reference accuracy {run.metrics[0].clean_ref_acc:.4f} "
          f"({cfg.n_clean} models); missed: {bad or 'none'}")
    trained = sum(sum(s) for s in per_kind.values())
    print(f"wall {wall:.1f} s (stages {trained:.1f} s; target <= {TARGET_S:.0f} s from scratch: "
          f"{'PASS' if wall <= TARGET_S else 'FAIL'}), threads {os.environ.get('OMP_NUM_THREADS')}")
    print(json.dumps({"config": dataclasses.asdict(cfg), "wall_s": wall,
                      "metrics": [m.to_dict() for m in run.metrics]}))
    return 0 if not bad else 1


if __name__ == "__main__":
    raise SystemExit(main())
