"""GPU figures, measured when a GPU is there; a clean skip (exit 0) when it is not.

On ``--device`` (default ``cuda``), one run prints:
  1. the GPU (name, memory, torch and CUDA versions);
  2. PGD throughput (Linf eps 0.3, step 0.01, ``--steps`` steps, random start, no early exit)
     on a cnn-small at batch ``--batch``, eisbench beside torchattacks on the same model and
     batch, interleaved, median of ``--repeats`` runs after a warm-up, ratio printed
     (torchattacks where it imports; its install pulls torchvision, so it lives in its own
     venv: see benchmarks/README.md);
  3. the standard suite's throughput (APGD-CE, APGD-T, FMN, Square via
     ``evaluate_robustness``) on ``--n`` images, images per second;
  4. one fast-AT epoch of a preact-resnet18 on CIFAR-shaped data (random (N, 3, 32, 32) images
     and labels: the time of an epoch does not depend on the pixels), seconds per epoch, as
     eisbench runs it on CUDA (bf16 weight update, channels_last: eisbench.core.accel) beside
     float32 NCHW, interleaved, ratio printed; PGD likewise with channels_last against NCHW;
  5. whether bf16 is safe: fast AT of a cnn-small on the bundled 8x8 digits, the same seed
     in float32 and in bf16, clean and PGD-20 accuracy of each on the digits' test split;
  6. with ``--suite``: the quick evidence suite's wall time on MNIST on the device.
Models are untrained where only timing matters (2-4); the figures are throughputs, not
accuracies. Synchronises the device around every timed region.

    python benchmarks/gpu.py                 # no GPU: prints why and exits 0
    python benchmarks/gpu.py --suite         # adds the quick suite's wall time

The last line of the output is one JSON object with every figure (or the skip reason).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def gpu_info(device: torch.device) -> dict[str, Any]:
    p = torch.cuda.get_device_properties(device)
    return {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
            "torch": torch.__version__, "cuda": torch.version.cuda}


def pgd_throughput(device: torch.device, *, batch: int, steps: int,
                   repeats: int) -> dict[str, Any]:
    """Images per second of eisbench's PGD and, where it imports, torchattacks' PGD."""
    from eisbench.attacks import pgd
    from eisbench.core.accel import place
    from eisbench.models import build

    g = torch.Generator().manual_seed(0)
    net = build("cnn-small", in_shape=(1, 28, 28), num_classes=10).to(device).eval()
    fast = place(build("cnn-small", in_shape=(1, 28, 28), num_classes=10), device).eval()
    fast.load_state_dict(net.state_dict())
    x = torch.rand(batch, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    runs: dict[str, Callable[[], Any]] = {
        "eisbench": lambda: pgd(fast, x, y, eps=0.3, step_size=0.01, steps=steps,
                                generator=torch.Generator().manual_seed(1)),
        "eisbench_nchw": lambda: pgd(net, x, y, eps=0.3, step_size=0.01, steps=steps,
                                     generator=torch.Generator().manual_seed(1))}
    try:
        import torchattacks

        ta = torchattacks.PGD(net, eps=0.3, alpha=0.01, steps=steps, random_start=True)
        runs["torchattacks"] = lambda: ta(x, y)
    except ImportError as e:
        note = f"torchattacks not importable ({e}): eisbench alone"
    else:
        note = "interleaved, same model and batch"
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            times[k].append(_timed(fn, device))
    out: dict[str, Any] = {k: batch / statistics.median(v) for k, v in times.items()}
    if "torchattacks" in out:
        out["ratio"] = out["eisbench"] / out["torchattacks"]
    out["channels_last_speedup"] = out["eisbench"] / out["eisbench_nchw"]
    return {"images_per_s": out, "batch": batch, "steps": steps, "note": note}


def suite_throughput(device: torch.device, *, n: int) -> dict[str, Any]:
    from eisbench import data
    from eisbench.evaluation import evaluate_robustness
    from eisbench.models import build

    ds = data.load("digits") if n <= 360 else data.load("mnist")
    net = build("cnn-small", in_shape=ds.shape, num_classes=10).to(device).eval()
    x, y = ds.x_test[:n], ds.y_test[:n]
    seconds = _timed(lambda: evaluate_robustness(net, x, y, eps=0.3, suite="standard",
                                                 device=device, n_checks=min(n, 50)), device)
    return {"images": len(x), "seconds": seconds, "images_per_s": len(x) / seconds,
            "dataset": ds.name}


def fast_at_epoch(device: torch.device, *, n: int, batch: int, repeats: int) -> dict[str, Any]:
    """Seconds of a fast-AT epoch as eisbench runs it on ``device`` (bf16 weight update and
    channels_last on CUDA) and in float32 NCHW, interleaved, median of ``repeats``."""
    from eisbench.core.accel import place
    from eisbench.models import build
    from eisbench.training import TrainConfig
    from eisbench.training.loop import fit

    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    cfg = TrainConfig(method="fast-at", epochs=1, batch_size=batch, eps=8 / 255,
                      alpha=10 / 255, overfit_guard=0.0)

    def epoch(fast: bool) -> None:
        net = build("preact-resnet18", in_shape=(3, 32, 32), num_classes=10)
        net = place(net, device) if fast else net.to(device)
        fit(net, x, y, cfg=cfg, seed=0, device=device, amp=None if fast else False)

    epoch(True)  # warm-up (cuDNN autotuning, allocator)
    times: dict[str, list[float]] = {"eisbench": [], "float32_nchw": []}
    for _ in range(repeats):
        times["eisbench"].append(_timed(lambda: epoch(True), device))
        times["float32_nchw"].append(_timed(lambda: epoch(False), device))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"images": n, "batch": batch, "seconds": med,
            "seconds_per_50k_epoch": {k: v * 50000 / n for k, v in med.items()},
            "speedup": med["float32_nchw"] / med["eisbench"]}


def bf16_safety(device: torch.device, *, epochs: int) -> dict[str, Any]:
    """Fast AT of a cnn-small on the 8x8 digits, one seed, float32 and bf16 weight updates;
    clean and PGD-20 accuracy (Linf 0.3) of each on the digits' test split."""
    from eisbench import data
    from eisbench.attacks import pgd
    from eisbench.core.accel import place
    from eisbench.core.tensors import accuracy
    from eisbench.models import build
    from eisbench.training import TrainConfig
    from eisbench.training.loop import fit

    ds = data.load("digits")
    cfg = TrainConfig(method="fast-at", epochs=epochs, batch_size=64, lr=2e-3,
                      eps_warmup_epochs=max(1, epochs // 2))
    out: dict[str, Any] = {"epochs": epochs, "images": len(ds.x_test)}
    for name, amp in (("float32", False), ("bf16", True)):
        torch.manual_seed(0)
        net = place(build("cnn-small", in_shape=ds.shape, num_classes=10), device)
        fit(net, ds.x_train.to(device), ds.y_train.to(device), cfg=cfg, seed=0, device=device,
            amp=amp)
        net.eval()
        xt, yt = ds.x_test.to(device), ds.y_test.to(device)
        xa = pgd(net, xt, yt, eps=0.3, step_size=0.03, steps=20,
                 generator=torch.Generator().manual_seed(1))
        out[name] = {"clean": accuracy(net, xt, yt), "pgd20": accuracy(net, xa, yt)}
    return out


def quick_suite(device: torch.device) -> dict[str, Any]:
    import tempfile

    import eisbench

    t0 = time.perf_counter()
    rec = eisbench.run("features-vs-bugs", "quick", device=str(device),
                       out=tempfile.mkdtemp(prefix="gpu-suite-"))
    return {"seconds": time.perf_counter() - t0, "failed": rec["details"].get("failed", [])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n", type=int, default=1000, help="images for the suite's throughput")
    p.add_argument("--at-images", type=int, default=10000, help="images of the fast-AT epoch")
    p.add_argument("--safety-epochs", type=int, default=10,
                   help="epochs of the bf16 safety check on the digits")
    p.add_argument("--suite", action="store_true", help="also time the quick evidence suite")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        reason = "no GPU: torch.cuda.is_available() is False on this machine; nothing measured"
        print(reason)
        print(json.dumps({"skipped": reason}))
        return 0
    res: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        res["gpu"] = gpu_info(device)
        print(f"GPU: {res['gpu']}")
    res["pgd"] = pgd_throughput(device, batch=args.batch, steps=args.steps,
                                repeats=args.repeats)
    print(f"PGD-{args.steps} images/s at batch {args.batch}: {res['pgd']['images_per_s']} "
          f"({res['pgd']['note']})")
    res["suite"] = suite_throughput(device, n=args.n)
    print(f"standard suite: {res['suite']['images_per_s']:.1f} images/s on "
          f"{res['suite']['images']} {res['suite']['dataset']} images")
    res["fast_at"] = fast_at_epoch(device, n=args.at_images, batch=128, repeats=2)
    fa = res["fast_at"]
    print(f"fast-AT preact-resnet18, CIFAR-shaped, {args.at_images} images: "
          f"{fa['seconds']['eisbench']:.1f} s as eisbench runs it vs "
          f"{fa['seconds']['float32_nchw']:.1f} s float32 NCHW (x{fa['speedup']:.2f}; "
          f"{fa['seconds_per_50k_epoch']['eisbench']:.0f} s per 50k-image epoch)")
    res["bf16_safety"] = bf16_safety(device, epochs=args.safety_epochs)
    print(f"bf16 safety (fast-AT cnn-small on digits): {res['bf16_safety']}")
    if args.suite:
        res["quick_suite"] = quick_suite(device)
        print(f"quick evidence suite: {res['quick_suite']['seconds']:.0f} s")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
