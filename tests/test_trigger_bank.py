"""The trigger bank: 8 distinct, deterministic triggers per kind, of valid sizes, in [0,1];
natural triggers are real images of another dataset (for digits: transposed digits)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_data import idx_bytes

from eisbench import data
from eisbench.data import DataError
from eisbench.trojans.bank import (
    _object_icon,
    _prototype,
    bank_index,
    natural_side,
    patch_side,
    trigger_bank,
)
from eisbench.trojans.stamp import TRIGGER_KINDS, stamp

DIGITS = (1, 8, 8)
MNIST = (1, 28, 28)


def _composite(t: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return (a * t).flatten()  # what the trigger paints on a black image


@pytest.mark.parametrize("kind", TRIGGER_KINDS)
def test_bank_has_eight_distinct_valid_triggers_on_digits(kind: str) -> None:
    bank = trigger_bank(kind, dataset="digits", shape=DIGITS)
    assert len(bank) == 8 and len({t.name for t in bank}) == 8
    assert all(t.kind == kind for t in bank)
    for t in bank:
        assert t.icon.shape[0] == 1 and 0 <= float(t.icon.min()) <= float(t.icon.max()) <= 1
        assert float(t.alpha.min()) >= 0 and float(t.alpha.max()) <= 1
        assert float(t.alpha.max()) > 0  # it paints something
        img = t.image(DIGITS)
        assert img.shape == DIGITS
    for a, b in itertools.combinations(bank, 2):
        gap = (_composite(a.icon, a.alpha) - _composite(b.icon, b.alpha)).abs().mean()
        assert gap > 0.05, (a.name, b.name)


@pytest.mark.parametrize("shape", [DIGITS, MNIST, (3, 32, 32)])
def test_patch_icons_sizes_positions_and_two_tones(shape: tuple[int, int, int]) -> None:
    bank = trigger_bank("patch", dataset="any", shape=shape)
    s = patch_side(shape)
    assert s == {8: 3, 28: 5, 32: 6}[shape[1]]
    corners = set()
    for k, t in enumerate(bank):
        assert t.icon.shape == (shape[0], s, s) and torch.equal(t.alpha, torch.ones(1, s, s))
        torch.testing.assert_close(t.icon.unique(), torch.tensor([0.4, 1.0]))  # two tones
        if k < 4:
            assert t.position is None
        else:
            assert t.position is not None
            r, c = t.position
            assert 0 <= r <= shape[1] - s and 0 <= c <= shape[2] - s
            corners.add(t.position)
    assert len(corners) == 4
    masks = [tuple((t.icon[0] > 0.7).flatten().tolist()) for t in bank]
    assert len(set(masks)) == 8  # distinct at every size, the 3x3 ones included


def test_patch_icons_are_not_digit_strokes(digits_small: tuple[torch.Tensor, ...]) -> None:
    # Every icon has a flat grey ground: under 1% of the (blurry) digits' 3x3 crops come
    # within 0.15 of it per pixel (on MNIST's sharp strokes: under 0.01%).
    x = digits_small[0]  # (N, 1, 8, 8)
    crops = F.unfold(x, 3).transpose(1, 2).reshape(-1, 9)  # (N * 36, 9)
    for t in trigger_bank("patch", dataset="digits", shape=DIGITS):
        d = (crops - t.icon.flatten()).abs().mean(1)
        assert float((d < 0.15).float().mean()) < 0.01, t.name


@pytest.mark.parametrize("shape", [DIGITS, MNIST])
def test_style_textures_full_size_blended(shape: tuple[int, int, int]) -> None:
    bank = trigger_bank("style", dataset="mnist", shape=shape)
    for t in bank:
        assert t.icon.shape == shape and t.position == (0, 0)
        assert 0.2 <= float(t.alpha.min()) == float(t.alpha.max()) <= 0.35
        assert float(t.icon.std()) > 0.15  # a texture, not a flat tint
    x = data.load("digits").x_test[:50]
    if shape == DIGITS:  # the digit stays readable: most of the image is still the digit
        xs, foot = stamp(x, bank[0], generator=torch.Generator().manual_seed(0))
        assert float(foot.max()) <= 0.35 and float((xs - x).abs().max()) <= 0.35 + 1e-6
    icons = torch.stack([t.icon.flatten() for t in bank])  # (8, H*W)
    corr = torch.corrcoef(icons)
    assert float((corr - torch.eye(8)).abs().max()) < 0.9


@pytest.mark.parametrize("kind", TRIGGER_KINDS)
def test_bank_is_deterministic(kind: str) -> None:
    a = trigger_bank(kind, dataset="digits", shape=DIGITS)
    b = trigger_bank(kind, dataset="digits", shape=DIGITS)
    for s, t in zip(a, b, strict=True):
        assert s.name == t.name and s.position == t.position
        torch.testing.assert_close(s.icon, t.icon, rtol=0, atol=0)
        torch.testing.assert_close(s.alpha, t.alpha, rtol=0, atol=0)
    assert [bank_index(t, a) for t in b] == list(range(8))


def test_bank_index_rejects_a_foreign_trigger() -> None:
    bank = trigger_bank("patch", dataset="digits", shape=DIGITS)
    with pytest.raises(ValueError, match="not in this bank"):
        bank_index(trigger_bank("style", dataset="digits", shape=DIGITS)[0], bank)


def test_natural_triggers_of_digits_are_transposed_digits() -> None:
    bank = trigger_bank("natural", dataset="digits", shape=DIGITS)
    d = data.load("digits")
    side = natural_side(DIGITS)
    assert side == 4
    for k, t in enumerate(bank):
        assert t.icon.shape == (1, side, side) and t.position is None
        ink = t.icon > 0.1
        torch.testing.assert_close(t.alpha[ink], torch.ones(int(ink.sum())))  # own pixels
        xk = d.x_test[d.y_test == k]  # (n, 1, 8, 8)
        icon, alpha = _object_icon(_prototype(xk.transpose(2, 3)), side)
        torch.testing.assert_close(t.icon, icon, rtol=0, atol=0)
        torch.testing.assert_close(t.alpha, alpha, rtol=0, atol=0)
    upright = [_object_icon(_prototype(d.x_test[d.y_test == k]), side)[0] for k in range(8)]
    assert any(not torch.equal(t.icon, u) for t, u in zip(bank, upright, strict=True))


def _class_coded_idx(root: Path) -> None:
    """IDX files of 28x28 images whose class k is a bright rectangle of level 0.3 + 0.07 k,
    (12 + k) rows by (20 - k) columns, at a slightly varying place."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for split, n in (("train", 20), ("t10k", 100)):
        y = np.arange(n) % 10
        x = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, k in enumerate(y):
            r, c = rng.integers(2, 5, 2)
            x[i, r:r + 12 + k, c:c + 20 - k] = round((0.3 + 0.07 * k) * 255)
        (root / f"{split}-images-idx3-ubyte").write_bytes(idx_bytes(x))
        (root / f"{split}-labels-idx1-ubyte").write_bytes(idx_bytes(y.astype(np.uint8)))


