"""Training methods: the registered ways the one loop (:func:`eisbench.training.fit`) trains.

Each entry of :data:`TRAINING_METHODS` is a :class:`TrainingMethod`, two functions:

- ``perturb(model, x, y, *, cfg, generator) -> Batch``: what the step trains on, made from the
  clean batch x (B, C, H, W), y (B,) (adversarial images, stamped images, or perturbations of
  hidden activations in :attr:`Batch.hidden`);
- ``loss(model, batch, y, *, cfg) -> scalar``: the training loss on that batch (a loss that
  compares the clean and the perturbed images, as TRADES' does, finds the clean ones in
  :attr:`Batch.clean`);

and declares, as registry metadata, ``perturbs`` (what its perturbation changes: nothing,
inputs or hidden activations) and ``guarded`` (whether the loop's catastrophic-overfitting
guard applies: methods trained against an input-space attack that they can overfit to).

``cfg`` is the run's :class:`~eisbench.training.config.TrainConfig` (a subclass carries a
method's own options). This module registers standard, pgd-at, fast-at, trades and input-grad;
:mod:`eisbench.edit` registers latent-at (:mod:`eisbench.edit.lat`) and finetune, the
fine-tuning on stamped batches (:mod:`eisbench.edit.unlearn`).

Example:
    >>> TRAINING_METHODS.meta("fast-at")["guarded"]
    True
    >>> TRAINING_METHODS.names(guarded=True)
    ['fast-at', 'pgd-at', 'trades']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.attacks.pgd import pgd
from eisbench.attacks.projection import project, random_start, steepest_direction
from eisbench.core.registry import MetaKey, Registry
from eisbench.core.tensors import eval_mode
from eisbench.training.config import (
    DEFAULT_GRAD_REG,
    DEFAULT_TRADES_BETA,
    DEFAULT_TRADES_NOISE,
    TrainConfig,
)


@dataclass(frozen=True, eq=False)
class Batch:
    """What one step trains on: images x (B, C, H, W); for latent methods, perturbations
    ``{layer: d (B, ...)}`` that the method's loss adds to those layers' outputs; for a loss
    that compares the two (TRADES), the clean images (B, C, H, W) that x was made from."""

    x: torch.Tensor
    hidden: Mapping[str, torch.Tensor] = field(default_factory=dict)
    clean: torch.Tensor | None = None


Perturb = Callable[..., Batch]
Loss = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class TrainingMethod:
    """A registered training method: what perturbs the batch, and the loss on it."""

    perturb: Perturb  # (model, x, y, *, cfg, generator) -> Batch
    loss: Loss  # (model, batch, y, *, cfg) -> scalar


PERTURBS = ("nothing", "inputs", "hidden")
TRAINING_METHODS: Registry[TrainingMethod] = Registry("training method", schema={
    "perturbs": MetaKey(str, choices=PERTURBS,
                        doc="what the perturbation changes: nothing, inputs or hidden layers"),
    "guarded": MetaKey(bool, doc="the overfitting guard applies (an input attack to overfit to)"),
})


def register_method(name: str, *, perturb: Perturb, loss: Loss, perturbs: str,
                    guarded: bool) -> TrainingMethod:
    """Register a training method under ``name`` (a duplicate name or bad metadata raises)."""
    return TRAINING_METHODS.register(name, perturbs=perturbs, guarded=guarded)(
        TrainingMethod(perturb=perturb, loss=loss))


def inputs_only(batch: Batch) -> torch.Tensor:
    """The images of a batch for a loss that applies no hidden perturbation (raises if the
    batch carries one, which such a loss would silently drop)."""
    if batch.hidden:
        raise ValueError(f"this loss trains on images only, but the batch perturbs hidden "
                         f"layers {sorted(batch.hidden)}: give the method a latent loss")
    return batch.x


def cross_entropy(model: nn.Module, batch: Batch, y: torch.Tensor, *,
                  cfg: TrainConfig) -> torch.Tensor:
    """The default training loss: mean cross-entropy of batch.x (B, C, H, W), y (B,)."""
    return F.cross_entropy(model(inputs_only(batch)), y)


def clean(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
          generator: torch.Generator) -> Batch:
    """No perturbation: train on the clean batch."""
    return Batch(x)


def pgd_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
           generator: torch.Generator) -> Batch:
    """Madry et al. 2018: train on PGD adversarial examples (``cfg.attack_steps`` steps)."""
    return Batch(pgd(model, x, y, eps=cfg.eps, steps=cfg.attack_steps, step_size=cfg.alpha,
                     norm=cfg.norm, random_start=True, generator=generator))


def fast_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
            generator: torch.Generator) -> Batch:
    """Wong et al. 2020, "Fast is better than free": FGSM from a uniform random start with
    step ``alpha`` (1.25 eps by default), projected back to the eps-ball.
    """
    alpha = cfg.alpha if cfg.alpha is not None else 1.25 * cfg.eps
    x0 = random_start(x, norm=cfg.norm, eps=cfg.eps, generator=generator).requires_grad_(True)
    loss = F.cross_entropy(model(x0), y)
    (grad,) = torch.autograd.grad(loss, x0)
    with torch.no_grad():
        return Batch(project(x, x0 + alpha * steepest_direction(grad, cfg.norm), norm=cfg.norm,
                             eps=cfg.eps))


# TRADES' step over eps / steps when cfg.alpha is None (github.com/yaodongyu/TRADES): Linf 0.01
# at eps 0.3 and 40 steps (train_trades_mnist.py:28-32), L2 SGD at lr 2 eps / steps (trades.py:47)
TRADES_STEP = {"linf": 4.0 / 3.0, "l2": 2.0}


def trades_step(cfg: TrainConfig) -> float:
    """The step of TRADES' attack: ``cfg.alpha``, else ``TRADES_STEP[norm] * eps / steps``."""
    if cfg.alpha is not None:
        return cfg.alpha
    return TRADES_STEP[cfg.norm] * cfg.eps / cfg.attack_steps


