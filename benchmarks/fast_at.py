"""Benchmark: fast adversarial training (Wong et al. 2020) on MNIST at Linf eps 0.3; TRADES
(Zhang et al. 2019) as a second arm with ``--method trades``.

Targets (printed with PASS/FAIL):
  * robust accuracy >= 85% under the standard suite (APGD-CE, APGD-T, FMN, Square; the number
    reported for the trained arm) on the first --n-suite test images, and >= 85% under PGD-50
    with 10 restarts (Linf eps 0.3, step 2.5*eps/50) on --n-eval test images,
  * clean accuracy >= 98% on all 10,000 test images,
  * training wall time <= 15 minutes on a 2-core CPU machine.

It also times epochs of the trained arm's method (its own batch size) against epochs of Madry
et al. 2018's PGD-40 adversarial training (batch 50, 40 steps of 0.01 from a random start, Adam
1e-4: github.com/MadryLab/mnist_challenge config.json:11,19-22, train.py:39) on the same model,
alternating the two (arm, Madry, arm, Madry, ...) for --rounds rounds, each epoch from fresh
weights; it prints the median epoch of each and their ratio, both measured. A PGD-40 epoch of
cnn-small takes ~22 min on a 2-core CPU machine: ``--epoch-fraction 0.1`` times the first tenth
of the training images instead (printed as a fraction, never as an epoch).

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
        --lr 2e-3 --alpha 0 --eps-warmup 0 --n-eval 1000 --rounds 0  # the README command
    PYTHONPATH=src python benchmarks/fast_at.py --no-xcheck --method trades --arch cnn-small \
        --epochs 2 --eps-warmup 0 --attack-steps 10 --n-eval 1000   # a TRADES point
    PYTHONPATH=src python benchmarks/fast_at.py --no-xcheck --arch cnn-small --epochs 1 \
        --n-train 2000 --n-eval 100 --n-suite 100 --epoch-fraction 0.02 --rounds 2  # smoke test

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
from eisbench.attacks import AttackConfig, correct_under_attack, count_passes
from eisbench.core.stats import wilson_ci
from eisbench.core.tensors import predict
from eisbench.evaluation import describe_suite, run_suite
from eisbench.models import ModelSpec, num_params, save_checkpoint
from eisbench.training import TradesConfig, TrainConfig, train
from eisbench.training.methods import trades_step

EPS = 0.3
# Madry et al. 2018's MNIST recipe (github.com/MadryLab/mnist_challenge): batch 50, 100,000
# iterations (config.json:7,11), PGD k=40 steps of a=0.01 from a random start (config.json:20-22),
# Adam 1e-4 (train.py:39)
MADRY = TrainConfig(method="pgd-at", epochs=1, batch_size=50, lr=1e-4, eps=EPS, alpha=0.01,
                    attack_steps=40, schedule="constant", overfit_guard=0.0)
MADRY_ITERS = 100_000
FAST_AT_ALPHA = 0.3  # this benchmark's FGSM step unless --alpha says otherwise
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
    trades = (f"-k{args.attack_steps}-beta{args.beta:g}" if args.method == "trades" else "")
    name = (f"{args.arch}-{args.method}-eps{EPS:g}-e{args.epochs}-lr{args.lr:g}-a{args.alpha:g}"
            f"-w{args.eps_warmup}-b{args.batch}{trades}-s{args.seed}"
            f"{'-val' if args.validation else ''}")
    return name.replace(".", "p")


def arm_config(args: argparse.Namespace) -> TrainConfig:
    """The trained arm's config: fast AT (FGSM step ``--alpha``) or TRADES (``--attack-steps``
    sign steps of ``--alpha`` on the KL, weight ``--beta``); ``--alpha 0``: the method's
    default step."""
    common = {"epochs": args.epochs, "batch_size": args.batch, "lr": args.lr, "eps": EPS,
              "alpha": args.alpha or None, "eps_warmup_epochs": args.eps_warmup,
              "schedule": "onecycle"}
    if args.method == "trades":
        return TradesConfig(attack_steps=args.attack_steps, trades_beta=args.beta, **common)
    return TrainConfig(method="fast-at", **common)


def spec_of(arch: str) -> ModelSpec:
    return ModelSpec(arch=arch, in_shape=(1, 28, 28), num_classes=10)


def fresh_model(arch: str, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec_of(arch).build()


def time_epochs(x: torch.Tensor, y: torch.Tensor, *, arch: str, arm: TrainConfig, rounds: int,
                seed: int, device: str) -> dict[str, list[dict]]:
    """Wall time of one epoch over x (N, C, H, W), y (N,) of the arm's method at its batch size
    and of Madry's PGD-40 AT at batch 50, alternating (arm, Madry, arm, Madry, ...) for
    ``rounds`` rounds, each epoch from the same fresh weights through the real training loop,
    with its forward and backward passes (in examples) and the load average after it.

    The overfitting guard is off in both (Madry's recipe has none; its probes cost fast AT ~8%
    of an epoch and a back-off would change what is timed), and both run at their full eps.
    """
    cfgs = {"arm": replace(arm, epochs=1, schedule="constant", eps_warmup_epochs=0,
                           overfit_guard=0.0),
            "madry": MADRY}
    for cfg in cfgs.values():  # warm-up: 2 batches each, not timed
        train(fresh_model(arch, seed), x[:2 * cfg.batch_size], y[:2 * cfg.batch_size], cfg=cfg,
              seed=seed, device=device, desc="warm-up")
    out: dict[str, list[dict]] = {k: [] for k in cfgs}
    for r in range(rounds):
        for k, cfg in cfgs.items():
            net = fresh_model(arch, seed)
            with count_passes(net) as p:
                t0 = time.perf_counter()
                train(net, x, y, cfg=cfg, seed=seed + r, device=device, desc=f"{k} timing")
                dt = time.perf_counter() - t0
            out[k].append({"s": round(dt, 2), "forward": p.forward, "backward": p.backward,
                           "load": " ".join(f"{v:.2f}" for v in os.getloadavg())})
            print(f"    round {r + 1}/{rounds} {cfg.method:<8} (batch {cfg.batch_size:>3}): "
                  f"{dt:.1f} s, {p.forward:,} forward / {p.backward:,} backward passes; "
                  f"load {out[k][-1]['load']}", flush=True)
    return out


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
    p.add_argument("--method", default="fast-at", choices=("fast-at", "trades"),
                   help="the trained and scored arm")
    p.add_argument("--arch", default="cnn-deep", help="registered model (eisbench list)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=5e-3, help="peak Adam lr (onecycle schedule)")
    p.add_argument("--alpha", type=float, default=None,
                   help=f"attack step; 0: the method's default (fast-at: Wong et al. 2020's "
                   f"1.25 eps = 0.375; trades: 4/3 eps / steps, the reference's 0.01 at 40 "
                   f"steps); default: {FAST_AT_ALPHA} for fast-at, the method's for trades")
    p.add_argument("--attack-steps", type=int, default=40,
                   help="trades: steps of its KL attack (train_trades_mnist.py:30: 40)")
    p.add_argument("--beta", type=float, default=1.0,
                   help="trades: weight of the KL term (train_trades_mnist.py:34: 1.0)")
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
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of the timing against Madry's PGD-40 AT, each one epoch of the "
                   "arm and one of Madry's (~22 min for cnn-small on 2 cores); 0 skips it")
    p.add_argument("--epoch-fraction", type=float, default=1.0,
                   help="time this fraction of an epoch (the first images) instead of whole "
                   "epochs; 1.0: whole epochs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--cache-dir", type=Path,
                   default=Path(os.environ.get("EISBENCH_BENCH_CACHE", "/tmp/eisbench-benchmarks")))
    p.add_argument("--time-budget-min", type=float, default=15.0)
    args = p.parse_args()
    if args.alpha is None:
        args.alpha = FAST_AT_ALPHA if args.method == "fast-at" else 0.0
    if not 0.0 < args.epoch_fraction <= 1.0:
        p.error(f"--epoch-fraction must be in (0, 1], got {args.epoch_fraction}")
    if args.rounds < 0:
        p.error(f"--rounds must be >= 0, got {args.rounds}")

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

    # 1. adversarial training of the arm
    cfg = arm_config(args)
    net = fresh_model(args.arch, args.seed)
    print(f"\n[1] {args.method}: {args.arch} ({num_params(net):,} params), {cfg}", flush=True)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    net = train(net, x_tr, y_tr, cfg=cfg, seed=args.seed, device=args.device, desc=args.method)
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

    # 4. epochs of the arm against epochs of Madry's PGD-40 AT, same model and machine
    cost = madry_comparison(x_tr, y_tr, args=args, arm=cfg) if args.rounds > 0 else None

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
    print(f"{f'{args.method} training time':<44}{f'{train_s / 60:.1f} min':>20}"
          f"{f'<= {args.time_budget_min:g} min':>14}")
    print(f"{'robust eval time (PGD; suite)':<44}{f'{eval_s:.0f} s; {suite_s:.0f} s':>20}")
    if cost is not None:
        arm_s, madry_s = cost["arm"]["median_s"], cost["madry"]["median_s"]
        per = f"per {cost['unit']} ({cost['n_images']:,} images)"
        print("-" * 78)
        print(f"{per:<44}{args.method:>17}{'Madry PGD-40':>17}")
        print(f"{f'  median of {args.rounds}, interleaved':<44}{f'{arm_s:.2f} s':>17}"
              f"{f'{madry_s:.2f} s':>17}   ({cost['madry_over_arm']:.1f}x)")
        print(f"{'  batch size':<44}{cfg.batch_size:>17}{MADRY.batch_size:>17}")
        if cost["epoch_fraction"] < 1.0:
            print(f"  A FRACTION {cost['epoch_fraction']:g} OF AN EPOCH was timed, not whole "
                  "epochs")
    print("-" * 78)
    for k, v in checks.items():
        print(f"{k:<44}{'PASS' if v else 'FAIL':>20}")
    print("=" * 78)
    result = {
        "benchmark": "fast_at", "method": args.method, "arch": args.arch, "seed": args.seed,
        "epochs": args.epochs, "lr": args.lr,
        "alpha": trades_step(cfg) if args.method == "trades" else cfg.alpha,
        "eps_warmup_epochs": args.eps_warmup, "train_config": repr(cfg),
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
                     arm: TrainConfig) -> dict:
    """Epochs (or ``--epoch-fraction`` of one) of the arm and of Madry's PGD-40 AT, interleaved
    (:func:`time_epochs`); their medians and the ratio Madry / arm, both measured."""
    n = max(MADRY.batch_size, round(args.epoch_fraction * len(x)))
    unit = "epoch" if n == len(x) else f"{n / len(x):.3g} of an epoch"
    print(f"\n[4] {args.method} (batch {arm.batch_size}) against Madry's PGD-40 AT (batch "
          f"{MADRY.batch_size}, step 0.01, random start): {args.rounds} rounds, alternating, "
          f"one {unit} ({n:,} of {len(x):,} training images) each", flush=True)
    if n < len(x):
        print(f"    NOTE: timing a FRACTION {n / len(x):.3g} of an epoch (--epoch-fraction), "
              "not whole epochs", flush=True)
    runs = time_epochs(x[:n], y[:n], arch=args.arch, arm=arm, rounds=args.rounds,
                       seed=args.seed, device=args.device)
    med = {k: statistics.median(r["s"] for r in v) for k, v in runs.items()}
    ratio = med["madry"] / med["arm"]
    print(f"    median {unit}: {args.method} {med['arm']:.2f} s, Madry PGD-40 {med['madry']:.2f} "
          f"s: Madry / {args.method} = {ratio:.1f}x (measured, same images)")
    print(f"    Madry et al.'s recipe is {MADRY_ITERS:,} iterations of batch {MADRY.batch_size} "
          f"({MADRY_ITERS * MADRY.batch_size / len(x):.1f} epochs of these {len(x):,} images); "
          "not timed here")
    return {"arm_method": args.method, "epoch_fraction": n / len(x), "n_images": n,
            "unit": unit, "rounds": args.rounds, "order": "arm, madry; alternating",
            "guard": "off in both",
            "arm": {"batch": arm.batch_size, "median_s": round(med["arm"], 2),
                    "runs": runs["arm"]},
            "madry": {"batch": MADRY.batch_size, "steps": MADRY.attack_steps,
                      "step": MADRY.alpha, "median_s": round(med["madry"], 2),
                      "runs": runs["madry"]},
            "madry_over_arm": ratio}


if __name__ == "__main__":
    main()
