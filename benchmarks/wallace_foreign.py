"""The pilot behind ``wallace``'s fallback foreign set: does a model trained only on foreign
images labelled by an MNIST model learn MNIST, for each candidate foreign set?

One standard model of MNIST (the quick preset's: cnn-small, 2 epochs, seed 0) labels 20000
images of each set below; a fresh cnn-small is trained on those pairs (10 epochs, the quick
preset's ``fresh_train``) and tested on MNIST's test set. The sets:

- ``fashion-mnist``: Wallace's own choice (skipped where it is not installed);
- ``photo-patches``: the fallback, :mod:`eisbench.data.photos`;
- ``photo-patches-stretched``: the same patches, each stretched to the range [0, 1] (tried after
  the fallback was fixed; not adopted);
- ``uniform-noise``: the control, which should stay near chance (10%): if it did not, the
  test would not need foreign *images* at all.

Measured on the 2-core CPU machine (seed 0): source 98.3%; fashion-mnist 79.8%, photo-patches
80.3%, photo-patches-stretched 87.0%, uniform-noise 11.0%. About 80 s on one thread with MNIST
fetched (`eisbench data fetch mnist`).

    python benchmarks/wallace_foreign.py [--n 20000] [--seed 0] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import default_threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20000, help="foreign images per set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=default_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from eisbench import data
    from eisbench.core.tensors import predict
    from eisbench.data import photos
    from eisbench.experiments.wallace import QUICK
    from eisbench.models import ModelSpec
    from eisbench.runs.stages import Context, Tensors, train_stage
    from eisbench.runs.store import StageLog, Store

    ds = data.load("mnist")
    spec = ModelSpec(arch=QUICK.arch, in_shape=ds.shape, num_classes=ds.num_classes)

    def stretched() -> torch.Tensor:
        x = photos.photo_patches(args.n, seed=0).x  # (N, 1, 28, 28)
        lo = x.flatten(1).amin(1)[:, None, None, None]
        hi = x.flatten(1).amax(1)[:, None, None, None]
        return (x - lo) / (hi - lo).clamp_min(1e-6)

    def fashion() -> torch.Tensor:
        return data.load("fashion-mnist").x_train[:args.n]

    sets: dict[str, Callable[[], torch.Tensor]] = {
        "fashion-mnist": fashion,
        "photo-patches": lambda: photos.photo_patches(args.n, seed=0).x,
        "photo-patches-stretched": stretched,
        "uniform-noise": lambda: torch.rand(args.n, 1, 28, 28,
                                            generator=torch.Generator().manual_seed(0)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(store=Store(Path(tmp)), log=StageLog(), device=torch.device("cpu"))
        train = Tensors(ds.x_train, ds.y_train, f"mnist:{ds.sha256}:train")
        std, key = train_stage(ctx, spec=spec, cfg=QUICK.std_train, data=train, seed=args.seed,
                               desc="standard model")

        def acc(m: torch.nn.Module) -> float:
            return float((predict(m, ds.x_test) == ds.y_test).float().mean())

        out: dict[str, object] = {"source_model": acc(std)}
        print(f"source model (MNIST test): {out['source_model']:.1%}")
        print(f"{'foreign set':<26}{'fresh model on MNIST':>22}{'top label share':>17}{'s':>6}")
        for name, make in sets.items():
            try:
                x = make()
            except data.DataError as e:
                print(f"{name:<26}{'skipped: ' + str(e)[:60]}", file=sys.stderr)
                continue
            t0 = time.perf_counter()
            y = predict(std, x)  # (N,)
            fresh, _ = train_stage(ctx, spec=spec, cfg=QUICK.fresh_train,
                                   data=Tensors(x, y, f"{name}:{args.n}:{key}"),
                                   seed=args.seed, desc=name)
            a = acc(fresh)
            top = float(torch.bincount(y, minlength=10).max()) / len(y)
            out[name] = a
            print(f"{name:<26}{a:>22.1%}{top:>17.0%}{time.perf_counter() - t0:>6.0f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
