"""Nakkiran 2019's adversarial squares: the distribution, its exact robust classifier, and one
seed of the overfit network against it (part (b) of :mod:`eisbench.experiments.nakkiran`).

A two-class distribution of ``side x side`` images, every pixel at level ``low`` (class 0) or
``high`` (class 1) plus uniform noise of half-width ``noise``. Every pixel alone separates the
classes with margin ``(high - low) / 2 - noise`` and the mean-pixel threshold (the robust
classifier) with a larger one, so every useful feature is robust; a network fit to (near) zero
loss on a few samples is attacked at an Linf eps far below those margins, and the robust
classifier's robust accuracy at that eps is computed exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from eisbench.attacks.evaluate import AttackConfig
from eisbench.attacks.pgd import pgd
from eisbench.core.config import stable_hash
from eisbench.core.tensors import eval_mode, predict
from eisbench.models import ModelSpec
from eisbench.runs.stages import Context, Tensors, evaluate_stage, train_stage
from eisbench.training import TrainConfig


@dataclass(frozen=True)
class SquaresConfig:
    """The adversarial-squares distribution, the overfit network and the attack on it."""

    side: int = 16  # images are side x side, one channel
    low: float = 0.25  # pixel level of class 0
    high: float = 0.75  # pixel level of class 1
    noise: float = 0.1  # per-pixel uniform noise in [-noise, noise]
    n_train: int = 32  # few samples: the network fits them exactly
    n_test: int = 1000
    arch: str = "mlp"
    train: TrainConfig = TrainConfig(epochs=300, lr=1e-3, schedule="constant")
    # the threat model (eps, norm) of the suite; alone (``suite`` None) the attack itself; it
    # also draws the few adversarial squares shown in the report
    attack: AttackConfig = field(default_factory=lambda: AttackConfig(
        name="pgd", norm="linf", eps=0.05, steps=20, restarts=2, early_exit=True))
    # the network's robust accuracy comes from this suite at ``attack``'s eps and norm, with
    # every sanity check, and the claim reading it is gated by them; "binary" is the suite for
    # two classes ("standard" and "fast" skip their targeted attacks there, so their
    # "enough-classes" check fails); None: from ``attack`` alone, without checks
    suite: str | None = "binary"
    n_checks: int = 200  # test images for the costlier sanity checks (with ``suite``)


def squares_sample(n: int, *, side: int, low: float, high: float, noise: float,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` adversarial squares: labels (n,) uniform in {0, 1}; images (n, 1, side, side) at
    level ``low``/``high`` plus i.i.d. uniform noise in [-noise, noise], clipped to [0,1]."""
    y = torch.randint(0, 2, (n,), generator=generator)  # (n,)
    level = low + (high - low) * y.float()  # (n,)
    u = torch.rand(n, 1, side, side, generator=generator)  # (n, 1, side, side)
    return (level.view(-1, 1, 1, 1) + noise * (2 * u - 1)).clamp(0, 1), y


def mean_threshold_robust(x: torch.Tensor, y: torch.Tensor, *, eps: float,
                          threshold: float) -> torch.Tensor:
    """Exact Linf robustness (N,) bool of the classifier ``mean pixel > threshold`` at ``eps``.

    The worst case moves every pixel by eps towards the other class, clipped to [0,1]; a point
    is robust iff even that leaves it on the side of its label y (N,) of x (N, C, H, W).
    """
    up = (x + eps).clamp(0, 1).flatten(1).mean(1)  # (N,) worst case for class 0
    down = (x - eps).clamp(0, 1).flatten(1).mean(1)  # (N,) worst case for class 1
    return torch.where(y == 1, down > threshold, up <= threshold)


def squares_seed(ctx: Context, sq: SquaresConfig, seed: int) -> tuple[dict[str, Any],
                                                                        dict[str, torch.Tensor]]:
    """Train the overfit network on one draw of the squares; its and the robust classifier's
    clean and robust accuracy (and a few clean/adversarial test squares). With ``sq.suite``,
    the row's ``checks`` are the sanity checks of the network's robust accuracy."""
    gen = torch.Generator().manual_seed(seed)
    dist = {"side": sq.side, "low": sq.low, "high": sq.high, "noise": sq.noise}
    x_tr, y_tr = squares_sample(sq.n_train, side=sq.side, low=sq.low, high=sq.high,
                                noise=sq.noise, generator=gen)
    x_te, y_te = squares_sample(sq.n_test, side=sq.side, low=sq.low, high=sq.high,
                                noise=sq.noise, generator=gen)
    key = f"squares:{stable_hash(dist)}:seed{seed}"
    train_d = Tensors(x_tr, y_tr, f"{key}:train:{sq.n_train}")
    test_d = Tensors(x_te, y_te, f"{key}:test:{sq.n_test}")
    spec = ModelSpec(arch=sq.arch, in_shape=(1, sq.side, sq.side), num_classes=2)
    net, net_key = train_stage(ctx, spec=spec, cfg=sq.train, data=train_d, seed=seed,
                               desc=f"[seed {seed}] network on {sq.n_train} squares")
    ev = evaluate_stage(ctx, model=net, model_key=net_key, test=test_d, n_robust=sq.n_test,
                        attack=sq.attack, seed=seed, desc=f"[seed {seed}] attack the network",
                        suite=sq.suite, n_checks=sq.n_checks)
    with eval_mode(net), torch.no_grad():
        train_loss = float(F.cross_entropy(net(x_tr.to(ctx.device)), y_tr.to(ctx.device)))
    thr = (sq.low + sq.high) / 2
    clean = (x_te.flatten(1).mean(1) > thr).long() == y_te
    robust = mean_threshold_robust(x_te, y_te, eps=sq.attack.eps, threshold=thr)
    x_adv = pgd(net, x_te[:4].to(ctx.device), y_te[:4].to(ctx.device),
                generator=torch.Generator().manual_seed(seed), **sq.attack.kwargs()).cpu()
    row: dict[str, Any] = {"net_std_acc": ev["std_acc"], "net_robust_acc": ev["robust_acc"],
           "net_train_loss": train_loss, "robust_classifier_std_acc": float(clean.float().mean()),
           "robust_classifier_robust_acc": float(robust.float().mean()),
           "mean_margin_min": float((x_te.flatten(1).mean(1) - thr).abs().min()),
           "pixel_margin": (sq.high - sq.low) / 2 - sq.noise}
    if "checks" in ev:
        row["checks"] = ev["checks"]
    samples = {"squares_clean": x_te[:4], "squares_adv": x_adv, "squares_labels": y_te[:4],
               "squares_adv_pred": predict(net, x_adv, device=ctx.device)}
    return row, samples
