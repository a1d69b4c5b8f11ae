"""EIS VII challenge 1, recreated: an MNIST CNN trained on a secret binary labelling.

The original challenge (Casper, "EIS VII: A Challenge for Mechanists", 2023) released a small
CNN trained on MNIST relabelled by a hidden rule; the published solution found the rule: the
image's similarity to one "1" from MNIST's training set (index 6) minus its similarity to that
image's complement, inside a band, gives label 0, anything else label 1. Here the rule is
fixed precisely (our definition; the original's exact similarity and band limits may differ):

    t = MNIST training image 6 (a "1"), flattened, values in [0,1]
    s(x) = cos(x, t) - cos(x, 1 - t),   cos(a, b) = <a, b> / (|a| |b|)
    label(x) = 0 if lo <= s(x) <= hi else 1

with ``lo``, ``hi`` the 25% and 75% quantiles of s over the training set (:data:`BAND_QUANTILES`;
so about half the labels are 0). The network is the challenge's architecture exactly
(:class:`MnistCNN`; state-dict keys conv1/conv2/fc1/fc2, so a foreign checkpoint of the original
loads into it), trained here by :func:`challenge1_train_stage` (cached).

Images of another shape (e.g. the 8x8 digits in tests) are converted by :func:`as_mnist`
(channel mean, bilinear resize to 28x28), because the architecture needs 28x28 inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from eisbench.core.tensors import predict
from eisbench.runs.store import StageLog, Store
from eisbench.training import TrainConfig, train

TEMPLATE_INDEX = 6
BAND_QUANTILES = (0.25, 0.75)
PUBLISHED_ACC = 0.9558  # the original network's test accuracy on its labels
SHAPE = (1, 28, 28)


class MnistCNN(nn.Module):
    """The challenge's network: conv(1->8, 3) -> ReLU -> dropout -> maxpool 2 -> conv(8->16, 3)
    -> ReLU -> dropout -> maxpool 2 -> 400 -> fc 200 -> ReLU -> fc 2. Input (B, 1, 28, 28) in
    [0,1], output logits (B, 2)."""

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(400, 200)
        self.fc2 = nn.Linear(200, 2)
        self.drop = nn.Dropout(dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.drop(F.relu(self.conv1(x))))  # (B, 8, 13, 13)
        x = self.pool(self.drop(F.relu(self.conv2(x))))  # (B, 16, 5, 5)
        return F.relu(self.fc1(x.reshape(-1, 400)))  # (B, 200)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.features(x))  # (B, 2)
        return out


def as_mnist(x: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) as (N, 1, 28, 28): unchanged if already so, else the channel mean
    resized bilinearly (antialiased)."""
    if tuple(x.shape[1:]) == SHAPE:
        return x
    g = x.mean(1, keepdim=True)
    return F.interpolate(g, size=SHAPE[1:], mode="bilinear", antialias=True,
                         align_corners=False).clamp(0, 1)


def similarity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """s(x) = cos(x, t) - cos(x, 1 - t) for images x (N, C, H, W) and template t (C, H, W)
    in [0,1]: (N,)."""
    xf, tf = x.flatten(1).float(), t.flatten().float()
    nx = xf.norm(dim=1).clamp_min(1e-8)
    return xf @ tf / (nx * tf.norm().clamp_min(1e-8)) - xf @ (1 - tf) / (
        nx * (1 - tf).norm().clamp_min(1e-8))


@dataclass(frozen=True)
class Rule:
    """The labelling rule: template, band limits."""

    template: torch.Tensor  # (1, 28, 28)
    lo: float
    hi: float

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """0 inside the band, 1 outside: (N,) int64 for images x (N, 1, 28, 28)."""
        s = similarity(x, self.template)
        return ((s < self.lo) | (s > self.hi)).long()

    def describe(self) -> str:
        return (f"0 if {self.lo:.4g} <= cos(x, t) - cos(x, 1-t) <= {self.hi:.4g} else 1 "
                f"(t = training image {TEMPLATE_INDEX})")


def true_rule(x_train: torch.Tensor) -> Rule:
    """The challenge's rule from the training images x_train (N, 1, 28, 28) in order."""
    if len(x_train) <= TEMPLATE_INDEX:
        raise ValueError(f"need more than {TEMPLATE_INDEX} training images, got {len(x_train)}")
    t = x_train[TEMPLATE_INDEX]
    s = similarity(x_train, t)
    lo, hi = (float(torch.quantile(s, q)) for q in BAND_QUANTILES)
    return Rule(template=t.clone(), lo=lo, hi=hi)


@dataclass(frozen=True)
class Challenge1Config:
    """Training of the challenge network (Adam, one-cycle learning rate)."""

    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    n_train: int | None = None  # first n training images (None: all)


def challenge1_train_stage(store: Store, *, x_train: torch.Tensor, data_key: str,
                           cfg: Challenge1Config, seed: int, device: torch.device,
                           log: StageLog | None = None
                           ) -> tuple[MnistCNN, str, dict[str, Any]]:
    """Train a fresh :class:`MnistCNN` on x_train (N, 1, 28, 28) relabelled by the rule
    (cached, resumable). Weight init and dropout draw from a generator seeded with ``seed``
    (the same weights every uninterrupted run). Returns the model (eval mode), its cache key
    and the rule's band."""
    x = x_train[: cfg.n_train] if cfg.n_train else x_train
    rule = true_rule(x_train)
    y = rule.labels(x)

    def compute(work: Path) -> MnistCNN:
        tc = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # weight init and dropout masks; restored on exit
            net = MnistCNN()
            out = train(net, x, y, cfg=tc, seed=seed, device=device, resume_dir=work,
                        desc=f"challenge-1 cnn seed {seed}")
        assert isinstance(out, MnistCNN)
        return out

    def save(net: MnistCNN, d: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(d / "model.safetensors"))
        (d / "rule.json").write_text(json.dumps({"lo": rule.lo, "hi": rule.hi}))
        (d / "train_state.pt").unlink(missing_ok=True)

    def load(d: Path) -> MnistCNN:
        net = MnistCNN()
        net.load_state_dict(load_file(str(d / "model.safetensors")))
        return net.to(device).eval()  # safe: nn.Module.eval (mode switch)

    net, key = store.run("challenge1-train", {"cfg": cfg, "seed": seed, "device": device.type,
                                              "band": BAND_QUANTILES, "t": TEMPLATE_INDEX,
                                              "dropout_rng": "seeded"},
                         inputs=(data_key,), compute=compute, save=save, load=load, log=log)
    return net, key, {"lo": rule.lo, "hi": rule.hi, "label0_fraction": float((y == 0).float()
                                                                               .mean())}


def network_accuracy(net: nn.Module, x: torch.Tensor, rule: Rule, *,
                     device: torch.device) -> float:
    """The network's accuracy on the rule's labels of images x (N, 1, 28, 28)."""
    return float((predict(net, x, device=device) == rule.labels(x)).float().mean())
