"""The model registry and the contract every model follows.

A registered model builder takes ``in_shape=(C, H, W)`` and ``num_classes`` (keyword-only) and
returns an ``nn.Module`` mapping images ``(B, C, H, W)`` in [0,1] to logits ``(B, num_classes)``.
Each architecture exposes ``features(x) -> (B, D)``: its penultimate-layer representation, used by
representation inversion (D_R / D_NR), linear probes and tools; a model without that method has
its features found by :mod:`eisbench.models.layers`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from eisbench.core.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


class Normalized(nn.Module):
    """Wrap ``model`` so that it takes [0,1] images: ``model((x - mean) / std)``.

    Example:
        >>> mlp = build("mlp", in_shape=(1, 28, 28), num_classes=10)
        >>> net = Normalized(mlp, mean=[0.13], std=[0.31])
    """

    def __init__(self, model: nn.Module, *, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return features(self.model, (x - self.mean) / self.std)


class Scaled(nn.Module):
    """Feed ``model``, which expects pixels in [0, ``scale``] (e.g. 255), from [0,1] images.

    Example:
        >>> raw = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # trained on 0..255 pixels
        >>> Scaled(raw, 255.0)(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x * self.scale)
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return features(self.model, x * self.scale)


def build(name: str, *, in_shape: tuple[int, int, int], num_classes: int,
          **kwargs: Any) -> nn.Module:
    """Instantiate the registered architecture ``name`` for inputs ``(C, H, W)``.

    Example:
        >>> net = build("cnn-small", in_shape=(1, 28, 28), num_classes=10)
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    return MODELS.get(name)(in_shape=tuple(in_shape), num_classes=num_classes, **kwargs)


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate-layer representation ``(B, D)`` of ``x`` ``(B, C, H, W)`` under ``model``:
    its ``features(x)`` method where it has one (an attribute ``features`` that is a module,
    as in ``self.features = nn.Sequential(...)``, is a layer, not this method), else the input
    of its logits head found by :func:`eisbench.models.layers.find_layers`.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        >>> features(net, torch.rand(4, 1, 8, 8)).shape
        torch.Size([4, 32])
    """
    fn = getattr(model, "features", None)
    if callable(fn) and not isinstance(fn, nn.Module):
        out: torch.Tensor = fn(x)
        return out
    from eisbench.models.layers import penultimate_features

    return penultimate_features(model, x)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

