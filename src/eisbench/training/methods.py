"""Training methods: each turns a clean batch into the batch the model is trained on.

A method is ``perturb(model, x, y, *, cfg, generator) -> x_train`` (B, C, H, W). The model is
trained on the cross-entropy of that batch, unless the method also has an entry in
:data:`LOSSES`: ``loss(model, x_train, y, *, cfg) -> scalar`` (a regulariser, say).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.attacks.pgd import pgd
from eisbench.attacks.projection import project, random_start, steepest_direction
from eisbench.core.registry import Registry

if TYPE_CHECKING:
    from eisbench.training.loop import TrainConfig

Perturb = Callable[..., torch.Tensor]
Loss = Callable[..., torch.Tensor]
METHODS: Registry[Perturb] = Registry("training method")
LOSSES: dict[str, Loss] = {}  # method -> its training loss, where not plain cross-entropy
DEFAULT_GRAD_REG = 1.0  # input-grad's lambda for a config without a ``grad_reg`` field


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


@METHODS.register("input-grad")
def input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
               generator: torch.Generator) -> torch.Tensor:
    """Ross & Doshi-Velez 2018: train on the clean batch with the loss
    :func:`input_grad_loss` (cross-entropy plus a penalty on its input gradient)."""
    return x


def input_grad_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                    cfg: TrainConfig) -> torch.Tensor:
    """``mean_i CE_i + lambda * mean_i ||d CE_i / d x_i||_2^2`` on a batch x (B, C, H, W),
    y (B,), by double backpropagation; lambda is ``cfg.grad_reg``
    (:class:`~eisbench.training.loop.InputGradConfig`), else :data:`DEFAULT_GRAD_REG`.

    Example:
        >>> loss = input_grad_loss(net, x, y, cfg=InputGradConfig(grad_reg=10.0))
        >>> loss.backward()
    """
    lam = float(getattr(cfg, "grad_reg", DEFAULT_GRAD_REG))
    xg = x.detach().requires_grad_(True)  # (B, C, H, W)
    ce = F.cross_entropy(model(xg), y, reduction="none")  # (B,)
    (grad,) = torch.autograd.grad(ce.sum(), xg, create_graph=True)  # (B, C, H, W): per example
    return ce.mean() + lam * grad.flatten(1).pow(2).sum(1).mean()


LOSSES["input-grad"] = input_grad_loss
