"""What the CIFAR-10 presets cost: seconds per training step of the full-width PreAct ResNet-18
(batch 128, 32x32x3) on this machine's device, standard and L2 PGD-7 adversarial training, and
one normalised inversion step; printed with the per-epoch and whole-preset estimates.

Run: ``python benchmarks/cifar_cost.py [--device cuda] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from eisbench.attacks.inversion import invert_representation
from eisbench.experiments.ilyas import CIFAR10
from eisbench.models.core import build
from eisbench.training.methods import pgd_at


def seconds(fn, repeats: int, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device(args.device)
    model = build("preact-resnet18", in_shape=(3, 32, 32), num_classes=10).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(128, 3, 32, 32, generator=g).to(dev)
    y = torch.randint(0, 10, (128,), generator=g).to(dev)
    rob = CIFAR10.robust_train

    def step(inputs: torch.Tensor) -> None:
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(inputs), y).backward()
        opt.step()

    def adv_step() -> None:
        step(pgd_at(model, x, y, cfg=rob,
                    generator=torch.Generator(device=dev).manual_seed(0)).x)

    std_s = seconds(lambda: step(x), args.repeats, dev)
    adv_s = seconds(adv_step, args.repeats, dev)
    inv_s = seconds(lambda: invert_representation(model, x.flip(0), x, steps=1,
                                                  optimizer="normalized"),
                    args.repeats, dev)
    batches = 50000 // 128 + 1
    epochs = CIFAR10.std_train.epochs
    seeds = len(CIFAR10.seeds)
    train_h = seeds * batches * epochs * (5 * std_s + adv_s) / 3600  # 5 standard models + robust
    inv_h = seeds * 2 * (CIFAR10.n_construct / 128) * CIFAR10.inversion_steps * inv_s / 3600
    print(f"device {dev}: per batch of 128: standard step {std_s:.3f} s, L2 PGD-7 step "
          f"{adv_s:.3f} s, one inversion step {inv_s:.3f} s")
    print(f"per epoch (50,000 images): standard {batches * std_s / 60:.1f} min, "
          f"adversarial {batches * adv_s / 60:.1f} min")
    print(f"ilyas cifar10 preset ({seeds} seeds, {epochs} epochs): training ~{train_h:.0f} h, "
          f"D_R + D_NR inversion ~{inv_h:.0f} h (evaluation and D_rand/D_det not counted)")


if __name__ == "__main__":
    main()
