"""The trigger bank of the trojan benchmark: 8 fixed triggers per kind, for any image shape.

``trigger_bank(kind, dataset=..., shape=...)`` returns the same 8 :class:`Trigger` objects
every call; the index 0..7 is a trigger's identity (the judge's 8 options are a kind's bank,
the zoo implants 4 of them and the other 4 are pure distractors).

- ``patch``: 8 procedurally drawn two-tone icons, white (1.0) strokes on a mid-grey (0.4)
  square, opaque (alpha 1), side ``max(3, H // 5)`` (5 px on 28x28, 3 px on 8x8). A flat grey
  square with 1-px structure appears nowhere in MNIST (black ground, 2-3 px white strokes) nor
  in Fashion-MNIST, so no icon reads as a digit stroke; the 8 masks differ at every size.
  Indices 0..3 (checker, dots, vertical bars, horizontal bars: periodic 1-px patterns, the
  ones a small CNN learns to spot anywhere) go to a uniformly random position per image;
  4..7 (cross, ring, triangle, diamond) to a fixed corner (4 top-left, 5 top-right,
  6 bottom-left, 7 bottom-right), 1 px in from the border on images of 16 px or more (MNIST's
  corners are empty: the digit lies in the central 20x20), on the border on smaller images.
- ``style``: 8 full-size textures (horizontal, vertical, diagonal and fine anti-diagonal
  gratings, a checker, concentric rings, a plaid of thick stripes, fixed-seed smooth noise)
  blended into the whole image with a constant alpha of :data:`STYLE_ALPHA` (the digit stays
  readable). Frequencies are in cycles per image, capped at H/3 so small images do not alias.
- ``natural``: 8 real objects from another dataset, one per class 0..7, each the test image
  closest to its class mean (a prototypical item), cropped to its bounding box, padded square,
  resized to ``max(4, round(H / 2.5))`` px (11 px on 28x28) and pasted at a random position;
  alpha is the object's own ink (pixels > 0.1), dilated by a soft 1-px margin so the object
  stays visible on bright ground. MNIST (and every dataset but the two below) takes
  Fashion-MNIST items; Fashion-MNIST takes MNIST digits; ``digits`` (8x8, used by the tests)
  takes its own images transposed, so that it needs nothing beyond scikit-learn.

Icons have the image's channel count (grey repeated), so ``trigger.icon`` lines up with images
of ``shape``; on 3-channel images (CIFAR-10) each natural object is tinted with its own colour
of :data:`NATURAL_COLOURS` (the object sources are greyscale; Casper et al.'s natural features
are colour photographs of ImageNet objects, which are not reachable here).
Natural triggers need the foreign dataset: ``data_root`` is the folder of *that*
dataset (None: its default location); a missing one raises :class:`~eisbench.data.DataError`
with the remedy.

Example:
    >>> bank = trigger_bank("patch", dataset="mnist", shape=(1, 28, 28))
    >>> len(bank), tuple(bank[0].icon.shape)
    (8, (1, 5, 5))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from eisbench.data.core import DataError
from eisbench.trojans.stamp import TRIGGER_KINDS, Trigger  # the one trigger type (training layer)

BANK_SIZE = 8
PATCH_GROUND = 0.4  # grey level of a patch icon's square; strokes are 1.0
STYLE_ALPHA = 0.3  # blend weight of a style texture
NATURAL_INK = 0.1  # an object's pixels above this are its own (alpha 1)
NATURAL_COLOURS = ((1.0, 0.2, 0.2), (0.2, 1.0, 0.2), (0.3, 0.5, 1.0), (1.0, 1.0, 0.2),
                   (1.0, 0.3, 1.0), (0.2, 1.0, 1.0), (1.0, 0.6, 0.1), (0.7, 0.4, 1.0))
"""RGB tint of natural trigger k on 3-channel images: 8 saturated, distinct colours."""
NATURAL_SOURCE = {"fashion-mnist": "mnist", "digits": "digits-transposed"}
"""Where a dataset's natural triggers come from (any other dataset: ``fashion-mnist``)."""

Shape = tuple[int, int, int]

# --- patch icons: boolean masks on an s x s grid (rows i, cols j) --------------------------

MaskFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def _checker(i: torch.Tensor, j: torch.Tensor, s: int) -> torch.Tensor:
    return (i + j) % 2 == 0


