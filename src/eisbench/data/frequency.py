"""Frequency-domain image transforms: radial band filters, common corruptions (noise, blur,
contrast, fog) and Fourier basis images (Yin et al. 2019), for images (N, C, H, W) in [0,1]."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
import torch.nn.functional as F


def radial_distance(h: int, w: int) -> torch.Tensor:
    """|k| (H, W) of every frequency of a 2-D FFT in its unshifted layout (cycles/image)."""
    fy = torch.fft.fftfreq(h) * h  # (H,)
    fx = torch.fft.fftfreq(w) * w  # (W,)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def band_split(x: torch.Tensor, *, radius_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high), both (N, C, H, W) with low + high == x: the parts of x at |k| <= r and
    |k| > r, r = radius_frac * min(H, W) / 2. No clamping."""
    h, w = x.shape[-2:]
    keep = (radial_distance(h, w) <= radius_frac * min(h, w) / 2).to(x.device)  # (H, W)
    low = torch.fft.ifft2(torch.fft.fft2(x.double()) * keep).real.to(x.dtype)
    return low, x - low


def low_pass_raw(x: torch.Tensor, *, radius_frac: float) -> torch.Tensor:
    """x (N, C, H, W) times a radial Gaussian mask in the Fourier domain, at half amplitude
    at |k| = r = radius_frac * min(H, W) / 2. Its spatial kernel is (up to truncation at
    Nyquist, ~1e-4) a positive blur, so images in [0, 1] stay in [0, 1] without ringing."""
    h, w = x.shape[-2:]
    r = radius_frac * min(h, w) / 2
    mask = torch.exp(-math.log(2) * (radial_distance(h, w) / r) ** 2).to(x.device)  # (H, W)
    return torch.fft.ifft2(torch.fft.fft2(x.double()) * mask).real.to(x.dtype)


def low_pass_image(x: torch.Tensor, *, radius_frac: float) -> torch.Tensor:
    """Low-pass filtered images (N, C, H, W) in [0, 1] (:func:`low_pass_raw`, clamped)."""
    return low_pass_raw(x, radius_frac=radius_frac).clamp(0, 1)


def high_pass_image(x: torch.Tensor, *, radius_frac: float) -> torch.Tensor:
    """High-pass filtered images (N, C, H, W) in [0, 1]: 0.5 + high band / 2, clamped."""
    return (0.5 + band_split(x, radius_frac=radius_frac)[1] / 2).clamp(0, 1)


def low_frequency_fraction(x: torch.Tensor, *, radius_frac: float) -> float:
    """Fraction of the spectral energy of ``x`` (N, C, H, W), per-image mean removed, at
    |k| <= radius_frac * Nyquist (Parseval: the energy of the low band)."""
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    low, _ = band_split(x, radius_frac=radius_frac)
    return float(low.double().pow(2).sum() / x.double().pow(2).sum().clamp_min(1e-12))


# ---- corruptions -------------------------------------------------------------------------

def gaussian_noise(x: torch.Tensor, sigma: float, *, generator: torch.Generator) -> torch.Tensor:
    """x + N(0, sigma^2) per pixel, clamped to [0, 1]. x: (N, C, H, W)."""
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    return (x + sigma * noise).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: float, *, generator: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur of std ``sigma`` pixels (replicate padding). x: (N, C, H, W)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()  # (2r + 1,)
    c = x.shape[1]
    out = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1),
                   groups=c)
    out = F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"),
                   k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return out.clamp(0, 1)


def contrast(x: torch.Tensor, factor: float, *, generator: torch.Generator) -> torch.Tensor:
    """mean + factor (x - mean), per-image mean; stays in [0, 1]. x: (N, C, H, W)."""
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (m + factor * (x - m)).clamp(0, 1)


def smooth_pattern(n: int, h: int, w: int, *, generator: torch.Generator) -> torch.Tensor:
    """Low-frequency random patterns (n, 1, H, W) in [0, 1]: uniform noise on 2x2, 4x4, ...
    grids (up to half the image size), bilinearly upsampled, amplitudes halving per octave,
    then min-max normalised per image (an upsampled-noise stand-in for a plasma fractal)."""
    out = torch.zeros(n, 1, h, w)
    size, amp = 2, 1.0
    while size <= max(2, min(h, w) // 2):
        grid = torch.rand(n, 1, size, size, generator=generator)
        out += amp * F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
        size, amp = size * 2, amp / 2
    lo = out.amin(dim=(2, 3), keepdim=True)
    hi = out.amax(dim=(2, 3), keepdim=True)
    return (out - lo) / (hi - lo).clamp_min(1e-8)


def fog(x: torch.Tensor, weight: float, *, generator: torch.Generator) -> torch.Tensor:
    """ImageNet-C-style fog: (x + weight * pattern) * max / (max + weight), clamped; max is the
    per-image maximum of x. x: (N, C, H, W)."""
    n, _, h, w = x.shape
    pattern = smooth_pattern(n, h, w, generator=generator).to(x.device)  # (N, 1, H, W)
    mx = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + weight * pattern) * mx / (mx + weight)).clamp(0, 1)


Corruption = Callable[..., torch.Tensor]
CORRUPTIONS: dict[str, Corruption] = {"gaussian_noise": gaussian_noise,
                                      "gaussian_blur": gaussian_blur,
                                      "contrast": contrast, "fog": fog}


def corrupt(x: torch.Tensor, name: str, severity: float, *, seed: int) -> torch.Tensor:
    """``x`` (N, C, H, W) under corruption ``name`` at ``severity``; the random draws depend
    only on (seed, name, severity), so both models see the very same images."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: expected one of {sorted(CORRUPTIONS)}")
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}:{severity!r}".encode()))
    return CORRUPTIONS[name](x, severity, generator=gen)


# ---- Fourier heat map --------------------------------------------------------------------

def fourier_basis(h: int, w: int, fy: int, fx: int) -> torch.Tensor:
    """Real Fourier basis image (H, W) of frequency (fy, fx), unit L2 norm (Yin et al.)."""
    spec = torch.zeros(h, w, dtype=torch.complex128)
    spec[fy % h, fx % w] = 1.0
    spec[-fy % h, -fx % w] = 1.0
    u = torch.fft.ifft2(spec).real
    return (u / u.norm()).float()


def grid_frequencies(size: int, stride: int) -> list[int]:
    """Centred frequencies -size/2, ..., size/2 - 1 with step ``stride`` (0 included)."""
    half = size // 2
    return [k for k in range(-half, size - half) if k % stride == 0]
