"""Differentiable image parameterisations for feature visualisation, and transformation
robustness.

Each parameterisation is a module holding ``n`` images as parameters; calling it returns the
images (n, C, H, W) in [0,1] (a sigmoid is the last operation), differentiable in its
parameters. Both are optimised in a batch: the ``n`` images share one optimiser step.

- :class:`FourierImage` (Olah et al. 2017, "Feature Visualization"): the image's real 2-D
  spectrum (rfft2 coefficients) is the parameter, scaled by ``1 / frequency ** decay`` so that
  gradient steps move low frequencies as much as high ones (decorrelated, natural-image-like
  statistics); the image is ``sigmoid(irfft2(scale * spectrum))``.
- :class:`CPPNImage` (Mordvintsev et al. 2018, "Differentiable Image Parameterizations"): a
  small MLP per image maps pixel coordinates (x, y, r) to intensities; its hidden layers use
  the composite arctan activation ``[atan(z) / 0.67, atan(z)^2 / 0.6]`` and the output a
  sigmoid. Images are smooth, resolution-free patterns.

:func:`jitter` applies a random small translation and scale to every image (bilinear,
differentiable): optimising through it ("transformation robustness") keeps the optimiser from
hiding the objective in single-pixel patterns.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> img = FourierImage(4, (1, 28, 28), generator=g)
    >>> x = img()  # (4, 1, 28, 28) in [0,1]
    >>> x.shape
    torch.Size([4, 1, 28, 28])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Shape = tuple[int, int, int]


class FourierImage(nn.Module):
    """``n`` images (C, H, W) parameterised by their spectrum (Olah et al. 2017).

    spectrum: (n, C, H, W // 2 + 1, 2) real and imaginary parts, drawn N(0, std^2) from
    ``generator``; scale: (H, W // 2 + 1) = ``1 / max(|f|, 1 / max(H, W)) ** decay`` with
    |f| in cycles per pixel. Uses the orthonormal FFT, so a white spectrum of std s gives
    pixels of std s before the scaling.
    """

    def __init__(self, n: int, shape: Shape, *, generator: torch.Generator, std: float = 0.01,
                 decay: float = 1.0) -> None:
        super().__init__()
        c, h, w = shape
        fy = torch.fft.fftfreq(h)[:, None]  # (H, 1)
        fx = torch.fft.rfftfreq(w)[None, :]  # (1, W // 2 + 1)
        freq = (fx ** 2 + fy ** 2).sqrt()  # (H, W // 2 + 1)
        self.scale: torch.Tensor
        self.register_buffer("scale", 1.0 / freq.clamp_min(1.0 / max(h, w)) ** decay)
        self.size = (h, w)
        self.spectrum = nn.Parameter(
            std * torch.randn(n, c, h, w // 2 + 1, 2, generator=generator))

    def forward(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale  # (n, C, H, W // 2 + 1)
        img = torch.fft.irfft2(spec, s=self.size, norm="ortho")  # (n, C, H, W)
        return torch.sigmoid(img)


def _composite(z: torch.Tensor) -> torch.Tensor:
    """Mordvintsev et al.'s CPPN activation: (..., k) -> (..., 2k), roughly unit variance."""
    a = torch.atan(z)
    return torch.cat([a / 0.67, a * a / 0.6], dim=-1)


class CPPNImage(nn.Module):
    """``n`` images (C, H, W), each drawn by its own coordinate MLP (a CPPN).

    Input per pixel: (x, y, r) with x, y in [-sqrt(3), sqrt(3)] and r = sqrt(x^2 + y^2);
    ``layers`` hidden layers of ``hidden`` units with the composite activation (which doubles
    the width), then a sigmoid output of C channels. All weights are drawn
    N(0, 1 / fan_in) from ``generator`` (biases 0): different draws give different patterns.
    """

    def __init__(self, n: int, shape: Shape, *, generator: torch.Generator, hidden: int = 16,
                 layers: int = 4) -> None:
        super().__init__()
        c, h, w = shape
        lim = math.sqrt(3.0)
        yy, xx = torch.meshgrid(torch.linspace(-lim, lim, h), torch.linspace(-lim, lim, w),
                                indexing="ij")  # (H, W) each
        coords = torch.stack([xx, yy, (xx ** 2 + yy ** 2).sqrt()], dim=-1)  # (H, W, 3)
        self.coords: torch.Tensor
        self.register_buffer("coords", coords.view(1, h * w, 3))
        self.shape = shape
        dims = [3] + [2 * hidden] * layers  # inputs of each layer (composite doubles widths)
        outs = [hidden] * layers + [c]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(n, d, o, generator=generator) / math.sqrt(d))
            for d, o in zip(dims, outs, strict=True))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(n, 1, o)) for o in outs)

    def forward(self) -> torch.Tensor:
        n = self.weights[0].shape[0]
        c, h, w = self.shape
        z = self.coords.expand(n, -1, -1)  # (n, H * W, 3)
        last = len(self.weights) - 1
        for i, (wt, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            z = torch.baddbmm(b, z, wt)  # (n, H * W, out)
            if i < last:
                z = _composite(z)  # (n, H * W, 2 * out)
        return torch.sigmoid(z).transpose(1, 2).reshape(n, c, h, w)


PARAMETERISATIONS: dict[str, type[FourierImage] | type[CPPNImage]] = {
    "fourier": FourierImage,
    "cppn": CPPNImage,
}


def jitter(x: torch.Tensor, *, generator: torch.Generator, shift: float,
           scale: float) -> torch.Tensor:
    """Randomly translate each image of x (B, C, H, W) by up to ``shift`` pixels along each
    axis and rescale it by a factor in [1 - scale, 1 + scale] (bilinear, edge pixels
    repeated): (B, C, H, W), differentiable in x. Draws come from ``generator`` (CPU)."""
    b, _, h, w = x.shape
    s = 1 + (2 * torch.rand(b, generator=generator) - 1) * scale  # (B,)
    t = (2 * torch.rand(b, 2, generator=generator) - 1) * shift  # (B, 2) pixels (x, y)
    t = t * torch.tensor([2.0 / w, 2.0 / h])  # normalised coordinates
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = s, s
    theta[:, :, 2] = t
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