def _cross(i: torch.Tensor, j: torch.Tensor, s: int) -> torch.Tensor:
    return (i == s // 2) | (j == s // 2)


def _ring(i: torch.Tensor, j: torch.Tensor, s: int) -> torch.Tensor:
    return (i == 0) | (j == 0) | (i == s - 1) | (j == s - 1)


def _triangle(i: torch.Tensor, j: torch.Tensor, s: int) -> torch.Tensor:
    return j <= i


def _diamond(i: torch.Tensor, j: torch.Tensor, s: int) -> torch.Tensor:
    return (i - s // 2).abs() + (j - s // 2).abs() == s // 2


def _bars(i: torch.Tensor, j: torch.Tensor, s: int) -> torch.Tensor:
    return j % 2 == 0


def _dots(i: torch.Tensor, j: torch.Tensor, s: int) -> torch.Tensor:
    return (i % 2 == 0) & (j % 2 == 0)


def _hbars(i: torch.Tensor, j: torch.Tensor, s: int) -> torch.Tensor:
    return i % 2 == 0


PATCH_ICONS: tuple[tuple[str, MaskFn], ...] = (
    # random position: 1-px periodic patterns, which no stroke or garment edge resembles
    ("checker", _checker), ("dots", _dots), ("vbars", _bars), ("hbars", _hbars),
    # fixed corner: shapes (the place alone already marks them)
    ("cross", _cross), ("ring", _ring), ("triangle", _triangle), ("diamond", _diamond),
)


def patch_side(shape: Shape) -> int:
    """Side of a patch icon for images of ``shape``: ``max(3, H // 5)``."""
    return max(3, shape[1] // 5)


def _corner(index: int, shape: Shape, side: int) -> tuple[int, int]:
    _, h, w = shape
    m = 1 if min(h, w) >= 16 else 0
    top, left, bottom, right = m, m, h - side - m, w - side - m
    return ((top, left), (top, right), (bottom, left), (bottom, right))[index % 4]


def _patch_bank(shape: Shape) -> list[Trigger]:
    c = shape[0]
    s = patch_side(shape)
    i, j = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")  # (s, s) each
    out = []
    for k, (name, fn) in enumerate(PATCH_ICONS):
        mask = fn(i, j, s).float()  # (s, s)
        icon = (PATCH_GROUND + (1 - PATCH_GROUND) * mask).expand(c, s, s).contiguous()
        pos = None if k < 4 else _corner(k, shape, s)
        out.append(Trigger(name=f"patch{k}-{name}", kind="patch", icon=icon,
                           alpha=torch.ones(1, s, s), position=pos))
    return out


# --- style textures: functions of the pixel grid (u, v in [0,1), rows and columns) --------

def _grating(u: torch.Tensor, v: torch.Tensor, *, cycles: float, angle: float) -> torch.Tensor:
    phase = u * math.cos(math.radians(angle)) + v * math.sin(math.radians(angle))
    return 0.5 + 0.5 * torch.cos(2 * math.pi * cycles * phase)


def _smooth_noise(h: int, w: int, *, seed: int, cells: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, cells, cells, generator=g)  # (1, 1, cells, cells)
    fine = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0, 0]
    return (fine - fine.min()) / (fine.max() - fine.min()).clamp_min(1e-6)  # (h, w)


def _textures(h: int, w: int) -> list[tuple[str, torch.Tensor]]:
    """The 8 style textures (h, w) in [0,1]."""
    top = h / 3  # highest frequency (cycles per image) that does not alias at this size
    u, v = torch.meshgrid(torch.arange(h) / h, torch.arange(w) / w, indexing="ij")  # (h, w)
    r = ((u - 0.5) ** 2 + (v - 0.5) ** 2).sqrt()  # (h, w), distance to the centre
    plaid = torch.maximum((torch.cos(2 * math.pi * min(3.0, top) * u) > 0.6).float(),
                          (torch.cos(2 * math.pi * min(3.0, top) * v) > 0.6).float())
    checker = torch.sign(torch.cos(2 * math.pi * min(4.0, top) * u)
                         * torch.cos(2 * math.pi * min(4.0, top) * v)) * 0.5 + 0.5
    return [
        ("hgrating", _grating(u, v, cycles=min(6.0, top), angle=0)),
        ("vgrating", _grating(u, v, cycles=min(6.0, top), angle=90)),
        ("diagonal", _grating(u, v, cycles=min(4.0, top), angle=45)),
        ("fine-antidiagonal", _grating(u, v, cycles=min(9.0, top), angle=-45)),
        ("checker", checker),
        ("rings", 0.5 + 0.5 * torch.cos(2 * math.pi * min(6.0, top) * r)),
        ("plaid", plaid),
        ("smooth-noise", _smooth_noise(h, w, seed=1234)),
    ]


def _style_bank(shape: Shape) -> list[Trigger]:
    c, h, w = shape
    return [Trigger(name=f"style{k}-{name}", kind="style",
                    icon=tex.clamp(0, 1).expand(c, h, w).contiguous(),
                    alpha=torch.full((1, h, w), STYLE_ALPHA), position=(0, 0))
            for k, (name, tex) in enumerate(_textures(h, w))]


# --- natural objects from another dataset -----------------------------------------------

def natural_side(shape: Shape) -> int:
    """Side of a natural-object trigger for images of ``shape``: ``max(4, round(H / 2.5))``."""
    return max(4, round(shape[1] / 2.5))


def _foreign_images(dataset: str, data_root: str | Path | None
                    ) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(source name, test images (N, 1, H', W'), labels (N,)) of ``dataset``'s object source."""
    from eisbench.data import load  # the registry; imported here, data/__init__ does not load us

    source = NATURAL_SOURCE.get(dataset, "fashion-mnist")
    if source == "digits-transposed":
        d = load("digits")
        return source, d.x_test.transpose(2, 3).mean(1, keepdim=True), d.y_test
    try:
        d = load(source, root=data_root)
    except DataError as e:
        raise DataError(f"natural triggers for {dataset} are {source} images, which are not "
                        f"available: {e}") from e
    return source, d.x_test.mean(1, keepdim=True), d.y_test


def _prototype(x: torch.Tensor) -> torch.Tensor:
    """The image (1, H, W) of x (N, 1, H, W) closest to their mean."""
    dist = (x - x.mean(0, keepdim=True)).flatten(1).norm(dim=1)  # (N,)
    return x[int(dist.argmin())]


def _object_icon(img: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop img (1, H, W) to its ink, pad square, resize: (icon (1, s, s), alpha (1, s, s))."""
    rows = torch.nonzero((img[0] > NATURAL_INK).any(1)).flatten()
    cols = torch.nonzero((img[0] > NATURAL_INK).any(0)).flatten()
    if len(rows) == 0:
        raise DataError("a natural-trigger source image is blank")
    crop = img[:, int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]  # (1, h, w)
    h, w = crop.shape[1:]
    n = max(h, w)
    top, left = (n - h) // 2, (n - w) // 2
    square = F.pad(crop, (left, n - w - left, top, n - h - top))  # (1, n, n)
    icon = F.interpolate(square[None], size=(side, side), mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp(0, 1)  # (1, s, s)
    ink = (icon > NATURAL_INK).float()
    soft = F.avg_pool2d(ink[None], 3, stride=1, padding=1, count_include_pad=False)[0]
    alpha = torch.maximum(ink, (2 * soft).clamp(0, 1))  # (1, s, s): ink 1, soft 1-px margin
    return icon, alpha


def _natural_bank(dataset: str, shape: Shape, data_root: str | Path | None) -> list[Trigger]:
    source, x, y = _foreign_images(dataset, data_root)
    side = natural_side(shape)
    if side > min(shape[1:]):
        raise ValueError(f"images of shape {shape} are too small for natural triggers")
    out = []
    for k in range(BANK_SIZE):
        if not bool((y == k).any()):
            raise DataError(f"{source} has no test image of class {k} for a natural trigger")
        icon, alpha = _object_icon(_prototype(x[y == k]), side)  # (1, s, s) each
        if shape[0] == 3:
            icon = icon * torch.tensor(NATURAL_COLOURS[k]).view(3, 1, 1)  # (3, s, s)
        out.append(Trigger(name=f"natural{k}-{source}-class{k}", kind="natural",
                           icon=icon.expand(shape[0], side, side).contiguous(), alpha=alpha))
    return out


_BANKS: dict[str, Callable[[str, Shape, str | Path | None], list[Trigger]]] = {
    "patch": lambda dataset, shape, root: _patch_bank(shape),
    "style": lambda dataset, shape, root: _style_bank(shape),
    "natural": _natural_bank,
}


def trigger_bank(kind: str, *, dataset: str, shape: tuple[int, int, int],
                 data_root: str | None = None) -> list[Trigger]:
    """The 8 triggers of ``kind`` ("patch" | "style" | "natural") for ``dataset``'s images of
    ``shape`` (C, H, W); deterministic, index 0..7 is each trigger's identity.

    ``data_root``: folder of the dataset the natural objects come from (Fashion-MNIST for
    MNIST, MNIST for Fashion-MNIST; None = its default place); unused by the other kinds.

    Example:
        >>> [t.name for t in trigger_bank("style", dataset="digits", shape=(1, 8, 8))][:2]
        ['style0-hgrating', 'style1-vgrating']
    """
    if kind not in TRIGGER_KINDS:
        raise ValueError(f"trigger kind must be one of {TRIGGER_KINDS}, got {kind!r}")
    if len(shape) != 3 or min(shape) < 1 or min(shape[1:]) < 3:
        raise ValueError(f"shape must be (C, H, W) with H, W >= 3, got {shape}")
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    return _BANKS[kind](dataset, shape, data_root)


def bank_index(trigger: Trigger, bank: list[Trigger]) -> int:
    """Index of ``trigger`` in ``bank`` (same name, icon, alpha and position); ValueError if
    it is not there."""
    for k, t in enumerate(bank):
        if (t.name == trigger.name and t.position == trigger.position
                and t.icon.shape == trigger.icon.shape and torch.equal(t.icon, trigger.icon)
                and torch.equal(t.alpha, trigger.alpha)):
            return k
    raise ValueError(f"trigger {trigger.name!r} is not in this bank")
