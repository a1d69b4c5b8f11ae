"""D_R and D_NR: images that carry only the features a given model relies on.

For each training pair (x, y), start from a different random training image and optimise it so
that its penultimate-layer representation matches that of x (Ilyas et al. 2019, Section 3.1).
Keep the label y. With a robust model the result holds (mostly) robust features: D_R; with a
standard model: D_NR.
"""

from __future__ import annotations

import torch
from torch import nn

from eisbench.attacks.inversion import invert_representation
from eisbench.construct.core import CONSTRUCTIONS
from eisbench.core.progress import progress


def derangement(n: int, *, generator: torch.Generator) -> torch.Tensor:
    """A random permutation (n,) with no fixed point (n >= 2), so each image starts elsewhere."""
    perm = torch.randperm(n, generator=generator)
    for i in (perm == torch.arange(n)).nonzero().flatten().tolist():
        if perm[i] == i:  # swapping with a neighbour fixes i and creates no new fixed point
            j = (i + 1) % n
            perm[i], perm[j] = perm[j].clone(), perm[i].clone()
    return perm


@CONSTRUCTIONS.register("representation")
def representation_dataset(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                           num_classes: int, generator: torch.Generator, steps: int = 100,
                           step_size: float = 0.1, optimizer: str = "adam",
                           batch_size: int = 500,
                           device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Build D_R (robust ``model``) or D_NR (standard ``model``) from x (N, C, H, W), y (N,).

    Returns (x_new (N, C, H, W) in [0,1], y (N,)): x_new[i] matches the representation of x[i]
    and starts from x[perm[i]], a different random image.

    Example:
        >>> x_r, y_r = representation_dataset(robust, x, y, num_classes=10,
        ...                                   generator=torch.Generator().manual_seed(0))
    """
    del num_classes
    if len(x) < 2:
        raise ValueError("need at least 2 images to start each from a different one")
    perm = derangement(len(x), generator=generator)
    out = torch.empty_like(x)
    for i in progress(range(0, len(x), batch_size), desc="invert representations",
                      unit="batch"):
        tgt = x[i:i + batch_size].to(device)
        start = x[perm[i:i + batch_size]].to(device)
        out[i:i + batch_size] = invert_representation(model, start, tgt, steps=steps,
                                                      step_size=step_size,
                                                      optimizer=optimizer).cpu()
    return out, y.clone()
