"""Benchmark: fast adversarial training (Wong et al. 2020) on MNIST at Linf eps 0.3.

Targets (printed with PASS/FAIL):
  * robust accuracy >= 85% under the standard suite (APGD-CE, APGD-T, FMN, Square; the number
    reported for fast AT) on the first --n-suite test images, and >= 85% under PGD-50 with 10
    restarts (Linf eps 0.3, step 2.5*eps/50) on --n-eval test images,
  * clean accuracy >= 98% on all 10,000 test images,
  * training wall time <= 15 minutes on a 2-core CPU machine.

It also measures the time per batch of Madry-style PGD-40 adversarial training (step 0.01) of
the same model, extrapolates it to Madry et al. 2018's recipe (100k iterations of batch 50) and to
one epoch at the fast-AT batch size, and prints the speed-up of fast AT against both.

An optional cross-check re-evaluates the trained model with torchattacks' PGD-50 (same budget,
step and restarts) on a subset of the test set.

``--validation`` trains on the first 50,000 training images and scores on the other 10,000
(the classic MNIST validation split) instead of the test set: choose settings with it, report
test figures from a run of another seed.

Usage (torchattacks lives in a separate venv, see benchmarks/README.md):
    PYTHONPATH=src /tmp/venvbench/bin/python benchmarks/fast_at.py
    PYTHONPATH=src /tmp/venvbench/bin/python benchmarks/fast_at.py --arch cnn-small --epochs 12
    PYTHONPATH=src python benchmarks/fast_at.py --no-xcheck --n-eval 2000
    PYTHONPATH=src python benchmarks/fast_at.py --no-xcheck --arch cnn-small --epochs 10 \
        --lr 2e-3 --alpha 0 --eps-warmup 0 --n-eval 1000 --pgd-at-batches 0  # the README command

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from _common import default_threads
from _common import import_torchattacks as _import_torchattacks

from eisbench import data
from eisbench.attacks import AttackConfig, correct_under_attack
from eisbench.core.stats import wilson_ci
from eisbench.core.tensors import predict
from eisbench.evaluation import describe_suite, run_suite
from eisbench.models import ModelSpec, num_params, save_checkpoint
from eisbench.training import TrainConfig, train

EPS = 0.3
MADRY_ITERS, MADRY_BATCH = 100_000, 50  # Madry et al. 2018, MNIST
INSTALL_HINT = """\
torchattacks is not installed in this Python ({exe}).
Install it in a separate venv, pinned to the CPU build of torch by the project's constraints file:
    python3 -m venv /tmp/venvbench
    /tmp/venvbench/bin/pip install -c constraints.txt torch==2.13.0 torchattacks==3.5.1 \\
        numpy scipy scikit-learn safetensors matplotlib tqdm
    /tmp/venvbench/bin/pip uninstall -y torchvision   # CUDA build, unused by torchattacks
