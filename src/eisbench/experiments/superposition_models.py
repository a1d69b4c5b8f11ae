"""Bias-free ReLU MLPs and Elhage et al.'s features-per-dimension measure: the networks of
:mod:`eisbench.experiments.superposition` and its scaling sanity check.

- :class:`BiasFreeMLP`: the shallow-wide and deep-narrow networks (flatten -> ReLU layers ->
  logits, no biases by default, so positively homogeneous in every weight matrix);
- :func:`num_params` / :func:`matched_width`: the deep-narrow width whose parameter count
  matches one wide hidden layer;
- :func:`features_per_dimension` / :func:`layer_measures`: ``||W||_F^2 / m`` per layer;
- :func:`rescaled` / :func:`scaling_check`: multiply weight matrices by constants and check
  that the measure moves by c^2 while no prediction changes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from eisbench.core.tensors import eval_mode


class BiasFreeMLP(nn.Module):
    """ReLU MLP, bias-free by default: flatten -> [Linear -> ReLU] per hidden width -> Linear.

    Maps images (B, C, H, W) to logits (B, num_classes). Without biases the network is
    positively homogeneous in each weight matrix: ``f_{cW}(x) = c f_W(x)`` for ``c > 0``.

    Example:
        >>> net = BiasFreeMLP(in_shape=(1, 28, 28), num_classes=10, widths=(160,) * 4)
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, *, in_shape: Sequence[int], num_classes: int, widths: Sequence[int],
                 bias: bool = False) -> None:
        super().__init__()
        d = math.prod(in_shape)
        hidden: list[nn.Linear] = []
        for w in widths:
            hidden.append(nn.Linear(d, int(w), bias=bias))
            d = int(w)
        self.hidden = nn.ModuleList(hidden)
        self.head = nn.Linear(d, num_classes, bias=bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)  # (B, C*H*W)
        for layer in self.hidden:
            h = torch.relu(layer(h))  # (B, width)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))  # (B, K)
        return out


def weight_matrices(model: BiasFreeMLP) -> list[torch.Tensor]:
    """The weight matrices (m_l, n_l) into every hidden layer, then into the logits."""
    hidden: list[nn.Linear] = [layer for layer in model.hidden if isinstance(layer, nn.Linear)]
    return [layer.weight for layer in [*hidden, model.head]]


def features_per_dimension(w: torch.Tensor) -> float:
    """Elhage et al.'s features per dimension of the layer fed by ``w`` (m, n): the squared
    Frobenius norm over the layer's width m, in float64. Scaling ``w`` by c scales it by c^2."""
    return float(w.detach().double().pow(2).sum() / w.shape[0])


def layer_measures(model: BiasFreeMLP) -> list[float]:
    """Features per dimension of every layer: the hidden ones, then the logit layer."""
    return [features_per_dimension(w) for w in weight_matrices(model)]


def num_params(in_dim: int, widths: Sequence[int], num_classes: int, *, bias: bool) -> int:
    """Parameters of a :class:`BiasFreeMLP` with inputs of ``in_dim`` values."""
    dims = [in_dim, *widths, num_classes]
    return sum(a * b + (b if bias else 0) for a, b in zip(dims, dims[1:], strict=False))


def matched_width(*, in_dim: int, num_classes: int, shallow_width: int, depth: int,
                  bias: bool, tolerance: float = 0.02) -> int:
    """Width of ``depth`` equal hidden layers whose parameter count is closest to that of one
    hidden layer of ``shallow_width``; raises if no width comes within ``tolerance``."""
    target = num_params(in_dim, [shallow_width], num_classes, bias=bias)
    best = min(range(1, shallow_width + 1),
               key=lambda w: abs(num_params(in_dim, [w] * depth, num_classes, bias=bias) - target))
    got = num_params(in_dim, [best] * depth, num_classes, bias=bias)
    if abs(got - target) > tolerance * target:
        raise ValueError(f"no width of {depth} hidden layers matches the {target} parameters of "
                         f"a {shallow_width}-wide layer within {tolerance:.0%} (best {best}: "
                         f"{got}); change shallow_width or deep_depth")
    return best


def rescaled(model: BiasFreeMLP, factors: Sequence[float]) -> BiasFreeMLP:
    """A copy of ``model`` whose i-th weight matrix (see :func:`weight_matrices`) is multiplied
    by ``factors[i]`` (missing factors: 1). Biases, if any, are left alone."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for w, c in zip(weight_matrices(out), factors, strict=False):
            w.mul_(c)
    return out


def _logits(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1000) -> torch.Tensor:
    with eval_mode(model), torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def scaling_check(model: BiasFreeMLP, x: torch.Tensor, *, scales: Sequence[float]
                  ) -> list[dict[str, Any]]:
    """The seed's sanity check on images x (N, C, H, W) (on the model's device).

    For each ``c`` and each rescaling (``all``: every matrix times c; ``balanced``: the first
    times c, the second times 1/c), one row: the measure's ratio per layer against the expected
    one (c^2, c^-2 or 1), its largest relative error, how many predicted classes changed, and
    the largest relative error of the logits against ``prod(factors) * logits``.
    """
    if any(c <= 0 for c in scales):
        raise ValueError(f"scales must be positive (relu(c z) = c relu(z) needs c > 0): {scales}")
    n_mats = len(weight_matrices(model))
    base_m = layer_measures(model)
    z = _logits(model, x)  # (N, K)
    pred = z.argmax(1)  # (N,)
    rows: list[dict[str, Any]] = []
    for c in scales:
        plans = {"all": [c] * n_mats}
        if n_mats >= 2:
            plans["balanced"] = [c, 1.0 / c] + [1.0] * (n_mats - 2)
        for mode, factors in plans.items():
            scaled = rescaled(model, factors)
            ratios = [a / b for a, b in zip(layer_measures(scaled), base_m, strict=True)]
            expect = [f * f for f in factors]
            rel = max(abs(r / e - 1) for r, e in zip(ratios, expect, strict=True))
            zs = _logits(scaled, x)  # (N, K)
            zexp = z.double() * math.prod(factors)  # (N, K)
            logit_rel = float((zs.double() - zexp).abs().max() / zexp.abs().max().clamp_min(1e-30))
            rows.append({"c": c, "mode": mode, "factors": list(factors), "ratios": ratios,
                         "expected": expect, "max_rel_error": rel,
                         "logit_rel_error": logit_rel,
                         "pred_changed": int((zs.argmax(1) != pred).sum()), "n": len(x)})
    return rows
