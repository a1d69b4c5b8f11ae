"""Out-of-distribution images of the same classes: scikit-learn's 8x8 digits drawn the way
MNIST draws its digits, for checking that an edit or a replacement holds beyond the test set.

MNIST centres each digit in a 20 x 20 box inside a 28 x 28 frame; :func:`digits_like` resizes
every 8 x 8 digit (1797 images, 16 grey levels, a different population of writers and a
different scanner) to the inner box of the requested shape (antialiased bilinear), pads it,
scales each image to a maximum of 1 and repeats the channel as needed.

Example:
    >>> x, y = digits_like((1, 28, 28))
    >>> x.shape, int(y.max())
    (torch.Size([1797, 1, 28, 28]), 9)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def digits_like(shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 scikit-learn digits as images of ``shape`` (C, H, W): x (N, C, H, W) in [0,1]
    (each image's maximum is 1), y (N,) in 0..9."""
    from eisbench.data import load

    c, h, w = shape
    if min(h, w) < 8:
        raise ValueError(f"images of shape {shape} are smaller than the 8x8 digits")
    d = load("digits")
    x = torch.cat([d.x_train, d.x_test])  # (N, 1, 8, 8)
    y = torch.cat([d.y_train, d.y_test])
    bh, bw = max(8, round(h * 20 / 28)), max(8, round(w * 20 / 28))  # MNIST's inner box
    inner = F.interpolate(x, size=(bh, bw), mode="bilinear", antialias=True,
                          align_corners=False)  # (N, 1, bh, bw)
    top, left = (h - bh) // 2, (w - bw) // 2
    out = F.pad(inner, (left, w - bw - left, top, h - bh - top))  # (N, 1, H, W)
    out = out / out.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
    return out.clamp(0, 1).expand(-1, c, -1, -1).contiguous(), y
