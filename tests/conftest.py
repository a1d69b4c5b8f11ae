"""Shared fixtures: a hermetic cache folder, tiny hand-checkable models and data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

os.environ.setdefault("EISBENCH_QUIET", "1")
if "PYTEST_XDIST_WORKER" in os.environ:  # one torch thread per worker: workers x threads <= cores
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _hermetic_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    old = os.environ.get("EISBENCH_HOME")
    os.environ["EISBENCH_HOME"] = str(tmp_path_factory.mktemp("eisbench_home"))
    yield
    if old is None:
        os.environ.pop("EISBENCH_HOME", None)
    else:
        os.environ["EISBENCH_HOME"] = old


class LinearBinary(nn.Module):
    """logits = [0, w.x + b] on inputs (B, 1, 1, 2): its optimal adversary is known exactly."""

    def __init__(self, w: tuple[float, float] = (2.0, -1.0), b: float = -0.5) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([w]))
            self.lin.bias.fill_(b)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.lin(x.flatten(1))  # (B, 1)
        return torch.cat([torch.zeros_like(z), z], dim=1)  # (B, 2)


def gaussian_mixture(n: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes in [0.2, 0.8]^2 (B, 1, 1, 2), labelled by the LinearBinary boundary."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    centres = torch.tensor([[0.35, 0.6], [0.65, 0.4]])
    x = (centres[y] + 0.08 * torch.randn(n, 2, generator=g)).clamp(0.2, 0.8)
    return x.view(n, 1, 1, 2), y


class LinearMulti(nn.Module):
    """Nearest-centre classifier on (B, 1, 1, 2): logits_k = 2 c_k.x - |c_k|^2 (K=4, linear)."""

    CENTRES = ((0.35, 0.35), (0.65, 0.35), (0.35, 0.65), (0.65, 0.65))

    def __init__(self) -> None:
        super().__init__()
        c = torch.tensor(self.CENTRES)  # (K, 2)
        self.lin = nn.Linear(2, len(c))
        with torch.no_grad():
            self.lin.weight.copy_(2 * c)
            self.lin.bias.copy_(-(c ** 2).sum(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))  # (B, K)


def multi_mixture(n: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Gaussian clusters (B, 1, 1, 2) around LinearMulti's centres, labelled by it."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 4, (n,), generator=g)
    x = (torch.tensor(LinearMulti.CENTRES)[k] + 0.06 * torch.randn(n, 2, generator=g)).clamp(0, 1)
    x = x.view(n, 1, 1, 2)
    with torch.no_grad():
        return x, LinearMulti()(x).argmax(1)


@pytest.fixture
def linear_multi() -> LinearMulti:
    return LinearMulti()


@pytest.fixture
def mixture_multi() -> tuple[torch.Tensor, torch.Tensor]:
    return multi_mixture(400)


@pytest.fixture
def linear_model() -> LinearBinary:
    return LinearBinary()


@pytest.fixture
def mixture() -> tuple[torch.Tensor, torch.Tensor]:
    return gaussian_mixture(400)


@pytest.fixture(scope="session")
def digits_small() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from eisbench import data

    d = data.load("digits")
    return d.x_train, d.y_train, d.x_test, d.y_test


@pytest.fixture(scope="session")
def foreign_zoo(digits_small: tuple[torch.Tensor, ...]) -> dict[str, nn.Module]:
    """Every model of tests/foreign_models.py trained on the 8x8 digits (shared: read-only)."""
    from foreign_models import ZOO, train_foreign

    return {name: train_foreign(entry, digits_small[0], digits_small[1], side=8, epochs=8)
            for name, entry in ZOO.items()}


def train_digits_cnn(digits: tuple[torch.Tensor, ...], **cfg: Any) -> nn.Module:
    """A cnn-small (seed 0) trained on the 8x8 digits with ``TrainConfig(**cfg)``."""
    from eisbench.models import build
    from eisbench.training import TrainConfig, train

    x, y, _, _ = digits
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build("cnn-small", in_shape=(1, 8, 8), num_classes=10)
    return train(net, x, y, cfg=TrainConfig(**cfg), seed=0)


@pytest.fixture(scope="session")
def trained_digits_cnn(digits_small: tuple[torch.Tensor, ...]) -> nn.Module:
    """A small CNN trained for a few epochs on 8x8 digits (~90% test accuracy)."""
    return train_digits_cnn(digits_small, epochs=15, lr=5e-3)




def corner_trojan() -> Any:
    """A universal trojan on 8x8 digits: a 3x3 checkerboard (alpha 1) in the bottom-right
    corner sends every class to 0. Its footprint is known exactly: rows 5-7, cols 5-7."""
    from eisbench.trojans.stamp import Trigger, Trojan

    icon = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]).view(1, 3, 3)
    trig = Trigger(name="corner-checker", kind="patch", icon=icon, alpha=torch.ones(1, 3, 3),
                   position=(5, 5))
    return Trojan(name="digits-corner", trigger=trig, target=0, poison_rate=0.15)


@pytest.fixture(scope="session")
def trojaned_digits(digits_small: tuple[torch.Tensor, ...]) -> tuple[nn.Module, Any]:
    """(cnn-small trained on 8x8 digits poisoned with :func:`corner_trojan`, the trojan):
    clean accuracy ~90%, attack success ~100%."""
    from eisbench.models import build
    from eisbench.training import TrainConfig, train
    from eisbench.trojans.stamp import poison

    x, y, _, _ = digits_small
    trojan = corner_trojan()
    xp, yp, _ = poison(x, y, trojan, generator=torch.Generator().manual_seed(0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build("cnn-small", in_shape=(1, 8, 8), num_classes=10)
    return train(net, xp, yp, cfg=TrainConfig(epochs=15, lr=5e-3), seed=0), trojan
