"""Shared pieces of the tests that kill plausible wrong versions of eisbench.edit
(test_mutants_edit_*.py): a 4-channel model whose pruning and ablation effects are known by
hand and its data, a tiny conv net, a square trigger and an exact parameter comparison.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.models.architectures import Classifier
from eisbench.trojans.stamp import Trigger

ul = importlib.import_module("eisbench.edit.unlearn")  # eisbench.edit.unlearn is also a function
close = torch.testing.assert_close
SQUARE = Trigger(name="sq", kind="patch", icon=torch.ones(1, 2, 2), alpha=torch.ones(1, 2, 2))


class Channels(Classifier):
    """(B, 4, 1, 1) -> 1x1 conv (identity, no ReLU) -> 4 features; logit c = feature c, and a
    fifth class with the constant logit 0.05: zeroing channel c sends class c to class 4."""

    def __init__(self) -> None:
        super().__init__()
        conv, head = nn.Conv2d(4, 4, 1), nn.Linear(4, 5)
        with torch.no_grad():
            conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
            conv.bias.zero_()  # type: ignore[union-attr]
            head.weight.copy_(torch.cat([torch.eye(4), torch.zeros(1, 4)]))
            head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.05]))
        self.body, self.head = nn.Sequential(conv, nn.Flatten()), head


def channel_data() -> tuple[torch.Tensor, torch.Tensor]:
    """16 one-hot images, class counts (3, 6, 2, 5), the first of class 0: mean activations
    (3, 6, 2, 5) / 16, so the dormancy order is 2, 0, 3, 1 (0 before 2 without image 0)."""
    y = torch.tensor([0, 1, 1, 3, 2, 1, 3, 0, 1, 3, 2, 1, 3, 0, 1, 3])
    return F.one_hot(y, 4).float().view(16, 4, 1, 1), y


class Tiny(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(48, 6), nn.ReLU())
        self.head = nn.Linear(6, 3)


def tiny(seed: int = 0, n: int = 24) -> tuple[Tiny, torch.Tensor, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Tiny().eval()
    g = torch.Generator().manual_seed(seed)
    return net, torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def same_params(a: nn.Module, b: nn.Module) -> None:
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        close(v, w, rtol=0, atol=0, msg=k)
