"""Out-of-distribution digits drawn like MNIST digits."""

from __future__ import annotations

import pytest
import torch

from eisbench.data.ood import digits_like


def test_digits_like_mnist_frame() -> None:
    x, y = digits_like((1, 28, 28))
    assert x.shape == (1797, 1, 28, 28) and y.shape == (1797,)
    assert torch.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert x.min() >= 0 and torch.allclose(x.flatten(1).amax(1), torch.ones(1797))
    # MNIST's 4-pixel border stays empty: the digit sits in the central 20x20 box
    assert x[:, :, :4].abs().max() == 0 and x[:, :, :, 24:].abs().max() == 0
    rgb, _ = digits_like((3, 32, 32))
    assert rgb.shape == (1797, 3, 32, 32) and torch.equal(rgb[:, 0], rgb[:, 2])
    with pytest.raises(ValueError, match="smaller"):
        digits_like((1, 6, 6))
