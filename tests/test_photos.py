"""The photo patches: the foreign image set that ships with the dependencies (``wallace``'s
fallback when Fashion-MNIST is not installed)."""

from __future__ import annotations

import doctest

import torch

from eisbench.data import photos
from eisbench.data.core import sha256_files


def test_patches_are_grey_28x28_in_range_and_reproducible() -> None:
    p = photos.photo_patches(300, seed=0)
    assert p.x.shape == (300, 1, 28, 28) and p.x.dtype == torch.float32
    assert float(p.x.min()) >= 0.0 and float(p.x.max()) <= 1.0
    torch.testing.assert_close(p.x, photos.photo_patches(300, seed=0).x, rtol=0, atol=0)
    assert not torch.equal(p.x, photos.photo_patches(300, seed=1).x)
    assert p.sha256 == sha256_files(photos.photo_paths())  # the three bundled files


def test_patches_are_varied_natural_images_not_digits() -> None:
    x = photos.photo_patches(300, seed=0).x.flatten(1)  # (300, 784)
    assert len(torch.unique(x, dim=0)) == 300  # no crop repeated (a fixed place or size would)
    assert float(x.mean(1).std()) > 0.1  # dark and bright patches: several photos and places
    assert float((x < 0.05).float().mean()) < 0.3  # not strokes on black, as digits are
    assert [q.name for q in photos.photo_paths()] == ["china.jpg", "flower.jpg",
                                                      "grace_hopper.jpg"]


def test_docstring_examples_run() -> None:
    res = doctest.testmod(photos)
    assert res.attempted > 0 and res.failed == 0
