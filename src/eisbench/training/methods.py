"""Training methods: each turns a clean batch into the batch the model is trained on.

A method is ``perturb(model, x, y, *, cfg, generator) -> x_train`` (B, C, H, W).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.attacks.pgd import pgd
from eisbench.attacks.projection import project, random_start, steepest_direction
from eisbench.registry import Registry

if TYPE_CHECKING:
    from eisbench.training.loop import TrainConfig

Perturb = Callable[..., torch.Tensor]
METHODS: Registry[Perturb] = Registry("training method")


@METHODS.register("standard")
def standard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
             generator: torch.Generator) -> torch.Tensor:
    """Empirical risk minimisation: train on the clean batch."""
    return x


@METHODS.register("pgd-at")
def pgd_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
           generator: torch.Generator) -> torch.Tensor:
    """Madry et al. 2018: train on PGD adversarial examples (``cfg.attack_steps`` steps)."""
    return pgd(model, x, y, eps=cfg.eps, steps=cfg.attack_steps, step_size=cfg.alpha,
               norm=cfg.norm, random_start=True, generator=generator)


@METHODS.register("fast-at")
def fast_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
            generator: torch.Generator) -> torch.Tensor:
    """Wong et al. 2020, "Fast is better than free": FGSM from a uniform random start with
    step ``alpha`` (1.25 eps by default), projected back to the eps-ball.
    """
    alpha = cfg.alpha if cfg.alpha is not None else 1.25 * cfg.eps
    x0 = random_start(x, norm=cfg.norm, eps=cfg.eps, generator=generator).requires_grad_(True)
    loss = F.cross_entropy(model(x0), y)
    (grad,) = torch.autograd.grad(loss, x0)
    with torch.no_grad():
        return project(x, x0 + alpha * steepest_direction(grad, cfg.norm), norm=cfg.norm,
                       eps=cfg.eps)