def trades_kl(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """``sum_i KL(softmax(clean_i) || softmax(adv_i))`` of logits (B, K), summed over the batch
    (TRADES' ``KLDivLoss(size_average=False)(log_softmax(adv), softmax(clean))``)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1),
                    reduction="sum")


def trades_perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
                   generator: torch.Generator) -> Batch:
    """Zhang et al. 2019, TRADES' inner maximisation: from x + noise * N(0, 1), ``attack_steps``
    steepest-ascent steps (sign steps for Linf) of :func:`trades_step` on
    ``KL(f(x) || f(x'))``, each projected to the eps-ball and [0,1], the model in eval mode.
    The labels y (B,) are not used. Returns x' (B, C, H, W) with the clean x in ``clean``.

    Example:
        >>> batch = trades_perturb(net, x, y, cfg=TradesConfig(), generator=gen)
        >>> float((batch.x - batch.clean).abs().amax()) <= 0.3
        True
    """
    step, noise = trades_step(cfg), float(getattr(cfg, "trades_noise", DEFAULT_TRADES_NOISE))
    start = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)  # (B, C, H, W)
    x_adv = x.detach() + noise * start
    with eval_mode(model):
        with torch.no_grad():
            logits_clean = model(x)  # (B, K)
        for _ in range(cfg.attack_steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(trades_kl(model(x_adv), logits_clean), x_adv)
            with torch.no_grad():
                x_adv = project(x, x_adv + step * steepest_direction(grad, cfg.norm),
                                norm=cfg.norm, eps=cfg.eps)
    return Batch(x_adv.detach(), clean=x)


def trades_loss(model: nn.Module, batch: Batch, y: torch.Tensor, *,
                cfg: TrainConfig) -> torch.Tensor:
    """TRADES' loss ``CE(f(x), y) + beta * sum_i KL(f(x_i) || f(x'_i)) / B`` on a batch from
    :func:`trades_perturb` (x = ``batch.clean``, x' = ``batch.x``, (B, C, H, W)), y (B,);
    beta is ``cfg.trades_beta`` (:class:`~eisbench.training.config.TradesConfig`), else
    :data:`DEFAULT_TRADES_BETA`. The gradient flows through both logits, as in the reference
    (whose KL target is a second forward pass of x; one pass here, the same for a model
    without dropout).

    Example:
        >>> loss = trades_loss(net, trades_perturb(net, x, y, cfg=cfg, generator=gen), y, cfg=cfg)
    """
    if batch.clean is None:
        raise ValueError("trades' loss needs the clean images in Batch.clean: make the batch "
                         "with trades_perturb")
    beta = float(getattr(cfg, "trades_beta", DEFAULT_TRADES_BETA))
    logits_clean = model(batch.clean)  # (B, K)
    logits_adv = model(inputs_only(batch))  # (B, K)
    return (F.cross_entropy(logits_clean, y)
            + beta * trades_kl(logits_adv, logits_clean) / len(y))


def input_grad_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                    cfg: TrainConfig) -> torch.Tensor:
    """``mean_i CE_i + lambda * mean_i ||d CE_i / d x_i||_2^2`` on a batch x (B, C, H, W),
    y (B,), by double backpropagation; lambda is ``cfg.grad_reg``
    (:class:`~eisbench.training.config.InputGradConfig`), else :data:`DEFAULT_GRAD_REG`.

    Example:
        >>> loss = input_grad_loss(net, x, y, cfg=InputGradConfig(grad_reg=10.0))
        >>> loss.backward()
    """
    lam = float(getattr(cfg, "grad_reg", DEFAULT_GRAD_REG))
    xg = x.detach().requires_grad_(True)  # (B, C, H, W)
    ce = F.cross_entropy(model(xg), y, reduction="none")  # (B,)
    (grad,) = torch.autograd.grad(ce.sum(), xg, create_graph=True)  # (B, C, H, W): per example
    return ce.mean() + lam * grad.flatten(1).pow(2).sum(1).mean()


def _input_grad(model: nn.Module, batch: Batch, y: torch.Tensor, *,
                cfg: TrainConfig) -> torch.Tensor:
    """Ross & Doshi-Velez 2018: :func:`input_grad_loss` of the (clean) batch."""
    return input_grad_loss(model, inputs_only(batch), y, cfg=cfg)


register_method("standard", perturb=clean, loss=cross_entropy, perturbs="nothing", guarded=False)
register_method("pgd-at", perturb=pgd_at, loss=cross_entropy, perturbs="inputs", guarded=True)
register_method("fast-at", perturb=fast_at, loss=cross_entropy, perturbs="inputs", guarded=True)
# trades is guarded like pgd-at: the guard's probe (FGSM vs PGD-5 accuracy on CE) looks for a
# masked gradient whatever attack trained the model, and TRADES' attack starts at x + 0.001 noise
# where the KL's gradient nearly vanishes (no uniform random start, the setting in which Wong et
# al. 2020 saw FGSM training collapse), so few-step TRADES can mask it; the probe costs < 1% of a
# 40-step TRADES epoch.
register_method("trades", perturb=trades_perturb, loss=trades_loss, perturbs="inputs",
                guarded=True)
register_method("input-grad", perturb=clean, loss=_input_grad, perturbs="nothing",
                guarded=False)
