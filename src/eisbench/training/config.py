"""The configs of the training loop.

Stage caches hash every field of these configs: their fields, names and defaults are part of
every cached model's key. A method that needs more options subclasses :class:`TrainConfig`
(:class:`InputGradConfig` here; ``LatTrainConfig`` and ``StampTrainConfig`` in
:mod:`eisbench.edit`) instead of adding a field to it.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_GRAD_REG = 1.0  # input-grad's lambda for a config without a ``grad_reg`` field


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (all of them end up in the record)."""

    method: str = "standard"  # a name of TRAINING_METHODS: standard | pgd-at | fast-at | ...
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3  # peak learning rate (Adam)
    schedule: str = "onecycle"  # onecycle (linear up for 2/5, down to 0) | constant
    weight_decay: float = 0.0
    eps: float = 0.3  # adversarial budget (pgd-at, fast-at)
    norm: str = "linf"
    alpha: float | None = None  # attack step; fast-at default 1.25 eps, pgd-at 2.5 eps/steps
    attack_steps: int = 40  # pgd-at only
    eps_warmup_epochs: int = 0  # linearly ramp eps over the first epochs (helps fast-at on MNIST)
    # Adversarial methods: after each epoch, PGD-10 accuracy at the full eps on a fixed batch of
    # training images; if it falls this far below its best (catastrophic overfitting, Wong et al.
    # 2020), restore the best epoch's weights and stop. 0 turns the guard off.
    overfit_guard: float = 0.2


@dataclass(frozen=True)
class InputGradConfig(TrainConfig):
    """Input-gradient regularisation (Ross & Doshi-Velez 2018): ``TrainConfig`` plus its weight.

    A subclass rather than a new ``TrainConfig`` field: stage caches hash every field of a
    config, so a field added to ``TrainConfig`` would invalidate every cached model.
    """

    method: str = "input-grad"
    grad_reg: float = DEFAULT_GRAD_REG  # lambda of ``CE + lambda * ||grad_x CE||_2^2``