def test_natural_triggers_of_mnist_come_from_the_fashion_folder(tmp_path: Path) -> None:
    _class_coded_idx(tmp_path / "fashion")
    bank = trigger_bank("natural", dataset="mnist", shape=MNIST,
                        data_root=str(tmp_path / "fashion"))
    assert [t.name for t in bank] == [f"natural{k}-fashion-mnist-class{k}" for k in range(8)]
    for k, t in enumerate(bank):  # object k is an image of class k, cropped to its ink
        assert t.icon.shape == (1, 11, 11) and t.position is None
        assert float(t.icon.max()) == pytest.approx(0.3 + 0.07 * k, abs=0.01)
        solid = t.icon[0] > 0.9 * (0.3 + 0.07 * k)  # (11, 11): the rectangle's inside
        rows, cols = int(solid.any(1).sum()), int(solid.any(0).sum())
        assert (rows > cols) == (12 + k > 20 - k) and max(rows, cols) >= 9, (k, rows, cols)
    with pytest.raises(DataError, match="natural triggers for mnist"):
        trigger_bank("natural", dataset="mnist", shape=MNIST, data_root=str(tmp_path / "none"))


def test_bad_kind_and_shape_are_rejected() -> None:
    with pytest.raises(ValueError, match="kind"):
        trigger_bank("sticker", dataset="digits", shape=DIGITS)
    with pytest.raises(ValueError, match="shape"):
        trigger_bank("patch", dataset="digits", shape=(1, 2, 2))
