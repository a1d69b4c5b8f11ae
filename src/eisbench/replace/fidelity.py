"""Fidelity of replacements: agreement with the model on test and out-of-distribution images,
against size, and the Pareto front.

:func:`sweep` distils a model with every distiller at every size of its grid on a fit set,
and measures agreement (the fraction of images where the replacement's label equals the
model's) on a validation set (used only for choosing a size), the test set and, optionally,
an out-of-distribution set. :func:`choose` picks one size per distiller by a rule fixed in
advance: the smallest replacement whose validation agreement is within ``tolerance`` of the
distiller's best.

Example:
    >>> pts = sweep(net, fit=x_fit, val=x_val, test=x_test, ood=x_ood,
    ...             generator_seed=0, device="cpu")
    >>> front = pareto_front(pts)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from eisbench.core.progress import progress
from eisbench.replace.core import DISTILLERS, Replacement, model_predictions


@dataclass(frozen=True)
class Point:
    """One replacement: which distiller at which size, and how faithful it is."""

    distiller: str
    hyper: dict[str, Any]
    size: int
    agree_fit: float
    agree_val: float
    agree_test: float
    agree_ood: float | None
    description: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of positions where label vectors a (N,) and b (N,) agree."""
    if a.shape != b.shape or a.dim() != 1 or len(a) == 0:
        raise ValueError(f"need two non-empty label vectors of one length, got {tuple(a.shape)}"
                         f" and {tuple(b.shape)}")
    return float((a == b).float().mean())


def fidelity(rep: Replacement, x: torch.Tensor, model_labels: torch.Tensor) -> float:
    """Agreement of ``rep`` with the model's labels (N,) on images x (N, C, H, W)."""
    return agreement(rep.predict(x), model_labels)


def sweep(model: nn.Module, *, fit: torch.Tensor, val: torch.Tensor, test: torch.Tensor,
          ood: torch.Tensor | None = None, distillers: Sequence[str] = (),
          grids: dict[str, tuple[Any, ...]] | None = None,
          hyper: dict[str, dict[str, Any]] | None = None, generator_seed: int = 0,
          device: str | torch.device = "cpu",
          keep: dict[str, list[Replacement]] | None = None) -> list[Point]:
    """Distil ``model`` with each distiller (default: all registered) at each size of its grid
    (``grids`` overrides, by distiller name) on ``fit`` images, and measure agreement on
    ``val``, ``test`` and ``ood`` (N_*, C, H, W). ``hyper`` adds fixed keyword arguments per
    distiller. Replacements are appended to ``keep[name]`` when given."""
    names = list(distillers) or DISTILLERS.names()
    ref = {k: model_predictions(model, v, device=device)
           for k, v in (("fit", fit), ("val", val), ("test", test)) if v is not None}
    ref_ood = model_predictions(model, ood, device=device) if ood is not None else None
    jobs = [(n, s) for n in names
            for s in (grids or {}).get(n, DISTILLERS.get(n).grid)]
    points = []
    for name, size in progress(jobs, desc="distil (distiller x size)", unit="fit"):
        d = DISTILLERS.get(name)
        kwargs = {**(hyper or {}).get(name, {}), d.size_param: size}
        t0 = time.perf_counter()
        rep = d(model, fit, generator=torch.Generator().manual_seed(generator_seed),
                device=device, **kwargs)
        seconds = time.perf_counter() - t0
        points.append(Point(
            distiller=name, hyper={d.size_param: size}, size=int(rep.size),
            agree_fit=fidelity(rep, fit, ref["fit"]), agree_val=fidelity(rep, val, ref["val"]),
            agree_test=fidelity(rep, test, ref["test"]),
            agree_ood=None if ood is None or ref_ood is None else fidelity(rep, ood, ref_ood),
            description=rep.describe(), seconds=seconds))
        if keep is not None:
            keep.setdefault(name, []).append(rep)
    return points


def choose(points: Sequence[Point], *, tolerance: float = 0.005) -> dict[str, Point]:
    """Per distiller: the smallest replacement whose validation agreement is within
    ``tolerance`` of that distiller's best (ties: the better validation agreement)."""
    out: dict[str, Point] = {}
    for name in dict.fromkeys(p.distiller for p in points):
        mine = [p for p in points if p.distiller == name]
        best = max(p.agree_val for p in mine)
        ok = [p for p in mine if p.agree_val >= best - tolerance]
        out[name] = min(ok, key=lambda p: (p.size, -p.agree_val))
    return out


def pareto_front(points: Sequence[Point], *, key: str = "agree_test") -> list[Point]:
    """The points no other point beats on both size (smaller) and ``key`` agreement (higher),
    sorted by size."""
    def val(p: Point) -> float:
        v = getattr(p, key)
        return float("-inf") if v is None else float(v)

    front = [p for p in points
             if not any((q.size <= p.size and val(q) >= val(p))
                        and (q.size < p.size or val(q) > val(p)) for q in points)]
    return sorted(front, key=lambda p: (p.size, -val(p)))


def distil_model(model: nn.Module, *, x_train: torch.Tensor, x_test: torch.Tensor,
                 x_ood: torch.Tensor | None, n_fit: int, n_val: int,
                 distillers: Sequence[str] = (), seed: int = 0,
                 device: str | torch.device = "cpu") -> dict[str, Any]:
    """Every distiller's sweep on one model: fit on the first ``n_fit`` of x_train, choose on
    its last ``n_val``, agreement on x_test and x_ood (N, C, H, W). Returns a JSON-ready dict
    with ``points``, ``chosen`` (per distiller) and ``units``."""
    if n_fit < 2 or n_val < 2 or n_fit + n_val > len(x_train):
        raise ValueError(f"need 2 <= n_fit, 2 <= n_val and n_fit + n_val <= {len(x_train)} "
                         f"training images; got n_fit={n_fit}, n_val={n_val}")
    names = list(distillers) or DISTILLERS.names()
    pts = sweep(model, fit=x_train[:n_fit], val=x_train[-n_val:], test=x_test, ood=x_ood,
                distillers=names, generator_seed=seed, device=device)
    return {"points": [p.to_dict() for p in pts],
            "chosen": {k: p.to_dict() for k, p in choose(pts).items()},
            "units": {n: DISTILLERS.get(n).unit for n in names},
            "n_fit": n_fit, "n_val": n_val, "n_test": len(x_test),
            "n_ood": 0 if x_ood is None else len(x_ood)}
