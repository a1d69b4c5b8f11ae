"""The pilot that chooses input-space adversarial training's Linf bound for ``bench edit``: the
bound at which it costs as much clean accuracy as LAT, on trojans the benchmark never scores.

Casper et al. 2024 compare latent adversarial training (LAT) with input-space adversarial
training (AT) at a matched clean cost. The edit bench's ``input-at`` row fine-tunes with LAT's
budget (steps, batch, learning rate, defender data, seed, inner PGD steps and step rule, loss
mixing); only its Linf bound ``eps`` is free, and it is the knob that matches the cost.

The pilot zoo (``eisbench.trojans.zoo.PILOT_TABLE``: 3 trojans on trigger-bank entries the
scored zoo never implants, seeds 100-102, the zoo recipe of the bench's ``--preset``, as
``benchmarks/lat_pilot.py``). Each pilot model is fine-tuned with LAT at its pre-registered
layer and bound (``edit.lat.layer``, ``edit.lat.eps``) and with input-space AT at every eps
of the grid, with that preset's budget, seed 100.

The rule, fixed (rules version 9) before the pilot was run: the clean-accuracy drop of an
edit is the pilot model's test accuracy before minus after, averaged over the 3 pilot
trojans; choose the grid eps whose mean drop is closest to LAT's; a distance within 0.002 of
the best counts as tied, and ties go to the smaller eps. Attack success is printed but plays
no part in the choice; targeted LAT (same layer, bound and budget) is printed beside it.

    python benchmarks/input_at_pilot.py                  # MNIST, the quick bench's budgets
    python benchmarks/input_at_pilot.py --preset full    # the full bench's
    python benchmarks/input_at_pilot.py --dataset digits # a smoke run (8x8 digits)

The choice is copied by hand into ``eisbench/runs/preregistered.py`` (``edit.input_at.eps``);
this script prints it, and whether it agrees with the table (exit 1 when it differs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from functools import partial

from lat_pilot import PILOT_SEED, pilot_setup

EPS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
TIE = 0.002


def main() -> int:
    import torch

    from eisbench.bench.edit_methods import input_at_config, lat_targeted_config
    from eisbench.edit import metrics as em
    from eisbench.edit.input_at import input_at_finetune
    from eisbench.edit.lat import lat_finetune
    from eisbench.edit.lat_targeted import lat_targeted_finetune
    from eisbench.runs.preregistered import threshold

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--eps", nargs="+", type=float, default=list(EPS))
    p.add_argument("--preset", choices=("quick", "full"), default="quick")
    args = p.parse_args()
    t0 = time.perf_counter()
    bench, ds, run, xd, yd = pilot_setup(args.dataset, args.preset)
    t_zoo = time.perf_counter() - t0
    drops: dict[str, list[float]] = {}
    asrs: dict[str, list[float]] = {}
    for (model, _), trojan in zip(run.models, run.trojans, strict=True):
        n = len(ds.x_test) if bench.n_test is None else bench.n_test
        ev = em.TrojanEval.build(trojan, ds.x_test[:n], ds.y_test[:n])
        before = ev.scores(model)
        edits: dict[str, Callable[[], torch.nn.Module]] = {
            "lat": partial(lat_finetune, model, xd, yd, lat=bench.lat(), cfg=bench.finetune,
                           seed=PILOT_SEED),
            "lat-targeted": partial(lat_targeted_finetune, model, xd, yd, target=trojan.target,
                                    tlat=lat_targeted_config(bench), cfg=bench.finetune,
                                    seed=PILOT_SEED)}
        for eps in args.eps:
            at = dataclasses.replace(input_at_config(bench), eps=eps)
            edits[f"input-at {eps:g}"] = partial(input_at_finetune, model, xd, yd, at=at,
                                                 cfg=bench.finetune, seed=PILOT_SEED)
        for name, edit in edits.items():
            after = ev.scores(edit())
            drops.setdefault(name, []).append(before["acc"] - after["acc"])
            asrs.setdefault(name, []).append(after["asr"])
        print(f"{trojan.name}: before ASR {before['asr']:.3f}, acc {before['acc']:.4f}",
              flush=True)
    mean = {k: sum(v) / len(v) for k, v in drops.items()}
    target = mean["lat"]
    dist = {eps: abs(mean[f"input-at {eps:g}"] - target) for eps in args.eps}
    best = min(dist.values())
    chosen = min(eps for eps in args.eps if dist[eps] <= best + TIE)
    print("\n| edit | clean-accuracy drop per pilot trojan | mean drop | mean ASR after |\n"
          "|---|---|---|---|")
    for name, v in drops.items():
        mark = " (chosen)" if name == f"input-at {chosen:g}" else ""
        print(f"| {name}{mark} | {', '.join(f'{d:+.4f}' for d in v)} | {mean[name]:+.4f} | "
              f"{sum(asrs[name]) / len(asrs[name]):.3f} |")
    table = threshold("edit.input_at.eps")
    agree = table == chosen
    print(f"\nLAT's mean drop {target:+.4f}; chosen: input-AT Linf eps {chosen:g} (distance "
          f"{dist[chosen]:.4f}); preregistered: {table:g}: "
          f"{'AGREES' if agree else 'DIFFERS, update runs/preregistered.py'}")
    print(f"wall {time.perf_counter() - t0:.0f} s (zoo {t_zoo:.0f} s)")
    print(json.dumps({"zoo": [m.to_dict() for m in run.metrics], "drops": drops, "asr": asrs,
                      "chosen": chosen, "preset": args.preset, "dataset": args.dataset,
                      "finetune": dataclasses.asdict(bench)["finetune"]}))
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
