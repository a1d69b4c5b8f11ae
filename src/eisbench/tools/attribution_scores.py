"""Scoring attribution maps against a trigger's footprint: the correlation per image
(:func:`score_attribution`) and every method of :data:`~eisbench.tools.attribution.ATTRIBUTIONS`
run and scored on one batch (:func:`score_methods`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from eisbench.core.stats import mean_ci
from eisbench.tools.attribution import (
    ATTRIBUTIONS,
    BASELINES,
    CAPTUM_METHODS,
    AttributionUnsupported,
)


def score_attribution(attr: torch.Tensor, footprint: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per image (N,) between |attr| (N, C, H, W), summed over channels,
    and the trigger footprint (N, 1, H, W) (``stamp``'s opacity map). A constant map (or
    footprint) has no correlation: its score is 0.

    Example:
        >>> score_attribution(foot, foot)  # a perfect map
        tensor([1.])
    """
    if attr.dim() != 4 or footprint.dim() != 4 or len(attr) != len(footprint) \
            or attr.shape[2:] != footprint.shape[2:]:
        raise ValueError(f"expected attr (N, C, H, W) and footprint (N, 1, H, W) of the same "
                         f"N, H, W; got {tuple(attr.shape)} and {tuple(footprint.shape)}")
    a = attr.detach().abs().sum(1).flatten(1).double()  # (N, H*W)
    f = footprint.detach().sum(1).flatten(1).double().to(a.device)  # (N, H*W)
    scale_a, scale_f = a.abs().amax(1), f.abs().amax(1)  # (N,)
    a, f = a - a.mean(1, keepdim=True), f - f.mean(1, keepdim=True)
    ok = (a.abs().amax(1) > 1e-9 * scale_a) & (f.abs().amax(1) > 1e-9 * scale_f)  # not constant
    den = (a.pow(2).sum(1) * f.pow(2).sum(1)).sqrt()  # (N,)
    r = torch.where(ok, (a * f).sum(1) / torch.where(ok, den, torch.ones_like(den)), 0.0)
    return r.float().cpu()


@dataclass(frozen=True)
class MethodScore:
    """One method's footprint correlation on a batch of poisoned images."""

    name: str
    mean: float | None  # None when skipped
    ci: tuple[float, float] | None  # t-interval over images
    n: int
    seconds: float
    skipped: str | None = None  # why the method could not run
    per_image: tuple[float, ...] = ()


def score_methods(model: nn.Module, x: torch.Tensor, target: int | torch.Tensor,
                  footprint: torch.Tensor, *, generator: torch.Generator,
                  methods: Sequence[str] | None = None) -> list[MethodScore]:
    """Run every method (default: the 16 captum ones, then the baselines) on poisoned images
    x (N, C, H, W) for ``target`` and score each against ``footprint`` (N, 1, H, W). A
    method that raises :class:`AttributionUnsupported` is recorded as skipped with its reason.
    Each method gets its own generator seeded from ``generator`` (order-independent)."""
    names = list(methods) if methods is not None else [*CAPTUM_METHODS, *BASELINES]
    seeds = torch.randint(2 ** 31 - 1, (len(names),), generator=generator).tolist()
    out = []
    for name, seed in zip(names, seeds, strict=True):
        fn = ATTRIBUTIONS.get(name)
        t0 = time.perf_counter()
        try:
            a = fn(model, x, target, generator=torch.Generator().manual_seed(int(seed)))
        except AttributionUnsupported as e:
            out.append(MethodScore(name, None, None, 0, time.perf_counter() - t0, str(e)))
            continue
        seconds = time.perf_counter() - t0
        r = score_attribution(a, footprint).tolist()
        m, lo, hi = mean_ci(r)
        out.append(MethodScore(name, m, (lo, hi), len(r), seconds, None, tuple(r)))
    return out
