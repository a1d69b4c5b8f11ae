"""The pilot that chooses latent adversarial training's layer and bound for ``bench edit``, on
trojans the benchmark never scores.

The pilot zoo (``eisbench.trojans.zoo.PILOT_TABLE``): 3 trojans, one per kind, on trigger-bank
entries the scored zoo never implants, trained with seeds 100-102 by the zoo recipe of the edit
bench's ``--preset`` (both use the zoo preset since rules version 5; the pilot of version 4 ran
on the quick recipe of then, 20,000 images x 4 epochs). Each pilot model is fine-tuned with
LAT at every (layer, eps) of the grid with that preset's budget (fine-tuning steps, LAT steps,
defender data), LAT seed 100.

The rule, fixed before the pilot was run: choose the (layer, eps) with the highest mean DER
(BackdoorBench's defense effectiveness rating, ``eisbench.edit.metrics.der``: it rewards the fall
in attack success rate and charges the fall in clean accuracy) over the pilot trojans; a
config within 0.01 of the best counts as tied, and ties go to the smaller eps, then the earlier
layer. Plain fine-tuning with the same budget is printed beside it as the reference.

    python benchmarks/lat_pilot.py                   # MNIST, the quick bench's budgets
    python benchmarks/lat_pilot.py --preset full     # the full bench's

The choice is copied by hand into ``eisbench/runs/preregistered.py`` (``edit.lat.layer``,
``edit.lat.eps``) with a new rules version; this script prints it, and whether it agrees with
the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

LAYERS = ("body.1", "body.3", "body.6")  # cnn-small: after conv 1, after conv 2, penultimate
EPS = (0.25, 0.5, 1.0, 2.0)
TIE = 0.01
PILOT_SEED = 100


def pilot_setup(dataset: str, preset: str) -> tuple[Any, Any, Any, Any, Any]:
    """The pilot zoo (PILOT_TABLE, seed PILOT_SEED) trained by the edit bench's ``preset``
    recipe, and the bench's defender data: (bench config, dataset, zoo run, x_def, y_def)."""
    import torch

    from eisbench import data as datasets
    from eisbench.bench.edit import FULL, QUICK
    from eisbench.core.paths import cache_dir
    from eisbench.runs.store import Store
    from eisbench.trojans.zoo import PILOT_TABLE, format_table, run_zoo, zoo, zoo_config

    bench = dataclasses.replace(QUICK if preset == "quick" else FULL, dataset=dataset)
    ds = datasets.load(dataset)
    pilot = zoo(dataset, shape=ds.shape, table=PILOT_TABLE, num_classes=ds.num_classes)
    cfg = zoo_config(dataset, epochs=bench.epochs, n_train=bench.n_train, seed=PILOT_SEED,
                     n_clean=1)
    run = run_zoo(cfg, Store(cache_dir()), trojans=pilot)
    print(format_table(run.metrics))
    # the edit bench's defender data: the same fixed subset of the training split
    n_def = max(1, round(bench.defender_frac * len(ds.x_train)))
    pick = torch.randperm(len(ds.x_train), generator=torch.Generator().manual_seed(12345))[:n_def]
    return bench, ds, run, ds.x_train[pick], ds.y_train[pick]


def main() -> int:
    import torch

    from eisbench.edit import metrics as em
    from eisbench.edit.baselines import finetune
    from eisbench.edit.lat import LatConfig, LatentBound, lat_finetune
    from eisbench.runs.preregistered import choice, threshold

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--layers", nargs="+", default=list(LAYERS))
    p.add_argument("--eps", nargs="+", type=float, default=list(EPS))
    p.add_argument("--preset", choices=("quick", "full"), default="quick")
    args = p.parse_args()
    t0 = time.perf_counter()
    bench, ds, run, xd, yd = pilot_setup(args.dataset, args.preset)
    rows: dict[tuple[str, float], list[float]] = {}
    plain: list[float] = []
    for (model, _), trojan in zip(run.models, run.trojans, strict=True):
        n = len(ds.x_test) if bench.n_test is None else bench.n_test
        ev = em.TrojanEval.build(trojan, ds.x_test[:n], ds.y_test[:n])
        before = ev.scores(model)

        def der(edited: torch.nn.Module, before: dict[str, float] = before,
                ev: em.TrojanEval = ev) -> float:
            after = ev.scores(edited)
            return em.der(asr_before=before["asr"], asr_after=after["asr"],
                          acc_before=before["acc"], acc_after=after["acc"])

        plain.append(der(finetune(model, xd, yd, cfg=bench.finetune, seed=PILOT_SEED)))
        for layer in args.layers:
            for eps in args.eps:
                lat = LatConfig(bounds=(LatentBound(layer, eps),), steps=bench.lat_steps,
                                step_frac=2.5 / bench.lat_steps)
                edited = lat_finetune(model, xd, yd, lat=lat, cfg=bench.finetune,
                                      seed=PILOT_SEED)
                rows.setdefault((layer, eps), []).append(der(edited))
        print(f"{trojan.name}: ASR before {before['asr']:.3f}, plain fine-tuning DER "
              f"{plain[-1]:.3f}", flush=True)
    mean = {k: sum(v) / len(v) for k, v in rows.items()}
    best = max(mean.values())
    tied = [k for k in mean if mean[k] >= best - TIE]
    chosen = min(tied, key=lambda k: (k[1], args.layers.index(k[0])))
    print("\n| layer | eps | DER per pilot trojan | mean DER |\n|---|---|---|---|")
    for (layer, eps), v in rows.items():
        mark = " (chosen)" if (layer, eps) == chosen else ""
        print(f"| {layer} | {eps:g} | {', '.join(f'{d:.3f}' for d in v)} | "
              f"{mean[layer, eps]:.3f}{mark} |")
    print(f"| plain fine-tuning | - | {', '.join(f'{d:.3f}' for d in plain)} | "
          f"{sum(plain) / len(plain):.3f} |")
    table = (choice("edit.lat.layer"), threshold("edit.lat.eps"))
    agree = table == chosen
    print(f"\nchosen: layer {chosen[0]}, eps {chosen[1]:g} (best mean DER {best:.3f}; tied within "
          f"{TIE}: {len(tied)}); preregistered: layer {table[0]}, eps {table[1]:g}: "
          f"{'AGREES' if agree else 'DIFFERS, update runs/preregistered.py'}")
    print(f"wall {time.perf_counter() - t0:.0f} s")
    print(json.dumps({"zoo": [m.to_dict() for m in run.metrics],
                      "grid": [{"layer": k[0], "eps": k[1], "der": v} for k, v in rows.items()],
                      "plain": plain, "chosen": list(chosen), "preset": args.preset,
                      "finetune": dataclasses.asdict(bench)["finetune"]}))
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
