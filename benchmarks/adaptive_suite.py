"""Benchmark: eisbench's ``adaptive`` suite against its ``standard`` suite and torchattacks'
AutoAttack chain, on the same robust MNIST model and the same ``--n`` test images, Linf eps 0.3.

  eisbench ``adaptive``:  APGD-CE (100 steps); ``apgd-t-osd``: targeted APGD towards MALT's
                          targets, 3 restarts of 100 steps, restart r on the keep**r = 0.5**r
                          unbroken points closest to the boundary (A3's online discarding);
                          Square (1000 queries) on the survivors
  eisbench ``standard``:  APGD-CE (100), APGD-T (9 targets x 100), FMN (100), Square (5000)
  torchattacks:           APGD-CE, APGD-T (9 targets), FAB-T, Square (5000), 100 steps each
                          (``autoattack_xcheck.torchattacks_chain``)

Each runs its attacks only on the points the earlier ones left correct. The three runs are
interleaved (``--repeats`` rounds, the order rotating) and each run's forward and backward passes
of the model are counted at the model (``eisbench.attacks.count_passes``, which counts
torchattacks' calls alike); medians over the rounds, ratios measured in this run. Every set of
adversarial examples is checked against the budget here, independently.

Targets (PASS/FAIL), from issue 16:
  (1) the adaptive suite's robust accuracy within 0.2 points of the standard suite's and of
      torchattacks' AutoAttack chain's;
  (2) >= 5x fewer backward passes than the AutoAttack chain;
  (3) >= 3x less wall time than the AutoAttack chain (medians).

Models (``--model``; trained on first use and cached under ``--cache-dir``):
  robust   the fast-AT cnn-small of ``pgd_throughput.py`` / ``fast_at.py --arch cnn-small
           --epochs 12``
  pgd-at   a cnn-small PGD-10 adversarially trained (``autoattack_xcheck.py``'s model)
  trades   a cnn-small trained with TRADES (2 epochs, 10 KL steps, beta 1: the TRADES point of
           ``fast_at.py``'s usage)
or ``--ckpt`` any other checkpoint.

Usage (torchattacks lives in a separate venv, see benchmarks/README.md):
    EISBENCH_QUIET=1 PYTHONPATH=src /tmp/venvbench/bin/python benchmarks/adaptive_suite.py \\
        --model robust --n 1000 --repeats 3
    EISBENCH_QUIET=1 PYTHONPATH=src /tmp/venvbench/bin/python benchmarks/adaptive_suite.py \\
        --model robust --n 200 --repeats 1    # a short run

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from _interleave import interleave, loadavg, medians, ratios, table
from autoattack_xcheck import attack_line, parse_common, per_attack_medians, torchattacks_chain
from pgd_throughput import EPS, SPEC, check_budget, get_model

from eisbench import data
from eisbench.core.stats import wilson_ci
from eisbench.core.tensors import predict
from eisbench.evaluation import describe_suite, run_suite
from eisbench.models import load_checkpoint, save_checkpoint
from eisbench.training import TradesConfig, train

TRADES = ("cnn-small-trades-eps0p3-e2-lr0p005-k10-beta1-b128-s0",
          TradesConfig(epochs=2, batch_size=128, lr=5e-3, eps=EPS, attack_steps=10,
                       trades_beta=1.0, schedule="onecycle"))
GAP, BACKWARD, TIME = 0.002, 5.0, 3.0  # the targets: 0.2 points, 5x, 3x


def model_of(kind: str, d: data.ImageData, cache: Path, ckpt: Path | None) -> torch.nn.Module:
    """``robust`` and ``pgd-at`` from ``pgd_throughput.get_model``; ``trades`` trained here
    on first use and cached beside them."""
    if ckpt is not None or kind != "trades":
        return get_model(kind, d, cache, "cpu", ckpt).eval()
    name, cfg = TRADES
    path = cache / f"{name}.safetensors"
    if path.exists():
        print(f"  trades: loaded {path}", flush=True)
        return load_checkpoint(path, device="cpu").eval()
    print(f"  trades: training ({cfg.epochs} epochs, {cfg.attack_steps} KL steps) ...",
          flush=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = SPEC.build()
    t0 = time.perf_counter()
    net = train(net, d.x_train, d.y_train, cfg=cfg, seed=0, device="cpu", desc="trades")
    cache.mkdir(parents=True, exist_ok=True)
    save_checkpoint(net, SPEC, cache / name)
    print(f"  trades: trained in {time.perf_counter() - t0:.0f} s, saved {path}", flush=True)
    return net.eval()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="MNIST test images")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--model", choices=["robust", "pgd-at", "trades"], default="robust")
    args = parse_common(p, argv)
    d = data.load("mnist")
    model = model_of(args.model, d, args.cache_dir, args.ckpt)
    x, y = d.x_test[:args.n], d.y_test[:args.n]
    clean = predict(model, x) == y
    n_att = int(clean.sum())
    print(f"clean accuracy {clean.float().mean():.4f} on {args.n} MNIST test images; "
          f"Linf eps {EPS}; {args.threads} threads; load {loadavg()}", flush=True)
    print(describe_suite("adaptive", "linf", EPS), flush=True)

    ada, std, aa = "eisbench adaptive", "eisbench standard", "torchattacks AA 100 steps"
    measured = interleave(model, {
        ada: lambda: run_suite(model, x, y, eps=EPS, suite="adaptive", batch_size=args.batch,
                               seed=args.seed),
        std: lambda: run_suite(model, x, y, eps=EPS, suite="standard", batch_size=args.batch,
                               seed=args.seed),
        aa: lambda: torchattacks_chain(model, x, y, batch=args.batch, seed=args.seed),
    }, repeats=args.repeats, say=lambda line: print(line, flush=True))
    work = {k: medians(v, per=n_att) for k, v in measured.items()}

    robust: dict[str, torch.Tensor] = {}
    accs: dict[str, list[float]] = {}
    for name in (ada, std):
        res = measured[name][0].output
        check_budget(x, res.x_adv, name)
        robust[name] = res.robust
        accs[name] = [m.output.robust_acc for m in measured[name]]
        breaks = dict(Counter(b for b in res.broken_by if b))
        print(f"\n{name}: robust {res.robust_acc:.4f} (rounds {accs[name]}), median "
              f"{work[name]['median_s']:.1f} s; breaks {breaks}", flush=True)
        for a in per_attack_medians([m.output.per_attack for m in measured[name]]):
            print(attack_line(a), flush=True)
    x_aa, _ = measured[aa][0].output
    check_budget(x, x_aa, aa)
    robust[aa] = clean & (predict(model, x_aa) == y)
    accs[aa] = [float((clean & (predict(model, m.output[0]) == y)).double().mean())
                for m in measured[aa]]
    print(f"\n{aa}: robust {float(robust[aa].double().mean()):.4f} (rounds {accs[aa]}), "
          f"median {work[aa]['median_s']:.1f} s", flush=True)
    for a in per_attack_medians([m.output[1] for m in measured[aa]]):
        print(attack_line(a), flush=True)

    print(f"\npasses of the model (images; per image: per attacked image, n={n_att}) and "
          f"median wall time over {args.repeats} interleaved rounds:")
    for line in table(work, per_label="img", base=ada):
        print("  " + line)
    acc = {k: float(v.double().mean()) for k, v in robust.items()}
    gaps = {k: abs(acc[ada] - acc[k]) for k in (std, aa)}
    only = {k: {"only_adaptive_robust": int((robust[ada] & ~robust[k]).sum()),
                "only_other_robust": int((robust[k] & ~robust[ada]).sum())} for k in (std, aa)}
    vs_aa = ratios(work[aa], work[ada])
    bwd, tim = vs_aa["backward"] or 0.0, vs_aa["time"] or 0.0
    rows = [
        ("robust accuracy within 0.2 points of standard and of AutoAttack",
         all(g <= GAP + 1e-12 for g in gaps.values()),
         f"adaptive {acc[ada]:.4f}, standard {acc[std]:.4f} (diff "
         f"{(acc[ada] - acc[std]) * 100:+.2f} pt), AutoAttack {acc[aa]:.4f} (diff "
         f"{(acc[ada] - acc[aa]) * 100:+.2f} pt)"),
        (">= 5x fewer backward passes than AutoAttack", bwd >= BACKWARD,
         f"{work[aa]['backward']:.0f} / {work[ada]['backward']:.0f} = {bwd:.2f}x"),
        (">= 3x less wall time than AutoAttack", tim >= TIME,
         f"{work[aa]['median_s']:.1f} s / {work[ada]['median_s']:.1f} s = {tim:.2f}x "
         "(medians)"),
    ]
    print(f"\nper example: {only}")
    for name, ok, detail in rows:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    print(f"load at the end: {loadavg()}")
    lo, hi = wilson_ci(int(robust[ada].sum()), args.n)
    out = {"model": str(args.ckpt or args.model), "n": args.n, "n_attacked": n_att, "eps": EPS,
           "clean_acc": float(clean.double().mean()), "repeats": args.repeats,
           "robust_acc": acc, "robust_acc_by_round": accs, "adaptive_ci95": [lo, hi],
           "diff_points": {k: (acc[ada] - acc[k]) * 100 for k in (std, aa)},
           "per_example": only, "work": work,
           "ratios_over_adaptive": {k: ratios(work[k], work[ada]) for k in (std, aa)},
           "threads": args.threads, "load_end": loadavg(),
           "targets": {name: ok for name, ok, _ in rows}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(0 if all(main()["targets"].values()) else 1)
