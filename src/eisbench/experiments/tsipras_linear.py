"""Linear models on the Tsipras et al. 2019 synthetic distribution, with an exact worst case:
part (a) of :mod:`eisbench.experiments.tsipras`.

For a linear model f(x) = w.x + b the Linf worst case is closed-form,
min_{|delta|_inf <= eps} y f(x + delta) = y f(x) - eps |w|_1 (:func:`robust_margin`); models
are trained on the exact robust logistic loss (:func:`train_linear`), the worst case is
cross-checked by PGD (:func:`pgd_linear`), and the best robust linear classifier of the
distribution is computed in closed form (:func:`linear_theory`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import norm as normal


def robust_margin(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
                  eps: float) -> torch.Tensor:
    """Exact worst-case margin (N,) of the linear model x -> x.w + b under a Linf attack of
    size ``eps``: y (x.w + b) - eps |w|_1, for features x (N, D), w (D,), b (), y (N,) in
    {-1, +1}. The example is robustly correct iff it is > 0."""
    return y * (x @ w + b) - eps * w.abs().sum()


def train_linear(x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int,
                 lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise the exact robust logistic loss mean softplus(-robust_margin) over (w, b) by
    full-batch Adam from zero (deterministic); x (N, D), y (N,) in {-1, +1}. Returns w (D,), b.
    """
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for t in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * (1 - t / steps)
        loss = F.softplus(-robust_margin(w, b, x, y, eps=eps)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return w.detach(), b.detach()


def pgd_linear(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
               eps: float, steps: int, generator: torch.Generator) -> torch.Tensor:
    """Linf PGD on the logistic loss of the linear model, unbounded features (no [0,1] box:
    the synthetic features are not pixels); x (N, D) -> x_adv (N, D), random start."""
    x_adv = x + (2 * torch.rand(x.shape, generator=generator, dtype=x.dtype) - 1) * eps
    step = 2.5 * eps / max(steps, 1)
    for _ in range(steps):
        xa = x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.softplus(-y * (xa @ w + b)).sum(), xa)
        with torch.no_grad():
            x_adv = torch.minimum(torch.maximum(xa + step * grad.sign(), x - eps), x + eps)
    return x_adv.detach()


def linear_theory(*, d: int, p: float, eta: float, eps: float) -> dict[str, float]:
    """The best robust accuracy of a linear classifier on the Tsipras distribution at Linf
    ``eps``, in closed form, with that classifier's standard accuracy and its weight share on
    x_1.

    By symmetry the optimum weighs the d non-robust features equally (c each, c >= 0), x_1 by
    a >= 0, and has no bias. With r = a / (c sqrt(d)) and m(e) = sqrt(d) (eta - e), the accuracy
    under the worst-case attack of size e is p Phi(r (1 - e) + m(e)) + (1-p) Phi(m(e) - r (1 + e)),
    maximised over r in [0, inf] (r = inf: x_1 alone, accuracy p for e < 1); the L1 share on
    x_1 is r / (r + sqrt(d)).
    """
    sd = math.sqrt(d)
    r = np.concatenate([[0.0], np.logspace(-3, 3, 4001)])  # (R,)

    def acc(e: float, rr: np.ndarray) -> np.ndarray:
        m = sd * (eta - e)
        out: np.ndarray = (p * normal.cdf(rr * (1 - e) + m)
                           + (1 - p) * normal.cdf(m - rr * (1 + e)))
        return out

    rob = acc(eps, r)
    alone = p if eps < 1 else 0.0  # r = inf
    i = int(np.argmax(rob))
    if alone >= rob[i]:
        return {"robust_acc": alone, "std_acc": p, "share": 1.0}
    ri = float(r[i])
    return {"robust_acc": float(rob[i]), "std_acc": float(acc(0.0, np.array([ri]))[0]),
            "share": ri / (ri + sd)}
