"""Patches of the photographs that ship with eisbench's own dependencies: a set of natural,
non-digit images that needs no download, for experiments that want "foreign" images (``wallace``
when Fashion-MNIST is not installed).

The sources are the three photographs bundled in the wheels that eisbench already installs:
scikit-learn's ``china.jpg`` (a temple among trees) and ``flower.jpg`` (a dahlia), both 427 x 640,
and matplotlib's ``grace_hopper.jpg`` (a portrait, 600 x 512). Each patch is a square crop of a
random photograph at a random place, of side 28 to 160 pixels (from the photograph's own
resolution to about a third of its short side, so patches range from texture to parts of objects),
mirrored left-right half of the time, converted to grey (ITU-R 601 luma, as PIL's ``L``) and
resized to 28 x 28 with antialiasing: (N, 1, 28, 28) float32 in [0, 1]. Everything is drawn from
one seeded generator, so the same ``(n, seed)`` gives the same patches on every machine.

Why these and not another bundled set: scikit-learn's 8 x 8 digits are the same domain as MNIST
(a poor "foreign" set), its other bundled sets are tables, scipy's images need a download, and
matplotlib's other samples are charts, logos and one MRI slice. Photographs of scenes, a flower
and a face are as far from handwritten digits as Fashion-MNIST's clothes are.

Example:
    >>> p = photo_patches(4, seed=0)
    >>> p.x.shape, p.name, len(p.sha256)
    (torch.Size([4, 1, 28, 28]), 'photo-patches', 64)
    >>> bool(torch.equal(p.x, photo_patches(4, seed=0).x))
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from eisbench.data.core import DataError, sha256_files

NAME = "photo-patches"
SIDE = (28, 160)  # crop side in pixels, both ends included
DESCRIPTION = ("28x28 grey patches of the three photographs that ship with scikit-learn "
               "(china.jpg, flower.jpg) and matplotlib (grace_hopper.jpg): random squares of "
               "side 28-160 px, half of them mirrored")


@dataclass(frozen=True)
class Patches:
    """Unlabelled images: ``x`` (N, 1, 28, 28) in [0, 1], the sha256 of the source files."""

    name: str
    x: torch.Tensor
    sha256: str
    description: str


def photo_paths() -> list[Path]:
    """The bundled photographs: scikit-learn's two sample images, matplotlib's portrait."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    paths = [Path(p) for p in load_sample_images().filenames]
    paths.append(Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"the photographs bundled with scikit-learn and matplotlib are missing "
                        f"({', '.join(missing)}): reinstall them with "
                        "`pip install -c constraints.txt --force-reinstall scikit-learn "
                        "matplotlib`")
    return paths


def _grey(path: Path) -> torch.Tensor:
    """One photograph as (H, W) float32 in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)


def photo_patches(n: int, *, seed: int = 0) -> Patches:
    """``n`` patches of the bundled photographs (see the module's docstring), drawn from a
    generator seeded with ``seed``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    paths = photo_paths()
    photos = [_grey(p) for p in paths]
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 1, 28, 28)
    for i in range(n):
        im = photos[int(torch.randint(len(photos), (1,), generator=g))]  # (H, W)
        h, w = im.shape
        s = int(torch.randint(SIDE[0], min(SIDE[1], h, w) + 1, (1,), generator=g))
        top = int(torch.randint(h - s + 1, (1,), generator=g))
        left = int(torch.randint(w - s + 1, (1,), generator=g))
        crop = im[top:top + s, left:left + s][None, None]  # (1, 1, s, s)
        patch = F.interpolate(crop, size=(28, 28), mode="bilinear", antialias=True,
                              align_corners=False)[0]  # (1, 28, 28)
        if bool(torch.rand((), generator=g) < 0.5):
            patch = patch.flip(-1)
        out[i] = patch
    return Patches(NAME, out.clamp(0, 1), sha256_files(paths), DESCRIPTION)


__all__ = ["DESCRIPTION", "NAME", "Patches", "photo_paths", "photo_patches"]
