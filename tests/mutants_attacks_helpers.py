"""What the attack mutant tests share: the attack modules (the package re-exports functions of
the same names), a seeded generator, and a model wrapper that records its inputs."""

from __future__ import annotations

import importlib

import torch
from torch import nn

apgd_mod = importlib.import_module("eisbench.attacks.apgd")
fmn_mod = importlib.import_module("eisbench.attacks.fmn")
pgd_mod = importlib.import_module("eisbench.attacks.pgd")
square_mod = importlib.import_module("eisbench.attacks.square")


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _Recorder(nn.Module):
    """``net`` that keeps a copy of every batch it is called on."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)
