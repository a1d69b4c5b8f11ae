"""Benchmark: eisbench's ``standard`` attack suite against torchattacks' AutoAttack.

Same robust MNIST model (``--model pgd-at``: a cnn-small PGD-10 adversarially trained, trained
on first use and cached; ``--model robust``: the fast-AT cnn-small of ``pgd_throughput.py``;
or ``--ckpt``), same ``--n`` test images, Linf eps 0.3, in one run.
The peer is torchattacks' APGD, APGD-T, FAB-T and Square chained as AutoAttack's standard
version with the published settings (100 steps); ``torchattacks.AutoAttack`` as shipped runs
10 steps per attack and is reported alongside for reference.

  eisbench ``standard``:   APGD-CE (100 steps), APGD-T (DLR, 9 targets x 100 steps), FMN (100
                           steps, minimum-norm in the role of FAB-T), Square (5000 queries)
  torchattacks:            APGD-CE, APGD-T (DLR, 9 targets), FAB-T, Square (5000 queries),
                           100 steps each, as in Croce & Hein 2020

Both run each attack only on the points the earlier ones left correct. Targets (PASS/FAIL):
  (1) robust accuracies agree within 1 point;
  (2) eisbench is at least as fast (ratio torchattacks time / eisbench time printed);
  (3) the eisbench suite on 1,000 images finishes in <= 10 minutes.
Both sets of adversarial examples are checked against the budget here, independently. The
per-example table says how often the two disagree, and which eisbench attack broke what.

Work beside time: the runs are interleaved (``--repeats`` rounds, the order rotating), and each
run's forward and backward passes of the model are counted at the model
(``eisbench.attacks.count_passes``, which counts torchattacks' calls alike), in images: in
total, per attacked (clean-correct) image, and per attack per image it attacked. Medians over
the rounds; the ratios torchattacks / eisbench of time and passes are measured in this run.

Usage (torchattacks lives in a separate venv, see benchmarks/README.md):
    EISBENCH_QUIET=1 PYTHONPATH=src /tmp/venvbench/bin/python benchmarks/autoattack_xcheck.py

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from _common import default_threads
from _interleave import interleave, loadavg, medians, table
from pgd_throughput import EPS, check_budget, get_model, import_torchattacks

from eisbench import data
from eisbench.attacks import count_passes
from eisbench.core.stats import wilson_ci
from eisbench.core.tensors import predict
from eisbench.evaluation import run_suite


def torchattacks_chain(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                       batch: int, seed: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """torchattacks' APGD-CE, APGD-T, FAB-T and Square chained as AutoAttack's standard
    version with Croce & Hein 2020's settings (100 steps, 9 targets, 5000 queries), each on the
    points still correct, exactly as ``torchattacks.MultiAttack`` does (which AutoAttack uses)
    but counting what each attack breaks and its passes of the model. Returns x_adv
    (N, C, H, W) and per-attack counts.
    """
    ta = import_torchattacks()
    attacks = [
        ("apgd-ce", ta.APGD(model, norm="Linf", eps=EPS, steps=100, seed=seed, loss="ce")),
        ("apgd-t", ta.APGDT(model, norm="Linf", eps=EPS, steps=100, seed=seed, n_classes=10)),
        ("fab-t", ta.FAB(model, norm="Linf", eps=EPS, steps=100, seed=seed, multi_targeted=True,
                         n_classes=10)),
        ("square", ta.Square(model, norm="Linf", eps=EPS, n_queries=5000, seed=seed)),
    ]
    x_adv = x.clone()
    alive = predict(model, x) == y  # (N,) correct so far
    counts = []
    for name, atk in attacks:
        todo = alive.nonzero().flatten()
        t0, n_in, broken = time.perf_counter(), len(todo), 0
        with count_passes(model) as p:
            for i in range(0, n_in, batch):
                idx = todo[i:i + batch]
                xa = atk(x[idx], y[idx]).detach()
                hit = predict(model, xa) != y[idx]  # one judging forward, as MultiAttack's
                x_adv[idx[hit]] = xa[hit]
                alive[idx[hit]] = False
                broken += int(hit.sum())
        counts.append({"name": name, "n_in": n_in, "n_broken": broken,
                       "seconds": time.perf_counter() - t0} | p.to_dict(per=n_in))
    return x_adv, counts


def autoattack_as_shipped(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                          batch: int, seed: int) -> torch.Tensor:
    """``torchattacks.AutoAttack(version="standard")`` as shipped: APGD, APGD-T and FAB-T at
    their default 10 steps."""
    ta = import_torchattacks()
    atk = ta.AutoAttack(model, norm="Linf", eps=EPS, version="standard", n_classes=10, seed=seed)
    return torch.cat([atk(x[i:i + batch], y[i:i + batch]).detach()
                      for i in range(0, len(x), batch)])


def parse_common(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Add the options this benchmark shares with ``adaptive_suite.py`` (checkpoint, cache,
    threads, seed, rounds), parse, set the threads and check that torchattacks imports."""
    p.add_argument("--ckpt", type=Path, help="another robust checkpoint (stem or .safetensors)")
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get(
        "EISBENCH_BENCH_CACHE", "/tmp/eisbench-benchmarks")))
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved rounds of the three runs (medians of time and passes)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import_torchattacks()  # fail early, with the install hint
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="MNIST test images")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--model", choices=["pgd-at", "robust"], default="pgd-at",
                   help="pgd-at: PGD-10 adversarially trained cnn-small (default); robust: the "
                   "fast-AT cnn-small of pgd_throughput.py")
    args = parse_common(p, argv)
    d = data.load("mnist")
    model = get_model(args.model, d, args.cache_dir, "cpu", args.ckpt).eval()
    x, y = d.x_test[:args.n], d.y_test[:args.n]
    clean = predict(model, x) == y
    n_att = int(clean.sum())  # the attacked images: those classified correctly
    print(f"clean accuracy {clean.float().mean():.4f} on {args.n} MNIST test images; "
          f"Linf eps {EPS}; {args.threads} threads; load {loadavg()}", flush=True)

    eis_name, ta_name, shipped_name = ("eisbench standard", "torchattacks AA 100 steps",
                                       "torchattacks AA shipped (10 steps)")
    measured = interleave(model, {
        eis_name: lambda: run_suite(model, x, y, eps=EPS, suite="standard",
                                    batch_size=args.batch, seed=args.seed),
        ta_name: lambda: torchattacks_chain(model, x, y, batch=args.batch, seed=args.seed),
        shipped_name: lambda: autoattack_as_shipped(model, x, y, batch=args.batch,
                                                    seed=args.seed),
    }, repeats=args.repeats, say=lambda line: print(line, flush=True))
    work = {k: medians(v, per=n_att) for k, v in measured.items()}
    res = measured[eis_name][0].output
    x_ta, _ = measured[ta_name][0].output
    check_budget(x, res.x_adv, "eisbench")
    t_eis = work[eis_name]["median_s"]
    print(f"\neisbench standard: robust {res.robust_acc:.4f}, median {t_eis:.1f} s", flush=True)
    eis_attacks = per_attack_medians([m.output.per_attack for m in measured[eis_name]])
    for a in eis_attacks:
        print(attack_line(a), flush=True)

    peer: dict[str, dict[str, Any]] = {}
    for name in (ta_name, shipped_name):
        runs = measured[name]
        x_adv = runs[0].output[0] if name == ta_name else runs[0].output
        check_budget(x, x_adv, name)
        robust = clean & (predict(model, x_adv) == y)
        accs = {round(float((clean & (predict(model, r.output[0] if name == ta_name
                                              else r.output) == y)).float().mean()), 4)
                for r in runs}
        counts = per_attack_medians([r.output[1] for r in runs]) if name == ta_name else []
        peer[name] = {"robust": robust, "robust_acc": float(robust.float().mean()),
                      "robust_acc_by_round": sorted(accs), "seconds": work[name]["median_s"],
                      "per_attack": counts, "passes": work[name]}
        print(f"{name}: robust {peer[name]['robust_acc']:.4f}, median "
              f"{work[name]['median_s']:.1f} s", flush=True)
        for a in counts:
            print(attack_line(a), flush=True)
    print(f"\npasses of the model (images; per image: per attacked image, n={n_att}) and "
          f"median wall time over {args.repeats} interleaved rounds:")
    for line in table(work, per_label="img", base=eis_name):
        print("  " + line)
    main_peer = peer[ta_name]
    robust_ta, acc_ta, t_ta = main_peer["robust"], main_peer["robust_acc"], main_peer["seconds"]
    only_eis = int((robust_ta & ~res.robust).sum())  # broken by eisbench only
    only_ta = int((res.robust & ~robust_ta).sum())  # broken by torchattacks only
    gap = abs(res.robust_acc - acc_ta)
    ratio = t_ta / t_eis
    rows = [
        ("robust accuracies agree within 1 point", gap <= 0.01,
         f"eisbench {res.robust_acc:.4f} vs torchattacks {acc_ta:.4f} (gap {gap * 100:.2f} pt)"),
        ("eisbench at least as fast", ratio >= 1.0,
         f"{t_eis:.1f} s vs {t_ta:.1f} s (medians): ratio {ratio:.2f}x"),
    ]
    if args.n >= 1000:
        rows.append(("suite on 1,000 images <= 10 min", t_eis <= 600, f"{t_eis:.1f} s"))
    shipped = peer[shipped_name]
    print(f"\nfor reference, torchattacks.AutoAttack as shipped (10 steps): robust "
          f"{shipped['robust_acc']:.4f} in {shipped['seconds']:.1f} s")
    print("\nper example: broken only by eisbench "
          f"{only_eis}, only by torchattacks {only_ta}; eisbench's breaks by attack: "
          f"{dict(Counter(b for b in res.broken_by if b))}")
    for name, ok, detail in rows:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    print(f"load at the end: {loadavg()}")
    lo, hi = wilson_ci(int(res.robust.sum()), args.n)
    out = {"model": str(args.ckpt or args.model), "n": args.n, "n_attacked": n_att, "eps": EPS,
           "clean_acc": float(clean.float().mean()), "repeats": args.repeats,
           "eisbench": {"robust_acc": res.robust_acc, "ci95": [lo, hi], "seconds": t_eis,
                        "per_attack": eis_attacks, "passes": work[eis_name]},
           "torchattacks": {k: {kk: vv for kk, vv in v.items() if kk != "robust"}
                            for k, v in peer.items()},
           "only_eisbench_breaks": only_eis, "only_torchattacks_breaks": only_ta,
           "ratio_torchattacks_over_eisbench": ratio,
           "pass_ratios_torchattacks_over_eisbench": {
               k: work[ta_name][k] / work[eis_name][k] if work[eis_name][k] else None
               for k in ("forward", "backward")},
           "threads": args.threads, "load_end": loadavg(),
           "targets": {name: ok for name, ok, _ in rows}}
    print(json.dumps(out))
    return out


def per_attack_medians(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each attack's entry of the first round, with the median over the rounds of its seconds
    and passes (the counts of a seeded run repeat; the times do not)."""
    out = []
    for j, first in enumerate(rounds[0]):
        med = {k: statistics.median(r[j][k] for r in rounds)
               for k in ("seconds", "forward", "backward") if k in first}
        n = first["n_in"]
        out.append({k: v for k, v in first.items() if k not in med} | med | {
            "forward_per_example": med["forward"] / n if n else None,
            "backward_per_example": med["backward"] / n if n else None})
    return out


def attack_line(a: dict[str, Any]) -> str:
    fe, be = a["forward_per_example"], a["backward_per_example"]
    rate = "-/-" if fe is None else f"{fe:.1f}/{be:.1f}"
    return (f"    {a['name']:7s} on {a['n_in']:5d} points: broke {a['n_broken']:4d} in "
            f"{a['seconds']:.1f} s; passes {a['forward']:.0f}/{a['backward']:.0f} "
            f"({rate} per point)")


if __name__ == "__main__":
    sys.exit(0 if all(main()["targets"].values()) else 1)
