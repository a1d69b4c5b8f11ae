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
     and labels: the time of an epoch does not depend on the pixels), seconds per epoch;
  5. with ``--suite``: the quick evidence suite's wall time on MNIST on the device.
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
    from eisbench.models import build

    g = torch.Generator().manual_seed(0)
    net = build("cnn-small", in_shape=(1, 28, 28), num_classes=10).to(device).eval()
    x = torch.rand(batch, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    runs: dict[str, Callable[[], Any]] = {
        "eisbench": lambda: pgd(net, x, y, eps=0.3, step_size=0.01, steps=steps,
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


def fast_at_epoch(device: torch.device, *, n: int, batch: int) -> dict[str, Any]:
    from eisbench.models import build
    from eisbench.training import TrainConfig, train

    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    net = build("preact-resnet18", in_shape=(3, 32, 32), num_classes=10)
    cfg = TrainConfig(method="fast-at", epochs=1, batch_size=batch, eps=8 / 255,
                      alpha=10 / 255)
    seconds = _timed(lambda: train(net, x, y, cfg=cfg, seed=0, device=device), device)
    return {"images": n, "batch": batch, "seconds": seconds,
            "seconds_per_50k_epoch": seconds * 50000 / n}


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
    res["fast_at"] = fast_at_epoch(device, n=args.at_images, batch=128)
    print(f"fast-AT preact-resnet18, CIFAR-shaped: {res['fast_at']['seconds']:.1f} s for "
          f"{args.at_images} images ({res['fast_at']['seconds_per_50k_epoch']:.0f} s per "
          "50k-image epoch)")
    if args.suite:
        res["quick_suite"] = quick_suite(device)
        print(f"quick evidence suite: {res['quick_suite']['seconds']:.0f} s")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
