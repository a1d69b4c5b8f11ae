"""Training: standard, PGD adversarial training and fast adversarial training, resumable."""

from __future__ import annotations

from eisbench.training.loop import METHODS, TrainConfig, train

__all__ = ["METHODS", "TrainConfig", "train"]
