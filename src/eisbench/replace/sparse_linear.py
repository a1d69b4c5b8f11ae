"""Sparse linear replacement: L1-regularised logistic regression on the pixels.

Fitted by proximal gradient descent with Nesterov momentum (FISTA) on the mean cross-entropy
plus ``l1 * |W|_1`` (the bias is not penalised): softmax regression for K > 2 classes, a single
logistic unit for K = 2. Deterministic (no randomness). ``size`` = the number of nonzero
weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.replace.core import as_shape, check_input, pixel_name, register, targets


@dataclass(frozen=True)
class LinearRule:
    """``argmax(W x + b)`` over classes; for two classes ``1 if w.x + b > 0 else 0``."""

    weight: torch.Tensor  # (K, D), or (1, D) for two classes
    bias: torch.Tensor  # (K,) or (1,)
    shape: tuple[int, int, int]
    num_classes: int

    @property
    def size(self) -> int:
        return int((self.weight != 0).sum())

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.shape)
        z = x.flatten(1).float() @ self.weight.T + self.bias  # (N, K) or (N, 1)
        if self.weight.shape[0] == 1:
            return (z[:, 0] > 0).long()
        return z.argmax(1)

    def describe(self) -> str:
        w = self.weight
        flat = w.abs().amax(0) if w.shape[0] > 1 else w[0].abs()  # (D,)
        top = flat.argsort(descending=True)[: min(4, self.size)]
        if w.shape[0] == 1:
            terms = " ".join(f"{float(w[0, i]):+.2f}*{pixel_name(int(i), self.shape)}"
                             for i in top)
            more = " + ..." if self.size > len(top) else ""
            return (f"1 if {terms}{more} {float(self.bias[0]):+.2f} > 0 else 0 "
                    f"({self.size} nonzero pixel weights)")
        names = ", ".join(pixel_name(int(i), self.shape) for i in top)
        return (f"argmax over {self.num_classes} classes of a linear score with {self.size} "
                f"nonzero pixel weights (largest on {names or 'none'})")


def _lipschitz(xa: torch.Tensor, curvature: float) -> float:
    """Upper bound of the gradient's Lipschitz constant: curvature * lambda_max(X^T X) / N."""
    gram = xa.T @ xa / len(xa)  # (D+1, D+1)
    return curvature * float(torch.linalg.eigvalsh(gram)[-1]) + 1e-8


@register("sparse-linear", size_param="l1", grid=(3e-2, 1e-2, 3e-3, 1e-3, 3e-4),
          unit="nonzero weights", summary="L1 logistic regression on pixels (FISTA)")
def sparse_linear(model: nn.Module, x: torch.Tensor, *, generator: torch.Generator,
                  device: str | torch.device = "cpu", l1: float = 1e-3,
                  steps: int = 300) -> LinearRule:
    """Distil ``model`` on images x (N, C, H, W) into an L1-sparse linear rule.

    ``l1``: weight of the L1 penalty (larger: fewer nonzero weights); ``steps``: proximal
    gradient steps. ``generator`` is accepted for the contract (the fit is deterministic).
    """
    if l1 < 0 or steps < 1:
        raise ValueError(f"need l1 >= 0 and steps >= 1, got l1={l1}, steps={steps}")
    y, k = targets(model, x, device=device)
    xf = x.flatten(1).float()  # (N, D)
    n, d = xf.shape
    xa = torch.cat([xf, torch.ones(n, 1)], 1)  # (N, D+1): last column is the bias
    binary = k == 2
    rows = 1 if binary else k
    lr = 1.0 / _lipschitz(xa, 0.25 if binary else 0.5)
    w = torch.zeros(rows, d + 1)
    z = w.clone()
    t = 1.0
    for _ in range(steps):
        z.requires_grad_(True)
        logits = xa @ z.T  # (N, rows)
        loss = (F.binary_cross_entropy_with_logits(logits[:, 0], y.float()) if binary
                else F.cross_entropy(logits, y))
        (g,) = torch.autograd.grad(loss, z)
        with torch.no_grad():
            step = z - lr * g
            w_new = step.clone()
            w_new[:, :d] = step[:, :d].sign() * (step[:, :d].abs() - lr * l1).clamp_min(0)
            t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
            z = w_new + (t - 1) / t_new * (w_new - w)
            w, t = w_new, t_new
    return LinearRule(weight=w[:, :d].contiguous(), bias=w[:, d].contiguous(),
                      shape=as_shape(x), num_classes=k)
