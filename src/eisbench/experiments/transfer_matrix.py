"""Transfer-matrix computations of :mod:`eisbench.experiments.transfer` (exhibit B).

- :func:`targeted_l2_attack`: the D_det attack (targeted L2 PGD, no random start), batched;
- :func:`same_norm_noise`: the noise baseline, random directions of a given L2 norm inside
  the [0,1] box;
- :func:`transfer_matrices`: targeted and untargeted transfer and noise rates of every source
  model's adversarial examples into every target model, (S, T) nested lists;
- :func:`cross_mean`: the mean over the cells of pairs of distinct models;
- :func:`correlations`: Pearson and Spearman correlation across architectures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from eisbench.attacks.pgd import pgd
from eisbench.core.tensors import predict


def same_norm_noise(x: torch.Tensor, norms: torch.Tensor, *, generator: torch.Generator,
                    iters: int = 40) -> torch.Tensor:
    """x (N, C, H, W) in [0,1] moved along uniformly random directions so that, after clipping
    to [0,1], each image is ``norms`` (N,) away in L2 (or as far as the box allows).

    The scale of each direction is found by bisection (the clipped distance grows with it).

    Example:
        >>> xn = same_norm_noise(x, (x_adv - x).flatten(1).norm(dim=1), generator=g)
    """
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)  # (N, C, H, W)
    z = z / z.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    lo = torch.zeros(len(x), dtype=x.dtype, device=x.device)  # (N,)
    hi = 100.0 * norms.to(x.dtype) + 1.0  # (N,)

    def dist(c: torch.Tensor) -> torch.Tensor:
        return ((x + c.view(-1, 1, 1, 1) * z).clamp(0, 1) - x).flatten(1).norm(dim=1)

    for _ in range(iters):
        mid = (lo + hi) / 2
        short = dist(mid) < norms
        lo, hi = torch.where(short, mid, lo), torch.where(short, hi, mid)
    return (x + hi.view(-1, 1, 1, 1) * z).clamp(0, 1)


def correlations(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Pearson and Spearman (average ranks for ties) correlation of paired values x, y (A,);
    0.0 where either side is constant (no evidence either way)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) != len(b) or len(a) < 3:
        raise ValueError(f"need >= 3 paired values, got {len(a)} and {len(b)}")

    def pearson(u: np.ndarray, v: np.ndarray) -> float:
        if np.ptp(u) == 0 or np.ptp(v) == 0:
            return 0.0
        return float(np.clip(np.corrcoef(u, v)[0, 1], -1.0, 1.0))

    return pearson(a, b), pearson(rankdata(a), rankdata(b))


def targeted_l2_attack(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *, eps: float,
                       steps: int, step_size: float, device: torch.device,
                       batch_size: int = 500) -> torch.Tensor:
    """The D_det attack (targeted L2 PGD towards t (N,), no random start) on x (N, C, H, W)."""
    out = []
    for i in range(0, len(x), batch_size):
        out.append(pgd(model, x[i:i + batch_size].to(device), t[i:i + batch_size].to(device),
                       eps=eps, steps=steps, step_size=step_size, norm="l2", targeted=True,
                       random_start=False).cpu())
    return torch.cat(out)


def _rates(hit: torch.Tensor, mask: torch.Tensor) -> float | None:
    n = int(mask.sum())
    return float(hit[mask].float().mean()) if n else None


def transfer_matrices(sources: list[nn.Module], targets: list[nn.Module], x: torch.Tensor,
                      y: torch.Tensor, *, num_classes: int, eps: float, steps: int,
                      step_size: float, seed: int, device: torch.device) -> dict[str, Any]:
    """Transfer and noise rates of every source model's targeted (y+1) adversarial examples of
    x (N, C, H, W), y (N,) into every target model; (S, T) nested lists, None where undefined
    (a model against itself, or no usable image). Also the attack success rate of each source.

    The attack is :func:`targeted_l2_attack` with ``eps``, ``steps`` and ``step_size``; the
    noise baseline is :func:`same_norm_noise` at each adversarial perturbation's L2 norm.
    """
    t = (y + 1) % num_classes  # (N,)
    gen = torch.Generator().manual_seed(seed)
    models = {id(m): m for m in sources + targets}
    clean = {i: predict(m, x, device=device) == y for i, m in models.items()}  # (N,) each
    out: dict[str, Any] = {k: [] for k in ("transfer", "transfer_untargeted", "noise",
                                           "noise_untargeted", "n")}
    success: list[float] = []
    for src in sources:
        x_adv = targeted_l2_attack(src, x, t, eps=eps, steps=steps, step_size=step_size,
                                   device=device)  # (N, C, H, W)
        x_noise = same_norm_noise(x, (x_adv - x).flatten(1).norm(dim=1), generator=gen)
        ok = clean[id(src)] & (predict(src, x_adv, device=device) == t)  # (N,)
        success.append(float(ok.float().mean()))
        rows: dict[str, list[float | None]] = {k: [] for k in out}
        for tgt in targets:
            mask = ok & clean[id(tgt)]
            p_adv, p_noise = predict(tgt, x_adv, device=device), predict(tgt, x_noise,
                                                                         device=device)
            rows["n"].append(int(mask.sum()))
            rows["noise"].append(_rates(p_noise == t, mask))
            rows["noise_untargeted"].append(_rates(p_noise != y, mask))
            white_box = tgt is src
            rows["transfer"].append(None if white_box else _rates(p_adv == t, mask))
            rows["transfer_untargeted"].append(None if white_box else _rates(p_adv != y, mask))
        for k, v in rows.items():
            out[k].append(v)
    out["attack_success"] = success
    return out


def cross_mean(m: list[list[float | None]], pairs: list[list[float | None]]) -> float:
    """Mean of the (S, T) matrix m over the cells where ``pairs`` (the transfer matrix) is
    defined: pairs of distinct models with usable images."""
    vals = [v for row, ok in zip(m, pairs, strict=True) for v, o in zip(row, ok, strict=True)
            if v is not None and o is not None]
    return float(np.mean(vals)) if vals else 0.0
