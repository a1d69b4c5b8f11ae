"""The measurements of :mod:`eisbench.experiments.frequency`: band filters of whole datasets,
Fourier heat maps of error (Yin et al. 2019) and their band means, and the checks that the
filters behave (how much clamping changes, how a fresh model normalises its inputs).

- :func:`filter_images`: a dataset under the clean, low-pass or high-pass filter;
- :func:`normalised_spec`: a model spec normalised by its training images' channel statistics;
- :func:`fourier_heat_map` / :func:`band_errors`: error under Fourier basis perturbations, per
  frequency and averaged over the low and the high band;
- :func:`clamp_change`: the relative change that clamping to [0, 1] makes to filtered images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from eisbench.core.tensors import predict
from eisbench.data.frequency import (
    band_split,
    fourier_basis,
    grid_frequencies,
    high_pass_image,
    low_pass_image,
    low_pass_raw,
)
from eisbench.models import ModelSpec

FILTER_KINDS = ("clean", "low", "high")


def filter_images(x: torch.Tensor, kind: str, *, low_frac: float, high_frac: float,
                  batch_size: int = 5000) -> torch.Tensor:
    """``x`` (N, C, H, W) under filter ``kind`` (clean | low | high): the low-pass keeps
    |k| <= low_frac * Nyquist, the high-pass |k| > high_frac * Nyquist."""
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "clean": lambda t: t,
        "low": lambda t: low_pass_image(t, radius_frac=low_frac),
        "high": lambda t: high_pass_image(t, radius_frac=high_frac)}
    if kind not in fns:
        raise ValueError(f"unknown filter {kind!r}: expected one of {sorted(fns)}")
    return torch.cat([fns[kind](x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def normalised_spec(arch: str, x: torch.Tensor, *, num_classes: int) -> ModelSpec:
    """``arch`` for images like x (N, C, H, W), normalised inside the model by the per-channel
    mean and std of x (high-pass images have std ~0.05 around 0.5: unnormalised, an MLP
    trained on them stays at chance)."""
    mean = x.mean(dim=(0, 2, 3))  # (C,)
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)  # (C,)
    return ModelSpec(arch=arch, in_shape=(x.shape[1], x.shape[2], x.shape[3]),
                     num_classes=num_classes, mean=tuple(mean.tolist()),
                     std=tuple(std.tolist()))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """Share of images x (N, C, H, W) that ``model`` labels y (N,)."""
    return float((predict(model, x, device=device) == y).float().mean())


def fourier_heat_map(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                     norm: float, stride: int, seed: int, device: torch.device,
                     cells_per_batch: int = 16) -> dict[str, Any]:
    """Error rate of each model on x + r * norm * U(fy, fx) (clamped to [0, 1]), r = +-1 per
    image, for every (fy, fx) of the grid. x: (N, C, H, W), y: (N,). Returns the frequencies
    and, per model, a (len(fys), len(fxs)) list of error rates. (fy, fx) and (-fy, -fx) give
    the same basis image and are evaluated once."""
    _, c, h, w = x.shape
    fys, fxs = grid_frequencies(h, stride), grid_frequencies(w, stride)
    gen = torch.Generator().manual_seed(seed)
    canon: dict[tuple[int, int], tuple[int, int]] = {}
    for fy in fys:
        for fx in fxs:
            a, b = (fy % h, fx % w), (-fy % h, -fx % w)
            canon[(fy, fx)] = min(a, b)
    unique = sorted(set(canon.values()))
    err: dict[str, dict[tuple[int, int], float]] = {m: {} for m in models}
    for i in range(0, len(unique), cells_per_batch):
        cells = unique[i:i + cells_per_batch]
        u = torch.stack([fourier_basis(h, w, fy, fx) for fy, fx in cells])  # (K, H, W)
        sign = torch.randint(0, 2, (len(cells), len(x)), generator=gen).float() * 2 - 1  # (K, N)
        pert = norm / math.sqrt(c) * sign[:, :, None, None, None] * u[:, None, None]
        xp = (x[None] + pert).clamp(0, 1).flatten(0, 1)  # (K * N, C, H, W)
        for name, model in models.items():
            wrong = (predict(model, xp, device=device) != y.repeat(len(cells))).view(len(cells),
                                                                                    -1)
            for cell, e in zip(cells, wrong.float().mean(1).tolist(), strict=True):
                err[name][cell] = e
    return {"fy": fys, "fx": fxs,
            "error": {m: [[err[m][canon[(fy, fx)]] for fx in fxs] for fy in fys]
                      for m in models}}


def band_errors(hm: dict[str, Any], *, h: int, w: int, low_frac: float,
                high_frac: float) -> dict[str, dict[str, float]]:
    """Mean heat-map error per model over cells with |k| <= low_frac * Nyquist (low) and
    |k| > high_frac * Nyquist (high)."""
    nyq = min(h, w) / 2
    out: dict[str, dict[str, float]] = {}
    for m, grid in hm["error"].items():
        lo, hi = [], []
        for fy, row in zip(hm["fy"], grid, strict=True):
            for fx, e in zip(hm["fx"], row, strict=True):
                k = math.hypot(fy, fx)
                if k <= low_frac * nyq:
                    lo.append(e)
                elif k > high_frac * nyq:
                    hi.append(e)
        out[m] = {"low": sum(lo) / max(1, len(lo)), "high": sum(hi) / max(1, len(hi))}
    return out


def clamp_change(x: torch.Tensor, *, low_frac: float, high_frac: float) -> dict[str, float]:
    """Relative L2 change that clamping to [0, 1] makes to the low-pass and the high-pass
    filtered images of x (N, C, H, W)."""
    low = low_pass_raw(x, radius_frac=low_frac)
    high = 0.5 + band_split(x, radius_frac=high_frac)[1] / 2
    return {k: float((v.clamp(0, 1) - v).norm() / v.norm().clamp_min(1e-12))
            for k, v in (("low", low), ("high", high))}