then run  PYTHONPATH=src /tmp/venvbench/bin/python {script} ...
(or pass --no-xcheck to skip the torchattacks cross-check)."""


def import_torchattacks():  # noqa: ANN201
    hint = INSTALL_HINT.format(exe=sys.executable, script="benchmarks/fast_at.py")
    return _import_torchattacks(hint)


def run_name(args: argparse.Namespace) -> str:
    """Cache name of the trained model (benchmarks/pgd_throughput.py reuses the default one).

    No dots: ``save_checkpoint`` treats everything after the last dot as a suffix.
    """
    name = (f"{args.arch}-fast-at-eps{EPS:g}-e{args.epochs}-lr{args.lr:g}-a{args.alpha:g}"
            f"-w{args.eps_warmup}-b{args.batch}-s{args.seed}{'-val' if args.validation else ''}")
    return name.replace(".", "p")


def spec_of(arch: str) -> ModelSpec:
    return ModelSpec(arch=arch, in_shape=(1, 28, 28), num_classes=10)


def fresh_model(arch: str, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec_of(arch).build()


def time_per_batch(x: torch.Tensor, y: torch.Tensor, *, arch: str, batch: int, n_batches: int,
                   fast_cfg: TrainConfig, seed: int, device: str) -> dict[str, list[float]]:
    """Seconds per batch of PGD-40 adversarial training (step 0.01) and of fast AT, measured
    through the real training loop, interleaved in groups of 5 batches so that both see the
    same load from other processes (a burst shows up as one outlying group, not as a bias).
    """
    # overfit_guard=0: the guard probes once per train() call, i.e. once per group here
    cfgs = {"pgd-at": TrainConfig(method="pgd-at", epochs=1, batch_size=batch, lr=1e-3, eps=EPS,
                                  alpha=0.01, attack_steps=40, schedule="constant",
                                  overfit_guard=0.0),
            "fast-at": replace(fast_cfg, epochs=1, batch_size=batch, schedule="constant",
                               eps_warmup_epochs=0, overfit_guard=0.0)}
    nets = {k: fresh_model(arch, seed) for k in cfgs}
    for k, cfg in cfgs.items():  # warm-up
        train(nets[k], x[:2 * batch], y[:2 * batch], cfg=cfg, seed=seed, device=device,
              desc="warm-up")
    per_batch: dict[str, list[float]] = {k: [] for k in cfgs}
    group = 5
    for g in range(0, n_batches, group):
        k_b = min(group, n_batches - g)
        lo = (2 + g) * batch
        for k, cfg in cfgs.items():
            t0 = time.perf_counter()
            train(nets[k], x[lo:lo + k_b * batch], y[lo:lo + k_b * batch], cfg=cfg,
                  seed=seed + g, device=device, desc=f"{k} timing")
            per_batch[k].append((time.perf_counter() - t0) / k_b)
    return per_batch


def robust_eval(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig, *,
                seed: int, device: str, chunk: int = 1000) -> torch.Tensor:
    """Per-example robustness (N,) bool, printed chunk by chunk so a long run shows progress."""
    out = []
    t0 = time.perf_counter()
    for i in range(0, len(x), chunk):
        out.append(correct_under_attack(net, x[i:i + chunk], y[i:i + chunk], attack,
                                        batch_size=500, seed=seed + i, device=device))
        done = torch.cat(out)
        print(f"    robust eval {len(done):>5}/{len(x)}: {100 * done.float().mean():.2f}% "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return torch.cat(out)


def torchattacks_eval(ta, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,  # noqa: ANN001
                      steps: int, alpha: float, restarts: int, seed: int, batch: int = 500
                      ) -> torch.Tensor:
    """Robustness (N,) under torchattacks PGD, restarted on the points still classified right.

    Also checks independently that every torchattacks example is within the Linf budget.
    """
    torch.manual_seed(seed)  # torchattacks draws its random start from the global generator
    atk = ta.PGD(net, eps=EPS, alpha=alpha, steps=steps, random_start=True)
    ok = torch.ones(len(x), dtype=torch.bool)
    for _ in range(restarts):
        idx = ok.nonzero().flatten()
        for i in range(0, len(idx), batch):
            j = idx[i:i + batch]
            x_adv = atk(x[j], y[j])
            dist = float((x_adv - x[j]).abs().amax())
            if dist > EPS + 1e-6 or float(x_adv.min()) < 0 or float(x_adv.max()) > 1:
                raise AssertionError(f"torchattacks example outside the budget: Linf {dist}")
            with torch.no_grad():
                ok[j] = net(x_adv).argmax(1) == y[j]
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="cnn-deep", help="registered model (eisbench list)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=5e-3, help="peak Adam lr (onecycle schedule)")
    p.add_argument("--alpha", type=float, default=0.3,
                   help="FGSM step; 0: the method's default (Wong et al. 2020: 0.375)")
    p.add_argument("--eps-warmup", type=int, default=8, help="epochs of linear eps ramp")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--n-train", type=int, default=None,
                   help="train on the first N training images only (smoke tests)")
    p.add_argument("--n-eval", type=int, default=10_000, help="test images for PGD-50 x restarts")
    p.add_argument("--n-suite", type=int, default=1000,
                   help="test images for the standard suite (the reported robust accuracy)")
    p.add_argument("--validation", action="store_true",
                   help="train on train[:50000], score on train[50000:] (choosing settings)")
    p.add_argument("--restarts", type=int, default=10)
    p.add_argument("--n-xcheck", type=int, default=1000,
                   help="test images for the torchattacks PGD-50 cross-check")
    p.add_argument("--no-xcheck", action="store_true", help="skip the torchattacks cross-check")
    p.add_argument("--pgd-at-batches", type=int, default=30,
                   help="batches timed for PGD-40 adversarial training (per batch size); "
                   "0 skips the timing")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--cache-dir", type=Path,
                   default=Path(os.environ.get("EISBENCH_BENCH_CACHE", "/tmp/eisbench-benchmarks")))
    p.add_argument("--time-budget-min", type=float, default=15.0)
    args = p.parse_args()

    ta = None if args.no_xcheck else import_torchattacks()
    torch.set_num_threads(args.threads)
    d = data.load("mnist")
    x_tr, y_tr, x_te, y_te = d.x_train, d.y_train, d.x_test, d.y_test
    if args.validation:
        x_tr, y_tr, x_te, y_te = x_tr[:50_000], y_tr[:50_000], x_tr[50_000:], y_tr[50_000:]
    if args.n_train is not None:
        x_tr, y_tr = x_tr[:args.n_train], y_tr[:args.n_train]
    scored = "validation" if args.validation else "test"
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, device {args.device}; MNIST train {len(x_tr)}, "
          f"{scored} {len(x_te)}")
    print(f"note: timings are wall-clock on a shared {default_threads()}-core CPU machine; "
          "load from other processes inflates them", flush=True)

    # 1. fast adversarial training
    cfg = TrainConfig(method="fast-at", epochs=args.epochs, batch_size=args.batch, lr=args.lr,
                      eps=EPS, alpha=args.alpha or None, eps_warmup_epochs=args.eps_warmup,
                      schedule="onecycle")
    net = fresh_model(args.arch, args.seed)
    print(f"\n[1] fast-AT: {args.arch} ({num_params(net):,} params), {cfg}", flush=True)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    net = train(net, x_tr, y_tr, cfg=cfg, seed=args.seed, device=args.device, desc="fast-at")
    train_s = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    epoch_s = train_s / args.epochs
    print(f"    trained in {train_s:.1f} s ({epoch_s:.1f} s/epoch); 1-min load average "
          f"{load0:.1f} before, {load1:.1f} after", flush=True)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    name = run_name(args) + (f"-n{args.n_train}" if args.n_train is not None else "")
    ckpt = save_checkpoint(net, spec_of(args.arch), args.cache_dir / name)
    print(f"    saved {ckpt}")
    net = net.to(args.device).eval()

    # 2. clean and robust accuracy
    clean = (predict(net, x_te, device=args.device) == y_te).float().mean().item()
    print(f"\n[2] clean accuracy on {len(x_te)} {scored} images: {100 * clean:.2f}%", flush=True)
    attack = AttackConfig(name="pgd", norm="linf", eps=EPS, steps=50, step_size=None,
                          restarts=args.restarts, early_exit=True)
    n_eval = min(args.n_eval, len(x_te))
    print(f"    robust accuracy under {attack.describe()} (early exit) on {n_eval} {scored} "
          "images:", flush=True)
    t0 = time.perf_counter()
    rob_mask = robust_eval(net, x_te[:n_eval], y_te[:n_eval], attack, seed=args.seed,
                           device=args.device)
    eval_s = time.perf_counter() - t0
    robust = rob_mask.float().mean().item()
    se = (robust * (1 - robust) / n_eval) ** 0.5
    n_suite = min(args.n_suite, len(x_te))
    t0 = time.perf_counter()
    suite = run_suite(net, x_te[:n_suite], y_te[:n_suite], eps=EPS, suite="standard",
                      seed=args.seed, device=args.device)
    suite_s = time.perf_counter() - t0
    print(f"    standard suite on {n_suite} {scored} images: {suite!r} ({suite_s:.0f} s)",
          flush=True)

    # 3. torchattacks cross-check
    xcheck = None
    if ta is not None:
        n_x = min(args.n_xcheck, n_eval)
        step = 2.5 * EPS / 50
        print(f"\n[3] cross-check: torchattacks {ta.__version__} PGD-50 (step {step:g}, "
              f"{args.restarts} restarts on still-correct points) on the first {n_x} images",
              flush=True)
        t0 = time.perf_counter()
        ta_mask = torchattacks_eval(ta, net, x_te[:n_x].to(args.device),
                                    y_te[:n_x].to(args.device), steps=50, alpha=step,
                                    restarts=args.restarts, seed=args.seed)
        ta_s = time.perf_counter() - t0
        eis_sub = rob_mask[:n_x].float().mean().item()
        ta_acc = ta_mask.cpu().float().mean().item()
        disagree = int((ta_mask.cpu() != rob_mask[:n_x]).sum())
        both = rob_mask[:n_x] & ta_mask.cpu()
        agree = abs(eis_sub - ta_acc) <= 0.01
        print(f"    eisbench {100 * eis_sub:.2f}%  torchattacks {100 * ta_acc:.2f}%  "
              f"(worst case of both {100 * both.float().mean():.2f}%; {disagree} images "
              f"differ; torchattacks took {ta_s:.0f} s) -> "
              f"{'agree within 1 point' if agree else 'DISAGREE by more than 1 point'}")
        xcheck = {"n": n_x, "eisbench_robust_acc": eis_sub, "torchattacks_robust_acc": ta_acc,
                  "worst_case_of_both": both.float().mean().item(), "n_differ": disagree,
                  "agree_within_1pt": agree, "torchattacks_s": ta_s}

    # 4. the cost of Madry's PGD-40 recipe on the same model and machine
    cost = (madry_comparison(d.x_train, d.y_train, args=args, fast_cfg=cfg)
            if args.pgd_at_batches > 0 else None)

    # 5. summary
    budget_s = 60 * args.time_budget_min
    checks = {
        "suite_robust_acc>=85%": suite.robust_acc >= 0.85,
        "pgd_robust_acc>=85%": robust >= 0.85,
        "clean_acc>=98%": clean >= 0.98,
        f"train_time<={args.time_budget_min:g}min": train_s <= budget_s,
    }
    lo, hi = wilson_ci(int(suite.robust.sum()), n_suite)
    print("\n" + "=" * 78)
    print(f"{'quantity':<44}{'value':>20}{'target':>14}")
    print("-" * 78)
    print(f"{f'clean accuracy ({len(x_te)} {scored})':<44}{100 * clean:>19.2f}%{'>= 98%':>14}")
    print(f"{f'robust acc, standard suite (n={n_suite})':<44}"
          f"{f'{100 * suite.robust_acc:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]':>20}{'>= 85%':>14}")
    print(f"{f'robust acc, PGD-50 x{args.restarts} (n={n_eval})':<44}"
          f"{f'{100 * robust:.2f}% +- {100 * se:.2f}':>20}{'>= 85%':>14}")
    print(f"{'fast-AT training time':<44}{f'{train_s / 60:.1f} min':>20}"
          f"{f'<= {args.time_budget_min:g} min':>14}")
    print(f"{'robust eval time (PGD; suite)':<44}{f'{eval_s:.0f} s; {suite_s:.0f} s':>20}")
    if cost is not None:
        print("-" * 78)
        print(f"{'per epoch (60k images)':<44}{'fast-AT':>17}{'PGD-40 AT':>17}")
        print(f"{'  measured (whole run / epochs)':<44}{f'{epoch_s:.1f} s':>17}{'':>17}")
        fast_e, pgd_e, madry = (cost[k] for k in ("fast_at_epoch_s", "pgd_at_epoch_s",
                                                   "madry_recipe_s"))
        print(f"{'  interleaved per-batch timing':<44}{f'{fast_e:.1f} s':>17}"
              f"{f'{pgd_e:.0f} s':>17}   ({pgd_e / fast_e:.1f}x)")
        print(f"{'whole recipe':<44}{f'{train_s / 60:.1f} min':>17}"
              f"{f'{madry / 3600:.2f} h':>17}   ({madry / train_s:.0f}x)")
        print(f"  Madry recipe extrapolated as {MADRY_ITERS:,} iterations x median s/batch of "
              f"PGD-40 AT at batch {MADRY_BATCH}; fast-AT as measured")
    print("-" * 78)
    for k, v in checks.items():
        print(f"{k:<44}{'PASS' if v else 'FAIL':>20}")
    print("=" * 78)
    result = {
        "benchmark": "fast_at", "arch": args.arch, "seed": args.seed, "epochs": args.epochs,
        "lr": args.lr, "alpha": cfg.alpha, "eps_warmup_epochs": args.eps_warmup,
        "batch": args.batch, "eps": EPS, "threads": args.threads, "device": args.device,
        "scored_on": scored, "torch": torch.__version__, "train_s": round(train_s, 1),
        "epoch_s": round(epoch_s, 2), "loadavg_before_after": [round(load0, 2), round(load1, 2)],
        "clean_acc": clean, "n_clean": len(x_te),
        "suite_robust_acc": suite.robust_acc, "suite_ci95": [lo, hi], "n_suite": n_suite,
        "suite": describe_suite("standard", "linf", EPS), "suite_s": round(suite_s, 1),
        "suite_broken_by": [(a["name"], a["n_broken"]) for a in suite.per_attack],
        "robust_acc": robust, "robust_acc_se": se, "n_eval": n_eval,
        "attack": attack.describe() + " early_exit", "eval_s": round(eval_s, 1),
        "madry_comparison": cost, "xcheck": xcheck, "checkpoint": str(ckpt),
        "pass": {k: bool(v) for k, v in checks.items()}, "all_pass": all(checks.values()),
    }
    print(json.dumps(result))


def madry_comparison(x: torch.Tensor, y: torch.Tensor, *, args: argparse.Namespace,
                     fast_cfg: TrainConfig) -> dict:
    """Time PGD-40 AT and fast AT per batch (interleaved) and extrapolate Madry's recipe."""
    print(f"\n[4] PGD-40 adversarial training (step 0.01) vs fast-AT, {args.pgd_at_batches} "
          "timed batches each per batch size, interleaved", flush=True)
    timing: dict[int, dict] = {}
    for b in (MADRY_BATCH, args.batch):
        per = time_per_batch(x, y, arch=args.arch, batch=b, n_batches=args.pgd_at_batches,
                             fast_cfg=fast_cfg, seed=args.seed, device=args.device)
        timing[b] = {k: {"median_s": statistics.median(v), "groups_s": [round(t, 4) for t in v]}
                     for k, v in per.items()}
        for k, v in per.items():
            print(f"    batch {b:>3} {k:<8} median {statistics.median(v):.4f} s/batch "
                  f"(groups of 5: {', '.join(f'{t:.4f}' for t in v)})", flush=True)
    t50 = timing[MADRY_BATCH]["pgd-at"]["median_s"]
    madry_s = MADRY_ITERS * t50
    n_batches_epoch = -(-len(x) // args.batch)
    pgd_epoch_s = n_batches_epoch * timing[args.batch]["pgd-at"]["median_s"]
    fast_epoch_s = n_batches_epoch * timing[args.batch]["fast-at"]["median_s"]
    print(f"    Madry recipe: T = {MADRY_ITERS:,} iterations x {t50:.4f} s/batch(50) = "
          f"{madry_s:,.0f} s = {madry_s / 3600:.2f} h")
    print(f"    one epoch at batch {args.batch}: {n_batches_epoch} batches x median s/batch = "
          f"{pgd_epoch_s:.0f} s (PGD-40 AT), {fast_epoch_s:.1f} s (fast-AT)")
    return {"s_per_batch": {str(k): v for k, v in timing.items()},
            "pgd_at_epoch_s": round(pgd_epoch_s, 1), "fast_at_epoch_s": round(fast_epoch_s, 2),
            "madry_recipe_s": round(madry_s),
            "madry_formula": f"{MADRY_ITERS} * median_s_per_batch(batch={MADRY_BATCH})",
            "speedup_per_epoch": pgd_epoch_s / fast_epoch_s}


if __name__ == "__main__":
    main()
