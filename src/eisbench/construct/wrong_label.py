"""D_rand and D_det: correctly-looking images, relabelled by a targeted attack's target.

For each (x, y) pick a target t != y (uniformly at random: D_rand; t = y + 1 mod K: D_det),
run targeted L2 PGD on the standard model towards t, and label the result t (Ilyas et al.
2019, Section 3.2). To a human every label is wrong; only non-robust features agree with it.
"""

from __future__ import annotations

import torch
from torch import nn

from eisbench.attacks.pgd import pgd
from eisbench.construct.core import CONSTRUCTIONS
from eisbench.core.progress import progress


def pick_targets(y: torch.Tensor, *, num_classes: int, mode: str,
                 generator: torch.Generator) -> torch.Tensor:
    """Targets (N,): ``random`` (uniform over the K-1 wrong classes) or ``det`` (y+1 mod K)."""
    if mode == "det":
        return (y + 1) % num_classes
    if mode == "random":
        shift = torch.randint(1, num_classes, y.shape, generator=generator)
        return (y + shift) % num_classes
    raise ValueError(f"unknown target mode {mode!r}: expected 'random' or 'det'")


@CONSTRUCTIONS.register("wrong-label")
def wrong_label_dataset(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, num_classes: int,
                        generator: torch.Generator, mode: str = "random", eps: float = 2.0,
                        steps: int = 100, step_size: float = 0.1, norm: str = "l2",
                        batch_size: int = 500,
                        device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Build D_rand (``mode="random"``) or D_det (``mode="det"``) from x (N, C, H, W), y (N,).

    Returns (x_adv (N, C, H, W) within ``eps`` of x, targets (N,)).

    Example:
        >>> x_det, t = wrong_label_dataset(std_model, x, y, num_classes=10, mode="det",
        ...                                generator=torch.Generator().manual_seed(0))
    """
    t = pick_targets(y, num_classes=num_classes, mode=mode, generator=generator)
    out = torch.empty_like(x)
    for i in progress(range(0, len(x), batch_size), desc=f"D_{mode} targeted PGD",
                      unit="batch"):
        xb, tb = x[i:i + batch_size].to(device), t[i:i + batch_size].to(device)
        out[i:i + batch_size] = pgd(model, xb, tb, eps=eps, steps=steps, step_size=step_size,
                                    norm=norm, targeted=True, random_start=False,
                                    generator=generator).cpu()
    return out, t
