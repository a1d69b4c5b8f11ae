"""Registered architectures: an MLP, three CNNs of different width/depth, a small ResNet and
the CIFAR PreAct ResNet-18.

Every class maps ``(B, C, H, W) -> (B, num_classes)`` logits and has ``features(x) -> (B, D)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from eisbench.models.core import MODELS


class Classifier(nn.Module):
    """``body`` (images -> penultimate features) followed by a linear ``head``."""

    body: nn.Module
    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)  # (B, D)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.body(x))  # (B, K)
        return out


class MLP(Classifier):
    def __init__(self, *, in_shape: tuple[int, int, int], num_classes: int, width: int = 256,
                 depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = math.prod(in_shape)
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, num_classes)


class CNN(Classifier):
    """Strided conv stack (k=4, s=2, p=1 halves H and W) + one hidden FC layer."""

    def __init__(self, *, in_shape: tuple[int, int, int], num_classes: int,
                 channels: tuple[int, ...] = (16, 32), hidden: int = 100) -> None:
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        for ch in channels:
            layers += [nn.Conv2d(c, ch, 4, stride=2, padding=1), nn.ReLU()]
            c, h, w = ch, h // 2, w // 2
        layers += [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, num_classes)


class PoolCNN(Classifier):
    """Madry-style CNN: 'same' convs with max-pooling, wide FC layer."""

    def __init__(self, *, in_shape: tuple[int, int, int], num_classes: int,
                 channels: tuple[int, int] = (32, 64), hidden: int = 1024) -> None:
        super().__init__()
        c, h, w = in_shape
        c1, c2 = channels
        self.body = nn.Sequential(
            nn.Conv2d(c, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * (h // 4) * (w // 4), hidden), nn.ReLU(),
        )
        self.head = nn.Linear(hidden, num_classes)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(Classifier):
    """A small pre-activation-free ResNet: one block per stage, widths ``(w, 2w, 4w)``."""

    def __init__(self, *, in_shape: tuple[int, int, int], num_classes: int,
                 width: int = 16) -> None:
        super().__init__()
        c = in_shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            BasicBlock(width, width, 1), BasicBlock(width, 2 * width, 2),
            BasicBlock(2 * width, 4 * width, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)


class PreActBlock(nn.Module):
    """He et al. 2016's identity-mapping block: BN-ReLU before each 3x3 conv; the shortcut (a
    1x1 conv where the shape changes) taps the first pre-activation."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))  # (B, C_in, H, W)
        skip = x if self.shortcut is None else self.shortcut(pre)  # (B, C_out, H/s, W/s)
        out = self.conv1(pre)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class PreActResNet(Classifier):
    """PreAct ResNet for 32x32 images: 3x3 stem conv, four stages of ``blocks`` pre-activation
    blocks with widths ``(w, 2w, 4w, 8w)`` and strides 1/2/2/2, a final BN-ReLU, global
    average pooling and a linear head."""

    def __init__(self, *, in_shape: tuple[int, int, int], num_classes: int, width: int = 64,
                 blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        c = width
        layers: list[nn.Module] = [nn.Conv2d(in_shape[0], c, 3, padding=1, bias=False)]
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            for j in range(n):
                layers.append(PreActBlock(c, c_out, 2 if (i > 0 and j == 0) else 1))
                c = c_out
        layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)


@MODELS.register("mlp")
def mlp(*, in_shape: tuple[int, int, int], num_classes: int, width: int = 256,
        depth: int = 2) -> MLP:
    """784-256-256-10 MLP on MNIST."""
    return MLP(in_shape=in_shape, num_classes=num_classes, width=width, depth=depth)


@MODELS.register("cnn-small")
def cnn_small(*, in_shape: tuple[int, int, int], num_classes: int) -> CNN:
    """Wong et al. 2020's MNIST CNN: conv16-conv32 (stride 2) + FC100 (~166k params on MNIST)."""
    return CNN(in_shape=in_shape, num_classes=num_classes, channels=(16, 32), hidden=100)


@MODELS.register("cnn-deep")
def cnn_deep(*, in_shape: tuple[int, int, int], num_classes: int) -> CNN:
    """Three strided convs (32-64-128) + FC200: deeper and wider than cnn-small."""
    return CNN(in_shape=in_shape, num_classes=num_classes, channels=(32, 64, 128), hidden=200)


@MODELS.register("cnn-madry")
def cnn_madry(*, in_shape: tuple[int, int, int], num_classes: int) -> PoolCNN:
    """Madry et al. 2018's MNIST CNN: conv32-pool-conv64-pool-FC1024 (~3.3M params on MNIST)."""
    return PoolCNN(in_shape=in_shape, num_classes=num_classes)


@MODELS.register("resnet-small")
def resnet_small(*, in_shape: tuple[int, int, int], num_classes: int, width: int = 16) -> ResNet:
    """A 7-layer ResNet (3 basic blocks, widths 16-32-64) with batch norm."""
    return ResNet(in_shape=in_shape, num_classes=num_classes, width=width)


@MODELS.register("preact-resnet18")
def preact_resnet18(*, in_shape: tuple[int, int, int], num_classes: int,
                    width: int = 64) -> PreActResNet:
    """PreAct ResNet-18 (He et al. 2016), the CIFAR variant of Ilyas et al.'s robustness library
    and of Wong et al.'s fast_adversarial: 3x3 stem, 4 stages x 2 blocks, widths 64-128-256-512
    (``width`` scales them; ~11.2M params on CIFAR-10)."""
    return PreActResNet(in_shape=in_shape, num_classes=num_classes, width=width)
