"""Neural Cleanse and TABOR scans of the MNIST trojan zoo, old recipes against published ones.

For every trojaned and clean model of the zoo (``eisbench.trojans.zoo.run_zoo``, MNIST preset,
cached under ``$EISBENCH_HOME``), scan every class with four recipes:

- ``nc-v1``: Neural Cleanse under eisbench's earlier schedule (``schedule="eisbench-v1"``);
- ``nc``: Neural Cleanse under Wang et al.'s published schedule (the default);
- ``tabor-v1``: eisbench's earlier TABOR terms under the earlier schedule;
- ``tabor``: TABOR's published terms with TrojanZoo's weights and fixed L1 weight (the default).

and print, per recipe: detection AUROC of trojaned vs clean models by Neural Cleanse's score (the
MAD anomaly index of the smallest-mask class) and by TABOR's (the anomaly index of the class of
lowest TABOR quality score), how many trojaned models each rule flags with the right target and
how many clean models it flags, the Adam steps at which each class's best mask L1 stopped
dropping (median and max over clean classes, and how many never did), and the wall time.
Scans are saved under ``$EISBENCH_HOME/scan_recipes`` and reloaded on a rerun.

    EISBENCH_HOME=/tmp/scan-home python benchmarks/scan_recipes.py
    python benchmarks/scan_recipes.py --universal-only --n-clean 2 --max-checks 300
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    "nc-v1": {"method": "neural-cleanse", "schedule": "eisbench-v1"},
    "nc": {"method": "neural-cleanse"},
    "tabor-v1": {"method": "tabor-v1", "schedule": "eisbench-v1"},
    "tabor": {"method": "tabor"},
}


def main() -> int:
    import dataclasses

    import torch

    from eisbench.bench.trojan_scores import detection_auroc
    from eisbench.core.paths import cache_dir, home
    from eisbench.runs.store import Store
    from eisbench.tools.cost_schedule import get_schedule
    from eisbench.tools.scan import ScanResult, load_scan, save_scan, scan
    from eisbench.trojans.zoo import run_zoo, zoo, zoo_config

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trojans", type=int, default=12, help="the first K trojans of the zoo")
    p.add_argument("--universal-only", action="store_true",
                   help="only the zoo's universal (all-to-target) trojans, 6 of the 12")
    p.add_argument("--n-clean", type=int, default=8)
    p.add_argument("--n-scan", type=int, default=256, help="clean test images per scan")
    p.add_argument("--max-checks", type=int, help="cap on checks (default: each schedule's)")
    p.add_argument("--recipes", default=",".join(RECIPES))
    args = p.parse_args()
    cfg = dataclasses.replace(zoo_config("mnist"), n_clean=args.n_clean)
    trojans = [t for t in zoo("mnist") if not args.universal_only or "-all-" in t.name]
    run = run_zoo(cfg, Store(cache_dir()), trojans=trojans[:args.trojans])
    from eisbench import data as datasets
    x = datasets.load("mnist").x_test[:args.n_scan]
    models: list[tuple[str, Any, int | None]] = [
        (f"trojan {t.name}", m, t.target) for t, (m, _) in zip(run.trojans, run.models,
                                                               strict=True)]
    models += [(f"clean {j}", m, None) for j, (m, _) in enumerate(run.clean)]
    out = home() / "scan_recipes"
    print(f"{len(run.trojans)} trojaned + {len(run.clean)} clean models, {len(x)} images; "
          f"load {Path('/proc/loadavg').read_text().split()[:3]}")
    summary = {}
    for name in args.recipes.split(","):
        kw = dict(RECIPES[name])
        sched = get_schedule(kw.get("schedule"), kw["method"])
        steps = None
        if args.max_checks:
            steps = args.max_checks * sched.mini_batches(len(x), sched.batch_size)
        res: list[ScanResult] = []
        wall = []
        for label, m, _ in models:
            folder = out / f"{name}-{args.max_checks or 'default'}-{args.n_scan}" / label
            t0 = time.perf_counter()
            if (folder / "scan.json").exists():
                r = load_scan(folder)
            else:
                r = scan(m, x, steps=steps, generator=torch.Generator().manual_seed(0), **kw)
                save_scan(r, folder)
                wall.append(time.perf_counter() - t0)
            res.append(r)
        summary[name] = row = _summarise(res, models, wall, detection_auroc)
        print(f"{name}: {json.dumps(row)}  load {os.getloadavg()[0]:.1f}", flush=True)
    return 0


def _summarise(res: list[Any], models: list[tuple[str, Any, int | None]], wall: list[float],
               detection_auroc: Any) -> dict[str, Any]:
    """AUROC, flags and convergence of one recipe's scans."""
    import torch

    troj = [i for i, (_, _, t) in enumerate(models) if t is not None]
    clean = [i for i, (_, _, t) in enumerate(models) if t is None]
    nc = [r.anomaly_index[min(range(len(r.l1)), key=lambda k: r.l1[k])] for r in res]
    tb = [r.tabor_index[min(range(len(r.tabor_score)), key=lambda k: r.tabor_score[k])]
          for r in res]
    row: dict[str, Any] = {}
    for rule, score, suspect in (("nc_mad", nc, lambda r: r.suspect),
                                 ("tabor_score", tb, lambda r: r.tabor_suspect)):
        det = detection_auroc([score[i] for i in troj], [score[i] for i in clean],
                              generator=torch.Generator().manual_seed(2))
        row[rule] = {"auroc": round(det.auroc, 3), "ci95": [round(v, 3) for v in det.ci95],
                     "target_found": sum(suspect(res[i]) == models[i][2] for i in troj),
                     "false_alarm": sum(suspect(res[i]) is not None for i in clean)}
    conv = [c.converged_step for i in clean for c in res[i].curves if c is not None]
    ran = [c.step[-1] for r in res for c in r.curves if c is not None and c.step]
    done = [v for v in conv if v is not None]
    row["converged_step_clean"] = {
        "median": statistics.median(done) if done else None, "max": max(done) if done else None,
        "not_converged": len(conv) - len(done), "of": len(conv),
        "steps_run_max": max(ran) if ran else None}
    row["wall_s_per_model"] = round(statistics.mean(wall), 1) if wall else None
    row["n_trojaned"], row["n_clean"] = len(troj), len(clean)
    return row


if __name__ == "__main__":
    raise SystemExit(main())
