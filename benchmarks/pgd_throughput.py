"""Benchmark: eisbench PGD against torchattacks PGD on the same model, batch and settings.

Targets (printed with PASS/FAIL), each on a standard and on a fast-AT (robust) cnn-small, MNIST:
  (1) fixed-step throughput: Linf eps 0.3, step 0.01, ``--steps`` steps, random start, no early
      exit, ``--batch`` images; median images/s over ``--repeats`` timed runs after a warm-up.
      Target: eisbench / torchattacks >= 1.0.
  (2) robust-accuracy evaluation of ``--n`` test images: eisbench ``correct_under_attack`` with
      early exit and ``--restarts`` restarts vs torchattacks PGD restarted on the points still
      classified correctly (torchattacks has no restarts of its own). Same steps, step, budget.
      Target: eisbench >= 2x faster at an equal or lower (stronger) robust accuracy.
Early exit saves the work on examples that are already fooled, so it helps a lot on a standard
model (almost everything is fooled in a few steps) and little on a robust one.

Work beside time: every timed run's forward and backward passes of the model are counted at the
model (``eisbench.attacks.count_passes``, which counts torchattacks' calls alike), in images,
and printed in total and per image next to the median time, with the ratios torchattacks /
eisbench measured in the same run. (1) and (2) interleave the two libraries (order alternating,
``--repeats`` and ``--eval-repeats`` runs each) and report medians, with the load average.

Both libraries attack the same model object in eval mode, and every adversarial example of both
is checked against the budget here (independently of eisbench's own assertion).

Models are trained on first use and cached as safetensors under ``--cache-dir``; the robust one
has the same name and settings as ``benchmarks/fast_at.py --arch cnn-small --epochs 12``,
so either script reuses the other's model (``--robust-ckpt`` picks any other checkpoint).

Usage (torchattacks lives in a separate venv, see benchmarks/README.md):
    PYTHONPATH=src /tmp/venvbench/bin/python benchmarks/pgd_throughput.py
    PYTHONPATH=src /tmp/venvbench/bin/python benchmarks/pgd_throughput.py --batch 128 --n 500

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import default_threads
from _common import import_torchattacks as _import_torchattacks
from _interleave import interleave, loadavg, medians, ratios, table

from eisbench import data
from eisbench.attacks import AttackConfig, correct_under_attack, pgd
from eisbench.core.tensors import predict
from eisbench.models import ModelSpec, load_checkpoint, save_checkpoint
from eisbench.training import TrainConfig, train

EPS, ALPHA = 0.3, 0.01
SPEC = ModelSpec(arch="cnn-small", in_shape=(1, 28, 28), num_classes=10)
MODELS = {
    # name in the cache -> training config. "robust" is the run of benchmarks/fast_at.py with
    # --arch cnn-small --epochs 12 (same cache name); with 10 epochs, alpha 0.375 and 3 warm-up
    # epochs, seed 0 overfits catastrophically (0% PGD accuracy).
    "standard": ("cnn-small-standard-e2-lr2e-3-s0",
                 TrainConfig(method="standard", epochs=2, batch_size=128, lr=2e-3)),
    "robust": ("cnn-small-fast-at-eps0p3-e12-lr0p005-a0p3-w8-b128-s0",
               TrainConfig(method="fast-at", epochs=12, batch_size=128, lr=5e-3, eps=EPS,
                           alpha=0.3, eps_warmup_epochs=8)),
    # PGD adversarial training (Madry et al., 10 steps of 0.075): slower to train than fast-AT but
    # without its gradient masking; the model of benchmarks/autoattack_xcheck.py.
    "pgd-at": ("cnn-small-pgd-at-eps0p3-s10-e10-lr0p005-w3-b128-s0",
               TrainConfig(method="pgd-at", epochs=10, batch_size=128, lr=5e-3, eps=EPS,
                           attack_steps=10, eps_warmup_epochs=3)),
}
INSTALL_HINT = """\
torchattacks is not installed in this Python ({exe}), and this benchmark compares against it.
Install it in a separate venv, pinned to the CPU build of torch by the project's constraints file:
    python3 -m venv /tmp/venvbench
    /tmp/venvbench/bin/pip install -c constraints.txt torch==2.13.0 torchattacks==3.5.1 \\
        numpy scipy scikit-learn safetensors matplotlib tqdm
    /tmp/venvbench/bin/pip uninstall -y torchvision   # CUDA build, unused by torchattacks
