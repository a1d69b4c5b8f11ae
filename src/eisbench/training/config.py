"""The configs of the training loop.

Stage caches hash every field of these configs: their fields, names and defaults are part of
every cached model's key. A method that needs more options subclasses :class:`TrainConfig`
(:class:`InputGradConfig` and :class:`TradesConfig` here; ``LatTrainConfig`` and
``StampTrainConfig`` in :mod:`eisbench.edit`) instead of adding a field to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from eisbench.core.validate import finite, integer, one_of, positive_int

NORMS = ("linf", "l2")
SCHEDULE_NAMES = ("onecycle", "constant")  # the keys of the loop's ``SCHEDULES``
DEFAULT_GRAD_REG = 1.0  # input-grad's lambda for a config without a ``grad_reg`` field
# TRADES (Zhang et al. 2019) as in github.com/yaodongyu/TRADES, for a config without the fields
# of TradesConfig: beta 1.0 (train_trades_mnist.py:34, the MNIST script; trades.py:24), start
# noise 0.001 N(0, 1) (trades.py:31). The attack's eps 0.3, 40 steps and batch 128
# (train_trades_mnist.py:28,30,16) are TrainConfig's own defaults; its step 0.01
# (train_trades_mnist.py:32) is 4/3 eps / steps there, the default of methods.trades_step.
DEFAULT_TRADES_BETA = 1.0
DEFAULT_TRADES_NOISE = 0.001


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
    attack_steps: int = 40  # pgd-at and trades
    eps_warmup_epochs: int = 0  # linearly ramp eps over the first epochs (helps fast-at on MNIST)
    # Adversarial methods: after each epoch, PGD-10 accuracy at the full eps on a fixed batch of
    # training images; if it falls this far below its best (catastrophic overfitting, Wong et al.
    # 2020), restore the best epoch's weights and stop. Within epochs, every 100 steps, FGSM
    # minus PGD-5 accuracy at the training eps; above this margin, restore the last healthy
    # weights and ramp eps back up from half (eisbench.training.guard). 0 turns both off. Wong
    # et al. 2020's MNIST recipe as published: method="fast-at", eps=0.3, alpha=0.375, lr=5e-3,
    # schedule="onecycle", epochs=10, batch_size=100, overfit_guard=0.
    overfit_guard: float = 0.2

    def __post_init__(self) -> None:
        """Refuse a bad value before any training: a ``ValueError`` naming the field, the value
        and the allowed range (``method`` is checked by the loop against its registry)."""
        positive_int("epochs", self.epochs)
        positive_int("batch_size", self.batch_size)
        finite("lr", self.lr, lo=0.0, lo_open=True)
        one_of("schedule", self.schedule, SCHEDULE_NAMES)
        finite("weight_decay", self.weight_decay, lo=0.0)
        finite("eps", self.eps, lo=0.0)
        one_of("norm", self.norm, NORMS)
        if self.alpha is not None:
            finite("alpha", self.alpha, lo=0.0, lo_open=True)
        positive_int("attack_steps", self.attack_steps)
        integer("eps_warmup_epochs", self.eps_warmup_epochs, lo=0)
        finite("overfit_guard", self.overfit_guard, lo=0.0, hi=1.0)


@dataclass(frozen=True)
class InputGradConfig(TrainConfig):
    """Input-gradient regularisation (Ross & Doshi-Velez 2018): ``TrainConfig`` plus its weight.

    A subclass rather than a new ``TrainConfig`` field: stage caches hash every field of a
    config, so a field added to ``TrainConfig`` would invalidate every cached model.
    """

    method: str = "input-grad"
    grad_reg: float = DEFAULT_GRAD_REG  # lambda of ``CE + lambda * ||grad_x CE||_2^2``


@dataclass(frozen=True)
class TradesConfig(TrainConfig):
    """TRADES (Zhang et al. 2019): ``TrainConfig`` plus the weight of its KL term and the
    scale of its attack's start noise; its attack is ``attack_steps`` sign steps of ``alpha``
    (None: 4/3 eps / steps, the MNIST script's 0.01 at eps 0.3 and 40 steps).

    A subclass, not new ``TrainConfig`` fields, for the reason :class:`InputGradConfig` gives.

    Example:
        >>> TradesConfig(trades_beta=6.0).method
        'trades'
    """

    method: str = "trades"
    trades_beta: float = DEFAULT_TRADES_BETA  # weight of KL(f(x) || f(x')) in the loss
    trades_noise: float = DEFAULT_TRADES_NOISE  # std of the Gaussian start of the KL attack

    def __post_init__(self) -> None:
        super().__post_init__()
        finite("trades_beta", self.trades_beta, lo=0.0)
        finite("trades_noise", self.trades_noise, lo=0.0)
