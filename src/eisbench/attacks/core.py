"""The attack registry and input checks shared by all attacks.

A registered attack is ``attack(model, x, y, *, eps, norm, generator, **hyper) -> x_adv``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from eisbench.attacks.projection import check_norm
from eisbench.core.registry import Registry
from eisbench.core.tensors import check_images

ATTACKS: Registry[Callable[..., torch.Tensor]] = Registry("attack")


def check_inputs(x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float) -> None:
    """Raise ValueError with a fix for malformed attack inputs."""
    check_images(x)
    check_norm(norm)
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"expected labels of shape ({len(x)},), got {tuple(y.shape)}")
    if y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"expected integer class labels, got dtype {y.dtype}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