then run  PYTHONPATH=src /tmp/venvbench/bin/python benchmarks/pgd_throughput.py ..."""


def import_torchattacks():  # noqa: ANN201
    return _import_torchattacks(INSTALL_HINT.format(exe=sys.executable))


def get_model(kind: str, d: data.ImageData, cache: Path, device: str,
              ckpt: Path | None = None) -> torch.nn.Module:
    if ckpt is not None:
        print(f"  {kind}: loaded {ckpt}", flush=True)
        return load_checkpoint(ckpt, device=device)
    name, cfg = MODELS[kind]
    path = cache / f"{name}.safetensors"
    if path.exists():
        print(f"  {kind}: loaded {path}", flush=True)
        return load_checkpoint(path, device=device)
    print(f"  {kind}: training ({cfg.method}, {cfg.epochs} epochs) ...", flush=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = SPEC.build()
    t0 = time.perf_counter()
    net = train(net, d.x_train, d.y_train, cfg=cfg, seed=0, device=device, desc=kind)
    cache.mkdir(parents=True, exist_ok=True)
    save_checkpoint(net, SPEC, cache / name)
    print(f"  {kind}: trained in {time.perf_counter() - t0:.0f} s, saved {path}", flush=True)
    return net.to(device).eval()


def check_budget(x: torch.Tensor, x_adv: torch.Tensor, who: str) -> float:
    """Independent check: Linf distance <= eps and pixels in [0,1]. Returns the largest distance."""
    dist = float((x_adv - x).abs().amax()) if len(x) else 0.0
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if dist > EPS + 1e-6 or lo < 0.0 or hi > 1.0:
        raise AssertionError(f"{who}: adversarial examples outside the budget "
                             f"(Linf {dist:.6g} > {EPS} or pixels in [{lo:.4g}, {hi:.4g}])")
    return dist


def assert_eval(model: torch.nn.Module, when: str) -> None:
    training = [n for n, m in model.named_modules() if m.training]
    if training:
        raise AssertionError(f"model not in eval mode {when}: {training[:3]}")


def fixed_step(ta, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,  # noqa: ANN001
               steps: int, repeats: int) -> dict:
    """(1) images/s of both libraries, runs interleaved (order alternating) to share the noise,
    each run's forward and backward passes of the model counted."""
    atk = ta.PGD(model, eps=EPS, alpha=ALPHA, steps=steps, random_start=True)
    gen = torch.Generator().manual_seed(0)

    def run_eis() -> torch.Tensor:
        return pgd(model, x, y, eps=EPS, step_size=ALPHA, steps=steps, norm="linf",
                   random_start=True, restarts=1, early_exit=False, generator=gen)

    def run_ta() -> torch.Tensor:
        return atk(x, y)

    torch.manual_seed(0)
    runs = {"eisbench": run_eis, "torchattacks": run_ta}
    for f in runs.values():  # warm-up
        f()
    measured = interleave(model, runs, repeats=repeats, say=lambda _: None)
    assert_eval(model, "after the attacks")
    out: dict[str, Any] = {}
    with torch.no_grad():
        for k, ms in measured.items():
            adv = ms[-1].output
            out[k] = medians(ms, per=len(x)) | {
                "max_linf": check_budget(x, adv, k),
                "adv_acc": float((model(adv).argmax(1) == y).float().mean())}
            out[k]["img_per_s"] = len(x) / out[k]["median_s"]
    out["ratio"] = out["eisbench"]["img_per_s"] / out["torchattacks"]["img_per_s"]
    out["ratios_torchattacks_over_eisbench"] = ratios(out["torchattacks"], out["eisbench"])
    return out


