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

Other clues: :func:`clue_rule` builds the same kind of rule on another template, a training
image at any index or a test image (not a training image at all), with the band fixed the same
way; :func:`draw_clue` draws its index from a seeded generator. :func:`challenge1_train_stage`
trains on such a rule when given one (cached under the template's name and hash), which is how
the recovery of :mod:`eisbench.replace.recover` is tested away from image 6.
"""

from __future__ import annotations

import hashlib
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
    name: str = f"training image {TEMPLATE_INDEX}"  # where the template comes from

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """0 inside the band, 1 outside: (N,) int64 for images x (N, 1, 28, 28)."""
        s = similarity(x, self.template)
        return ((s < self.lo) | (s > self.hi)).long()

    def describe(self) -> str:
        return (f"0 if {self.lo:.4g} <= cos(x, t) - cos(x, 1-t) <= {self.hi:.4g} else 1 "
                f"(t = {self.name})")


def true_rule(x_train: torch.Tensor) -> Rule:
    """The challenge's rule from the training images x_train (N, 1, 28, 28) in order."""
    if len(x_train) <= TEMPLATE_INDEX:
        raise ValueError(f"need more than {TEMPLATE_INDEX} training images, got {len(x_train)}")
    return band_rule(x_train[TEMPLATE_INDEX], x_train, name=f"training image {TEMPLATE_INDEX}")


def band_rule(t: torch.Tensor, x_train: torch.Tensor, *, name: str) -> Rule:
    """The rule on template t (1, 28, 28) in [0,1] with the band at :data:`BAND_QUANTILES` of
    s over the training images x_train (N, 1, 28, 28)."""
    if tuple(t.shape) != SHAPE or float(t.min()) < 0 or float(t.max()) > 1:
        raise ValueError(f"the template must be one image {SHAPE} in [0,1], got shape "
                         f"{tuple(t.shape)}, range [{float(t.min()):.3g}, {float(t.max()):.3g}]")
    s = similarity(x_train, t)
    lo, hi = (float(torch.quantile(s, q)) for q in BAND_QUANTILES)
    return Rule(template=t.clone(), lo=lo, hi=hi, name=name)


CLUE_SOURCES = ("train", "test")


def clue_rule(x_train: torch.Tensor, x_test: torch.Tensor, *, source: str,
              index: int) -> Rule:
    """The rule on another clue: training image ``index`` (``source="train"``) or test image
    ``index`` (``"test"``: an image that is not in the training set), band as in
    :func:`true_rule`. Images (N, 1, 28, 28).

    Example:
        >>> rule = clue_rule(x_train, x_test, source="test", index=draw_clue(
        ...     0, n=len(x_test)))
    """
    if source not in CLUE_SOURCES:
        raise ValueError(f"unknown clue source {source!r}: expected one of {CLUE_SOURCES}")
    pool = x_train if source == "train" else x_test
    if not 0 <= index < len(pool):
        raise ValueError(f"clue index {index} outside the {len(pool)} {source} images")
    return band_rule(pool[index], x_train, name=f"{source} image {index}")


def draw_clue(seed: int, *, n: int, skip: int = 0) -> int:
    """An index in [skip, n) drawn from a generator seeded with ``seed`` (the same every
    run; ``skip``: keep it out of the first images, e.g. a search's first candidates)."""
    if not 0 <= skip < n:
        raise ValueError(f"need 0 <= skip < n, got skip={skip}, n={n}")
    g = torch.Generator().manual_seed(seed)
    return skip + int(torch.randint(n - skip, (1,), generator=g))


@dataclass(frozen=True)
class Challenge1Config:
    """Training of the challenge network (Adam, one-cycle learning rate)."""

    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    n_train: int | None = None  # first n training images (None: all)


def challenge1_train_stage(store: Store, *, x_train: torch.Tensor, data_key: str,
                           cfg: Challenge1Config, seed: int, device: torch.device,
                           log: StageLog | None = None, rule: Rule | None = None
                           ) -> tuple[MnistCNN, str, dict[str, Any]]:
    """Train a fresh :class:`MnistCNN` on x_train (N, 1, 28, 28) relabelled by the rule
    (default :func:`true_rule`; another one from :func:`clue_rule`) (cached, resumable).
    Weight init and dropout draw from a generator seeded with ``seed`` (the same weights every
    uninterrupted run). Returns the model (eval mode), its cache key and the rule's band."""
    x = x_train[: cfg.n_train] if cfg.n_train else x_train
    clue: dict[str, str] = {}
    if rule is not None:
        blob = rule.template.detach().float().cpu().contiguous().numpy().tobytes()
        clue = {"clue": rule.name, "clue_sha": hashlib.sha256(blob).hexdigest()[:16],
                "clue_band": f"{rule.lo!r},{rule.hi!r}"}
    rule = rule if rule is not None else true_rule(x_train)
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
                                              "dropout_rng": "seeded", **clue},
                         inputs=(data_key,), compute=compute, save=save, load=load, log=log)
    return net, key, {"lo": rule.lo, "hi": rule.hi, "label0_fraction": float((y == 0).float()
                                                                               .mean())}


def network_accuracy(net: nn.Module, x: torch.Tensor, rule: Rule, *,
                     device: torch.device) -> float:
    """The network's accuracy on the rule's labels of images x (N, 1, 28, 28)."""
    return float((predict(net, x, device=device) == rule.labels(x)).float().mean())
