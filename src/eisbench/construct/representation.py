"""D_R and D_NR: images that carry only the features a given model relies on.

For each training pair (x, y), start from a different random training image and optimise it so
that its penultimate-layer representation matches that of x (Ilyas et al. 2019, Section 3.1).
Keep the label y. With a robust model the result holds (mostly) robust features: D_R; with a
standard model: D_NR.

``start="noise"`` starts instead from grey images with Gaussian noise, ``clamp(N(0, 1) / 20 +
0.5, 0, 1)`` (:func:`noise_start`), as the robustness library's inversion does: its docs'
example ``docs/example_usage/input_space_manipulation.rst:188`` (``ch.clamp(ch.randn_like(im_inv)
/ 20 + 0.5, 0, 1)``), and MadryLab/robust_representations ``image_inversion.ipynb`` cells 1 and 7
(``NOISE_SCALE = 20``; ``ch.randn_like(im) / NOISE_SCALE + 0.5``, unclipped there), the notebook
that MadryLab/constructed-datasets issue #5 names as the code behind robust CIFAR.
"""

from __future__ import annotations

import torch
from torch import nn

from eisbench.attacks.inversion import invert_representation
from eisbench.construct.core import CONSTRUCTIONS
from eisbench.core.progress import progress

STARTS = ("other-image", "noise")
"""Where each inversion starts: another training image (a derangement) or :func:`noise_start`."""
NOISE_SCALE = 20.0
"""The noise start's divisor of N(0, 1) (the robustness library's ``NOISE_SCALE``)."""


def derangement(n: int, *, generator: torch.Generator) -> torch.Tensor:
    """A random permutation (n,) with no fixed point (n >= 2), so each image starts elsewhere."""
    perm = torch.randperm(n, generator=generator)
    for i in (perm == torch.arange(n)).nonzero().flatten().tolist():
        if perm[i] == i:  # swapping with a neighbour fixes i and creates no new fixed point
            j = (i + 1) % n
            perm[i], perm[j] = perm[j].clone(), perm[i].clone()
    return perm


def noise_start(shape: tuple[int, ...] | torch.Size, *,
                generator: torch.Generator) -> torch.Tensor:
    """Grey images with Gaussian noise, ``clamp(N(0, 1) / 20 + 0.5, 0, 1)`` of ``shape``
    (N, C, H, W), drawn from ``generator`` alone (see the module docstring for the source).

    Example:
        >>> x0 = noise_start((2, 1, 28, 28), generator=torch.Generator().manual_seed(0))
        >>> round(float(x0.mean()), 1)
        0.5
    """
    return (torch.randn(tuple(shape), generator=generator) / NOISE_SCALE + 0.5).clamp(0.0, 1.0)


@CONSTRUCTIONS.register("representation")
def representation_dataset(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                           num_classes: int, generator: torch.Generator, steps: int = 100,
                           step_size: float = 0.1, optimizer: str = "adam",
                           relu: str = "true", start: str = "other-image",
                           batch_size: int = 500,
                           device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Build D_R (robust ``model``) or D_NR (standard ``model``) from x (N, C, H, W), y (N,).

    Returns (x_new (N, C, H, W) in [0,1], y (N,)): x_new[i] matches the representation of x[i]
    and starts from x[perm[i]], a different random image (``start="other-image"``), or from
    :func:`noise_start` (``start="noise"``). ``steps``, ``step_size``, ``optimizer`` and
    ``relu`` go to :func:`~eisbench.attacks.inversion.invert_representation`.

    Example:
        >>> x_r, y_r = representation_dataset(robust, x, y, num_classes=10,
        ...                                   generator=torch.Generator().manual_seed(0))
    """
    del num_classes
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    if start == "other-image":
        if len(x) < 2:
            raise ValueError("need at least 2 images to start each from a different one")
        starts = x[derangement(len(x), generator=generator)]  # (N, C, H, W)
    else:
        starts = noise_start(x.shape, generator=generator)  # (N, C, H, W)
    out = torch.empty_like(x)
    for i in progress(range(0, len(x), batch_size), desc="invert representations",
                      unit="batch"):
        tgt = x[i:i + batch_size].to(device)
        x0 = starts[i:i + batch_size].to(device)
        out[i:i + batch_size] = invert_representation(model, x0, tgt, steps=steps,
                                                      step_size=step_size, optimizer=optimizer,
                                                      relu=relu).cpu()
    return out, y.clone()