def robust_eval(ta, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,  # noqa: ANN001
                steps: int, restarts: int, batch: int, repeats: int) -> dict:
    """(2) time, passes and robust accuracy of a full evaluation of ``x`` with both libraries,
    ``repeats`` runs of each interleaved; medians."""
    cfg = AttackConfig(name="pgd", norm="linf", eps=EPS, steps=steps, step_size=ALPHA,
                       restarts=restarts, early_exit=True)
    ta_max = [0.0]

    def run_eis() -> torch.Tensor:
        return correct_under_attack(model, x, y, cfg, batch_size=batch, seed=0)

    def run_ta() -> torch.Tensor:
        torch.manual_seed(0)  # torchattacks draws its random start from the global generator
        atk = ta.PGD(model, eps=EPS, alpha=ALPHA, steps=steps, random_start=True)
        ok = torch.ones(len(x), dtype=torch.bool)
        for _ in range(max(restarts, 1)):
            idx = ok.nonzero().flatten()  # restart only on the points not yet fooled
            for i in range(0, len(idx), batch):
                j = idx[i:i + batch]
                x_adv = atk(x[j], y[j])
                with torch.no_grad():
                    ok[j] = model(x_adv).argmax(1) == y[j]
                ta_max[0] = max(ta_max[0], check_budget(x[j], x_adv, "torchattacks"))
        return ok

    measured = interleave(model, {"eisbench": run_eis, "torchattacks": run_ta},
                          repeats=repeats)
    # the same early-exit attack on one batch, outside the timing, for the budget check
    xb, yb = x[:batch], y[:batch]
    eis_max = check_budget(xb, pgd(model, xb, yb, eps=EPS, step_size=ALPHA, steps=steps,
                                   restarts=restarts, early_exit=True,
                                   generator=torch.Generator().manual_seed(0)), "eisbench")
    assert_eval(model, "after the evaluations")
    eis_ok, ta_ok = measured["eisbench"][0].output, measured["torchattacks"][0].output
    eis = medians(measured["eisbench"], per=len(x))
    tam = medians(measured["torchattacks"], per=len(x))
    eis_acc, ta_acc = float(eis_ok.float().mean()), float(ta_ok.float().mean())
    return {"attack": cfg.describe() + " early_exit",
            "eisbench": eis | {"s": eis["median_s"], "robust_acc": eis_acc,
                               "max_linf_batch0": eis_max},
            "torchattacks": tam | {"s": tam["median_s"], "robust_acc": ta_acc,
                                   "max_linf": ta_max[0]},
            "speedup": tam["median_s"] / eis["median_s"],
            "ratios_torchattacks_over_eisbench": ratios(tam, eis),
            "n_differ": int((eis_ok != ta_ok).sum()),
            "se_robust_acc": (ta_acc * (1 - ta_acc) / len(x)) ** 0.5}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="test images for the evaluation (2)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=256, help="batch size of (1) and (2)")
    p.add_argument("--repeats", type=int, default=7, help="timed runs of (1) per library")
    p.add_argument("--restarts", type=int, default=1, help="restarts R of the evaluation (2)")
    p.add_argument("--eval-repeats", type=int, default=3,
                   help="interleaved runs of the evaluation (2) per library (medians)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--models", default="standard,robust", help="comma list: standard,robust")
    p.add_argument("--robust-ckpt", type=Path, default=None,
                   help="use this checkpoint (e.g. one written by fast_at.py) as the robust model")
    p.add_argument("--cache-dir", type=Path,
                   default=Path(os.environ.get("EISBENCH_BENCH_CACHE", "/tmp/eisbench-benchmarks")))
    args = p.parse_args()
    ta = import_torchattacks()
    torch.set_num_threads(args.threads)

    d = data.load("mnist")
    x_te, y_te = d.x_test.to(args.device), d.y_test.to(args.device)
    print(f"torch {torch.__version__}, torchattacks {ta.__version__}, {args.threads} threads, "
          f"device {args.device}; note: wall-clock timings on a shared "
          f"{default_threads()}-core CPU machine", flush=True)
    results: dict[str, dict] = {}
    for kind in args.models.split(","):
        model = get_model(kind, d, args.cache_dir, args.device,
                          args.robust_ckpt if kind == "robust" else None)
        model.eval()
        assert_eval(model, "before the attacks")
        clean = float((predict(model, x_te, device=args.device) == y_te.cpu()).float().mean())
        print(f"\n== {kind} cnn-small: clean accuracy {100 * clean:.2f}% (10k test) ==", flush=True)
        xb, yb = x_te[:args.batch], y_te[:args.batch]
        fx = fixed_step(ta, model, xb, yb, steps=args.steps, repeats=args.repeats)
        for k in ("eisbench", "torchattacks"):
            r = fx[k]
            print(f"  (1) {k:<12} {r['img_per_s']:7.1f} img/s  median {r['median_s']:.3f} s "
                  f"[{', '.join(f'{t:.3f}' for t in r['times_s'])}]  adv acc "
                  f"{100 * r['adv_acc']:.1f}%  max Linf {r['max_linf']:.4f}", flush=True)
        print(f"      ratio eisbench/torchattacks = {fx['ratio']:.3f}; loads "
              f"{fx['eisbench']['loads'][0]} .. {fx['eisbench']['loads'][-1]}", flush=True)
        for line in table({k: fx[k] for k in ("eisbench", "torchattacks")}, per_label="img",
                          base="eisbench"):
            print("      " + line, flush=True)
        ev = robust_eval(ta, model, x_te[:args.n], y_te[:args.n], steps=args.steps,
                         restarts=args.restarts, batch=args.batch, repeats=args.eval_repeats)
        for k in ("eisbench", "torchattacks"):
            r = ev[k]
            print(f"  (2) {k:<12} {r['s']:7.1f} s (median of {len(r['times_s'])}: "
                  f"{', '.join(f'{t:.1f}' for t in r['times_s'])})  robust acc "
                  f"{100 * r['robust_acc']:.2f}%", flush=True)
        print(f"      speed-up {ev['speedup']:.2f}x; {ev['n_differ']} of {args.n} verdicts differ "
              f"(sampling s.e. of a robust accuracy {100 * ev['se_robust_acc']:.2f} pts)",
              flush=True)
        for line in table({k: ev[k] for k in ("eisbench", "torchattacks")}, per_label="img",
                          base="eisbench"):
            print("      " + line, flush=True)
        ev["pass_speed"] = ev["speedup"] >= 2.0
        ev["pass_strength"] = ev["eisbench"]["robust_acc"] <= ev["torchattacks"]["robust_acc"]
        src = args.robust_ckpt if kind == "robust" and args.robust_ckpt else MODELS[kind][0]
        results[kind] = {"clean_acc": clean, "checkpoint": str(src), "fixed_step": fx,
                         "evaluation": ev,
                         "pass": {"throughput_ratio>=1.0": fx["ratio"] >= 1.0,
                                  "eval_speedup>=2x": ev["pass_speed"],
                                  "eval_robust_acc<=torchattacks": ev["pass_strength"]}}

    w = 96
    print("\n" + "=" * w)
    print(f"PGD Linf eps {EPS}, step {ALPHA}, {args.steps} steps, random start, batch "
          f"{args.batch}; (1) median of {args.repeats} runs, no early exit; (2) n={args.n}, "
          f"restarts={args.restarts}, median of {args.eval_repeats} runs; load now {loadavg()}")
    print(f"{'model':<10}{'(1) eis img/s':>14}{'ta img/s':>10}{'ratio':>8}"
          f"{'(2) eis s':>11}{'ta s':>8}{'speedup':>9}{'eis acc':>9}{'ta acc':>9}  PASS/FAIL")
    print("-" * w)
    for kind, r in results.items():
        fx, ev = r["fixed_step"], r["evaluation"]
        flags = " ".join("PASS" if v else "FAIL" for v in r["pass"].values())
        print(f"{kind:<10}{fx['eisbench']['img_per_s']:>14.1f}{fx['torchattacks']['img_per_s']:>10.1f}"
              f"{fx['ratio']:>8.3f}{ev['eisbench']['s']:>11.1f}{ev['torchattacks']['s']:>8.1f}"
              f"{ev['speedup']:>8.2f}x{100 * ev['eisbench']['robust_acc']:>8.2f}%"
              f"{100 * ev['torchattacks']['robust_acc']:>8.2f}%  {flags}")
    print("-" * w)
    print("passes of the model per image (forward/backward), eisbench vs torchattacks:")
    for kind, r in results.items():
        fx, ev = r["fixed_step"], r["evaluation"]
        cell = "{0[forward_per_example]:.1f}/{0[backward_per_example]:.1f}".format
        print(f"  {kind:<9} (1) {cell(fx['eisbench'])} vs {cell(fx['torchattacks'])}; "
              f"(2) {cell(ev['eisbench'])} vs {cell(ev['torchattacks'])}")
    print("-" * w)
    print("PASS/FAIL columns: throughput ratio >= 1.0 | evaluation speed-up >= 2x | eisbench "
          "robust acc <= torchattacks")
    for kind, r in results.items():
        for k, v in r["pass"].items():
            print(f"  {kind:<9} {k:<34} {'PASS' if v else 'FAIL'}")
    print("=" * w)
    all_pass = all(v for r in results.values() for v in r["pass"].values())
    print(json.dumps({"benchmark": "pgd_throughput", "eps": EPS, "alpha": ALPHA,
                      "steps": args.steps, "batch": args.batch, "repeats": args.repeats,
                      "eval_repeats": args.eval_repeats, "load_end": loadavg(),
                      "n": args.n, "restarts": args.restarts, "threads": args.threads,
                      "device": args.device, "torch": torch.__version__,
                      "torchattacks": ta.__version__, "results": results, "all_pass": all_pass}))


if __name__ == "__main__":
    main()
