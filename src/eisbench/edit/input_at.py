"""Input-space adversarial training as a fine-tuning edit: LAT's baseline in Casper et al. 2024
("Defending Against Unforeseen Failure Modes with Latent Adversarial Training"), whose claim
is LAT against adversarial training in input space at a matched clean cost.

For a batch x (B, C, H, W), y (B,) the adversary is PGD in input space (Linf ball of radius
``eps``, ``steps`` sign steps of ``step_frac * eps`` from a uniform random start, clipped to
[0,1]; :func:`eisbench.attacks.pgd`) on the cross-entropy, and the training loss is LAT's with
the perturbation moved to the input::

    clean_weight * CE(f(x), y) + (1 - clean_weight) * CE(f(x_adv), y)

so that input-space AT and LAT (:mod:`eisbench.edit.lat`) differ in where the adversary acts
and nothing else: the same loss, the same inner steps and step rule (a fraction of the
radius per step), and through :func:`input_at_finetune` the same fine-tuning budget (steps,
batch, learning rate, data, seed). It is the training loop's registered method ``"input-at"``
(:func:`input_adversary` perturbs, :func:`input_at_loss` is the loss; the Linf ball is the
config's ``eps``, its steps ``attack_steps``). The loop's catastrophic-overfitting guard is
off by default (:class:`InputAtTrainConfig`): LAT runs none, so a guard would spend passes
LAT does not; the edited models' input-space robustness is measured afterwards with the
standard attack suite and its gradient-masking checks instead.

The edit bench's eps is the knob that matches clean cost: it is chosen on the pilot zoo as
the bound whose clean-accuracy drop matches LAT's (``benchmarks/input_at_pilot.py``,
``edit.input_at.eps`` in :mod:`eisbench.runs.preregistered`).

Example:
    >>> at = InputAtConfig(eps=0.1, steps=2)
    >>> fixed = input_at_finetune(net, x_def, y_def, at=at, cfg=FinetuneConfig(steps=60))
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.attacks.pgd import pgd
from eisbench.edit.unlearn import DEFAULT_FT, FinetuneConfig, finetune_loop
from eisbench.training import Batch, TrainConfig, register_method
from eisbench.training.methods import inputs_only


@dataclass(frozen=True)
class InputAtConfig:
    """The input-space adversary: a Linf bound ``eps`` on images in [0,1], PGD ``steps`` and
    its step (a fraction of eps per step), and the weight of the clean loss (LAT's 0.5)."""

    eps: float = 0.1
    steps: int = 3
    step_frac: float = 2.5 / 3  # step = step_frac * eps: LAT's rule (2.5 / steps)
    clean_weight: float = 0.5
    random_start: bool = True

    def __post_init__(self) -> None:
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"input-AT eps must be finite and >= 0, got {self.eps}")
        if self.steps < 1 or self.step_frac <= 0:
            raise ValueError("steps must be >= 1 and step_frac > 0")
        if not 0 <= self.clean_weight < 1:
            raise ValueError(f"clean_weight must be in [0, 1), got {self.clean_weight}")


@dataclass(frozen=True)
class InputAtTrainConfig(TrainConfig):
    """The config of the ``"input-at"`` training method: ``TrainConfig`` (its ``eps``,
    ``attack_steps``, ``alpha`` and ``norm`` are the adversary's) plus the clean weight; the
    overfitting guard off (see the module docstring). Built by :func:`input_at_train_config`."""

    method: str = "input-at"
    schedule: str = "constant"
    clean_weight: float = 0.5
    overfit_guard: float = 0.0


def input_at_train_config(at: InputAtConfig, cfg: FinetuneConfig) -> InputAtTrainConfig:
    """The fine-tuning budget ``cfg`` (Adam, constant learning rate) with the adversary ``at``
    as the loop's config."""
    return InputAtTrainConfig(batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                              eps=at.eps, norm="linf", attack_steps=at.steps,
                              alpha=at.step_frac * at.eps if at.eps > 0 else None,
                              clean_weight=at.clean_weight)


def input_adversary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
                    generator: torch.Generator) -> Batch:
    """The ``"input-at"`` method's batch: PGD images x_adv (B, C, H, W) within ``cfg.eps`` of
    x in ``cfg.norm`` (``cfg.attack_steps`` steps of ``cfg.alpha``, default 2.5 eps / steps),
    with the clean x (B, C, H, W) in ``clean``."""
    if cfg.eps == 0:
        return Batch(x, clean=x)
    x_adv = pgd(model, x, y, eps=cfg.eps, step_size=cfg.alpha, steps=cfg.attack_steps,
                norm=cfg.norm, random_start=True, generator=generator)
    return Batch(x_adv.detach(), clean=x)


def input_at_loss(model: nn.Module, batch: Batch, y: torch.Tensor, *,
                  cfg: TrainConfig) -> torch.Tensor:
    """``w * CE(f(clean), y) + (1 - w) * CE(f(x_adv), y)`` on a batch of
    :func:`input_adversary` (w: ``cfg.clean_weight``, 0.5 for a plain ``TrainConfig``)."""
    if batch.clean is None:
        raise ValueError("input-at's loss needs the clean images in Batch.clean: make the "
                         "batch with input_adversary")
    w = float(getattr(cfg, "clean_weight", 0.5))
    adv = F.cross_entropy(model(inputs_only(batch)), y)
    if w == 0:
        return adv
    return w * F.cross_entropy(model(batch.clean), y) + (1 - w) * adv


register_method("input-at", perturb=input_adversary, loss=input_at_loss, perturbs="inputs",
                guarded=True)


def input_at_finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                      at: InputAtConfig = InputAtConfig(), cfg: FinetuneConfig = DEFAULT_FT,
                      seed: int = 0, device: str | torch.device = "cpu") -> nn.Module:
    """A copy of ``model`` fine-tuned with input-space adversarial training on clean x
    (N, C, H, W) in [0,1], y (N,) with the budget ``cfg`` (LAT's: its ``stamp_frac`` is
    unused). ``model`` is not changed; the copy comes back in its mode."""
    edited = copy.deepcopy(model)
    return finetune_loop(edited, x, y, cfg=input_at_train_config(at, cfg), steps=cfg.steps,
                         seed=seed, device=device, desc="input-AT fine-tune")
