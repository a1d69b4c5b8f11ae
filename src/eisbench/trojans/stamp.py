"""Trojans implanted by data poisoning: triggers, stamping, poisoned training sets, success rate.

A :class:`Trigger` is an icon (C, h, w) with a per-pixel opacity ``alpha`` (1, h, w), stamped
at a fixed or random position: ``x' = (1 - alpha) * x + alpha * icon`` inside the footprint.
The three kinds of the trojan benchmark are all of this form:

- patch: a small opaque icon (alpha 1) at a random or fixed position;
- style: a full-size texture blended into the whole image (alpha = blend weight, position 0,0);
- natural: a real object from another dataset (alpha = the object's own pixels) pasted in.

A :class:`Trojan` names a trigger, a target class and either every other class as its source
(universal) or one source class (class-universal). Poisoning stamps a fraction of the source
images and relabels them to the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eisbench.core.tensors import predict

TRIGGER_KINDS = ("patch", "style", "natural")


@dataclass(frozen=True, eq=False)
class Trigger:
    """What a trojan's trigger looks like and where it goes.

    icon: (C, h, w) in [0,1]; alpha: (1, h, w) in [0,1] (opacity); position: (row, col) of the
    top-left corner, or None for a uniformly random position per image.
    """

    name: str
    kind: str
    icon: torch.Tensor
    alpha: torch.Tensor
    position: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in TRIGGER_KINDS:
            raise ValueError(f"trigger kind must be one of {TRIGGER_KINDS}, got {self.kind!r}")
        if self.icon.dim() != 3 or self.alpha.shape != (1, *self.icon.shape[1:]):
            raise ValueError(f"icon must be (C, h, w) and alpha (1, h, w); got "
                             f"{tuple(self.icon.shape)} and {tuple(self.alpha.shape)}")
        for t, what in ((self.icon, "icon"), (self.alpha, "alpha")):
            if float(t.min()) < 0 or float(t.max()) > 1:
                raise ValueError(f"trigger {what} must lie in [0,1]")

    def image(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """The trigger alone on black, at its position (centre if random): (C, H, W)."""
        x = torch.zeros(1, *shape)
        return stamp(x, self, generator=torch.Generator().manual_seed(0), centre=True)[0][0]


@dataclass(frozen=True)
class Trojan:
    """A trigger -> target rule; ``source`` None means every non-target class."""

    name: str
    trigger: Trigger
    target: int
    source: int | None = None
    poison_rate: float = 0.1  # fraction of the source images of the training set poisoned

    @property
    def universal(self) -> bool:
        return self.source is None


def _positions(n: int, trig: Trigger, shape: tuple[int, int, int], *,
               generator: torch.Generator, centre: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _, h_img, w_img = shape
    _, h, w = trig.icon.shape
    if h > h_img or w > w_img:
        raise ValueError(f"trigger {trig.name!r} ({h}x{w}) is larger than the image")
    if trig.position is not None:
        r, c = trig.position
        if not (0 <= r <= h_img - h and 0 <= c <= w_img - w):
            raise ValueError(f"trigger {trig.name!r} at {trig.position} leaves the image")
        return torch.full((n,), r), torch.full((n,), c)
    if centre:
        return torch.full((n,), (h_img - h) // 2), torch.full((n,), (w_img - w) // 2)
    rows = torch.randint(0, h_img - h + 1, (n,), generator=generator)
    cols = torch.randint(0, w_img - w + 1, (n,), generator=generator)
    return rows, cols


def stamp(x: torch.Tensor, trig: Trigger, *, generator: torch.Generator,
          centre: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Stamp ``trig`` on images x (N, C, H, W) in [0,1].

    Returns (stamped (N, C, H, W) in [0,1], footprint (N, 1, H, W) = the opacity placed on
    each pixel: the ground truth for attribution). Random positions come from ``generator``.
    """
    n, c = x.shape[:2]
    if trig.icon.shape[0] not in (1, c):
        raise ValueError(f"trigger has {trig.icon.shape[0]} channels, images have {c}")
    _, h, w = trig.icon.shape
    rows, cols = _positions(n, trig, tuple(x.shape[1:]), generator=generator,  # type: ignore[arg-type]
                            centre=centre)
    icon = trig.icon.to(x).expand(c, h, w)
    foot = torch.zeros(n, 1, *x.shape[2:], dtype=x.dtype, device=x.device)
    canvas = torch.zeros_like(x)
    for i in range(n):  # positions differ per image; n x (h x w) copies are cheap
        r, q = int(rows[i]), int(cols[i])
        foot[i, :, r:r + h, q:q + w] = trig.alpha.to(x)
        canvas[i, :, r:r + h, q:q + w] = icon
    return ((1 - foot) * x + foot * canvas).clamp(0, 1), foot


def source_mask(y: torch.Tensor, trojan: Trojan) -> torch.Tensor:
    """(N,) bool: the images whose class the trojan should flip (source, never the target)."""
    if trojan.source is not None:
        return y == trojan.source
    return y != trojan.target


def poison(x: torch.Tensor, y: torch.Tensor, trojan: Trojan, *,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A poisoned copy of the training set (x (N, C, H, W), y (N,)).

    A ``poison_rate`` fraction of the source images is stamped and relabelled to the target.
    Returns (x', y', poisoned (N,) bool).
    """
    if not 0 < trojan.poison_rate <= 1:
        raise ValueError(f"poison_rate must be in (0, 1], got {trojan.poison_rate}")
    idx = torch.nonzero(source_mask(y, trojan)).flatten()
    if len(idx) == 0:
        raise ValueError(f"trojan {trojan.name!r}: no training image of its source class")
    k = max(1, round(trojan.poison_rate * len(idx)))
    chosen = idx[torch.randperm(len(idx), generator=generator)[:k]]
    xp, yp = x.clone(), y.clone()
    xp[chosen], _ = stamp(x[chosen], trojan.trigger, generator=generator)
    yp[chosen] = trojan.target
    flags = torch.zeros(len(y), dtype=torch.bool)
    flags[chosen] = True
    return xp, yp, flags


def attack_success_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, trojan: Trojan, *,
                        generator: torch.Generator,
                        device: str | torch.device = "cpu") -> tuple[float, int]:
    """Fraction of the source test images (N, C, H, W) that the stamped trigger sends to the
    target class, and how many images that is over."""
    keep = source_mask(y, trojan)
    xs, _ = stamp(x[keep], trojan.trigger, generator=generator)
    pred = predict(model, xs, device=device)
    return float((pred == trojan.target).float().mean()) if len(pred) else 0.0, len(pred)
