"""Training: one loop (:func:`fit`, :func:`train`) and its registered methods
(:data:`TRAINING_METHODS`: standard, pgd-at, fast-at, trades, input-grad; :mod:`eisbench.edit`
adds latent-at and finetune), resumable."""

from __future__ import annotations

from eisbench.training.config import InputGradConfig, TradesConfig, TrainConfig
from eisbench.training.loop import fit, train
from eisbench.training.methods import TRAINING_METHODS, Batch, TrainingMethod, register_method

__all__ = ["TRAINING_METHODS", "Batch", "InputGradConfig", "TradesConfig", "TrainConfig",
           "TrainingMethod", "fit", "register_method", "train"]
