"""Small models written the way people write them, not the way eisbench builds its own: the
zoo that every tool, scan, replacement and audit must work on (tests/test_foreign_models.py).

Each class takes ``side`` (the image side: 8 for the digits in tests, 28 for MNIST) and
``num_classes``; none has a ``features(x)`` method, and :data:`ZOO` says what each one
exercises, how it is fed (``scale``: the pixel range it expects) and the labels it learns
(``label_map``: dataset class -> model class, or None for the dataset's own labels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class AttributeCNN(nn.Module):
    """Attribute layers and functional glue (F.relu, F.max_pool2d, x.view): no module outputs
    the penultimate features, so only the head's input gives them."""

    def __init__(self, side: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * (side // 2) ** 2, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 16, side/2, side/2)
        x = F.relu(self.fc1(x.view(x.size(0), -1)))  # (B, 32)
        out: torch.Tensor = self.fc2(x)
        return out


class SequentialBlocks(nn.Module):
    """An ``nn.Sequential`` feature block named ``features`` (a module, not a method) of two
    convs with 16 and 32 channels, then a Sequential head with a hidden layer of 128."""

    def __init__(self, side: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * (side // 4) ** 2, 128), nn.ReLU(),
                                  nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


class BatchNormDropout(nn.Module):
    """Conv-BatchNorm-ReLU blocks, Dropout2d, BatchNorm1d and dropout in the head."""

    def __init__(self, side: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                                    nn.ReLU(), nn.Dropout2d(0.1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16 * ((side + 1) // 2) ** 2, 64)
        self.bn = nn.BatchNorm1d(64)
        self.drop = nn.Dropout(0.2)
        self.out = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.block2(self.block1(x)))
        logits: torch.Tensor = self.out(self.drop(F.relu(self.bn(self.fc(x)))))
        return logits


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(x + y)


class ResidualNet(nn.Module):
    """A stem, two residual blocks, adaptive average pooling and torch.flatten: the features
    are a block's pooled output, not any leaf's."""

    def __init__(self, side: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.layer1 = Residual(16)
        self.layer2 = Residual(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(F.relu(self.stem(x))))  # (B, 16, H, W)
        out: torch.Tensor = self.fc(torch.flatten(self.pool(x), 1))
        return out


class GlobalPoolNet(nn.Module):
    """Convs, then a functional global average (``x.mean((2, 3))``) instead of a flatten."""

    def __init__(self, side: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(32, 64, 3, padding=1), nn.ReLU())
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.convs(x).mean((2, 3)))
        return out


class VisionStyle(nn.Module):
    """torchvision's layout: ``features``, ``avgpool`` and a ``classifier`` Sequential with
    dropout, here with a 2-class head (a binary task on digits)."""

    def __init__(self, side: int = 8, num_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, 32), nn.ReLU(inplace=True),
                                        nn.Dropout(0.2), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        out: torch.Tensor = self.classifier(x)
        return out


class RawPixels(nn.Module):
    """Expects pixels in [0, 255] (it standardises them itself), with one ReLU module reused
    at every layer: a shared module must never be taken for the penultimate layer."""

    def __init__(self, side: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.hidden = nn.Linear(8 * side * side, 32)
        self.logits = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv((x - 33.0) / 78.0)).flatten(1)  # (B, 8 * side * side)
        out: torch.Tensor = self.logits(self.relu(self.hidden(x)))
        return out


@dataclass(frozen=True)
class Foreign:
    """A zoo entry: the class, what it exercises, the pixel range it expects and its labels."""

    cls: type[nn.Module]
    why: str
    scale: float = 1.0
    label_map: tuple[int, ...] | None = None  # dataset class -> model class

    @property
    def num_classes(self) -> int:
        return 10 if self.label_map is None else max(self.label_map) + 1


LOW_HIGH = (0, 0, 0, 0, 0, 1, 1, 1, 1, 1)  # digits 0-4 -> 0, 5-9 -> 1

ZOO: dict[str, Foreign] = {
    "attribute": Foreign(AttributeCNN, "attribute layers, functional relu/pool/view"),
    "sequential": Foreign(SequentialBlocks, "Sequential blocks, a `features` module attribute"),
    "batchnorm-dropout": Foreign(BatchNormDropout, "BatchNorm 1d/2d and dropout"),
    "residual": Foreign(ResidualNet, "residual blocks, adaptive average pooling"),
    "global-pool": Foreign(GlobalPoolNet, "a functional global average instead of flatten"),
    "two-class": Foreign(VisionStyle, "torchvision layout, a 2-class head", label_map=LOW_HIGH),
    "raw-pixels": Foreign(RawPixels, "expects [0,255] pixels (--scale 255), a reused ReLU",
                          scale=255.0),
}


def train_foreign(entry: Foreign, x: torch.Tensor, y: torch.Tensor, *, side: int,
                  epochs: int = 15, seed: int = 0) -> nn.Module:
    """``entry``'s model trained the plain-PyTorch way (Adam, cross-entropy, batch 64) on
    images x (N, 1, side, side) in [0,1] (times its ``scale``) and labels y (N,) (through its
    ``label_map``); returned in eval mode, as a user would hand it over."""
    torch.manual_seed(seed)
    model = entry.cls(side=side, num_classes=entry.num_classes)
    labels = y if entry.label_map is None else torch.tensor(entry.label_map)[y]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(x[idx] * entry.scale), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()  # safe: nn.Module.eval (mode switch)
